"""Small condition encoders: face locator, windowed feature projections, identity tokens."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from ..config import FaceLocatorConfig, IdentityConfig, WindowProjectionConfig


class FaceLocator(nn.Module):
    """Conv encoder of the face-region mask, run on each frame independently.

    conv_in, SiLU, then [3x3 conv, SiLU, 3x3 stride-2 conv, SiLU] per width step, then conv_out to
    the UNet's first block width. Input at pixel size; output at latent size (/8 for 4 widths).
    """

    def __init__(self, cfg: FaceLocatorConfig, embedding_channels: int):
        super().__init__()
        widths = cfg.block_out_channels
        self.conv_in = nn.Conv2d(cfg.conditioning_channels, widths[0], 3, padding=1)
        blocks = []
        for c_in, c_out in zip(widths[:-1], widths[1:]):
            blocks += [nn.Conv2d(c_in, c_in, 3, padding=1), nn.Conv2d(c_in, c_out, 3, padding=1, stride=2)]
        self.blocks = nn.ModuleList(blocks)
        self.conv_out = nn.Conv2d(widths[-1], embedding_channels, 3, padding=1)

    def forward(self, mask: torch.Tensor) -> torch.Tensor:
        """mask: (b, c, f, H, W) in 0..1 -> features (b, C0, f, H/2^k, W/2^k)."""
        frames = mask.shape[2]
        x = F.silu(self.conv_in(rearrange(mask, "b c f h w -> (b f) c h w")))
        for block in self.blocks:
            x = F.silu(block(x))
        return rearrange(self.conv_out(x), "(b f) c h w -> b c f h w", f=frames)


class WindowProjection(nn.Module):
    """Per-frame windowed features -> context tokens (Hallo's AudioProjModel; EMO's speed MLP).

    Input (b, f, window, blocks, channels) flattened per frame in (window, block, channel) order ->
    Linear -> ReLU -> Linear -> ReLU -> Linear -> (tokens, output_dim) -> LayerNorm.
    """

    def __init__(self, cfg: WindowProjectionConfig):
        super().__init__()
        self.cfg = cfg
        self.proj1 = nn.Linear(cfg.window * cfg.blocks * cfg.channels, cfg.intermediate_dim)
        self.proj2 = nn.Linear(cfg.intermediate_dim, cfg.intermediate_dim)
        self.proj3 = nn.Linear(cfg.intermediate_dim, cfg.tokens * cfg.output_dim)
        self.norm = nn.LayerNorm(cfg.output_dim)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """features: (b, f, window, blocks, channels) -> tokens (b, f, tokens, output_dim)."""
        b, f = features.shape[:2]
        x = features.reshape(b * f, -1)
        x = torch.relu(self.proj2(torch.relu(self.proj1(x))))
        tokens = self.norm(self.proj3(x).reshape(b * f, self.cfg.tokens, self.cfg.output_dim))
        return tokens.reshape(b, f, self.cfg.tokens, self.cfg.output_dim)


class IdentityProjection(nn.Module):
    """Face-identity embedding (b, E) -> LayerNorm'd tokens (b, tokens, cross_attention_dim)."""

    def __init__(self, cfg: IdentityConfig, cross_attention_dim: int):
        super().__init__()
        self.tokens = cfg.tokens
        self.dim = cross_attention_dim
        self.proj = nn.Linear(cfg.embedding_dim, cfg.tokens * cross_attention_dim)
        self.norm = nn.LayerNorm(cross_attention_dim)

    def forward(self, embedding: torch.Tensor) -> torch.Tensor:
        return self.norm(self.proj(embedding).reshape(-1, self.tokens, self.dim))
