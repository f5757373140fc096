"""The per-clip caches of the denoising step, and the switch that turns them off for comparison.

With the fast path on (the default), what does not change between the steps of a clip is computed once:
- the classifier-free-guidance batch of conditions (zeros, concatenations) once per clip;
- the audio keys/values of every audio-attention layer once per clip, for the conditional rows only: the
  unconditional rows' audio is all zeros, so their keys and values are zero, attention averages zeros and the
  output is exactly the output projection's bias (no attention is run for them);
- the ReferenceNet tokens' keys/values of every reference-attention layer once per video;
- the face locator on one frame of a static mask, broadcast over the clip's frames;
- each temporal module's motion-frame part up to its first attention (per-frame GroupNorm, proj_in, the
  first attention's queries/keys/values: ReferenceNet's features do not change between steps) once per
  clip, and no queries for the motion frames in the last attention (they are dropped after it);
- Hallo's identity cross-attention folded once per clip (models.context_fold): 4 tokens per video, so the
  scores and the projected output are two thin GEMMs instead of to_q and to_out.
`enabled(False)` runs the plain path (everything per step), which bench/step_speed.py times against.
"""
from __future__ import annotations

import contextlib

_STATE = {"on": True}


def is_on() -> bool:
    return _STATE["on"]


@contextlib.contextmanager
def enabled(on: bool = True):
    """Turn the fast path on or off inside the block (process-wide; for benchmarks and tests)."""
    before = _STATE["on"]
    _STATE["on"] = bool(on)
    try:
        yield
    finally:
        _STATE["on"] = before
