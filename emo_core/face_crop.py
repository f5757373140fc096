"""The model-size square around the face of any image (any size or aspect, RGB or RGBA), placed as the
checkpoint family was trained, and where it came from, so the animation can be pasted back (`paste_back`).

Placement (`FAMILY_EXPAND`): a square of side `expand_ratio` x the longer side of the detector's face box,
centred on the box.
- Hallo, Hallo2 (and EMO, whose training crops were never published: Hallo's convention): 1.65. Hallo's
  README asks for the same input for inference and for its training videos: "cropped into squares", the face
  "making up 50%-70% of the image"; at 1.65 the face box is 61% of the side.
- EchoMimic v1: 2.0. Its inference script (infer_audio2vid.py) pads the detected face box by half its size on
  every side (facecrop_dilation_ratio 0.5), squares it about its centre and resizes it to 512.

Where the square runs off the image it is filled by `padding`: "reflect" (mirrored about the edge pixel, as
numpy's "reflect") or "edge" (the edge pixel repeated). Paste Back discards that part again.
Resampling: bicubic with antialiasing (the square is shrunk for most photos), clamped to 0..1.
"""
from __future__ import annotations

import logging
import math
import os
from dataclasses import dataclass
from typing import Sequence

import torch
import torch.nn.functional as F

from .errors import InvalidInputError
from .face import FaceBox, mask_boxes, to_uint8_frames
from .finite import IMAGE_FIX, require_finite

log = logging.getLogger(__name__)

PADDINGS = ("reflect", "edge")
DEFAULT_EXPAND = 1.65
FAMILY_EXPAND = {"emo": 1.65, "hallo": 1.65, "hallo2": 1.65, "echomimic": 2.0}
MIN_SIZE, MAX_SIZE = 64, 4096


def family_expand_ratio(family: str | None) -> float:
    """The crop's expand ratio a checkpoint family was trained with (DEFAULT_EXPAND for an unknown one)."""
    return FAMILY_EXPAND.get(family or "", DEFAULT_EXPAND)


@dataclass(frozen=True)
class CropSettings:
    """size: the square's side in pixels (a multiple of 8). expand_ratio: its side over the face box's longer
    side. padding: one of PADDINGS. face_index: -1 for the largest face, else the index left to right."""
    size: int = 512
    expand_ratio: float = DEFAULT_EXPAND
    padding: str = "reflect"
    face_index: int = -1

    def validate(self) -> CropSettings:
        if not (MIN_SIZE <= self.size <= MAX_SIZE and self.size % 8 == 0):
            raise InvalidInputError(f"size must be a multiple of 8 from {MIN_SIZE} to {MAX_SIZE}, got {self.size}; "
                                    "use 512 for Hallo and EchoMimic")
        if not 1.0 <= self.expand_ratio <= 8.0:
            raise InvalidInputError(f"expand_ratio must be from 1.0 (the face box alone) to 8.0, got "
                                    f"{self.expand_ratio}")
        if self.padding not in PADDINGS:
            raise InvalidInputError(f"padding must be one of {PADDINGS}, got {self.padding!r}")
        if self.face_index < -1:
            raise InvalidInputError(f"face_index must be -1 (the largest face) or 0, 1, ... (left to right), "
                                    f"got {self.face_index}")
        return self


