"""torch.compile for the denoising UNet: the whole forward as one graph.

The UNet has no data-dependent Python control flow (reference rows are a slice by a Python int, timesteps
reach it as a device tensor, conditions are read by attribute), so `fullgraph=True` holds: a graph break is an
error here, not a silent slowdown. Shapes are static (`dynamic=False`): a clip or window always has the same
size, so one compilation serves a whole video; another latent size or batch compiles once more.

Compiling costs time on the first step (measured in bench/step_speed.py) and pays back over the steps of
every clip. ReferenceNet runs once per video (and once per clip for motion frames) and stays eager.
"""
from __future__ import annotations

import logging

import torch

from .errors import InvalidInputError

log = logging.getLogger(__name__)

COMPILE_MODES = ("off", "default", "max-autotune-no-cudagraphs")


def compile_unet(net, mode: str = "default", backend: str = "inductor") -> None:
    """Replace `net.denoising_unet.forward` by its compiled form (in place; `uncompile_unet` undoes it).

    `mode`: "off" does nothing; "default" or "max-autotune-no-cudagraphs" (torch.compile's modes; CUDA graphs
    are left out because the sampler's conditions change between clips). `backend`: torch.compile's, e.g.
    "aot_eager" in tests that check tracing without waiting for code generation."""
    if mode not in COMPILE_MODES:
        raise InvalidInputError(f"unknown compile mode '{mode}'; choose one of {list(COMPILE_MODES)}")
    if mode == "off" or is_compiled(net):
        return
    unet = net.denoising_unet
    unet._emo_eager_forward = unet.forward
    options = {} if backend != "inductor" else {"mode": mode}
    unet.forward = torch.compile(unet._emo_eager_forward, fullgraph=True, dynamic=False, backend=backend, **options)
    log.info("denoising UNet compiled (torch.compile %s, %s, fullgraph): the first step of each new shape "
             "compiles, later steps reuse it", backend, mode)


def uncompile_unet(net) -> None:
    unet = net.denoising_unet
    if is_compiled(net):
        unet.forward = unet._emo_eager_forward
        del unet._emo_eager_forward


def is_compiled(net) -> bool:
    return hasattr(net.denoising_unet, "_emo_eager_forward")
