"""Which frames form which clip and which frames carry over as motion frames: pure integer planning.

The sampler consumes the plan; nothing here touches tensors (STYLE.md section 3).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .errors import InvalidInputError


@dataclass(frozen=True)
class ClipPlan:
    """One clip of the video.

    index: clip number, 0-based. frames: the output frame indices this clip produces (the last clip
    may be shorter than `length`). length: frames actually denoised (a short last clip is padded to
    the full clip length, the padding is dropped afterwards). motion_from: the output frames whose
    generated latents become this clip's motion frames, or None for the family's first-clip rule.
    """
    index: int
    frames: range
    length: int
    motion_from: range | None

    @property
    def padding(self) -> int:
        return self.length - len(self.frames)


def plan_clips(num_frames: int, clip_length: int, motion_frames: int) -> list[ClipPlan]:
    """Split [0, num_frames) into clips of `clip_length`; clip k > 0 takes the last `motion_frames`
    frames of clip k - 1 as its motion frames. Every frame index is produced exactly once."""
    if num_frames < 1 or clip_length < 1:
        raise InvalidInputError(f"need num_frames >= 1 and clip_length >= 1, got {num_frames=}, {clip_length=}")
    if not 0 <= motion_frames <= clip_length:
        raise InvalidInputError(f"motion_frames must be in 0..clip_length={clip_length}, got {motion_frames}")
    plans = []
    for index, start in enumerate(range(0, num_frames, clip_length)):
        stop = min(start + clip_length, num_frames)
        carry = range(start - motion_frames, start) if index > 0 and motion_frames > 0 else None
        plans.append(ClipPlan(index, range(start, stop), clip_length, carry))
    return plans


def clip_seed(seed: int, clip: int, stream: int = 0) -> int:
    """A 63-bit seed that depends only on (seed, clip), so re-rendering any clip is reproducible. `stream` > 0
    gives an independent seed for another random draw of the same clip (stream 0 is the clip's noise)."""
    if clip < 0 or stream < 0:
        raise InvalidInputError(f"clip index and stream must be >= 0, got {clip=}, {stream=}")
    entropy = [int(seed) % 2**64, clip] + ([stream] if stream else [])
    state = np.random.SeedSequence(entropy).generate_state(1, dtype=np.uint64)[0]
    return int(state) >> 1
