"""Streaming MP4 output: latents decoded a chunk of frames at a time and encoded as they come (H.264 yuv420p +
AAC through PyAV), so writing a 10-minute video needs no more RAM than a 10-second one.

The file is written as `<name>.partial` and renamed when complete: a half-written video never looks finished,
and an error or a cancel removes it.
"""
from __future__ import annotations

import json
import logging
import math
import os
from fractions import Fraction
from pathlib import Path
from typing import Callable

import torch

from .errors import InvalidInputError, MissingDependencyError

log = logging.getLogger(__name__)

PARTIAL_SUFFIX = ".partial"


def _av():
    try:
        import av
    except ImportError as err:
        raise MissingDependencyError("writing video needs PyAV: pip install av") from err
    return av


class StreamingVideoWriter:
    """MP4 writer fed with (N, H, W, 3) frames in 0..1; audio (ComfyUI AUDIO, optional) is muxed alongside the
    frames written so far and cut to the video's length. Use as a context manager: an exception aborts."""

    def __init__(self, path: str | os.PathLike, width: int, height: int, fps: float, audio: dict | None = None,
                 crf: int = 19, metadata: dict | None = None):
        av = _av()
        self.path, self.partial = Path(path), Path(f"{path}{PARTIAL_SUFFIX}")
        self.width, self.height = width - width % 2, height - height % 2  # yuv420p needs even sizes
        self.rate, self.frames, self.audio_done = Fraction(round(fps * 1000), 1000), 0, 0
        self.container = av.open(str(self.partial), mode="w", format="mp4",
                                 options={"movflags": "use_metadata_tags"})
        try:
            for key, value in (metadata or {}).items():
                self.container.metadata[key] = value if isinstance(value, str) else json.dumps(value)
            self.video = self.container.add_stream("libx264", rate=self.rate, options={"crf": str(crf)})
            self.video.width, self.video.height, self.video.pix_fmt = self.width, self.height, "yuv420p"
            self.wave, self.audio_stream = _audio_track(audio), None
            if self.wave is not None:
                self.audio_rate = int(audio["sample_rate"])
                self.audio_stream = self.container.add_stream("aac", rate=self.audio_rate)
        except Exception:
            self.abort()
            raise

    def write(self, images: torch.Tensor) -> None:
        """images: (N, H, W, 3) float in 0..1 (ComfyUI IMAGE)."""
        av = _av()
        for image in images[:, :self.height, :self.width, :3]:  # one frame at a time: a chunk of full-HD frames
            frame = (image.float() * 255).round_().clamp_(0, 255).to(torch.uint8).cpu().numpy()  # as float32 is GBs
            video_frame = av.VideoFrame.from_ndarray(frame, format="rgb24").reformat(format="yuv420p")
            self.container.mux(self.video.encode(video_frame))
        self.frames += images.shape[0]
        self._mux_audio(math.floor(self.frames * self.audio_rate / self.rate) if self.wave is not None else 0)

    def _mux_audio(self, until: int) -> None:
        if self.audio_stream is None:
            return
        until = min(until, self.wave.shape[1])
        if until <= self.audio_done:
            return
        av = _av()
        chunk = self.wave[:, self.audio_done:until]
        frame = av.AudioFrame.from_ndarray(chunk.T.reshape(1, -1).numpy(), format="flt",
                                           layout="mono" if chunk.shape[0] == 1 else "stereo")
        frame.sample_rate, frame.pts, frame.time_base = self.audio_rate, self.audio_done, Fraction(1, self.audio_rate)
        self.container.mux(self.audio_stream.encode(frame))
        self.audio_done = until

    def close(self) -> Path:
        """Flush the encoders, cut the audio to the video's length (as Create Video does) and rename."""
        try:
            self.container.mux(self.video.encode(None))
            if self.audio_stream is not None:
                self._mux_audio(math.ceil(self.frames * self.audio_rate / self.rate))
                self.container.mux(self.audio_stream.encode(None))
            self.container.close()
        except Exception:
            self.abort()
            raise
        os.replace(self.partial, self.path)
        log.info("wrote %s: %d frames at %s fps%s", self.path, self.frames, float(self.rate),
                 "" if self.audio_stream is None else f", audio {self.audio_done / self.audio_rate:.2f} s")
        return self.path

    def abort(self) -> None:
        """Close the container and remove the partial file."""
        try:
            self.container.close()
        except Exception as err:  # the file goes anyway; the caller's exception is the one that matters
            log.debug("closing the aborted video %s: %s", self.partial, err)
        self.partial.unlink(missing_ok=True)

    def __enter__(self) -> StreamingVideoWriter:
        return self

    def __exit__(self, kind, value, tb) -> None:
        if kind is None:
            self.close()
        else:
            self.abort()


def _audio_track(audio: dict | None) -> torch.Tensor | None:
    """ComfyUI AUDIO -> (channels <= 2, samples) float32 contiguous, or None (no audio or 0 samples)."""
    if audio is None:
        return None
    wave = torch.as_tensor(audio["waveform"])
    wave = wave[0] if wave.dim() == 3 else wave.reshape(-1, wave.shape[-1])
    if wave.shape[-1] == 0:
        return None
    if wave.shape[0] > 2:
        log.info("audio with %d channels: writing the first two", wave.shape[0])
        wave = wave[:2]
    return wave.float().contiguous()


def write_latent_video(latents: torch.Tensor, decode: Callable[[torch.Tensor], torch.Tensor], path, fps: float, *,
                       audio: dict | None = None, chunk_frames: int = 16, crf: int = 19, metadata: dict | None = None,
                       check_cancel: Callable[[], None] = lambda: None,
                       on_chunk: Callable[[int, int], None] = lambda done, total: None) -> Path:
    """Decode (N, 4, h, w) UNSCALED latents `chunk_frames` at a time with `decode` (-> (n, H, W, 3) in 0..1)
    and write them to `path` as they come. `check_cancel` runs before every chunk and may raise: then the
    partial file is removed and nothing is left behind."""
    if latents.dim() != 4 or latents.shape[0] < 1:
        raise InvalidInputError(f"latent must be (frames, channels, h, w) with at least 1 frame, got "
                                f"{tuple(latents.shape)}")
    if chunk_frames < 1:
        raise InvalidInputError(f"chunk_frames must be >= 1, got {chunk_frames}")
    total, writer = latents.shape[0], None
    try:
        for start in range(0, total, chunk_frames):
            check_cancel()
            images = decode(latents[start:start + chunk_frames])
            images = images.reshape(-1, *images.shape[-3:])  # video VAEs give (B, T, H, W, 3)
            if writer is None:
                writer = StreamingVideoWriter(path, images.shape[2], images.shape[1], fps, audio, crf, metadata)
            writer.write(images)
            del images
            on_chunk(min(start + chunk_frames, total), total)
        return writer.close()
    except BaseException:
        if writer is not None:
            writer.abort()
        raise
