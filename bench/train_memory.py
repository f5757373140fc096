"""Memory per GPU for training the full-size EMO network at 512 px, one sample per GPU per micro step.

Parameters, gradients, Adam states and EMA are counted from the meta-device model's parameter counts per stage.
Activations are measured on the meta device (shapes only, no memory used): the bytes of every buffer autograd
saves for the backward pass of one training forward (each buffer once, weights excluded; attention saved as a
GPU flash kernel saves it), with gradient checkpointing off and on (on: the checkpointed blocks' kept inputs plus
the largest single block, which the backward recomputes one at a time), the network in
float32 and in bfloat16 (bf16 stands in for autocast: Accelerate's bf16 keeps fp32 master weights, so weights,
gradients and Adam stay fp32 in the table). Not counted: the allocator's fragmentation, temporaries of a single
op, CUDA context (~0.5 GiB) and the VAE (latents precomputed by emo-prepare).

With `--shard N` (default 8) two more columns: under `sharding = "fsdp"` over N processes the fp32 states are
split N ways (FSDP2 full sharding), and what a step gathers on top of them in bf16: ReferenceNet, the encoders
and the other root-group tensors for the whole step, plus the largest backbone block while it runs.

    python bench/train_memory.py [--pixels 512] [--shard 8]
"""
from __future__ import annotations

import argparse
import contextlib

import torch

from emo_core import fastpath
from emo_core.config import emo_preset
from emo_core.network import EmoNet
from emo_core.train import stages
from emo_core.train.batches import StageBatch
from emo_core.train.config import STAGE_GROUPS
from emo_core.train.objective import DiffusionObjective

GIB = 2 ** 30


def meta_batch(cfg, stage: str, pixels: int, dtype) -> StageBatch:
    h = pixels // 8
    f, n = (1, 0) if stage == "stage1" else (cfg.clip_length, cfg.motion_frames)
    ap, sp = cfg.audio_projection, cfg.speed
    meta = dict(device="meta", dtype=dtype)
    no = torch.zeros(1, dtype=torch.bool)  # CPU: the objective counts dropped rows on the host
    return StageBatch(target=torch.empty(1, 4, f, h, h, **meta), reference=torch.empty(1, 4, h, h, **meta),
                      motion=torch.empty(1, n, 4, h, h, **meta) if n else None,
                      audio=torch.empty(1, f, ap.window, ap.blocks, ap.channels, **meta),
                      speed=torch.empty(1, f, sp.window, len(sp.centres), **meta) if stage == "stage3" else None,
                      face_mask=torch.empty(1, 1, pixels, pixels, **meta), noise=torch.empty(1, 4, f, h, h, **meta),
                      timesteps=torch.zeros(1, dtype=torch.long, device="meta"),
                      drop_audio=torch.zeros(1, dtype=torch.bool, device="meta"),
                      drop_reference=no, index=torch.zeros(1, dtype=torch.long))


class FlashLikeAttention(torch.autograd.Function):
    """SDPA as a GPU's flash / memory-efficient kernel keeps it for backward: q, k, v, the output and one float
    per query row (log-sum-exp), never the (queries x keys) probabilities that the meta device's math path would
    save (at 512 px, 4096 x 4096 per head)."""

    @staticmethod
    def forward(ctx, q, k, v):
        out = q.new_empty(*q.shape[:-1], v.shape[-1])
        ctx.save_for_backward(q, k, v, out, q.new_empty(q.shape[:-1], dtype=torch.float32))
        return out

    @staticmethod
    def backward(ctx, grad):
        q, k, v, _, _ = ctx.saved_tensors
        return torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)


def _sdpa(q, k, v, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None, **kw):
    return FlashLikeAttention.apply(q, k, v)


def saved_bytes(model, batch) -> tuple[int, int]:
    """(bytes autograd keeps for backward in one forward, the most any single top-level block keeps): with
    gradient checkpointing the backward recomputes one block at a time, so its peak is the kept inputs plus the
    largest block's activations."""
    seen: dict[int, tuple[str, int]] = {}
    current = ["other"]
    net = model.net
    hooks = []
    for unet, prefix in ((net.denoising_unet, "den"), (net.reference_unet, "ref")):
        for name in ("down_blocks", "up_blocks"):
            for i, block in enumerate(getattr(unet, name)):
                hooks += _label(block, f"{prefix}.{name}.{i}", current)
        hooks += _label(unet.mid_block, f"{prefix}.mid", current)

    weights = {p.untyped_storage()._cdata for p in net.parameters()}

    def pack(t):
        storage = t.untyped_storage()  # views of one buffer share it: counted once, weights not at all
        if storage._cdata not in weights and storage._cdata not in seen:
            seen[storage._cdata] = (current[0], storage.nbytes())
        return t

    sdpa = torch.nn.functional.scaled_dot_product_attention
    torch.nn.functional.scaled_dot_product_attention = _sdpa
    try:
        with fastpath.enabled(False), torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            model(batch)  # as trainer.train runs it: the inference fast path off
    finally:
        torch.nn.functional.scaled_dot_product_attention = sdpa
        for h in hooks:
            h.remove()
    per_block: dict[str, int] = {}
    for label, size in seen.values():
        per_block[label] = per_block.get(label, 0) + size
    return sum(per_block.values()), max(v for k, v in per_block.items() if k != "other")


