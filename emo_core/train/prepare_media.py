"""Reading one training video for data preparation: frames resampled to the target fps, and its audio.

Every refusal is a :class:`SkipVideo` with a short machine-readable `reason` (one of REASONS) that the
manifest lists next to the video, and a sentence saying what was seen.
"""
from __future__ import annotations

import logging
import math
import os
from pathlib import Path

import numpy as np
import torch

from ..errors import InvalidInputError, MissingDependencyError

log = logging.getLogger(__name__)

REASONS = ("decode_error", "no_audio", "silent_audio", "too_short", "no_face", "several_faces")
SILENCE_RMS = 1e-4  # -80 dBFS: below any recorded speech, above AAC's rounding of digital silence


class SkipVideo(InvalidInputError):
    """A video that cannot become training data; `reason` is one of REASONS."""

    def __init__(self, reason: str, message: str):
        super().__init__(message)
        self.reason = reason


def _av():
    try:
        import av
    except ImportError as err:
        raise MissingDependencyError("reading training videos needs PyAV: pip install av") from err
    return av


def resample_indices(times: torch.Tensor, source_fps: float, fps: float) -> torch.Tensor:
    """Source frame index for each output frame at `fps`: the frame shown at time i / fps (the latest one that
    started by then, with half a source frame of tolerance against rounded timestamps).

    times: (frames,) float64 presentation times in seconds, increasing. The output covers the source's
    duration (last time + one source frame): floor(duration x fps) frames.
    """
    if times.numel() == 0:
        return torch.zeros(0, dtype=torch.long)
    start = times[0]
    duration = float(times[-1] - start) + 1.0 / source_fps
    count = math.floor(duration * fps + 1e-6)
    wanted = torch.arange(count, dtype=torch.float64) / fps + start + 0.5 / source_fps
    return (torch.searchsorted(times, wanted, right=True) - 1).clamp(0, times.numel() - 1)


def read_frames(path: str | os.PathLike, fps: float) -> tuple[torch.Tensor, float, int]:
    """A video's frames at `fps` -> ((frames, H, W, 3) uint8 RGB, the source's frame rate, its frame count).

    Frames are dropped or repeated to the target rate (no blending: a blended frame is no real pose).
    """
    av = _av()
    name = Path(path).name
    try:
        with av.open(str(path)) as container:
            if not container.streams.video:
                raise SkipVideo("decode_error", f"{name} has no video stream")
            stream = container.streams.video[0]
            source_fps = float(stream.average_rate or stream.guessed_rate or 0)
            images, times = [], []
            for frame in container.decode(stream):
                images.append(frame.to_ndarray(format="rgb24"))
                times.append(float(frame.time if frame.time is not None else len(times) / (source_fps or fps)))
    except av.error.FFmpegError as err:
        raise SkipVideo("decode_error", f"{name} cannot be decoded ({err})") from err
    if not images or source_fps <= 0:
        raise SkipVideo("decode_error", f"{name} holds no decodable video frames")
    order = np.argsort(times, kind="stable")  # decode order is presentation order only without B-frames
    picked = resample_indices(torch.tensor(times, dtype=torch.float64)[order], source_fps, fps)
    frames = torch.from_numpy(np.stack([images[order[i]] for i in picked.tolist()]))
    log.debug("%s: %d frames at %.3f fps -> %d at %g fps", name, len(images), source_fps, frames.shape[0], fps)
    return frames, source_fps, len(images)


def read_audio_track(path: str | os.PathLike) -> tuple[dict, float]:
    """A video's audio as ComfyUI AUDIO and its RMS level (16 kHz mono); SkipVideo when there is none or it is
    silent (a silent clip teaches the audio layers nothing and its normalised features are all zero)."""
    from ..audio import to_mono_16k
    from ..render.media import read_audio

    av, name = _av(), Path(path).name
    try:
        with av.open(str(path)) as container:
            has_audio = bool(container.streams.audio)
    except av.error.FFmpegError as err:
        raise SkipVideo("decode_error", f"{name} cannot be opened ({err})") from err
    if not has_audio:
        raise SkipVideo("no_audio", f"{name} has no audio stream")
    try:
        audio = read_audio(path)
    except InvalidInputError as err:
        raise SkipVideo("decode_error", f"the audio of {name} cannot be decoded ({err})") from err
    rms = float(to_mono_16k(audio).double().square().mean().sqrt())
    if not rms >= SILENCE_RMS:
        raise SkipVideo("silent_audio", f"the audio of {name} is silent (RMS {rms:.2g} < {SILENCE_RMS:g})")
    return audio, rms
