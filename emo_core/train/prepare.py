"""Data preparation for training (issue 15, paper sec. 4.1): one talking-head video -> training shards.

Per video: decode and resample to the target fps as a stream (:mod:`.prepare_media`), face box and head
speed per frame from MediaPipe (:mod:`.prepare_faces`), wav2vec2 features per frame (emo_core.audio, Hallo's
maths), then the frames, decoded again, are cut into segments of `segment_frames` contiguous frames, each
cropped to a square around the union of its face boxes (emo_core.face_crop) and resized to `size`, optionally
VAE-encoded, and written as ClipSamples to webdataset tar shards named after a hash of the video's path
(:mod:`.shards`). Running many videos, resuming and the manifest live in :mod:`.prepare_run`.
"""
from __future__ import annotations

import hashlib
import logging
import math
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

import torch

from ..errors import InvalidInputError
from ..face import FaceBox, union_box
from ..face_crop import FaceCrop, crop_image, plan_crop
from .prepare_faces import FaceTrack, FrameFaces, detect_faces, finish_track
from .prepare_media import SkipVideo, VideoFrames, frame_chunks, read_audio_track
from .shard_frames import FrameCodec
from .shards import ClipSample, ShardWriter

if TYPE_CHECKING:
    from ..audio import AudioFeatures

log = logging.getLogger(__name__)

LATENT_SCALE = 0.18215  # SD 1.5 VAE scaling factor
VAE_BATCH = 8


@dataclass(frozen=True)
class PrepareSettings:
    """size: crop side in pixels (multiple of 8 for latents). fps: output frame rate. segment_frames: frames
    per stored sample (enough for the trainer's motion frames + clip). shard_samples: samples per shard file.
    expand_ratio: crop side / longer side of the segment's united face box. frame_format: how shards store
    frames ("jpeg", "png" or "raw", see .shard_frames); jpeg_quality: 1..100 for "jpeg"."""
    size: int = 512
    fps: float = 25.0
    segment_frames: int = 48
    shard_samples: int = 16
    expand_ratio: float = 1.6
    frame_format: str = "jpeg"
    jpeg_quality: int = 95

    def validate(self) -> PrepareSettings:
        if self.size < 8 or self.size % 8:
            raise InvalidInputError(f"size must be a multiple of 8 (the VAE's stride), got {self.size}")
        if not (1 <= self.fps <= 120):
            raise InvalidInputError(f"fps must be 1..120, got {self.fps}")
        if self.segment_frames < 2:
            raise InvalidInputError(f"segment_frames must be >= 2, got {self.segment_frames}")
        if self.shard_samples < 1:
            raise InvalidInputError(f"shard_samples must be >= 1, got {self.shard_samples}")
        if not (1.0 <= self.expand_ratio <= 4.0):
            raise InvalidInputError(f"expand_ratio must be 1..4, got {self.expand_ratio}")
        self.codec().validate()
        return self

    def codec(self) -> FrameCodec:
        return FrameCodec(self.frame_format, self.jpeg_quality)

    def record(self) -> dict:
        return asdict(self)


@dataclass
class Models:
    """What each worker loads once: the wav2vec2 encoder, the MediaPipe folders, an optional VAE."""
    wav2vec: Any
    model_dirs: Sequence[str | os.PathLike]
    vae: Any = None


def video_id(path: str | os.PathLike) -> str:
    """16 hex digits of the SHA-256 of the video's absolute path: stable names for its shards on every run."""
    return hashlib.sha256(str(Path(path).resolve()).encode()).hexdigest()[:16]


def plan_segments(frames: int, length: int) -> list[range]:
    """Consecutive, non-overlapping segments of `length` frames in [0, frames); the remainder is dropped."""
    if frames < 0 or length < 1:
        raise InvalidInputError(f"need frames >= 0 and length >= 1, got {frames=}, {length=}")
    return [range(s, s + length) for s in range(0, frames - length + 1, length)]


def box_in_crop(box: FaceBox, crop: FaceCrop) -> tuple[int, int, int, int]:
    """A box in image pixels -> (x0, y0, x1, y1) in crop pixels, rounded outwards, clamped to the crop."""
    s = crop.scale
    x0, y0 = math.floor((box.x0 - crop.left) * s), math.floor((box.y0 - crop.top) * s)
    x1, y1 = math.ceil((box.x1 - crop.left) * s), math.ceil((box.y1 - crop.top) * s)
    clamp = lambda v: min(crop.size, max(0, v))  # noqa: E731
    return clamp(x0), clamp(y0), clamp(x1), clamp(y1)


def crop_segment(frames: torch.Tensor, boxes: Sequence[FaceBox], settings: PrepareSettings
                 ) -> tuple[torch.Tensor, torch.Tensor, FaceCrop]:
    """Segment frames (L, H, W, 3) uint8 + their face boxes -> (frames (L, 3, S, S) float32 in [-1, 1],
    masks (L, 1, S, S) float32 0/1, the crop): one fixed square around the union of the boxes."""
    height, width = frames.shape[1:3]
    crop = plan_crop(union_box(boxes), (height, width), settings.size, settings.expand_ratio)
    images = torch.stack([crop_image(f.float() / 255, crop) for f in frames]).permute(0, 3, 1, 2)
    masks = torch.zeros(len(boxes), 1, settings.size, settings.size)
    for mask, box in zip(masks, boxes):
        x0, y0, x1, y1 = box_in_crop(box, crop)
        mask[0, y0:y1, x0:x1] = 1.0
    return images.mul(2).sub(1).contiguous(), masks, crop


