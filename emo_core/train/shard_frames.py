"""How a shard stores a sample's frames and face masks: per-frame JPEG or PNG members, or raw arrays.

Frames are the bulk of a shard: raw uint8 they take L x S x S x 3 bytes (37.7 MB for 48 frames at 512 px).
Encoded, each frame is its own member `<key>.frames.NNNN.jpg` (or `.png`), the layout webdataset data sets
use, so webdataset's own decoders read them by extension and the key stays everything before the first
dot. Face masks are boxes: one 1-bit PNG `<key>.face_masks.png` of the L masks stacked vertically
((L x S, S)) holds them in a few hundred bytes, losslessly. `raw` keeps the first layout (`frames.npy`,
`face_masks.npy`), which readers always accept, so shards written before encoding existed still read.
"""
from __future__ import annotations

import io
import re
from dataclasses import dataclass

import numpy as np

from ..errors import CorruptFileError, InvalidInputError

FRAME_FORMATS = ("jpeg", "png", "raw")
EXTENSIONS = {"jpeg": "jpg", "png": "png"}
MASKS_PNG = "face_masks.png"
# 4:4:4 chroma: 4:2:0 halves the colour resolution of lips and teeth, the detail the audio layers learn;
# fixed encoder options keep shards byte-identical across workers and runs
JPEG_OPTIONS = {"subsampling": 0, "optimize": False, "progressive": False}
# zlib level 1: on a 512 px portrait 11 % larger than the default 6 and 3.6x faster (0.19 s against 0.70 s a
# frame on a shared CPU), and level 9 saves only 1.5 % more than 6 for 2.6x its time
PNG_LEVEL = 1
_FRAME_MEMBER = re.compile(r"^frames\.(\d+)\.(jpg|png)$")


@dataclass(frozen=True)
class FrameCodec:
    """kind: "jpeg" (lossy, smallest), "png" (lossless) or "raw" (uint8 .npy, the first layout).
    jpeg_quality: libjpeg quality 1..100, used by "jpeg" only."""
    kind: str = "jpeg"
    jpeg_quality: int = 95

    def validate(self) -> FrameCodec:
        if self.kind not in FRAME_FORMATS:
            raise InvalidInputError(f"frames must be one of {FRAME_FORMATS}, got {self.kind!r}")
        if not (isinstance(self.jpeg_quality, int) and 1 <= self.jpeg_quality <= 100):
            raise InvalidInputError(f"jpeg_quality must be an integer 1..100, got {self.jpeg_quality!r}")
        return self

    def meta(self) -> dict:
        """What a sample's meta.json records about its storage."""
        return {"frame_format": self.kind, **({"jpeg_quality": self.jpeg_quality} if self.kind == "jpeg" else {})}


def npy(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, np.ascontiguousarray(array), allow_pickle=False)
    return buf.getvalue()


def load_npy(data: bytes) -> np.ndarray:
    return np.load(io.BytesIO(data), allow_pickle=False)


def encode_frames(frames: np.ndarray, codec: FrameCodec) -> dict[str, bytes]:
    """(L, S, S, 3) uint8 RGB -> {field: bytes}: `frames.npy`, or one `frames.NNNN.<ext>` per frame."""
    from PIL import Image

    if codec.kind == "raw":
        return {"frames.npy": npy(frames)}
    ext, out = EXTENSIONS[codec.kind], {}
    for number, frame in enumerate(frames):
        buf = io.BytesIO()
        image = Image.fromarray(np.ascontiguousarray(frame), "RGB")
        if codec.kind == "jpeg":
            image.save(buf, format="JPEG", quality=codec.jpeg_quality, **JPEG_OPTIONS)
        else:
            image.save(buf, format="PNG", compress_level=PNG_LEVEL)
        out[f"frames.{number:04d}.{ext}"] = buf.getvalue()
    return out


def encode_masks(masks: np.ndarray, codec: FrameCodec) -> dict[str, bytes]:
    """(L, S, S) uint8 0/1 -> {field: bytes}: `face_masks.npy` for raw, else one 1-bit PNG."""
    from PIL import Image

    if codec.kind == "raw":
        return {"face_masks.npy": npy(masks)}
    length, height, width = masks.shape
    buf = io.BytesIO()
    Image.fromarray(masks.reshape(length * height, width) > 0).save(buf, format="PNG", compress_level=PNG_LEVEL)
    return {MASKS_PNG: buf.getvalue()}


