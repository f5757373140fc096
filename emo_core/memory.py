"""Host-memory estimates for a run, made before the work starts, so a video too long for this machine's RAM
fails in a second with one sentence instead of running out of memory hours in.

Only what grows with the length is counted (the models are already loaded, so the available memory the
estimate is compared with excludes them). The figures follow the code paths:

- audio features (audio.extract_audio_features): the float32 16 kHz signal and its float64 normalisation
  copy (resampling itself runs in blocks), the wav2vec2 CNN output (one row per 320 samples) and the
  activations of one transformer chunk, and the (frames, layers, hidden) float32 features when they stay in
  memory (audio longer than one chunk writes them to a temporary file; only disk space is checked);
- sampling (sampler.generate): the (frames, 4, h, w) float32 output latents (the features exist already);
- after sampling, VAE Decode -> Create Video holds every decoded frame as float32 (frames, H, W, 3), while
  EMO Save Video (Streaming) holds one chunk of frames.
"""
from __future__ import annotations

import logging
import math
import os
from dataclasses import dataclass

from .errors import InsufficientMemoryError

log = logging.getLogger(__name__)

GIB = 2 ** 30
F32, F64 = 4, 8
CNN_STRIDE = 320  # wav2vec2's CNN: one output row per 320 samples at 16 kHz
AFTER_SAMPLING = ("latent", "vae_decode", "streaming")


@dataclass(frozen=True)
class MemoryEstimate:
    """parts: name -> bytes; total: their sum; what: the run it is for, e.g. 'a 600 s video (15000 frames)'."""
    parts: dict
    what: str

    @property
    def total(self) -> int:
        return sum(self.parts.values())


def audio_features_bytes(samples: int, sample_rate: int, fps: float, layers: int, hidden: int, *,
                         conv_channels: int = 512, heads: int = 12, intermediate: int = 3072,
                         clip_length: int = 1, chunk_seconds: float = 60.0, context_seconds: float = 5.0) -> dict:
    """Peak extra host bytes of extracting features of `samples` audio samples (per channel) at `sample_rate`.

    "audio features" is the (frames, layers, hidden) float32 result when it stays in memory; audio longer than
    one transformer chunk writes it to a temporary file instead (audio_features_disk_bytes)."""
    s16 = math.ceil(samples * 16000 / sample_rate)
    frames = math.ceil(math.ceil(s16 / 16000 * fps) / clip_length) * clip_length
    # Resampling runs in blocks; what grows is the float32 16 kHz signal, normalised through one float64 copy.
    resample = (F64 + 2 * F32) * s16
    chunk = min(frames, int(chunk_seconds * fps) + 2 * int(context_seconds * fps))
    # Every layer's output for the chunk, the feed-forward, and one attention matrix (SDPA's memory-efficient
    # kernels need less; eager attention more). On a GPU this part is on the device.
    transformer = chunk * (2 * layers * hidden + intermediate) * F32 + heads * chunk * chunk * F32
    # The padded 16 kHz signal, and the CNN output of what one transformer chunk reads (all of it when short).
    encode = F32 * s16 + F32 * conv_channels / CNN_STRIDE * min(s16, chunk / fps * 16000) + transformer
    parts = {"audio processing": int(max(resample, encode))}
    if not features_spill(frames, fps, chunk_seconds):
        parts["audio features"] = frames * layers * hidden * F32
    return parts


def features_spill(frames: int, fps: float, chunk_seconds: float) -> bool:
    """Whether audio.extract_audio_features writes the features of `frames` padded frames to disk: exactly
    when it encodes them in transformer chunks."""
    return frames > max(1, int(chunk_seconds * fps))


def sampling_bytes(frames: int, latent_hw: tuple[int, int], after: str = "latent", chunk_frames: int = 16) -> dict:
    """Extra host bytes of sampling `frames` frames of (4, h, w) latents and of what follows (AFTER_SAMPLING)."""
    if after not in AFTER_SAMPLING:
        raise ValueError(f"after must be one of {AFTER_SAMPLING}, got {after!r}")
    h, w = latent_hw
    parts = {"latents": frames * 4 * h * w * F32}
    pixels = (8 * h) * (8 * w) * 3 * F32
    if after == "vae_decode":
        parts["decoded frames"] = frames * pixels
    elif after == "streaming":
        parts["decoded chunk"] = min(frames, chunk_frames) * pixels
    return parts


def available_host_bytes() -> int | None:
    """Memory this process can still take: MemAvailable, capped by a cgroup v2 limit; None when unknown."""
    found = []
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    found.append(int(line.split()[1]) * 1024)
    except (OSError, ValueError, IndexError):
        pass
    if not found:
        try:
            import psutil
            found.append(int(psutil.virtual_memory().available))
        except ImportError:
            pass
    try:
        with open("/sys/fs/cgroup/memory.max") as f:
            limit = f.read().strip()
        with open("/sys/fs/cgroup/memory.current") as f:
            if limit != "max":
                found.append(int(limit) - int(f.read().strip()))
    except (OSError, ValueError):
        pass
    return min(found) if found else None


def check_host_memory(estimate: MemoryEstimate, remedy: str, available: int | None = None) -> None:
    """Raise InsufficientMemoryError when the estimate exceeds the available memory (unknown: never).
    EMO_SKIP_MEMORY_CHECK=1 turns the check off (e.g. when swap makes up the difference)."""
    if os.environ.get("EMO_SKIP_MEMORY_CHECK") == "1":
        return
    available = available_host_bytes() if available is None else available
    log.info("host memory estimate for %s: %.2f GiB (%s); available: %s", estimate.what, estimate.total / GIB,
             ", ".join(f"{k} {v / GIB:.2f} GiB" for k, v in estimate.parts.items()),
             "unknown" if available is None else f"{available / GIB:.2f} GiB")
    if available is None or estimate.total <= available:
        return
    raise InsufficientMemoryError(
        f"{estimate.what} needs about {estimate.total / GIB:.1f} GiB of RAM but only {available / GIB:.1f} GiB "
        f"is available; {remedy} (or set EMO_SKIP_MEMORY_CHECK=1 if swap covers it)")
