"""Hallo2's motion-frame pixel drop (Hallo2 scripts/inference_long.py, `use_mask` / `mask_rate` in
configs/inference/long.yaml).

Before the motion frames are VAE-encoded (on the first clip: the reference copies that stand in for them),
Hallo2 multiplies their [-1, 1] pixels by a keep-mask: `torch.rand(h, w) > mask_rate` per pixel, the same
for every channel and motion frame, OR-ed with the face-region mask so the face box is never dropped. A
dropped pixel is 0 in [-1, 1], i.e. 0.5 in the 0..1 images our VAE codec takes. No noise is added at
inference. Hallo2 draws the mask from its one global generator; here each clip's mask comes from a
generator seeded with (seed, clip) on a stream of its own, so the clip noise is the same as without it.
"""
from __future__ import annotations

import torch

from .errors import InvalidInputError
from .plan import clip_seed

MASK_STREAM = 1  # clip_seed stream of the keep-mask (stream 0 is the clip's noise)
DROPPED = 0.5  # 0 in the VAE's [-1, 1] pixel range


def keep_mask(seed: int, clip: int, size: tuple[int, int], rate: float) -> torch.Tensor:
    """(H, W) bool, True where a pixel is kept: Bernoulli(1 - rate) per pixel, depending only on (seed, clip)."""
    gen = torch.Generator().manual_seed(clip_seed(seed, clip, MASK_STREAM))
    return torch.rand(size, generator=gen) > rate


def drop_pixels(images: torch.Tensor, keep: torch.Tensor, face_mask: torch.Tensor | None) -> torch.Tensor:
    """images (N, H, W, C) 0..1 with dropped pixels set to 0.5 (0 in [-1, 1]).

    keep: (H, W) bool, broadcast over frames and channels. face_mask: (c, H, W) face-locator input (nonzero in
    the face box; c = 1 or C) or None: its pixels are kept whatever `keep` says, per channel as Hallo2 ORs them.
    """
    size = tuple(images.shape[1:3])
    if keep.dim() != 2 or tuple(keep.shape) != size:
        raise InvalidInputError(f"the pixel-drop mask must be (height, width) = {size}, got {tuple(keep.shape)}")
    keep = keep.to(images.device, torch.bool).unsqueeze(-1)  # (H, W, 1)
    if face_mask is not None:
        if tuple(face_mask.shape[-2:]) != size:
            raise InvalidInputError(f"the face mask is {tuple(face_mask.shape[-2:])} but the motion frames are "
                                    f"{size} pixels; compute the face region on the same portrait")
        keep = keep | (face_mask.to(images.device).permute(1, 2, 0) != 0)  # (H, W, c)
    return torch.where(keep, images, torch.full((), DROPPED, dtype=images.dtype, device=images.device))
