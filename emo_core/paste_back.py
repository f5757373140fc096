"""Animated square crops back into the full image, one frame at a time (`face_crop` made the crops).

Per frame, inside the crop's square (the rest of the image is never touched):

    out = original + w * (up(frame) - up(crop) - (1 - g) * (original - up(crop)))

up(): the crop-sized picture resized to the square's side in image pixels (`face_crop.resize_square`); crop:
the original's own crop, what the model was given as reference. w: the feather, 1 inside, falling to 0 over
`feather` x side towards each edge of the square that lies inside the image (an edge that runs off the image
has nothing to blend with). g: 1 where the animation equals the reference crop, 0 where it moved by
MOTION_FULL or more (mean absolute difference over the colours, box-blurred over GATE_RADIUS of the crop's
side). With keep_detail, where nothing moves (g = 1) the result is the original's own pixels, fine detail
included, and where the head moves (g = 0) it is the animation, as a plain paste would give; without it
(g = 0 everywhere) the whole square is the upscaled animation. An unchanged crop therefore returns the
original exactly with keep_detail, and within what 8-bit rounding of the frames leaves (MOTION_FLOOR counts as
still).

Colour matching (optional) shifts each frame's colours by the per-channel median difference between the
reference crop and the frame over the seam band (the feather band, at least SEAM_MIN of the side, inside
the image), so a model's slight colour drift does not show as a square.

Memory: the reference crop, its upscale and the detail term of one original frame are kept (a still: once);
each output frame is written in place into the output (`paste_frames(out=...)`) or handed over as it is made.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .errors import InvalidInputError
from .face_crop import FaceCrop, crop_image, resize_square
from .finite import IMAGE_FIX, require_finite

log = logging.getLogger(__name__)

MOTION_FLOOR = 1.0 / 255  # differences up to one 8-bit step count as no motion (frames saved and loaded back)
MOTION_FULL = 0.1  # a mean difference this large is motion: the animation replaces the original there
GATE_RADIUS = 1 / 64  # box blur of the motion map, as a fraction of the crop side (8 px at 512)
SEAM_MIN = 1 / 32  # the colour-matching band is at least this fraction of the side


@dataclass(frozen=True)
class PasteSettings:
    """feather: the soft edge's width as a fraction of the square's side (0: a hard edge); keep_detail: keep
    the original's pixels where the animation does not move; match_colors: see the module docstring."""
    feather: float = 0.1
    keep_detail: bool = True
    match_colors: bool = False

    def validate(self) -> PasteSettings:
        if not 0.0 <= self.feather <= 0.5:
            raise InvalidInputError(f"feather must be from 0 (a hard edge) to 0.5 (half the square), got "
                                    f"{self.feather}")
        return self


def _ramp(length: int, start_inside: bool, end_inside: bool, width: float) -> torch.Tensor:
    """(length,) weights along one side of the square: smoothstep from 0 at an edge inside the image to 1 at
    `width` pixels from it; 1 throughout next to an edge that runs off the image."""
    pos = torch.arange(length, dtype=torch.float32) + 0.5
    out = torch.ones(length)
    if width <= 0:
        return out
    for inside, dist in ((start_inside, pos), (end_inside, length - pos)):
        if inside:
            t = (dist / width).clamp(0, 1)
            out = out * t * t * (3 - 2 * t)
    return out


def feather_weights(crop: FaceCrop, feather: float) -> torch.Tensor:
    """(vh, vw) weights over the visible part of the square (`crop.visible`)."""
    height, width = crop.image_size
    f = feather * crop.side
    wy = _ramp(crop.side, crop.top > 0, crop.top + crop.side < height, f)
    wx = _ramp(crop.side, crop.left > 0, crop.left + crop.side < width, f)
    x0, y0, x1, y1 = crop.visible
    return wy[y0 - crop.top:y1 - crop.top, None] * wx[None, x0 - crop.left:x1 - crop.left]