@dataclass(frozen=True)
class FaceCrop:
    """Where a square crop lies in its image. left, top: the square's top-left pixel (negative, or side past
    the image, where it runs off); side: its side in image pixels; size: the crop's side in pixels (the model's
    frame size); image_size: (height, width); padding: how the part outside the image was filled;
    face_box: (x0, y0, x1, y1) of the face it was placed on; faces: how many faces were found; face_index: the
    one used, left to right; source: "detector" or "mask"."""
    left: int
    top: int
    side: int
    size: int
    image_size: tuple[int, int]
    padding: str = "reflect"
    face_box: tuple[float, float, float, float] = (0.0, 0.0, 0.0, 0.0)
    faces: int = 1
    face_index: int = 0
    source: str = "detector"

    @property
    def scale(self) -> float:
        """Crop pixels per image pixel."""
        return self.size / self.side

    @property
    def box(self) -> tuple[int, int, int, int]:
        """(x0, y0, x1, y1), end exclusive, in image pixels; may reach outside the image."""
        return self.left, self.top, self.left + self.side, self.top + self.side

    @property
    def visible(self) -> tuple[int, int, int, int]:
        """The part of `box` inside the image."""
        height, width = self.image_size
        return max(0, self.left), max(0, self.top), min(width, self.left + self.side), min(height, self.top + self.side)

    @property
    def runs_off(self) -> bool:
        return self.visible != self.box


def plan_crop(face: FaceBox | Sequence[float], image_size: tuple[int, int], size: int, expand_ratio: float,
              padding: str = "reflect", **about) -> FaceCrop:
    """The square of side expand_ratio x the face box's longer side, centred on it (whole pixels)."""
    x0, y0, x1, y1 = (float(v) for v in tuple(face)[:4])
    if not (x1 > x0 and y1 > y0):
        raise InvalidInputError(f"face box {(x0, y0, x1, y1)} is empty")
    side = max(1, round(expand_ratio * max(x1 - x0, y1 - y0)))
    left, top = math.floor((x0 + x1 - side) / 2 + 0.5), math.floor((y0 + y1 - side) / 2 + 0.5)
    crop = FaceCrop(left, top, side, size, tuple(image_size), padding, (x0, y0, x1, y1), **about)
    height, width = image_size
    if crop.visible[2] <= crop.visible[0] or crop.visible[3] <= crop.visible[1]:
        raise InvalidInputError(f"face box {(x0, y0, x1, y1)} lies outside the {width}x{height} image")
    return crop


def _source_index(start: int, count: int, length: int, padding: str) -> torch.Tensor:
    """Image rows (or columns) for positions start .. start + count - 1, mapped into 0 .. length - 1."""
    idx = torch.arange(start, start + count)
    if padding == "edge" or length == 1:
        return idx.clamp(0, length - 1)
    period = 2 * (length - 1)  # reflect: ... 2 1 | 0 1 2 ... n-1 | n-2 ..., repeated as far as needed
    idx = idx.remainder(period)
    return torch.where(idx < length, idx, period - idx)


def resize_square(x: torch.Tensor, side: int) -> torch.Tensor:
    """(N, C, h, w) float -> (N, C, side, side): bicubic, antialiased when shrinking, clamped to 0..1."""
    if x.shape[-2:] == (side, side):
        return x.clamp(0, 1)
    return F.interpolate(x, size=(side, side), mode="bicubic", antialias=True, align_corners=False).clamp(0, 1)


def crop_image(image: torch.Tensor, crop: FaceCrop) -> torch.Tensor:
    """One (H, W, C) float image (C >= 3; extra channels such as alpha are dropped) -> (size, size, 3)."""
    rows = _source_index(crop.top, crop.side, crop.image_size[0], crop.padding)
    cols = _source_index(crop.left, crop.side, crop.image_size[1], crop.padding)
    square = image[:, :, :3].float().index_select(0, rows).index_select(1, cols)
    return resize_square(square.permute(2, 0, 1)[None], crop.size)[0].permute(1, 2, 0)


def crop_mask(mask: torch.Tensor, crop: FaceCrop) -> torch.Tensor:
    """One (H, W) mask -> (size, size), 0 outside the image (no face there), bilinear."""
    height, width = crop.image_size
    x0, y0, x1, y1 = crop.visible
    square = torch.zeros(crop.side, crop.side)
    square[y0 - crop.top:y1 - crop.top, x0 - crop.left:x1 - crop.left] = mask[y0:y1, x0:x1].float()
    if crop.side == crop.size:
        return square
    out = F.interpolate(square[None, None], size=(crop.size, crop.size), mode="bilinear", antialias=True)
    return out[0, 0].clamp(0, 1)


