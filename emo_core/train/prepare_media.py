"""Reading one training video for data preparation: frames resampled to the target fps, streamed one at a
time (memory does not grow with the video's length), and its audio.

Every refusal is a :class:`SkipVideo` with a short machine-readable `reason` (one of REASONS) that the
manifest lists next to the video, and a sentence saying what was seen.
"""
from __future__ import annotations

import heapq
import logging
import math
import os
from collections import deque
from pathlib import Path
from typing import Iterable, Iterator, TypeVar

import numpy as np
import torch

from ..errors import InvalidInputError, MissingDependencyError

log = logging.getLogger(__name__)

REASONS = ("decode_error", "no_audio", "silent_audio", "too_short", "no_face", "several_faces")
REORDER_FRAMES = 4  # decoded frames held to sort jumbled timestamps (a decoder already outputs in order)
T = TypeVar("T")
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


def resample_stream(timed: Iterable[tuple[float, T]], source_fps: float, fps: float) -> Iterator[T]:
    """Items of (time, item) pairs in increasing time, dropped or repeated to `fps`, one at a time: exactly
    the items `resample_indices` picks from the whole list, without holding it.

    Output frame i is the item whose interval [t_k, t_k+1) holds i / fps + start + half a source frame; the
    last item covers up to the count, floor(duration x fps). The count grows with the last time seen, so an
    output is released once the times seen so far prove it exists (a downsampled stream may hold one or two
    back); the pending ones are references to items, not copies.
    """
    start = previous = None
    picked = released = 0
    pending: deque = deque()

    def wanted(i: int) -> float:  # the same float operations as resample_indices, so the same comparisons
        return i / fps + start + 0.5 / source_fps

    def count(last: float) -> int:
        return math.floor(((last - start) + 1.0 / source_fps) * fps + 1e-6)

    for time, item in timed:
        if start is None:
            start = time
        else:
            while wanted(picked) < time:
                pending.append(previous)
                picked += 1
        previous = item
        known = count(time)
        while pending and released < known:
            yield pending.popleft()
            released += 1
        last = time
    if start is None:
        return
    total = count(last)
    pending.extend([previous] * max(0, total - picked))
    while pending and released < total:
        yield pending.popleft()
        released += 1


class VideoFrames:
    """A video's frames at `fps`, decoded and resampled one at a time: iterate for (H, W, 3) uint8 RGB arrays.

    Peak memory is a few decoded frames (REORDER_FRAMES plus what the resampler holds), whatever the length.
    Frames are dropped or repeated to the target rate (no blending: a blended frame is no real pose); a
    repeated frame is the same array object. After a full iteration `frames_in` (decoded source frames) and
    `frames_out` (frames at `fps`) are set; `source_fps` and `size` ((width, height)) once it has started.
    Every failure is a SkipVideo "decode_error".
    """

    def __init__(self, path: str | os.PathLike, fps: float):
        self.path, self.fps, self.name = str(path), fps, Path(path).name
        self.source_fps, self.size = 0.0, (0, 0)
        self.frames_in = self.frames_out = 0

    def __iter__(self) -> Iterator[np.ndarray]:
        av = _av()
        try:
            with av.open(self.path) as container:
                if not container.streams.video:
                    raise SkipVideo("decode_error", f"{self.name} has no video stream")
                stream = container.streams.video[0]
                self.source_fps = float(stream.average_rate or stream.guessed_rate or 0)
                if self.source_fps <= 0:
                    raise SkipVideo("decode_error", f"{self.name} has no frame rate")
                self.frames_in = self.frames_out = 0
                yield from self._rgb(resample_stream(self._timed(container.decode(stream)), self.source_fps,
                                                     self.fps))
        except av.error.FFmpegError as err:
            raise SkipVideo("decode_error", f"{self.name} cannot be decoded ({err})") from err
        if self.frames_in == 0:
            raise SkipVideo("decode_error", f"{self.name} holds no decodable video frames")
        log.debug("%s: %d frames at %.3f fps -> %d at %g fps", self.name, self.frames_in, self.source_fps,
                  self.frames_out, self.fps)

    def _timed(self, frames) -> Iterator[tuple[float, object]]:
        """Decoded frames in presentation order: a decoder emits them so, but a few with jumbled timestamps
        are sorted in a small window; a frame later than that window is a damaged file."""
        window: list = []
        released = -math.inf
        for frame in frames:
            time = float(frame.time if frame.time is not None else self.frames_in / self.source_fps)
            if time < released:
                raise SkipVideo("decode_error", f"{self.name}: frame timestamps jump back more than "
                                                f"{REORDER_FRAMES} frames at {time:.3f} s")
            heapq.heappush(window, (time, self.frames_in, frame))  # the decode number keeps ties in order
            self.frames_in += 1
            if len(window) > REORDER_FRAMES:
                released, _, frame = heapq.heappop(window)
                yield released, frame
        while window:
            time, _, frame = heapq.heappop(window)
            yield time, frame

    def _rgb(self, frames: Iterator) -> Iterator[np.ndarray]:
        """Converts each picked frame once (a dropped one never; a repeated one is the same array)."""
        source = image = None
        for frame in frames:
            if frame is not source:
                source, image = frame, frame.to_ndarray(format="rgb24")
                self.size = (image.shape[1], image.shape[0])
            self.frames_out += 1
            yield image


def frame_chunks(frames: Iterable[np.ndarray], length: int) -> Iterator[torch.Tensor]:
    """(H, W, 3) uint8 frames -> consecutive (length, H, W, 3) uint8 tensors (the last may be shorter), each
    frame copied in as it comes, so one chunk and one frame are held, not a list and its stacked copy. The
    buffers are numpy's, so tracemalloc sees them (the tests measure peak memory with it)."""
    chunk, filled = None, 0
    for image in frames:
        if chunk is None:
            chunk = np.empty((length, *image.shape), dtype=np.uint8)
        elif image.shape != chunk.shape[1:]:
            raise SkipVideo("decode_error", f"the frame size changes from {chunk.shape[1:]} to {image.shape} "
                                            "inside the video; re-encode it at one size")
        chunk[filled] = image
        filled += 1
        if filled == length:
            yield torch.from_numpy(chunk)
            chunk, filled = np.empty_like(chunk), 0
    if filled:
        yield torch.from_numpy(chunk[:filled])


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