def seam_band(crop: FaceCrop, feather: float) -> torch.Tensor:
    """(size, size) bool: the crop pixels within the seam band of an inside edge and inside the image (all the
    visible pixels when every edge runs off)."""
    s, n = crop.scale, crop.size
    width = max(feather, SEAM_MIN) * n
    x0, y0, x1, y1 = ((v - o) * s for v, o in zip(crop.visible, (crop.left, crop.top) * 2))
    pos = torch.arange(n, dtype=torch.float32) + 0.5
    vis = ((pos >= y0) & (pos <= y1))[:, None] & ((pos >= x0) & (pos <= x1))[None, :]
    height, width_img = crop.image_size
    near = torch.zeros(n, n, dtype=torch.bool)
    if crop.top > 0:
        near[pos < width, :] = True
    if crop.top + crop.side < height:
        near[pos > n - width, :] = True
    if crop.left > 0:
        near[:, pos < width] = True
    if crop.left + crop.side < width_img:
        near[:, pos > n - width] = True
    band = vis & near
    return band if band.any() else vis


class Paster:
    """Pastes animated crops (size, size, 3) into full frames of `original` ((B, H, W, C) 0..1, C >= 3, the
    image the crop was cut from: one still, or one frame per animated frame)."""

    def __init__(self, original: torch.Tensor, crop: FaceCrop, settings: PasteSettings = PasteSettings()):
        settings.validate()
        if not isinstance(original, torch.Tensor) or original.dim() != 4 or original.shape[-1] < 3:
            raise InvalidInputError(f"the original image must be a ComfyUI IMAGE [batch, height, width, 3], got "
                                    f"{tuple(getattr(original, 'shape', ())) or type(original).__name__}")
        if tuple(original.shape[1:3]) != tuple(crop.image_size):
            raise InvalidInputError(
                f"the original image is {original.shape[2]}x{original.shape[1]} but the crop was cut from a "
                f"{crop.image_size[1]}x{crop.image_size[0]} image; connect the image given to EMO Face Crop")
        self.original = require_finite(original, "the original image", IMAGE_FIX)
        self.crop, self.settings = crop, settings
        self.weights = feather_weights(crop, settings.feather)
        self.band = seam_band(crop, settings.feather) if settings.match_colors else None
        self._cached: tuple[int, tuple] | None = None

    def _reference(self, index: int) -> tuple:
        """(original frame (H, W, 3), reference crop (3, n, n), its upscale and the detail, (3, vh, vw))."""
        if self._cached is not None and self._cached[0] == index:
            return self._cached[1]
        frame = self.original[index, :, :, :3].float()
        reference = crop_image(frame, self.crop).permute(2, 0, 1)
        up = self._upscale(reference)
        x0, y0, x1, y1 = self.crop.visible
        detail = frame[y0:y1, x0:x1].permute(2, 0, 1) - up
        self._cached = (index, (frame, reference, up, detail))
        return self._cached[1]

    def _upscale(self, picture: torch.Tensor) -> torch.Tensor:
        """(C, n, n) crop pixels -> (C, vh, vw): the visible part of the square in image pixels."""
        x0, y0, x1, y1 = self.crop.visible
        up = resize_square(picture[None], self.crop.side)[0]
        return up[:, y0 - self.crop.top:y1 - self.crop.top, x0 - self.crop.left:x1 - self.crop.left]

    def _still(self, frame: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
        """g of the module docstring, (1, vh, vw)."""
        moved = (frame - reference).abs().mean(0, keepdim=True)[None]
        radius = max(1, round(GATE_RADIUS * self.crop.size))
        for kernel, pad in (((1, 2 * radius + 1), (0, radius)), ((2 * radius + 1, 1), (radius, 0))):  # separable
            moved = F.avg_pool2d(moved, kernel, stride=1, padding=pad, count_include_pad=False)
        still = ((MOTION_FULL - moved) / (MOTION_FULL - MOTION_FLOOR)).clamp(0, 1)
        up = self._upscale(still[0])
        return up.masked_fill_(up > 1 - 1e-6, 1.0)  # exactly 1 where nothing moved

    def paste_into(self, out: torch.Tensor, frame: torch.Tensor, index: int) -> torch.Tensor:
        """Write the full frame for `frame` ((size, size, 3) 0..1) into `out` ((H, W, 3)), using original frame
        `index`; returns out."""
        original, reference, up_ref, detail = self._reference(index)
        anim = frame[:, :, :3].float().permute(2, 0, 1)
        if self.band is not None:
            diff = (reference - anim)[:, self.band]
            anim = anim + diff.median(dim=1).values[:, None, None]
        delta = self._upscale(anim) - up_ref
        if self.settings.keep_detail:
            delta = delta + (self._still(anim, reference) - 1) * detail
        else:
            delta = delta - detail
        out.copy_(original)
        x0, y0, x1, y1 = self.crop.visible
        region = out[y0:y1, x0:x1]
        region.add_((self.weights * delta).permute(1, 2, 0)).clamp_(0, 1)
        return out

    def check_frames(self, frames: torch.Tensor, start: int, total: int) -> None:
        """Frames (N, size, size, 3) starting at `start` of a `total`-frame video fit this crop and original."""
        n = self.crop.size
        if not isinstance(frames, torch.Tensor) or frames.dim() != 4 or frames.shape[-1] < 3 \
                or tuple(frames.shape[1:3]) != (n, n):
            raise InvalidInputError(
                f"the animated frames are {tuple(getattr(frames, 'shape', ()))} but EMO Face Crop made {n}x{n} "
                f"crops; connect the frames animated from this crop (VAE Decode of EMO Sampler's output)")
        if self.original.shape[0] not in (1, total):
            raise InvalidInputError(
                f"the original image has {self.original.shape[0]} frames but the animation has {total}; give one "
                "image, or one original frame per animated frame")
        require_finite(frames, "the animated frames", IMAGE_FIX)

    def index_of(self, frame: int) -> int:
        return 0 if self.original.shape[0] == 1 else frame


def paste_frames(original: torch.Tensor, frames: torch.Tensor, crop: FaceCrop,
                 settings: PasteSettings = PasteSettings(), *, check_cancel=lambda: None,
                 on_frame=lambda done, total: None) -> torch.Tensor:
    """(N, size, size, 3) animated crops -> (N, H, W, 3) full frames, allocated once and filled frame by frame.
    `check_cancel` runs before every frame and may raise."""
    paster = Paster(original, crop, settings)
    total = frames.shape[0] if isinstance(frames, torch.Tensor) and frames.dim() == 4 else 0
    paster.check_frames(frames, 0, total)
    height, width = crop.image_size
    out = torch.empty(total, height, width, 3, dtype=torch.float32)
    for i in range(total):
        check_cancel()
        paster.paste_into(out[i], frames[i], paster.index_of(i))
        on_frame(i + 1, total)
    log.info("pasted %d frame(s) of %dx%d back into %dx%d (feather %.2f, keep_detail %s, match_colors %s)",
             total, crop.size, crop.size, width, height, settings.feather, settings.keep_detail,
             settings.match_colors)
    return out


def paste_stream(paster: Paster, total: int):
    """A function decoded chunk (n, size, size, 3) -> full frames (n, H, W, 3), for a streaming writer that
    hands over the video's `total` frames in order."""
    done = [0]

    def paste(chunk: torch.Tensor) -> torch.Tensor:
        paster.check_frames(chunk, done[0], total)
        height, width = paster.crop.image_size
        out = torch.empty(chunk.shape[0], height, width, 3, dtype=torch.float32)
        for i in range(chunk.shape[0]):
            paster.paste_into(out[i], chunk[i], paster.index_of(done[0] + i))
        done[0] += chunk.shape[0]
        return out

    return paste
