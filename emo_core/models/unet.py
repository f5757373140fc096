"""The EMO backbone: an SD 1.5 UNet made temporal, with reference, audio, motion and speed layers."""
from __future__ import annotations

import torch
from diffusers.models.embeddings import TimestepEmbedding, Timesteps
from torch import nn

from ..config import EmoNetConfig
from .attention import AudioModule, SpatialTransformer
from .blocks import BlockSpec, DownBlock, MidBlock, UpBlock, flat, unflat
from .conditions import LayerInputs, UNetConditions
from .context_fold import ContextFold, can_fold_context
from .motion import MotionModule


def block_specs(cfg: EmoNetConfig) -> tuple[list[BlockSpec], BlockSpec, list[BlockSpec]]:
    """Down, mid and up block specs; motion modules sit at the resolutions the config names."""
    u, m = cfg.unet, cfg.motion
    widths = u.block_out_channels
    levels = len(widths)
    down, prev = [], widths[0]
    for i, width in enumerate(widths):
        motion = (2 ** i) in m.resolutions and not m.decoder_only
        down.append(BlockSpec(prev, width, u.layers_per_block, u.down_has_attention(i), motion, i, i < levels - 1))
        prev = width
    mid = BlockSpec(widths[-1], widths[-1], 1, True, m.mid_block, levels - 1, False)
    rev = list(reversed(widths))
    up, prev = [], rev[0]
    for i, width in enumerate(rev):
        skip = rev[min(i + 1, levels - 1)]
        motion = (2 ** (levels - 1 - i)) in m.resolutions
        up.append(BlockSpec(skip, width, u.layers_per_block + 1, u.up_has_attention(i), motion, levels - 1 - i,
                            i < levels - 1, prev_channels=prev))
        prev = width
    return down, mid, up


