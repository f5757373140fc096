"""Refusing NaN and infinite values at the boundaries, where they are still traceable to one input.

A single NaN in a portrait or latent spreads through every attention layer, and the video comes out all
NaN (black) with no error; refused at the boundary, the message names the input that carried it.
"""
from __future__ import annotations

import torch

from .errors import InvalidInputError


def require_finite(x: torch.Tensor, what: str, fix: str) -> torch.Tensor:
    """`x` unchanged, or InvalidInputError naming `what`, how many values are NaN / infinite, and `fix`."""
    if not isinstance(x, torch.Tensor) or not x.is_floating_point():
        return x
    finite = torch.isfinite(x)
    if bool(finite.all()):
        return x
    nan = int(torch.isnan(x).sum())
    inf = int((~finite).sum()) - nan
    raise InvalidInputError(f"{what} holds non-finite values ({nan} NaN, {inf} infinite of {x.numel()}); {fix}")


IMAGE_FIX = ("the node that made it produced broken pixels (e.g. a VAE decoding in fp16 overflowed): rerun it "
             "in fp32 or load the image from a file")
LATENT_FIX = "the VAE encode overflowed or the latent is broken: run the VAE in fp32 (ComfyUI: --fp32-vae)"
