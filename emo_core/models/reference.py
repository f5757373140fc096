"""ReferenceNet: diffusers' UNet2DConditionModel recording the input of every self-attention.

A recording attention processor sits on each `attn1`; the features travel in a dict passed through
`cross_attention_kwargs`, never in module state. The UNet's output head is unused (Hallo's weights
carry none), so `conv_norm_out` is dropped and `conv_out` is an identity.
"""
from __future__ import annotations

import functools
from collections.abc import Sequence

import torch
from diffusers import UNet2DConditionModel
from diffusers.models.attention import BasicTransformerBlock
from diffusers.models.attention_processor import Attention, AttnProcessor2_0
from torch import nn

from ..config import UNetConfig

_ATTN1 = ".attn1"


class RecordingAttnProcessor:
    """SDPA attention that first stores its input (the block's norm1 output) under `key`."""

    def __init__(self, key: str | None):
        self.key = key
        self.inner = AttnProcessor2_0()

    def __call__(self, attn: Attention, hidden_states: torch.Tensor, encoder_hidden_states=None,
                 attention_mask=None, temb=None, recorder: dict | None = None, **kwargs) -> torch.Tensor:
        if self.key is not None and recorder is not None and encoder_hidden_states is None:
            recorder[self.key] = hidden_states
        return self.inner(attn, hidden_states, encoder_hidden_states, attention_mask, temb)


def build_reference_unet(cfg: UNetConfig, cross_attention: bool = True) -> UNet2DConditionModel:
    """diffusers' SD UNet as ReferenceNet; `cross_attention` False removes every transformer block's
    attn2/norm2 (EchoMimic's ReferenceNet has none; diffusers' block skips a missing attn2)."""
    unet = UNet2DConditionModel(
        in_channels=cfg.in_channels, out_channels=cfg.out_channels,
        down_block_types=cfg.down_block_types, up_block_types=cfg.up_block_types,
        block_out_channels=cfg.block_out_channels, layers_per_block=cfg.layers_per_block,
        cross_attention_dim=cfg.cross_attention_dim, attention_head_dim=cfg.attention_heads,
        norm_num_groups=cfg.norm_num_groups, norm_eps=cfg.norm_eps, flip_sin_to_cos=True, freq_shift=0,
        act_fn="silu", downsample_padding=1, mid_block_scale_factor=1,
    )
    unet.conv_norm_out = None
    unet.conv_out = nn.Identity()
    if not cross_attention:
        for module in unet.modules():
            if isinstance(module, BasicTransformerBlock):
                module.attn2 = module.norm2 = None
    processors = {}
    for name in unet.attn_processors:
        module_path = name[: -len(".processor")]
        key = module_path[: -len(_ATTN1)] if module_path.endswith(_ATTN1) else None
        processors[name] = RecordingAttnProcessor(key)
    unet.set_attn_processor(processors)
    return unet


def record_reference(unet: UNet2DConditionModel, latents: torch.Tensor, context: torch.Tensor,
                     resnet_keys: Sequence[str] = ()) -> dict[str, torch.Tensor]:
    """Run ReferenceNet at t=0. latents: (rows, 4, h, w); context: (rows, T, D).

    Returns {transformer-block path: (rows, h_l*w_l, C_l)} - the norm1 output of every block - and, for each
    resnet path in `resnet_keys` (EMO preset: the attention-free blocks'), that resnet's output as tokens
    (rows, h_l*w_l, C_l). diffusers' plain blocks take no attention kwargs, so those are recorded by forward
    hooks that live only for this call (the recorder stays an argument, never module state).
    """
    recorder: dict[str, torch.Tensor] = {}
    timestep = torch.zeros((), dtype=torch.long, device=latents.device)
    modules = dict(unet.named_modules())
    hooks = [modules[key].register_forward_hook(functools.partial(_record_output, recorder, key))
             for key in resnet_keys]
    try:
        unet(latents, timestep, encoder_hidden_states=context, cross_attention_kwargs={"recorder": recorder},
             return_dict=False)
    finally:
        for hook in hooks:
            hook.remove()
    return recorder


def _record_output(recorder: dict, key: str, module: nn.Module, args, output: torch.Tensor) -> None:
    recorder[key] = output.flatten(2).transpose(1, 2)  # (rows, C, h, w) -> (rows, h*w, C), row-major tokens
