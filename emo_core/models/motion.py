"""AnimateDiff temporal modules (mm_sd_v15 v2 key layout) with EMO's optional speed attention.

Layout per module: per-frame GroupNorm -> Linear proj_in -> blocks of [LayerNorm -> add sinusoidal
position -> self-attention over frames] x N -> LayerNorm -> GEGLU FF -> Linear proj_out -> residual.
Motion frames (previous clip's features) are concatenated in front of the current frames by the caller.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from diffusers.models.attention import FeedForward
from diffusers.models.attention_processor import Attention
from diffusers.models.embeddings import SinusoidalPositionalEmbedding
from einops import rearrange
from torch import nn

from .. import fastpath
from ..config import MotionConfig
from . import fused
from .attention import attend, attend_projected, self_attention
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

    def residual(self, normed: torch.Tensor, x: torch.Tensor, skip: int = 0) -> torch.Tensor:
        """x + self(normed), fused on the fast path (models.fused). `skip`: the first `skip` frames (motion frames
        dropped after this layer) still give keys and values but get no output: x[:, skip:] + attention."""
        if skip:
            posed = self.pos_encoder(normed)
            return attend(self, posed[:, skip:], self.to_k(posed), self.to_v(posed), x[:, skip:])
        return self_attention(self, self.pos_encoder(normed), x) if fused.active() else x + self(normed)

    def with_motion_const(self, normed: torch.Tensor, current: torch.Tensor, const: MotionConst,
                          skip: bool = False) -> torch.Tensor:
        """The first attention of a temporal module whose motion frames' part is precomputed (MotionConst):
        normed/current are the current frames' rows (b*h*w, f, dim). Returns [motion; current] rows + attention,
        or the current rows only with `skip`."""
        n, f = const.tokens.shape[1], current.shape[1]
        posed = normed + self.pos_encoder.pe[:, n:n + f]  # positions continue after the motion frames
        key = torch.cat([const.key, self.to_k(posed)], 1)
        value = torch.cat([const.value, self.to_v(posed)], 1)
        if skip:
            return attend(self, posed, key, value, current)
        query = torch.cat([const.query, self.to_q(posed)], 1)
        return attend_projected(self, query, key, value, torch.cat([const.tokens, current], 1))


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

    def forward(self, x, speed, n_motion: int, tokens: int, drop_motion: bool = False,
                const: MotionConst | None = None):
        """x: (batch * tokens, motion + current frames, dim), or the current frames only with `const` (the motion
        frames' first-attention inputs, precomputed per clip). drop_motion: return the current frames only; the
        motion frames then get no output from the last attention and no feed-forward (fast path)."""
        present = 0 if const is not None else n_motion  # motion rows in front of x
        last = len(self.attention_blocks) - 1
        for i, (attention, norm) in enumerate(zip(self.attention_blocks, self.norms)):
            skip = drop_motion and i == last and fastpath.is_on()
            if i == 0 and const is not None:
                x = attention.with_motion_const(norm(x), x, const, skip)
                present = 0 if skip else n_motion
            else:
                x = attention.residual(norm(x), x, present if skip else 0)
                present = 0 if skip else present
        if self.speed is not None and speed is not None:
            current = self.speed(x[:, present:], speed, tokens)
            x = torch.cat([x[:, :present], current], dim=1) if present else current
        if drop_motion:
            x = x[:, present:]
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
                drop_motion: bool = False, const: MotionConst | None = None) -> torch.Tensor:
        """x: (batch, C, frames, h, w) -> same shape, or without the first n_motion frames when drop_motion
        (the last block then skips their feed-forward, and proj_out their tokens). GroupNorm is per frame.
        const: x holds the current frames only and the motion frames' constant part comes from `const`
        (motion_constants), dropped after."""
        b, c, f, h, w = x.shape
        flat = rearrange(x, "b c f h w -> (b f) c h w")
        tokens = rearrange(self.norm(flat), "(b f) c h w -> (b h w) f c", f=f)
        tokens = self.proj_in(tokens)
        last = len(self.transformer_blocks) - 1
        drop_motion = drop_motion or const is not None
        for i, block in enumerate(self.transformer_blocks):
            tokens = block(tokens, speed, n_motion, h * w, drop_motion and i == last, const if i == 0 else None)
        out = rearrange(self.proj_out(tokens), "(b h w) f c -> b c f h w", b=b, h=h, w=w)
        return out + (x[:, :, n_motion:] if drop_motion and const is None else x)

    def motion_constants(self, motion: torch.Tensor) -> MotionConst:
        """The motion frames' part of this module that stays the same for every step of a clip: motion tokens
        (b, n, h*w, C) through the per-frame GroupNorm and proj_in, and the first attention's queries, keys and
        values of them (their positions 0..n-1). Each is (b*h*w, n, inner)."""
        n = motion.shape[1]
        normed = self.norm(rearrange(motion, "b n l c -> (b n) c l"))  # per frame, like forward's
        tokens = self.proj_in(rearrange(normed, "(b n) c l -> (b l) n c", n=n))
        block = self.transformer_blocks[0]
        attn = block.attention_blocks[0]
        posed = attn.pos_encoder(block.norms[0](tokens))
        return MotionConst(tokens, attn.to_q(posed), attn.to_k(posed), attn.to_v(posed))


@dataclass
class MotionConst:
    """One temporal module's per-clip motion-frame part (TemporalTransformer.motion_constants): the motion frames
    depend only on ReferenceNet, so until the first attention mixes them with the current frames they are the
    same at every step."""
    tokens: torch.Tensor  # proj_in(GroupNorm(motion)): the first attention's residual for those rows
    query: torch.Tensor
    key: torch.Tensor
    value: torch.Tensor


class MotionModule(nn.Module):
    """Wrapper named like AnimateDiff's VanillaTemporalModule (`motion_modules.i.temporal_transformer`)."""

    def __init__(self, channels: int, cfg: MotionConfig, speed_dim: int | None = None,
                 speed_across_frames: bool = False):
        super().__init__()
        self.cache_key = ""  # its module path, set by DenoisingUNet (the key of its MotionConst)
        self.temporal_transformer = TemporalTransformer(channels, cfg, speed_dim, speed_across_frames)

    def forward(self, x: torch.Tensor, motion: torch.Tensor | None = None,
                speed: torch.Tensor | None = None, const: MotionConst | None = None) -> torch.Tensor:
        """x: (b, C, F, h, w) current frames; motion: (b, C, n, h, w) placed before them, dropped after.
        const: the motion frames' precomputed part (fast path; `motion` is then not read)."""
        if const is not None:
            return self.temporal_transformer(x, speed, const.tokens.shape[1], const=const)
        if motion is None or motion.shape[2] == 0:
            return self.temporal_transformer(x, speed, 0)
        n = motion.shape[2]
        joined = torch.cat([motion.to(x.dtype), x], dim=2)
        if fastpath.is_on():
            return self.temporal_transformer(joined, speed, n, drop_motion=True)
        return self.temporal_transformer(joined, speed, n)[:, :, n:]
