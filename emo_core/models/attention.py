"""Spatial attention of the backbone: reference-attention and audio-attention.

Built from diffusers' `Attention` (SDPA processor) and `FeedForward`; parameter names follow the
Hallo / SD 1.5 layout so checkpoints load with an identity key map. Token layouts are row-major
(y, x), so any latent height and width work.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from diffusers.models.attention import FeedForward
from diffusers.models.attention_processor import Attention
from torch import nn

from ..errors import InvalidInputError
from . import fused
from .context_fold import ContextFold
from .feedforward import feed_forward


def conv1x1_tokens(conv: nn.Conv2d, tokens: torch.Tensor) -> torch.Tensor:
    """Apply a 1x1 conv to (batch, tokens, channels) as the linear map it is (no square reshape)."""
    return F.linear(tokens, conv.weight.flatten(1), conv.bias)


# Maps with at least this many pixels go in and out of token layout as GEMMs on CPU (fast path): oneDNN's 1x1
# convolution then a transposing copy is slower there (one thread, 32 images, 320 channels at 16x16: in 36 -> 24 ms,
# out 33 -> 28 ms; two threads 46 -> 26 and 40 -> 32 ms); at 4x4 the convolution is faster (1280 channels: 27 vs 41).
TOKEN_GEMM_PIXELS = 64


def _token_gemm(x: torch.Tensor) -> bool:
    return fused.active() and x.device.type == "cpu" and x.shape[-2] * x.shape[-1] >= TOKEN_GEMM_PIXELS


def tokens_in(conv: nn.Conv2d, x: torch.Tensor) -> torch.Tensor:
    """conv(x) (a 1x1 convolution) for x (rows, C, h, w) as tokens (rows, h*w, inner)."""
    if _token_gemm(x):
        return conv1x1_tokens(conv, x.flatten(2).transpose(1, 2))  # contiguous tokens straight from the GEMM
    return conv(x).flatten(2).transpose(1, 2)


def tokens_out(conv: nn.Conv2d, tokens: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
    """residual + conv(tokens as a map) for tokens (rows, h*w, inner), residual (rows, C, h, w), conv 1x1."""
    rows, _, h, w = residual.shape
    if not _token_gemm(residual):
        return conv(tokens.transpose(1, 2).reshape(rows, -1, h, w)) + residual
    weight = conv.weight.flatten(1)  # (C, inner): one GEMM per row, the residual as its accumulator
    out = torch.baddbmm(residual.flatten(2), weight.expand(rows, *weight.shape), tokens.transpose(1, 2))
    if conv.bias is not None:
        out.add_(conv.bias[:, None])
    return out.view(rows, -1, h, w)


def attend(attn: Attention, hidden: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
           residual: torch.Tensor | None = None, out: torch.Tensor | None = None) -> torch.Tensor:
    """diffusers' AttnProcessor2_0 on already projected keys/values (rows, T, inner): the same SDPA call.
    With `residual`, returns residual + attention (added inside the output GEMM where fused.active(), written
    into `out` when given: a contiguous slice of a larger result)."""
    return attend_projected(attn, attn.to_q(hidden), key, value, residual, out)


def attend_projected(attn: Attention, q: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                     residual: torch.Tensor | None = None, out: torch.Tensor | None = None) -> torch.Tensor:
    """`attend` with the queries (rows, L, inner) already projected too."""
    fast = fused.active()
    if fast:
        attended = fused.attention(q, key, value, attn.heads).to(q.dtype)
    else:
        rows, heads = q.shape[0], attn.heads
        dim = q.shape[-1] // heads
        q, k, v = (t.reshape(rows, -1, heads, dim).transpose(1, 2) for t in (q, key, value))
        attended = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(rows, -1, heads * dim).to(q.dtype)
    if residual is not None and fast:
        return fused.linear_residual(attn.to_out[0], attended, residual, out)
    attended = attn.to_out[1](attn.to_out[0](attended))
    if residual is None:
        return attended
    return residual + attended if out is None else torch.add(residual, attended, out=out)


def self_attention(attn: Attention, normed: torch.Tensor, residual: torch.Tensor,
                   out: torch.Tensor | None = None) -> torch.Tensor:
    """residual + attn(normed): through `attend` on the fast path (into `out` if given), diffusers' processor
    otherwise."""
    if fused.active() and fused.can_fold(attn):
        return attend(attn, normed, attn.to_k(normed), attn.to_v(normed), residual, out)
    return residual + attn(normed) if out is None else torch.add(residual, attn(normed), out=out)


def _out_bias(attn: Attention, like: torch.Tensor) -> torch.Tensor:
    bias = attn.to_out[0].bias
    return like.new_zeros(like.shape[-1]) if bias is None else bias.to(like.dtype)


def _attention(dim: int, heads: int, cross_dim: int | None = None) -> Attention:
    # SD/Hallo attention: no q/k/v bias, biased output projection, scale head_dim ** -0.5.
    return Attention(query_dim=dim, cross_attention_dim=cross_dim, heads=heads, dim_head=dim // heads, bias=False)


class ReferenceTransformerBlock(nn.Module):
    """SD transformer block with reference-attention, in one of two places.

    `reference_in_cross` False (Hallo, AnimateAnyone): attn1's queries are the frame tokens; its keys/values are
    the frame tokens followed by the reference tokens for rows that use them (rows without them - the
    unconditional CFG half - do plain self-attention). attn2: cross-attention to identity tokens.
    `reference_in_cross` True (EMO paper 3.2, "cross-attention layers ... take reference features rather than
    text embeddings"): attn1 is plain self-attention and attn2 cross-attends from the frame tokens to the
    reference tokens (rows without them skip it); there is no text slot. Then the GEGLU feed-forward.
    `reference_key` is this block's module path; ReferenceNet records under the same name.
    """

    def __init__(self, dim: int, heads: int, cross_attention_dim: int | None, cross_scale: float = 1.0,
                 reference_in_cross: bool = False):
        super().__init__()
        self.reference_key = ""
        self.reference_in_cross = reference_in_cross
        self.cross_scale = cross_scale  # EchoMimic: the audio in the cross-attention slot counts x 3.0
        # The reference tokens come from the same place of ReferenceNet: their width is this block's.
        cross_attention_dim = dim if reference_in_cross else cross_attention_dim
        self.norm1 = nn.LayerNorm(dim)
        self.attn1 = _attention(dim, heads)
        self.norm2 = nn.LayerNorm(dim) if cross_attention_dim else None
        self.attn2 = _attention(dim, heads, cross_attention_dim) if cross_attention_dim else None
        self.norm3 = nn.LayerNorm(dim)
        self.ff = FeedForward(dim, activation_fn="geglu")

    @property
    def reference_attention(self) -> Attention:
        """The attention whose keys/values include the reference tokens (fast path: projected once per video)."""
        return self.attn2 if self.reference_in_cross else self.attn1

    def forward(self, x: torch.Tensor, context: torch.Tensor | None, reference: torch.Tensor | None,
                plain: int = 0) -> torch.Tensor:
        """x: (rows, tokens, dim); context: (rows, T, D), or this block's ContextFold (fastpath); reference:
        (rows, R, dim); plain: leading rows that do not attend to the reference (the CFG unconditional half)."""
        if self.reference_in_cross:
            x = self_attention(self.attn1, self.norm1(x), x)
            x = self._reference_cross_attention(self.norm2(x), reference, plain, x)
            return feed_forward(self.ff, self.norm3, x)
        x = self._reference_attention(self.norm1(x), reference, plain, x)
        if self.attn2 is not None and context is not None:
            normed, attn = self.norm2(x), self.attn2
            if isinstance(context, ContextFold):  # fastpath: composed once per clip (models.context_fold)
                x = context.apply(normed, x)
            elif self.cross_scale == 1.0 and fused.active() and fused.can_fold(attn):
                x = attend(attn, normed, attn.to_k(context), attn.to_v(context), x)
            else:
                out = attn(normed, encoder_hidden_states=context)
                x = x + (out if self.cross_scale == 1.0 else self.cross_scale * out)
        return feed_forward(self.ff, self.norm3, x)

    def _reference_attention(self, normed, reference, plain: int, x):
        """x + attn1. reference: tokens (rows, R, dim), or their projected (key, value) pair (fastpath), or None."""
        # The rows are [plain; with reference], so slices split them: no mask, no host sync.
        if reference is None or plain >= normed.shape[0]:
            return self_attention(self.attn1, normed, x)
        rows = normed[plain:]
        if isinstance(reference, tuple):  # keys/values of the frame tokens, then of the reference tokens
            attn, (key, value) = self.attn1, reference
            # Fused: both CFG halves write their rows of one result (leading-row slices stay contiguous).
            out = torch.empty(x.shape, dtype=x.dtype, device=x.device) if plain and fused.active() else None
            with_ref = attend(attn, rows, torch.cat([attn.to_k(rows), key[plain:]], 1),
                              torch.cat([attn.to_v(rows), value[plain:]], 1), x[plain:],
                              None if out is None else out[plain:])
            if out is not None:
                self_attention(self.attn1, normed[:plain], x[:plain], out[:plain])
                return out
        else:
            with_ref = x[plain:] + self.attn1(rows, encoder_hidden_states=torch.cat([rows, reference[plain:]], 1))
        return with_ref if plain == 0 else torch.cat([self_attention(self.attn1, normed[:plain], x[:plain]),
                                                      with_ref])


    def _reference_cross_attention(self, normed, reference, plain: int, x):
        """x + attn2(normed -> reference) for the rows after `plain`; the first `plain` rows are returned as they
        are (no reference to attend to). reference: tokens (rows, R, dim), their (key, value) pair, or None."""
        if reference is None or plain >= normed.shape[0]:
            return x
        attn, rows = self.attn2, normed[plain:]
        if isinstance(reference, tuple):
            key, value = reference
            with_ref = attend(attn, rows, key[plain:], value[plain:], x[plain:])
        else:
            with_ref = x[plain:] + attn(rows, encoder_hidden_states=reference[plain:])
        return with_ref if plain == 0 else torch.cat([x[:plain], with_ref])


class SpatialTransformer(nn.Module):
    """GroupNorm -> 1x1 proj_in -> ReferenceTransformerBlock -> 1x1 proj_out -> residual, per frame."""

    def __init__(self, channels: int, heads: int, cross_attention_dim: int | None, groups: int,
                 cross_scale: float = 1.0, reference_in_cross: bool = False):
        super().__init__()
        inner = heads * (channels // heads)
        self.norm = nn.GroupNorm(groups, channels, eps=1e-6)
        self.proj_in = nn.Conv2d(channels, inner, 1)
        self.transformer_blocks = nn.ModuleList([ReferenceTransformerBlock(inner, heads, cross_attention_dim,
                                                                           cross_scale, reference_in_cross)])
        self.proj_out = nn.Conv2d(inner, channels, 1)

    def forward(self, x: torch.Tensor, context, reference, plain: int = 0) -> torch.Tensor:
        """x: (rows, C, h, w) with rows = batch * frames."""
        tokens = tokens_in(self.proj_in, self.norm(x))
        for block in self.transformer_blocks:
            tokens = block(tokens, context, reference, plain)
        return tokens_out(self.proj_out, tokens, x)


class AudioBlock(nn.Module):
    """Self-attention over the frame's tokens, audio cross-attention, feed-forward.

    `single` form (EMO): one cross-attention `attn2`. `hierarchical` form (Hallo): `attn2_0/1/2`
    gated by full/face/lip masks, each through a 1x1 zero-conv and weighted by motion_scale.
    """

    def __init__(self, dim: int, heads: int, head_dim: int, audio_dim: int, form: str):
        super().__init__()
        self.form = form
        self.norm1 = nn.LayerNorm(dim)
        self.attn1 = Attention(query_dim=dim, heads=heads, dim_head=head_dim, bias=False)
        self.norm2 = nn.LayerNorm(dim)
        cross = lambda: Attention(query_dim=dim, cross_attention_dim=audio_dim, heads=heads,  # noqa: E731
                                  dim_head=head_dim, bias=False)
        if form == "hierarchical":
            self.attn2_0, self.attn2_1, self.attn2_2 = cross(), cross(), cross()
            self.zero_conv_full = nn.Conv2d(dim, dim, 1)
            self.zero_conv_face = nn.Conv2d(dim, dim, 1)
            self.zero_conv_lip = nn.Conv2d(dim, dim, 1)
        else:
            self.attn2 = cross()
        self.norm3 = nn.LayerNorm(dim)
        self.ff = FeedForward(dim, activation_fn="geglu")

    def cross_attentions(self) -> tuple[Attention, ...]:
        return (self.attn2,) if self.form == "single" else (self.attn2_0, self.attn2_1, self.attn2_2)

    def project_audio(self, audio: torch.Tensor) -> AudioKV:
        """Keys/values of each audio cross-attention for audio rows (rows, T, A), and the hierarchical form's
        folded weights: constant over a clip's steps."""
        pairs = tuple((attn.to_k(audio), attn.to_v(audio)) for attn in self.cross_attentions())
        return AudioKV(pairs, self._fold() if self.form == "hierarchical" else None)

    def forward(self, x, audio, masks, motion_scale, kv: AudioKV | None = None, plain: int = 0):
        """x: (rows, L, dim); audio: (rows, T, A); masks: (full, face, lip) each (rows, L) or None.
        kv: `project_audio` of the rows after the first `plain` ones, whose audio is all zeros (fastpath)."""
        x = self_attention(self.attn1, self.norm1(x), x)
        normed = self.norm2(x)
        if kv is not None and self.form == "single":
            x = self._cached_single(normed, kv, plain, x)
        elif kv is not None:
            x = self._folded_hierarchical(normed, kv, plain, self._check_masks(masks), motion_scale, x)
        elif self.form == "single":
            x = x + self.attn2(normed, encoder_hidden_states=audio)
        else:
            x = x + self._hierarchical(normed, audio, self._check_masks(masks), motion_scale)
        return feed_forward(self.ff, self.norm3, x)

    @staticmethod
    def _check_masks(masks):
        if masks is None:
            raise InvalidInputError("this checkpoint's audio attention is hierarchical (Hallo) and needs "
                                    "full/face/lip masks; none were given")
        return masks

    def _branches(self) -> tuple[tuple[Attention, nn.Conv2d], ...]:
        return ((self.attn2_0, self.zero_conv_full), (self.attn2_1, self.zero_conv_face),
                (self.attn2_2, self.zero_conv_lip))

    def _hierarchical(self, normed, audio, masks, motion_scale):
        total = 0
        for i, ((attn, conv), mask) in enumerate(zip(self._branches(), masks)):
            out = conv1x1_tokens(conv, attn(normed, encoder_hidden_states=audio) * mask[:, :, None])
            total = total + (out if motion_scale is None else motion_scale[i] * out)
        return total

    # -- fast path: per-clip audio keys/values ----------------------------------------------------
    # Rows with all-zero audio (the CFG unconditional half) have zero keys and values (no bias), so their
    # attention output is exactly the output projection's bias: not computed.
    def _cached_single(self, normed, kv: AudioKV, plain: int, x):
        """x + the single audio cross-attention from cached keys/values."""
        (key, value), = kv.pairs
        with_audio = attend(self.attn2, normed[plain:], key, value, x[plain:])
        return torch.cat([x[:plain] + _out_bias(self.attn2, normed), with_audio]) if plain else with_audio

    def _folded_hierarchical(self, normed, kv: AudioKV, plain: int, masks, motion_scale, x):
        """x + the three gated audio branches through HierarchicalFold: one GEMM for the three queries, one for
        the three outputs (already through their convs, gated and summed), the constants as a rank-3 update."""
        fold, (rows, tokens, dim) = kv.fold, normed.shape
        scale = normed.new_ones(3) if motion_scale is None else motion_scale.to(normed.dtype)
        gates = torch.stack([m.to(normed.dtype) for m in masks], -1) * scale  # (rows, L, 3): s_i m_i per token
        out = (x + scale @ fold.bias).contiguous()
        flat = out.view(-1, dim)
        flat.addmm_(gates.reshape(-1, 3), fold.const)
        cond = rows - plain
        if cond == 0:
            return out
        heads = self.attn2_0.heads
        queries = F.linear(normed[plain:], fold.query)  # (cond, L, 3 * inner)
        inner = queries.shape[-1] // 3
        split = lambda t: t.reshape(cond, -1, heads, inner // heads).transpose(1, 2)  # noqa: E731
        attention = fused.sdpa if fused.active() else F.scaled_dot_product_attention
        gated = normed.new_empty(cond, tokens, 3, inner)
        for i, (key, value) in enumerate(kv.pairs):
            attended = attention(split(queries[..., i * inner:(i + 1) * inner]), split(key), split(value))
            gated[:, :, i] = attended.transpose(1, 2).reshape(cond, tokens, inner) * gates[plain:, :, i, None]
        flat[plain * tokens:].addmm_(gated.view(-1, 3 * inner), fold.out.t())
        return out

    def _fold(self) -> HierarchicalFold:
        """The composed weights (HierarchicalFold), kept while the weights stay the same (fused.derived)."""
        params = [p for attn, conv in self._branches()
                  for p in (attn.to_q.weight, attn.to_out[0].weight, attn.to_out[0].bias, conv.weight, conv.bias)]
        return fused.derived(self, "_emo_fold", params, lambda: HierarchicalFold.compose(self._branches()))


@dataclass
class HierarchicalFold:
    """Hallo's three audio branches with their output maps composed. Branch i, with attention output a_i, per-token
    mask m_i and scale s_i, adds s_i * conv_i(m_i * to_out_i(a_i)) = s_i m_i * (a_i W_i^T + c_i) + s_i b_i, where
    W_i = conv_i.W @ to_out_i.W, c_i = conv_i.W @ to_out_i.b and b_i = conv_i.b: linear maps compose and a per-token
    scalar commutes with them. So [s_0 m_0 a_0, s_1 m_1 a_1, s_2 m_2 a_2] @ [W_0 W_1 W_2]^T, one GEMM, replaces
    three output projections, three convs and their sum."""
    query: torch.Tensor  # (3 * inner, dim): the three to_q weights stacked
    out: torch.Tensor  # (dim, 3 * inner): W_0 W_1 W_2 side by side
    const: torch.Tensor  # (3, dim): c_i
    bias: torch.Tensor  # (3, dim): b_i

    @classmethod
    def compose(cls, branches) -> HierarchicalFold:
        dtype = branches[0][0].to_q.weight.dtype
        wide = torch.promote_types(dtype, torch.float32)  # composed in at least float32, stored in the weights'
        outs, consts, biases = [], [], []
        for attn, conv in branches:
            w_conv, proj = conv.weight.flatten(1).to(wide), attn.to_out[0]
            outs.append(w_conv @ proj.weight.to(wide))
            consts.append(w_conv @ proj.bias.to(wide) if proj.bias is not None else w_conv.new_zeros(len(w_conv)))
            biases.append(conv.bias.to(wide) if conv.bias is not None else w_conv.new_zeros(len(w_conv)))
        return cls(query=torch.cat([attn.to_q.weight for attn, _ in branches]),
                   out=torch.cat(outs, 1).to(dtype), const=torch.stack(consts).to(dtype),
                   bias=torch.stack(biases).to(dtype))


@dataclass
class AudioKV:
    """One audio block's per-clip cache: each cross-attention's (key, value) of the conditional audio rows
    (rows, T, inner), and for the hierarchical form the folded weights."""
    pairs: tuple[tuple[torch.Tensor, torch.Tensor], ...]
    fold: HierarchicalFold | None = None


class AudioModule(nn.Module):
    """Per-frame audio-attention layer placed after each spatial transformer.

    Hallo quirk kept for checkpoint compatibility: the inner width is heads * (in_channels // heads)
    where `in_channels` is the layer's input width, while the module maps `channels` in and out.
    `depth` selects the mask level: down i -> i, mid -> 3, up i -> 3 - i.
    """

    def __init__(self, channels: int, in_channels: int, heads: int, audio_dim: int, groups: int,
                 form: str, depth: int):
        super().__init__()
        head_dim = in_channels // heads
        inner = heads * head_dim
        self.depth = depth
        self.cache_key = ""  # its module path, set by DenoisingUNet
        self.norm = nn.GroupNorm(groups, channels, eps=1e-6)
        self.proj_in = nn.Conv2d(channels, inner, 1)
        self.transformer_blocks = nn.ModuleList([AudioBlock(inner, heads, head_dim, audio_dim, form)])
        self.proj_out = nn.Conv2d(inner, channels, 1)

    def forward(self, x, audio, masks, motion_scale, kv: dict | None = None, plain: int = 0):
        """x: (rows, C, h, w); audio: (rows, T, A); masks: per-level lists of (rows, h*w) or None;
        kv: per-clip audio keys/values by `cache_key` (fastpath), or None."""
        level = None if masks is None else tuple(m[self.depth] for m in masks)
        tokens = tokens_in(self.proj_in, self.norm(x))
        block_kv = None if kv is None else kv[self.cache_key]
        for block in self.transformer_blocks:
            tokens = block(tokens, audio, level, motion_scale, block_kv, plain)
        return tokens_out(self.proj_out, tokens, x)
