"""AnimateDiff temporal modules (mm_sd_v15 v2 key layout) with EMO's optional speed attention.

Layout per module: per-frame GroupNorm -> Linear proj_in -> blocks of [LayerNorm -> add sinusoidal
position -> self-attention over frames] x N -> LayerNorm -> GEGLU FF -> Linear proj_out -> residual.
Motion frames (previous clip's features) are concatenated in front of the current frames by the caller.
"""
from __future__ import annotations

import torch
from diffusers.models.attention import FeedForward
from diffusers.models.attention_processor import Attention
from diffusers.models.embeddings import SinusoidalPositionalEmbedding
from einops import rearrange
from torch import nn

from .. import fastpath
from ..config import MotionConfig
from . import fused
from .attention import self_attention
from .feedforward import feed_forward


class TemporalAttention(Attention):
    """Self-attention along the frame axis with AnimateDiff's additive sinusoidal positions.

    `pos_encoder.pe` is a checkpoint buffer of shape (1, max_len, dim); positions start at the first
    motion frame.
    """

    def __init__(self, dim: int, heads: int, max_len: int):
        super().__init__(query_dim=dim, heads=heads, dim_head=dim // heads, bias=False)
        self.pos_encoder = SinusoidalPositionalEmbedding(dim, max_seq_length=max_len)

    def forward(self, hidden_states: torch.Tensor, **kwargs) -> torch.Tensor:
        """hidden_states: (batch * tokens, frames, dim)."""
        return super().forward(self.pos_encoder(hidden_states), **kwargs)

    def residual(self, normed: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """x + self(normed), fused on the fast path (models.fused)."""
        return self_attention(self, self.pos_encoder(normed), x) if fused.active() else x + self(normed)


class SpeedAttention(nn.Module):
    """EMO speed layer: cross-attention from the frame tokens to the speed tokens.

    `across_frames` (the paper, section 3.2): the speed tokens of all f frames are repeated to every spatial
    position, (b*h*w) x (f*T) x S, and each frame's query at that position attends to all of them, so one frame's
    speed reaches every frame. `per_frame`: each frame's tokens attend to that frame's T speed tokens only.
    The output projection starts at zero so a network without trained speed weights is unchanged.
    """

    def __init__(self, dim: int, heads: int, speed_dim: int, across_frames: bool = False):
        super().__init__()
        self.across_frames = across_frames
        self.norm = nn.LayerNorm(dim)
        self.attn = Attention(query_dim=dim, cross_attention_dim=speed_dim, heads=heads, dim_head=dim // heads,
                              bias=False)
        nn.init.zeros_(self.attn.to_out[0].weight)
        nn.init.zeros_(self.attn.to_out[0].bias)

    def forward(self, x: torch.Tensor, speed: torch.Tensor, tokens: int) -> torch.Tensor:
        """x: (batch * tokens, frames, dim) current frames only; speed: (batch, frames, T, S)."""
        if self.across_frames:
            # Every position of one video sees the same keys: attend with (b, d*f) queries against that video's
            # (f*T) speed tokens - the same attention as repeating the keys d times, without the copies.
            queries = rearrange(x, "(b d) f c -> b (d f) c", d=tokens)
            out = self.attn(self.norm(queries), encoder_hidden_states=speed.flatten(1, 2))
            return x + rearrange(out, "b (d f) c -> (b d) f c", d=tokens)
        frames = speed.shape[1]
        per_frame = rearrange(x, "(b d) f c -> (b f) d c", d=tokens)
        out = self.attn(self.norm(per_frame), encoder_hidden_states=speed.flatten(0, 1))
        return x + rearrange(out, "(b f) d c -> (b d) f c", f=frames)


class TemporalBlock(nn.Module):
    def __init__(self, dim: int, cfg: MotionConfig, speed_dim: int | None, speed_across_frames: bool = False):
        super().__init__()
        heads = cfg.heads
        self.attention_blocks = nn.ModuleList(
            [TemporalAttention(dim, heads, cfg.max_len) for _ in range(cfg.attention_blocks)])
        self.norms = nn.ModuleList([nn.LayerNorm(dim) for _ in range(cfg.attention_blocks)])
        self.speed = SpeedAttention(dim, heads, speed_dim, speed_across_frames) if speed_dim else None
        self.ff = FeedForward(dim, activation_fn="geglu")
        self.ff_norm = nn.LayerNorm(dim)

    def forward(self, x, speed, n_motion: int, tokens: int, drop_motion: bool = False):
        """x: (batch * tokens, motion + current frames, dim). drop_motion: return the current frames only (the
        feed-forward is per token, so the motion frames' is not computed when they are dropped next)."""
        for attention, norm in zip(self.attention_blocks, self.norms):
            x = attention.residual(norm(x), x)
        if self.speed is not None and speed is not None:
            current = self.speed(x[:, n_motion:], speed, tokens)
            x = torch.cat([x[:, :n_motion], current], dim=1)
        if drop_motion:
            x = x[:, n_motion:]
        return feed_forward(self.ff, self.ff_norm, x)


class TemporalTransformer(nn.Module):
    def __init__(self, channels: int, cfg: MotionConfig, speed_dim: int | None, speed_across_frames: bool = False):
        super().__init__()
        inner = cfg.heads * (channels // cfg.heads)
        self.norm = nn.GroupNorm(cfg.norm_num_groups, channels, eps=1e-6)
        self.proj_in = nn.Linear(channels, inner)
        self.transformer_blocks = nn.ModuleList([TemporalBlock(inner, cfg, speed_dim, speed_across_frames)
                                                 for _ in range(cfg.num_blocks)])
        self.proj_out = nn.Linear(inner, channels)

    def forward(self, x: torch.Tensor, speed: torch.Tensor | None, n_motion: int,
                drop_motion: bool = False) -> torch.Tensor:
        """x: (batch, C, frames, h, w) -> same shape, or without the first n_motion frames when drop_motion
        (the last block then skips their feed-forward, and proj_out their tokens). GroupNorm is per frame."""
        b, c, f, h, w = x.shape
        flat = rearrange(x, "b c f h w -> (b f) c h w")
        tokens = rearrange(self.norm(flat), "(b f) c h w -> (b h w) f c", f=f)
        tokens = self.proj_in(tokens)
        last = len(self.transformer_blocks) - 1
        for i, block in enumerate(self.transformer_blocks):
            tokens = block(tokens, speed, n_motion, h * w, drop_motion and i == last)
        out = rearrange(self.proj_out(tokens), "(b h w) f c -> b c f h w", b=b, h=h, w=w)
        return out + (x[:, :, n_motion:] if drop_motion else x)


class MotionModule(nn.Module):
    """Wrapper named like AnimateDiff's VanillaTemporalModule (`motion_modules.i.temporal_transformer`)."""

    def __init__(self, channels: int, cfg: MotionConfig, speed_dim: int | None = None,
                 speed_across_frames: bool = False):
        super().__init__()
        self.temporal_transformer = TemporalTransformer(channels, cfg, speed_dim, speed_across_frames)

    def forward(self, x: torch.Tensor, motion: torch.Tensor | None = None,
                speed: torch.Tensor | None = None) -> torch.Tensor:
        """x: (b, C, F, h, w) current frames; motion: (b, C, n, h, w) placed before them, dropped after."""
        if motion is None or motion.shape[2] == 0:
            return self.temporal_transformer(x, speed, 0)
        n = motion.shape[2]
        joined = torch.cat([motion.to(x.dtype), x], dim=2)
        if fastpath.is_on():
            return self.temporal_transformer(joined, speed, n, drop_motion=True)
        return self.temporal_transformer(joined, speed, n)[:, :, n:]
