"""Per-frame context windows shared by audio and speed conditioning (EMO/Hallo: m = 2 frames each side)."""
from __future__ import annotations

import torch

from .errors import InvalidInputError


def window_indices(num_frames: int, m: int) -> torch.Tensor:
    """(num_frames, 2m+1) frame indices i+j for j = -m..m, clamped to [0, num_frames - 1]."""
    if num_frames < 1 or m < 0:
        raise InvalidInputError(f"need num_frames >= 1 and m >= 0, got {num_frames=}, {m=}")
    offsets = torch.arange(-m, m + 1)
    return (torch.arange(num_frames)[:, None] + offsets[None, :]).clamp(0, num_frames - 1)


def window_frames(features: torch.Tensor, m: int) -> torch.Tensor:
    """features: (frames, ...) -> (frames, 2m+1, ...), edges repeated (clamped), over the whole sequence."""
    return features[window_indices(features.shape[0], m)]
