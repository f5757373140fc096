"""Sharded training (`sharding = "fsdp"`): torch's FSDP2 (`torch.distributed.fsdp.fully_shard`) over every process.

Each process keeps 1/N of the fp32 weights, gradients, AdamW moments and EMA shadows; a backbone block's full weights
exist only while it runs (all-gathered before its forward and again for its backward), ReferenceNet's and the
encoders' for the step. Accelerate still provides the
process group, gradient accumulation, the loss reduce, RNG and scheduler state, but it never wraps the model (its
own FSDP plugin does not run on the CPU, and a DDP wrapper around sharded parameters would all-reduce twice).

Checkpoints: model, optimizer and EMA go through torch.distributed.checkpoint into `<step folder>/sharded`, each
rank writing its own shards; the native `.safetensors` files are written by rank 0 from the gathered full state,
in the same layout as an unsharded run's.
"""
from __future__ import annotations

import functools
import logging
import os
import warnings

import torch
from torch import nn

from ..checkpoint import save_native
from ..errors import InvalidConfigError
from ..network import EmoNet

log = logging.getLogger(__name__)

SHARDED = "sharded"  # subfolder of a checkpoint folder holding the torch.distributed.checkpoint files
DTYPES = {"no": None, "bf16": torch.bfloat16}


def shard_blocks(unet: nn.Module) -> list[nn.Module]:
    """The units FSDP gathers one at a time: a UNet's down, mid and up blocks. They are the units gradient
    checkpointing recomputes, so a recomputed block is gathered once more, not once per layer; the EMO preset's 9
    keep each all-gather large enough to use the link well while the largest one (a low-resolution up block)
    stays a small part of the network."""
    return [*unet.down_blocks, unet.mid_block, *unet.up_blocks]


def shard(model: nn.Module, mixed_precision: str, processes: int, device: torch.device) -> nn.Module:
    """Apply fully_shard to each block of the backbone of `model.net` (a DiffusionObjective), then to `model`
    itself (ReferenceNet, the encoders, conv_in/out and time embeddings: gathered once per step). Returns `model`,
    now holding DTensor parameters: build the optimizer and EMA from its parameters after this call."""
    if processes < 2:
        raise InvalidConfigError("training config field sharding='fsdp' needs 2 or more processes (torchrun or "
                                 f"accelerate launch), got {processes}; set sharding = \"none\" for one process")
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    mesh = init_device_mesh(device.type, (processes,))
    dtype = DTYPES[mixed_precision]
    # bf16: FSDP gathers bf16 copies of the fp32 shards and reduces gradients in fp32; the dtypes of activations
    # are left to the autocast around the forward (below), not cast at each block's entry, so the forward is the
    # one an unsharded bf16 run computes (checked: same first-step loss, bit for bit).
    policy = MixedPrecisionPolicy(param_dtype=dtype, reduce_dtype=torch.float32, cast_forward_inputs=False)
    # fully_shard moves each module to the mesh's device as it shards it: no full copy on the GPU first.
    for block in shard_blocks(model.net.denoising_unet):
        fully_shard(block, mesh=mesh, mp_policy=policy)
    # ReferenceNet stays in the root's group (gathered whole for the step, sharded at rest like everything else):
    # its features leave its blocks through the recorder, not as block outputs where FSDP hooks the backward
    # all-gather, and with its blocks sharded on their own (even kept gathered, reshard_after_forward=False) the
    # stage-1 loss of the first step moved (1.07663 vs 1.07759 unsharded); gathered with the root it is exact.
    fully_shard(model, mesh=mesh, mp_policy=policy)
    if dtype is not None:
        _autocast_forward(model, device.type, dtype)
    # FSDP warns for every block that returns a view, in case the caller adds to it in place (that would skip the
    # block's backward all-gather). Neither UNet's forward does; the equality test with an unsharded run would
    # fail if one did.
    warnings.filterwarnings("ignore", message=r"FSDP2-wrapped module \(\w+\) returned a view tensor")
    log.info("FSDP: %d backbone blocks and the root sharded over %d processes (%s compute, fp32 gradient reduce)",
             len(shard_blocks(model.net.denoising_unet)), processes, dtype or "fp32")
    return model


def _autocast_forward(model: nn.Module, device_type: str, dtype: torch.dtype) -> None:
    """The model's forward under autocast, as Accelerate runs a prepared model: fp32 latents meeting gathered bf16
    weights, GroupNorm and the loss then run as in an unsharded bf16 run (the loss target, the noise, stays fp32).
    FSDP's hooks sit around forward, so the root still gathers before the autocast region starts."""
    forward = model.forward

    @functools.wraps(forward)
    def cast(*args, **kwargs):
        with torch.autocast(device_type, dtype=dtype):
            return forward(*args, **kwargs)
    model.forward = cast


@torch.no_grad()
def clip_grad_norm_(params: list[nn.Parameter], max_norm: float) -> torch.Tensor:
    """torch.nn.utils.clip_grad_norm_ for sharded gradients with one all-reduce: the squared norms of this rank's
    shards summed here, then over the ranks. (Through DTensor each tensor's norm is reduced on its own, one
    collective per tensor: 2.7 s per step for the 437 trained tensors of the tests' tiny network.)"""
    import torch.distributed as dist

    local = [p.grad.to_local() for p in params if p.grad is not None]
    squares = torch.stack([torch.linalg.vector_norm(g, dtype=torch.float32) for g in local]).square().sum()
    dist.all_reduce(squares)
    total = squares.sqrt()
    torch._foreach_mul_(local, (max_norm / (total + 1e-6)).clamp(max=1.0))
    return total