class DenoisingUNet(nn.Module):
    """Backbone network. forward: (B, 4, F, h, w) noisy latents -> (B, 4, F, h, w) model output."""

    def __init__(self, cfg: EmoNetConfig):
        super().__init__()
        u = cfg.unet
        c0 = u.block_out_channels[0]
        temb = c0 * 4
        self.face_on_latent = cfg.face_added_to == "latent"
        # Training only (emo_core.train): recompute each block's activations in the backward pass.
        self.gradient_checkpointing = False
        self.conv_in = nn.Conv2d(u.in_channels, c0, 3, padding=1)
        self.time_proj = Timesteps(c0, flip_sin_to_cos=True, downscale_freq_shift=0)
        self.time_embedding = TimestepEmbedding(c0, temb)
        down, mid, up = block_specs(cfg)
        self.down_blocks = nn.ModuleList([DownBlock(cfg, s, temb) for s in down])
        self.up_blocks = nn.ModuleList([UpBlock(cfg, s, temb) for s in up])
        self.mid_block = MidBlock(cfg, mid, temb)
        self.conv_norm_out = nn.GroupNorm(u.norm_num_groups, c0, eps=u.norm_eps)
        self.conv_act = nn.SiLU()
        self.conv_out = nn.Conv2d(c0, u.out_channels, 3, padding=1)
        for name, module in self.named_modules():
            if isinstance(module, SpatialTransformer):
                module.reference_key = f"{name}.transformer_blocks.0"
                module.transformer_blocks[0].reference_key = module.reference_key
            if isinstance(module, (AudioModule, MotionModule)):
                module.cache_key = name
        if cfg.plain_block_motion:
            self._set_plain_motion_keys()

    def _set_plain_motion_keys(self) -> None:
        """The attention-free blocks' temporal modules take their motion frames from ReferenceNet's resnet at the
        same path (same width and resolution; the resnet output is what this block's temporal module reads)."""
        for name, blocks in (("down_blocks", self.down_blocks), ("up_blocks", self.up_blocks)):
            for i, block in enumerate(blocks):
                if block.motion_modules and not block.attentions:
                    block.motion_keys = [f"{name}.{i}.resnets.{j}" for j in range(len(block.resnets))]

    def plain_motion_keys(self) -> list[str]:
        """Every ReferenceNet resnet path an attention-free block reads motion frames from (ReferenceNet records
        them too)."""
        blocks = [*self.down_blocks, *self.up_blocks]
        return [key for block in blocks for key in block.motion_keys]

    def fill_reference_kv(self, reference) -> None:
        """ReferenceFeatures.kv: each reference-attention's (key, value) of the reference tokens, for the blocks
        not yet filled (the tokens are the video's: computed once, reused by every step of every clip)."""
        for m in self.modules():
            if isinstance(m, SpatialTransformer) and m.reference_key in reference.tokens \
                    and m.reference_key not in reference.kv:
                attn, tokens = m.transformer_blocks[0].reference_attention, reference.tokens[m.reference_key]
                reference.kv[m.reference_key] = (attn.to_k(tokens), attn.to_v(tokens))

    def audio_kv(self, audio: torch.Tensor) -> dict:
        """Every audio module's cross-attention keys/values for audio rows (rows, T, A), by module path."""
        return {m.cache_key: m.transformer_blocks[0].project_audio(audio)
                for m in self.modules() if isinstance(m, AudioModule)}

    def context_folds(self, context: torch.Tensor) -> dict:
        """Each identity cross-attention's ContextFold of the per-video tokens context (V, T, D), by block path
        (not the EchoMimic layers, whose cross-attention slot takes the audio)."""
        out = {}
        for block in (*self.down_blocks, self.mid_block, *self.up_blocks):
            if block.audio_in_cross_slot:
                continue
            for transformer in block.attentions:
                inner = transformer.transformer_blocks[0]
                if not inner.reference_in_cross and inner.cross_scale == 1.0 and can_fold_context(inner.attn2):
                    out[transformer.reference_key] = ContextFold.compose(inner.attn2, context)
        return out

    def motion_constants(self, reference) -> dict:
        """Each temporal module's MotionConst (its motion frames' part, the same at every step of a clip) by module
        path, for the modules whose motion frames ReferenceFeatures holds (fastpath: once per clip)."""
        out = {}
        for block in (*self.down_blocks, self.mid_block, *self.up_blocks):
            for j, module in enumerate(block.motion_modules):
                key = block.motion_key(j)
                motion = None if key is None else reference.motion.get(key)
                if motion is not None and motion.shape[1] > 0:
                    out[module.cache_key] = module.temporal_transformer.motion_constants(motion)
        return out

    def forward(self, sample: torch.Tensor, timestep: torch.Tensor | int, cond: UNetConditions) -> torch.Tensor:
        batch, _, frames = sample.shape[:3]
        inputs = LayerInputs.build(cond, frames)
        temb = self._time_embedding(timestep, batch, sample).repeat_interleave(frames, dim=0)
        if cond.face is not None and self.face_on_latent:  # EMO paper: the mask's features join the noisy latent
            sample = sample + cond.face.to(sample.dtype)
        x = unflat(self.conv_in(flat(sample)), frames)
        if cond.face is not None and not self.face_on_latent:  # Hallo: after conv_in, at the first block's width
            x = x + cond.face.to(x.dtype)
        skips = [x]
        for block in self.down_blocks:
            x, block_skips = self._run(block, x, temb, inputs)
            skips += block_skips
        x = self._run(self.mid_block, x, temb, inputs)
        for i, block in enumerate(self.up_blocks):
            n = len(block.resnets)
            block_skips, skips = skips[-n:], skips[:-n]
            # Always forward the skip size so odd latent sizes (any multiple of 8 pixels) upsample back exactly.
            size = skips[-1].shape[-2:] if skips else None
            x = self._run(block, x, temb, block_skips, inputs, size)
        y = self.conv_out(self.conv_act(self.conv_norm_out(flat(x))))
        return unflat(y, frames)

    def _run(self, block: nn.Module, *args):
        """block(*args), through torch.utils.checkpoint while training with gradient checkpointing on."""
        if self.gradient_checkpointing and torch.is_grad_enabled():
            from torch.utils.checkpoint import checkpoint
            return checkpoint(block, *args, use_reentrant=False)
        return block(*args)

    def _time_embedding(self, timestep, batch: int, sample: torch.Tensor) -> torch.Tensor:
        t = torch.as_tensor(timestep, device=sample.device)
        t = t.reshape(-1).expand(batch) if t.numel() == 1 else t.reshape(batch)
        emb = self.time_proj(t).to(dtype=sample.dtype)
        return self.time_embedding(emb)