@torch.no_grad()
def encode_latents(vae, frames: torch.Tensor) -> torch.Tensor:
    """(L, 3, S, S) in [-1, 1] -> (L, 4, S/8, S/8) float32 x0.18215; the posterior mean, so the shards are the
    same on every run (the trainer can still add the posterior's noise if it wants)."""
    param = next(vae.parameters())
    out = [vae.encode(chunk.to(param.device, param.dtype)).latent_dist.mean.float().cpu()
           for chunk in frames.split(VAE_BATCH)]
    return torch.cat(out) * LATENT_SCALE


def prepare_video(path: str | os.PathLike, out_dir: str | os.PathLike, settings: PrepareSettings,
                  models: Models) -> dict:
    """Write one video's shards `<video id>-NNNN.tar` to `out_dir`; returns its manifest entry (statistics
    and shard names). SkipVideo (with a `reason`) when the video cannot become training data.

    The video is decoded twice, a segment at a time: once to find the faces (the crops and speeds need the
    whole track: a frame without a face takes the nearest found box, the speed is smoothed over time), then
    to cut the segments. Memory holds a segment of frames plus per-frame face boxes and rigid landmarks; the
    audio features of a long track stay on disk (emo_core.audio spills them).
    """
    from ..audio import AudioSettings, extract_audio_features, frame_count, to_mono_16k

    path, vid = Path(path), video_id(path)
    audio, rms = read_audio_track(path)
    video = VideoFrames(path, settings.fps)
    faces = search_faces(video, frame_count(to_mono_16k(audio).numel(), settings.fps), settings.segment_frames,
                         models.model_dirs)
    usable = len(faces)  # frames with both picture and sound
    segments = plan_segments(usable, settings.segment_frames)
    if not segments:
        raise SkipVideo("too_short", f"{path.name}: {usable} frames at {settings.fps:g} fps, need at least "
                                     f"{settings.segment_frames} (--segment-frames)")
    track = finish_track(faces, settings.fps, path.name)
    del faces
    # per-segment rows: a track longer than one wav2vec2 chunk keeps its features in a file on disk
    features = extract_audio_features(models.wav2vec, audio, AudioSettings(fps=settings.fps))
    shards = write_shards(path, Path(out_dir), segments, track, features, settings, models)
    sides = sorted(max(b.x1 - b.x0, b.y1 - b.y0) for b in track.boxes)
    return {"id": vid, "source": str(path), "status": "prepared", "shards": shards,
            "frames_in": video.frames_in, "fps_in": video.source_fps, "frames_resampled": video.frames_out,
            "frames": usable, "fps": settings.fps, "duration": usable / settings.fps,
            "size_in": list(video.size), "segments": len(segments),
            "face_frames": track.found, "face_box_side": sides[len(sides) // 2],
            "speed_mean": float(track.speed[:usable].mean()), "speed_max": float(track.speed[:usable].max()),
            "audio_rms": rms, "latents": models.vae is not None}


def search_faces(video: VideoFrames, limit: int, chunk: int, model_dirs: Sequence[str | os.PathLike]
                 ) -> list[FrameFaces]:
    """FrameFaces of the first `limit` frames (those with sound), searched `chunk` frames at a time; the rest
    of the video is still decoded, so `video` ends with its frame counts."""
    faces: list[FrameFaces] = []
    for frames in frame_chunks(video, chunk):
        take = min(len(frames), limit - len(faces))
        if take > 0:
            faces += detect_faces(frames[:take], model_dirs)
    return faces


def write_shards(path: Path, out_dir: Path, segments: Sequence[range], track: FaceTrack,
                 features: AudioFeatures, settings: PrepareSettings, models: Models) -> list[str]:
    """The second reading: each segment's frames cropped and written as they are decoded; shard names.
    A failure removes this video's finished shards too, so a skipped video leaves none behind."""
    vid, shards = video_id(path), []
    chunks = frame_chunks(VideoFrames(path, settings.fps), settings.segment_frames)
    try:
        for first in range(0, len(segments), settings.shard_samples):
            name = f"{vid}-{first // settings.shard_samples:04d}.tar"
            with ShardWriter(out_dir / name, settings.codec()) as writer:
                for number, seg in enumerate(segments[first:first + settings.shard_samples], start=first):
                    frames = next(chunks, None)
                    if frames is None or len(frames) < len(seg):
                        raise SkipVideo("decode_error", f"{path.name} gave fewer frames when read again; was "
                                                        "it changed during the run?")
                    writer.write(_sample(vid, number, seg, path, frames, track, features, settings, models))
            shards.append(name)
    except BaseException:
        for name in shards:
            (out_dir / name).unlink(missing_ok=True)
        raise
    finally:
        chunks.close()
    return shards


def _sample(vid, number, seg, path, frames, track, features, settings, models) -> ClipSample:
    """frames: this segment's (L, H, W, 3) uint8 frames; features: the track's AudioFeatures."""
    images, masks, crop = crop_segment(frames, track.boxes[seg.start:seg.stop], settings)
    latents = encode_latents(models.vae, images) if models.vae is not None else None
    meta = {"video": vid, "source": path.name, "segment": number, "start": seg.start,
            "crop": list(crop.box), "image_size": list(crop.image_size)}
    return ClipSample(key=f"{vid}/{number:04d}", frames=images, face_masks=masks,
                      audio=features.rows(seg.start, seg.stop).float(),
                      speed=track.speed[seg.start:seg.stop].clone(), latents=latents, fps=settings.fps, meta=meta)