def frame_members(fields: dict[str, bytes]) -> list[str]:
    """The per-frame image fields of one sample, in frame order; CorruptFileError when numbers are missing."""
    found = sorted((int(m.group(1)), name) for name in fields if (m := _FRAME_MEMBER.match(name)))
    if [n for n, _ in found] != list(range(len(found))):
        raise CorruptFileError(f"frame members are numbered {[n for n, _ in found]}, not 0..{len(found) - 1}; "
                               "the shard is damaged, prepare it again")
    return [name for _, name in found]


def has_frames(fields: dict[str, bytes]) -> bool:
    return "frames.npy" in fields or any(_FRAME_MEMBER.match(name) for name in fields)


def has_masks(fields: dict[str, bytes]) -> bool:
    return "face_masks.npy" in fields or MASKS_PNG in fields


def decode_frames(fields: dict[str, bytes]) -> np.ndarray:
    """{field: bytes} -> (L, S, S, 3) uint8 RGB, from whichever layout the sample has."""
    if "frames.npy" in fields:
        return load_npy(fields["frames.npy"])
    return np.stack([decode_image(fields[name]) for name in frame_members(fields)])


def decode_image(data: bytes) -> np.ndarray:
    """One frame member -> (S, S, 3) uint8 RGB."""
    from PIL import Image

    with Image.open(io.BytesIO(data)) as image:
        return np.asarray(image.convert("RGB"))


class FrameStack:
    """A sample's (L, 3, S, S) float32 frames in [-1, 1], decoded when indexed: a training step reads the n + f
    frames it picks (2 in stage 1) of a segment's L, and precomputed latents need none. Supports what the trainer
    does with frames: `.shape`, `len()`, `[i]`, `[a:b]`, `[list of indices]`, and `.float()` (all of them).
    `preload(indices)` decodes those frames now and keeps them: a DataLoader worker does it for the frames the step
    will pick, so the training process only indexes decoded frames (and a pickled stack carries them)."""

    def __init__(self, fields: dict[str, bytes]):
        if "frames.npy" in fields:  # raw layout: one array, nothing to save by decoding less
            self._raw, self._members = load_npy(fields["frames.npy"]), []
            length, size = self._raw.shape[0], self._raw.shape[1]
        else:
            self._raw, self._members = None, [fields[name] for name in frame_members(fields)]
            length, size = len(self._members), _image_size(self._members[0]) if self._members else 0
        self.shape = (length, 3, size, size)
        self._decoded: dict[int, np.ndarray] = {}

    def preload(self, indices) -> None:
        for i in indices:
            if self._raw is None and int(i) not in self._decoded:
                self._decoded[int(i)] = decode_image(self._members[int(i)])

    def _image(self, i: int) -> np.ndarray:
        found = self._decoded.get(i if i >= 0 else i + self.shape[0])
        return found if found is not None else decode_image(self._members[i])

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, index):
        if isinstance(index, int):
            return self[[index]][0]
        picks = range(self.shape[0])[index] if isinstance(index, slice) else [int(i) for i in index]
        if self._raw is not None:
            uint8 = self._raw[list(picks)]
        else:
            uint8 = np.stack([self._image(i) for i in picks]) if len(picks) else \
                np.zeros((0, self.shape[2], self.shape[3], 3), np.uint8)
        return to_unit_range(uint8)

    def float(self):
        return self[:]


def _image_size(data: bytes) -> int:
    from PIL import Image

    with Image.open(io.BytesIO(data)) as image:  # reads the header only
        return image.size[1]


def to_unit_range(frames: np.ndarray):
    """(N, S, S, 3) uint8 -> (N, 3, S, S) float32 in [-1, 1], contiguous."""
    import torch

    return torch.from_numpy(np.ascontiguousarray(frames)).permute(0, 3, 1, 2).float().div_(127.5).sub_(1.0).contiguous()


def decode_masks(fields: dict[str, bytes]) -> np.ndarray:
    """{field: bytes} -> (L, S, S) uint8 0/1."""
    from PIL import Image

    if "face_masks.npy" in fields:
        return load_npy(fields["face_masks.npy"])
    with Image.open(io.BytesIO(fields[MASKS_PNG])) as image:
        stacked = np.asarray(image.convert("1"), dtype=np.uint8)
    height, width = stacked.shape
    if height % width:
        raise CorruptFileError(f"{MASKS_PNG} is {width}x{height}, not a stack of square masks; prepare the "
                               "shard again")
    return stacked.reshape(height // width, width, width)
