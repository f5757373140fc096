"""Training shards: webdataset-compatible tar files of ClipSamples, written atomically and read by index.

A shard is a plain (uncompressed) tar written with the stdlib `tarfile`; each sample is a group of members
`<key>.<field>` that webdataset's own reader would group the same way (the key is everything before the
first dot of the member's base name, e.g. `3f2a9c0d1e7b4a66/0002`; per-frame members such as
`3f2a9c0d1e7b4a66/0002.frames.0007.jpg` keep that rule). Fields and their on-disk layouts:

    frames.NNNN.jpg (S, S) RGB JPEG per frame N of L (or .png, lossless; or, as shards written before
                    encoding existed, frames.npy: (L, S, S, 3) uint8), see :mod:`.shard_frames`
    face_masks.png  (L x S, S) 1-bit PNG, the L masks stacked: that frame's face box in crop pixels
                    (or face_masks.npy: (L, S, S) uint8 0/1)
    audio.npy       (L, layers, hidden) float16 wav2vec2 hidden states of all blocks per frame
    speed.npy       (L,) float64 head rotation speed, rad/s
    latents.npy     (L, 4, S/8, S/8) float16 VAE latents x0.18215 (only when precomputed)
    meta.json       {"fps": float, "frame_format": "jpeg"|"png"|"raw", "jpeg_quality": int (jpeg only),
                     "video": id, "source": file name, "start": frame, "crop": [...], ...}

:class:`ShardDataset` turns them back into :class:`ClipSample` with the layouts of the shared contract
(float32 frames in [-1, 1], float32 masks and audio, float64 speed). A shard is written as
`<name>.tar.partial` and renamed when complete, so a shard under its real name is always whole.
"""
from __future__ import annotations

import io
import json
import logging
import os
import tarfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import torch

from ..errors import CorruptFileError, InvalidInputError
from .shard_frames import (FrameCodec, FrameStack, decode_frames, decode_masks, encode_frames, encode_masks,
                           has_frames, has_masks, load_npy, npy, to_unit_range)

log = logging.getLogger(__name__)

PARTIAL_SUFFIX = ".partial"
FIELDS = ("audio.npy", "speed.npy", "meta.json")  # besides frames and masks, which have several layouts
OPTIONAL_FIELDS = ("latents.npy",)


@dataclass
class ClipSample:
    """One training segment: L contiguous frames of one video at the shard's fps, cropped around the face.

    key: "<video id>/<segment index>". frames: (L, 3, S, S) float32 in [-1, 1], RGB. face_masks:
    (L, 1, S, S) float32 in {0, 1}, that frame's face box in crop pixels. audio: (L, layers, hidden) float32
    wav2vec2 hidden states of all blocks per frame (AudioFeatures.rows; float16 on disk). speed: (L,) float64
    head rotation speed in rad/s. latents: (L, 4, S/8, S/8) float32 VAE latents already x0.18215, or None.
    fps: frames per second of the segment. meta: json-able (video id, source file name, start frame, crop box).
    From a `ShardDataset(..., lazy_frames=True)` (the trainer's), frames is a FrameStack, decoded as indexed.
    """
    key: str
    frames: torch.Tensor | FrameStack
    face_masks: torch.Tensor
    audio: torch.Tensor
    speed: torch.Tensor
    latents: torch.Tensor | None
    fps: float
    meta: dict = field(default_factory=dict)