def box_mask(crop: FaceCrop) -> torch.Tensor:
    """(size, size) float32: 1 on the face box in crop pixels, for EMO Face Locator's face_mask."""
    s = crop.scale
    x0, y0, x1, y1 = crop.face_box
    out = torch.zeros(crop.size, crop.size)
    out[max(0, math.floor((y0 - crop.top) * s)):math.ceil((y1 - crop.top) * s),
        max(0, math.floor((x0 - crop.left) * s)):math.ceil((x1 - crop.left) * s)] = 1.0
    return out


@dataclass(frozen=True)
class CropResult:
    """image: (B, size, size, 3) 0..1, every input frame cut the same way; crop: where; mask: (B, size, size),
    the drawn mask cropped, or the face box, for EMO Face Locator; faces: every face box found, left to right
    (the drawn mask's box alone)."""
    image: torch.Tensor
    crop: FaceCrop
    mask: torch.Tensor
    faces: tuple = ()


def check_image(images: torch.Tensor) -> torch.Tensor:
    """A ComfyUI IMAGE (B, H, W, 3 or 4) with finite values, or InvalidInputError."""
    if not isinstance(images, torch.Tensor) or images.dim() != 4 or images.shape[-1] not in (3, 4) \
            or images.shape[0] < 1 or min(images.shape[1:3]) < 1:
        raise InvalidInputError(f"the image must be a ComfyUI IMAGE [batch, height, width, 3 or 4], got "
                                f"{tuple(getattr(images, 'shape', ())) or type(images).__name__}")
    return require_finite(images, "the image", IMAGE_FIX)


def choose_face(faces: Sequence[FaceBox], index: int) -> int:
    """Index (into faces sorted left to right) of the largest face for -1, else `index`, checked."""
    if index == -1:
        return max(range(len(faces)), key=lambda i: faces[i].area)
    if index >= len(faces):
        raise InvalidInputError(f"face_index is {index} but {len(faces)} face(s) were found (0 to {len(faces) - 1}, "
                                "left to right); choose one of those, or -1 for the largest")
    return index


def face_crop(images: torch.Tensor, settings: CropSettings, user_mask: torch.Tensor | None = None,
              model_dirs: Sequence[str | os.PathLike] = ()) -> CropResult:
    """Find the face in the first frame (or take the box of the drawn mask's first frame: MASK (H, W) or
    (frames, H, W)) and cut every frame's square around it."""
    from .face_search import find_faces

    settings.validate()
    images = check_image(images)
    count, height, width = images.shape[:3]
    if user_mask is not None:
        user_mask = user_mask[:1] if user_mask.dim() == 3 else user_mask[None]
        faces, source = [b for b in mask_boxes(user_mask, height, width) if b is not None], "mask"
    else:
        faces, source = find_faces(to_uint8_frames(images[:1, :, :, :3])[0], model_dirs), "detector"
    index = choose_face(faces, settings.face_index if source == "detector" else -1)
    crop = plan_crop(faces[index], (height, width), settings.size, settings.expand_ratio, settings.padding,
                     faces=len(faces), face_index=index, source=source)
    log.info("face crop of %dx%d (%s, face %d of %d left to right%s): square %s, side %d px -> %d px (scale %.3f)%s",
             width, height, source, index, len(faces), ", the largest" if settings.face_index == -1 else "",
             crop.box, crop.side, crop.size, crop.scale, f", {crop.padding} padding" if crop.runs_off else "")
    out = torch.stack([crop_image(frame, crop) for frame in images])
    mask = crop_mask(user_mask[0], crop) if user_mask is not None else box_mask(crop)
    return CropResult(out, crop, mask.expand(count, -1, -1).contiguous(), tuple(faces))
