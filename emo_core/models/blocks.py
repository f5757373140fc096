"""Down, mid and up blocks of the backbone.

Each layer is: resnet -> spatial transformer (reference-attention + identity cross-attention) ->
audio module -> motion module (motion frames in front). Attention-free blocks: resnet -> motion module, whose
motion frames (EMO preset) are ReferenceNet's resnet outputs at the same place. diffusers' ResnetBlock2D,
Downsample2D and Upsample2D run per frame on (batch * frames, C, h, w).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from diffusers.models.resnet import Downsample2D, ResnetBlock2D, Upsample2D
from einops import rearrange
from torch import nn

from ..config import EmoNetConfig
from . import fused_conv
from .attention import AudioModule, SpatialTransformer
from .conditions import LayerInputs
from .motion import MotionModule


@dataclass(frozen=True)
class BlockSpec:
    """Static description of one block, derived from the config."""
    in_channels: int
    out_channels: int
    num_layers: int
    attention: bool
    motion: bool
    depth: int
    resample: bool
    prev_channels: int = 0


def flat(x: torch.Tensor) -> torch.Tensor:
    return rearrange(x, "b c f h w -> (b f) c h w")


def unflat(x: torch.Tensor, frames: int) -> torch.Tensor:
    return rearrange(x, "(b f) c h w -> b c f h w", f=frames)


class _LayerStack(nn.Module):
    """Shared per-layer logic: attention, audio and motion after a resnet."""

    def _build_layers(self, cfg: EmoNetConfig, spec: BlockSpec, audio_in: list[int], with_motion: bool):
        u = cfg.unet
        speed_dim = cfg.speed.output_dim if cfg.speed is not None else None
        n, audio = len(audio_in), cfg.audio_attention
        # EchoMimic (`cross_slot`): the audio goes through the transformer's cross-attention, no audio modules.
        self.audio_in_cross_slot = audio.form == "cross_slot"
        scale = audio.scale if self.audio_in_cross_slot else 1.0
        reference_in_cross = cfg.reference_attention == "cross"
        self.attentions = nn.ModuleList(
            [SpatialTransformer(spec.out_channels, u.attention_heads, u.cross_attention_dim, u.norm_num_groups,
                                scale, reference_in_cross) for _ in range(n)] if spec.attention else [])
        self.audio_modules = nn.ModuleList(
            [AudioModule(spec.out_channels, c_in, u.attention_heads, audio.audio_dim,
                         u.norm_num_groups, audio.form, spec.depth) for c_in in audio_in]
            if spec.attention and not self.audio_in_cross_slot else [])
        across = cfg.speed_attention == "across_frames"
        self.motion_modules = nn.ModuleList(
            [MotionModule(spec.out_channels, cfg.motion, speed_dim, across) for _ in range(n)] if with_motion else [])
        self.apply_plain_motion = cfg.motion.in_plain_blocks
        # Attention-free blocks with `plain_block_motion`: the ReferenceNet resnet path whose output gives layer j's
        # motion frames (DenoisingUNet sets them: the same path in both UNets); empty: no motion frames there.
        self.motion_keys: list[str] = []

    def _after_resnet(self, j: int, x: torch.Tensor, inputs: LayerInputs) -> torch.Tensor:
        """x: (b, C, F, h, w) after layer j's resnet -> after its attention, audio and motion modules."""
        frames, h, w = x.shape[2], x.shape[3], x.shape[4]
        motion = None
        if self.attentions:
            attn = self.attentions[j]
            ref, plain = None, 0
            if inputs.reference is not None:
                ref, plain, motion = inputs.reference.for_block(attn.reference_key, frames, h, w)
            context = inputs.audio if self.audio_in_cross_slot else inputs.context
            if inputs.context_folds and not self.audio_in_cross_slot:
                context = inputs.context_folds.get(attn.reference_key, context)
            y = attn(flat(x), context, ref, plain)
            if self.audio_modules:
                y = self.audio_modules[j](y, inputs.audio, inputs.masks, inputs.motion_scale, inputs.audio_kv,
                                          inputs.audio_plain)
            x = unflat(y, frames)
        elif not self.apply_plain_motion:
            return x
        elif self.motion_keys and inputs.reference is not None:
            motion = inputs.reference.motion_for(self.motion_keys[j], h, w)
        if self.motion_modules:
            module = self.motion_modules[j]
            const = inputs.motion_const.get(module.cache_key) if inputs.motion_const else None
            x = module(x, motion, inputs.speed, const)
        return x

    def motion_key(self, j: int) -> str | None:
        """The ReferenceNet path whose motion-frame features layer j's temporal module reads, or None."""
        if not self.motion_modules:
            return None
        if self.attentions:
            return self.attentions[j].reference_key
        return self.motion_keys[j] if self.apply_plain_motion and self.motion_keys else None