def encode_sample(sample: ClipSample, codec: FrameCodec = FrameCodec()) -> dict[str, bytes]:
    """ClipSample -> {field: bytes} in the compact on-disk layouts of the module docstring."""
    codec.validate()
    frames = ((sample.frames.detach().float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    masks = (sample.face_masks.detach()[:, 0] > 0.5).to(torch.uint8).cpu().numpy()
    out = {
        **encode_frames(frames.permute(0, 2, 3, 1).cpu().numpy(), codec),
        **encode_masks(masks, codec),
        "audio.npy": npy(sample.audio.detach().to(torch.float16).cpu().numpy()),
        "speed.npy": npy(sample.speed.detach().to(torch.float64).cpu().numpy()),
        "meta.json": json.dumps({**sample.meta, "fps": float(sample.fps), **codec.meta()}, sort_keys=True).encode(),
    }
    if sample.latents is not None:
        out["latents.npy"] = npy(sample.latents.detach().to(torch.float16).cpu().numpy())
    return out


def decode_sample(key: str, fields: dict[str, bytes], lazy_frames: bool = False) -> ClipSample:
    """{field: bytes} of one key -> ClipSample with the contract's dtypes and layouts (frames a FrameStack, decoded
    when indexed, with lazy_frames)."""
    missing = [f for f in FIELDS if f not in fields]
    missing += [] if has_frames(fields) else ["frames"]
    missing += [] if has_masks(fields) else ["face_masks"]
    if missing:
        raise CorruptFileError(f"sample {key} lacks {missing}; prepare the shard again")

    def array(name: str) -> torch.Tensor:
        return torch.from_numpy(load_npy(fields[name]))

    meta = json.loads(fields["meta.json"])
    speed = array("speed.npy").to(torch.float64)
    frames = FrameStack(fields) if lazy_frames else to_unit_range(decode_frames(fields))
    masks = torch.from_numpy(decode_masks(fields)).float()[:, None]
    if not frames.shape[0] == masks.shape[0] == speed.shape[0]:
        raise CorruptFileError(f"sample {key} has {frames.shape[0]} frames, {masks.shape[0]} masks and "
                               f"{speed.shape[0]} speeds; prepare the shard again")
    latents = array("latents.npy").float() if "latents.npy" in fields else None
    return ClipSample(key=key, frames=frames, face_masks=masks, audio=array("audio.npy").float(),
                      speed=speed, latents=latents, fps=float(meta["fps"]), meta=meta)


class ShardWriter:
    """Writes ClipSamples to `<path>.partial` and renames it to `path` on close; an exception (or abort())
    removes the partial file, so an interrupted shard never looks finished. Use as a context manager.
    codec: how frames and masks are stored (:class:`FrameCodec`: JPEG quality 95 by default)."""

    def __init__(self, path: str | os.PathLike, codec: FrameCodec = FrameCodec()):
        self.codec = codec.validate()
        self.path = Path(path)
        self.partial = Path(f"{path}{PARTIAL_SUFFIX}")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._file = open(self.partial, "wb")
        self._tar = tarfile.open(fileobj=self._file, mode="w", format=tarfile.USTAR_FORMAT)
        self.count = 0

    def write(self, sample: ClipSample) -> None:
        for name, data in encode_sample(sample, self.codec).items():
            info = tarfile.TarInfo(f"{sample.key}.{name}")
            info.size, info.mode, info.mtime = len(data), 0o644, 0  # mtime 0: same bytes on every run
            self._tar.addfile(info, io.BytesIO(data))
        self.count += 1

    def close(self) -> Path:
        self._tar.close()
        self._file.flush()
        os.fsync(self._file.fileno())
        self._file.close()
        os.replace(self.partial, self.path)
        log.debug("wrote shard %s (%d samples)", self.path, self.count)
        return self.path

    def abort(self) -> None:
        self._file.close()
        self.partial.unlink(missing_ok=True)

    def __enter__(self) -> ShardWriter:
        return self

    def __exit__(self, kind, value, tb) -> None:
        if kind is None:
            self.close()
        else:
            self.abort()


def index_shard(path: str | os.PathLike) -> list[tuple[str, dict[str, tuple[int, int]]]]:
    """[(key, {field: (data offset, size)})] of one shard, in the order the samples were written."""
    samples: dict[str, dict[str, tuple[int, int]]] = {}
    try:
        with tarfile.open(path, mode="r:") as tar:
            for member in tar:
                if not member.isfile():
                    continue
                folder, _, base = member.name.rpartition("/")
                stem, dot, name = base.partition(".")
                if not dot:
                    continue
                key = f"{folder}/{stem}" if folder else stem
                samples.setdefault(key, {})[name] = (member.offset_data, member.size)
    except tarfile.TarError as err:
        raise CorruptFileError(f"shard {path} is not a readable tar file ({err}); prepare it again") from err
    return list(samples.items())


class ShardDataset(torch.utils.data.Dataset):
    """Map-style over every sample of the given shard files, in a fixed order (sorted shard paths, then
    order inside each shard): len() and __getitem__(i) -> ClipSample. Each shard's member offsets are indexed
    once here; a read seeks straight to the sample, so a DistributedSampler and exact resume work.
    lazy_frames: samples carry a FrameStack that decodes only the frames a step indexes (the trainer's setting)."""

    def __init__(self, paths: Sequence[str | os.PathLike], lazy_frames: bool = False):
        self.lazy_frames = lazy_frames
        self.paths = sorted(str(p) for p in paths)
        if not self.paths:
            raise InvalidInputError("no shard files given; run emo-prepare first and pass its output folder")
        self.index: list[tuple[int, str, dict[str, tuple[int, int]]]] = []
        for number, path in enumerate(self.paths):
            self.index.extend((number, key, fields) for key, fields in index_shard(path))
        log.info("%d samples in %d shard(s)", len(self.index), len(self.paths))

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, i: int) -> ClipSample:
        if not -len(self.index) <= i < len(self.index):
            raise IndexError(f"sample {i} out of range for {len(self.index)} samples")
        number, key, fields = self.index[i]
        data = {}
        with open(self.paths[number], "rb") as f:  # opened per read: safe in forked DataLoader workers
            for name, (offset, size) in fields.items():
                f.seek(offset)
                data[name] = f.read(size)
        return decode_sample(key, data, self.lazy_frames)


def shard_paths(root: str | os.PathLike) -> list[str]:
    """Sorted *.tar shard files under a prepared folder (partial shards are not listed)."""
    root = Path(root)
    if not root.is_dir():
        raise InvalidInputError(f"{root} is not a folder; pass the --out folder of emo-prepare")
    return sorted(str(p) for p in root.rglob("*.tar"))