def _label(module, name: str, current: list) -> list:
    def enter(*_):
        current[0] = name

    def leave(*_):
        current[0] = "other"
    return [module.register_forward_pre_hook(enter), module.register_forward_hook(leave)]


def measure(stage: str, pixels: int, dtype, checkpointing: bool) -> int:
    """Activation bytes of one training step's backward at its peak (see saved_bytes)."""
    cfg = emo_preset()
    with torch.device("meta"):
        net = EmoNet(cfg).to(dtype)
    stages.select_trainable(net, STAGE_GROUPS[stage])
    if checkpointing:
        stages.enable_gradient_checkpointing(net)
    model = _objective(net, dtype)
    kept, largest = saved_bytes(model, meta_batch(cfg, stage, pixels, dtype))
    if not checkpointing:
        return kept
    _, largest = saved_bytes(_objective(_plain(net), dtype), meta_batch(cfg, stage, pixels, dtype))
    return kept + largest


def _objective(net, dtype) -> DiffusionObjective:
    model = DiffusionObjective(net)
    model.alphas_cumprod = model.alphas_cumprod.to("meta", dtype)
    return model


def _plain(net):
    net.denoising_unet.gradient_checkpointing = False
    net.reference_unet.disable_gradient_checkpointing()
    return net


def states(stage: str) -> tuple[int, int]:
    with torch.device("meta"):
        net = EmoNet(emo_preset())
    counts = stages.count_parameters(net)
    total = sum(counts.values())
    trained = sum(v for k, v in counts.items() if k in STAGE_GROUPS[stage])
    return total, trained


def gathered_params() -> int:
    """Parameters a sharded step holds gathered at its peak (sharding.py's groups): everything outside the
    backbone's blocks, plus the largest backbone block."""
    from emo_core.train.sharding import shard_blocks

    with torch.device("meta"):
        net = EmoNet(emo_preset())
    blocks = [sum(p.numel() for p in b.parameters()) for b in shard_blocks(net.denoising_unet)]
    return sum(p.numel() for p in net.parameters()) - sum(blocks) + max(blocks)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--pixels", type=int, default=512)
    p.add_argument("--shard", type=int, default=8, help="processes of the FSDP columns")
    args = p.parse_args()
    gathered = 2 * gathered_params()  # bf16 copies
    print(f"| stage | params (all / trained) | weights+grads+Adam+EMA fp32 | activations fp32, ckpt off / on "
          f"| activations bf16, ckpt off / on | total bf16 + ckpt | FSDP x{args.shard}: states / gathered bf16 "
          f"| FSDP x{args.shard} total bf16 + ckpt |")
    print("|---|---|---|---|---|---|---|---|")
    for stage in ("stage1", "stage2", "stage3"):
        total, trained = states(stage)
        fixed = 4 * total + (4 + 8 + 4) * trained
        acts = {(d, c): measure(stage, args.pixels, d, c) for d in (torch.float32, torch.bfloat16)
                for c in (False, True)}
        print(f"| {stage} | {total / 1e6:.0f} M / {trained / 1e6:.0f} M | {fixed / GIB:.1f} GiB "
              f"| {acts[(torch.float32, False)] / GIB:.1f} / {acts[(torch.float32, True)] / GIB:.1f} GiB "
              f"| {acts[(torch.bfloat16, False)] / GIB:.1f} / {acts[(torch.bfloat16, True)] / GIB:.1f} GiB "
              f"| {(fixed + acts[(torch.bfloat16, True)]) / GIB:.1f} GiB "
              f"| {fixed / args.shard / GIB:.1f} / {gathered / GIB:.1f} GiB "
              f"| {(fixed / args.shard + gathered + acts[(torch.bfloat16, True)]) / GIB:.1f} GiB |")


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        main()