def run_resnet(resnet: ResnetBlock2D, x: torch.Tensor, temb: torch.Tensor) -> torch.Tensor:
    """resnet(x, temb), through the fused kernels where they apply (models.fused_conv)."""
    return fused_conv.resnet(resnet, x, temb) if fused_conv.can_resnet(resnet) else resnet(x, temb)


def _resnet(cfg: EmoNetConfig, c_in: int, c_out: int, temb: int) -> ResnetBlock2D:
    u = cfg.unet
    return ResnetBlock2D(in_channels=c_in, out_channels=c_out, temb_channels=temb, eps=u.norm_eps,
                         groups=u.norm_num_groups, non_linearity="silu")


class DownBlock(_LayerStack):
    def __init__(self, cfg: EmoNetConfig, spec: BlockSpec, temb: int):
        super().__init__()
        ins = [spec.in_channels] + [spec.out_channels] * (spec.num_layers - 1)
        self.resnets = nn.ModuleList([_resnet(cfg, c, spec.out_channels, temb) for c in ins])
        self._build_layers(cfg, spec, ins, spec.motion)
        self.downsamplers = nn.ModuleList(
            [Downsample2D(spec.out_channels, use_conv=True, out_channels=spec.out_channels, padding=1, name="op")]
        ) if spec.resample else None

    def forward(self, x, temb, inputs: LayerInputs):
        skips = []
        for j, resnet in enumerate(self.resnets):
            x = self._after_resnet(j, unflat(run_resnet(resnet, flat(x), temb), inputs.frames), inputs)
            skips.append(x)
        if self.downsamplers is not None:
            x = unflat(fused_conv.downsample(self.downsamplers[0], flat(x)), inputs.frames)
            skips.append(x)
        return x, skips


class MidBlock(_LayerStack):
    def __init__(self, cfg: EmoNetConfig, spec: BlockSpec, temb: int):
        super().__init__()
        c = spec.out_channels
        self.resnets = nn.ModuleList([_resnet(cfg, c, c, temb), _resnet(cfg, c, c, temb)])
        self._build_layers(cfg, spec, [c], spec.motion)

    def forward(self, x, temb, inputs: LayerInputs):
        x = unflat(run_resnet(self.resnets[0], flat(x), temb), inputs.frames)
        x = self._after_resnet(0, x, inputs)
        return unflat(run_resnet(self.resnets[1], flat(x), temb), inputs.frames)


class UpBlock(_LayerStack):
    def __init__(self, cfg: EmoNetConfig, spec: BlockSpec, temb: int):
        super().__init__()
        out, n = spec.out_channels, spec.num_layers
        resnets = []
        for i in range(n):
            skip = spec.in_channels if i == n - 1 else out
            resnets.append(_resnet(cfg, (spec.prev_channels if i == 0 else out) + skip, out, temb))
        self.resnets = nn.ModuleList(resnets)
        # Hallo quirk: every up-block audio module takes its inner width from the block's skip width.
        self._build_layers(cfg, spec, [spec.in_channels] * n, spec.motion)
        self.upsamplers = nn.ModuleList([Upsample2D(out, use_conv=True, out_channels=out)]) if spec.resample else None

    def forward(self, x, temb, skips: list[torch.Tensor], inputs: LayerInputs, size=None):
        skips = list(skips)  # popped below; gradient checkpointing re-runs forward on the caller's list
        for j, resnet in enumerate(self.resnets):
            x = torch.cat([x, skips.pop()], dim=1)
            x = self._after_resnet(j, unflat(run_resnet(resnet, flat(x), temb), inputs.frames), inputs)
        if self.upsamplers is not None:
            up, x = self.upsamplers[0], flat(x)
            fast = fused_conv.can_upsample_conv(up, x, size)
            x = fused_conv.upsample_conv(up, x) if fast else up(x, output_size=size)
            x = unflat(x, inputs.frames)
        return x