# --- checkpoints ------------------------------------------------------------------------------------------

def register_checkpointing(accelerator, model: nn.Module, optimizer, ema) -> None:
    """Make accelerator.save_state / load_state also save / load the sharded model, optimizer and EMA. Its hooks
    run on every process, which torch.distributed.checkpoint needs (each rank writes and reads its own shards)."""
    accelerator.register_save_state_pre_hook(lambda _models, _weights, folder: save(folder, model, optimizer, ema))
    accelerator.register_load_state_pre_hook(lambda _models, folder: load(folder, model, optimizer, ema))


def _state(model: nn.Module, optimizer, ema) -> dict:
    from torch.distributed.checkpoint.state_dict import get_state_dict

    weights, moments = get_state_dict(model, optimizer)
    state = {"model": weights, "optimizer": moments}
    if ema is not None:
        names = {id(p): n for n, p in model.named_parameters()}
        # A tensor, not an int: every rank then reads it back in place, like the shards.
        state["ema"] = {"updates": torch.tensor(ema.updates),
                        "shadow": {names[id(p)]: s for p, s in zip(ema.params, ema.shadow)}}
    return state


def save(folder: str, model: nn.Module, optimizer, ema) -> None:
    import torch.distributed.checkpoint as dcp

    path = os.path.join(folder, SHARDED)
    # overwrite: every rank writes into the one folder, so all but the first find it already there.
    dcp.save(_state(model, optimizer, ema), storage_writer=dcp.FileSystemWriter(path, overwrite=True))


def load(folder: str, model: nn.Module, optimizer, ema) -> None:
    """Read a checkpoint written by save() into the live model, optimizer and EMA shadows (in place)."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import set_state_dict

    path = os.path.join(folder, SHARDED)
    if not os.path.isdir(path):
        raise InvalidConfigError(f"checkpoint {folder} holds no '{SHARDED}' folder: it was written by a run with "
                                 "sharding = \"none\"; resume it with that setting")
    state = _state(model, optimizer, ema)
    dcp.load(state, checkpoint_id=path)
    set_state_dict(model, optimizer, model_state_dict=state["model"], optim_state_dict=state["optimizer"])
    if ema is not None:
        ema.updates = int(state["ema"]["updates"])


# --- the full network, gathered -----------------------------------------------------------------------------

def full_weights(model: nn.Module, ema=None) -> dict[str, torch.Tensor] | None:
    """The EmoNet state dict (fp32, CPU) gathered from every rank; with `ema`, its shadows in place of the trained
    tensors. A collective: every rank must call it. Rank 0 gets the dict, the others None."""
    import torch.distributed as dist
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    full = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    averaged = _full_ema(model, ema) if ema is not None else {}
    if dist.get_rank() != 0:
        return None
    return _plain_names({**full, **averaged})


def _full_ema(model: nn.Module, ema) -> dict[str, torch.Tensor]:
    """{parameter name: full EMA shadow on the CPU}, gathered one tensor at a time (a full copy of one tensor
    exists on each rank briefly, never the whole set)."""
    names = {id(p): n for n, p in model.named_parameters()}
    return {names[id(p)]: s.full_tensor().cpu() for p, s in zip(ema.params, ema.shadow)}


def plain_network(config, weights: dict[str, torch.Tensor], device: torch.device | str = "cpu") -> EmoNet:
    """An unsharded EmoNet holding `weights` (full_weights' dict), without first allocating random weights."""
    with torch.device("meta"):
        net = EmoNet(config)
    net.load_state_dict(weights, strict=True, assign=True)
    return net.to(device).eval()


def save_native_files(model: nn.Module, ema, path: str, ema_path: str | None) -> None:
    """The run's native files from the gathered state (every rank gathers, rank 0 writes): `path` with the trained
    weights, `ema_path` with the EMA weights when `ema` is given."""
    import torch.distributed as dist

    weights = full_weights(model)
    averaged = _full_ema(model, ema) if ema is not None else None
    if dist.get_rank() != 0:
        return
    save_native(plain_network(model.net.config, weights), path)
    if averaged is not None:
        save_native(plain_network(model.net.config, {**weights, **_plain_names(averaged)}), ema_path)


def _plain_names(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """DiffusionObjective's parameter names -> EmoNet's (the native file's keys)."""
    return {k.removeprefix("net."): v for k, v in state.items()}


def gathered_network(model: nn.Module, ema, device: torch.device) -> EmoNet | None:
    """For the sample clips: on rank 0 an unsharded fp32 copy of the network on `device` (with the EMA weights when
    `ema` is given, as an unsharded run samples with them), None on the others. Every rank must call it."""
    weights = full_weights(model, ema)
    if weights is None:
        return None
    log.info("sample clips from the gathered %s weights", "EMA" if ema is not None else "trained")
    return plain_network(model.net.config, weights, device)
