"""The identity cross-attention (Hallo's attn2) folded for a context of a few tokens per video.

attn2 attends from every frame token to the video's T identity tokens (Hallo: 4), the same for all frames of
the video. Per head h, with K_h, V_h the keys/values of those tokens, the attention is
    softmax(x W_q,h^T K_h^T * scale) V_h W_o,h^T
and both products with the tokens can be taken once per clip: x @ M with M = [W_q,h^T K_h^T * scale]_h (C x H*T)
gives all heads' scores, and the softmax weights @ [V_h W_o,h^T]_h (H*T x C) give the projected output. Per token
that is 2*H*T*C multiply-adds instead of 2*C^2 for to_q and to_out (H*T = 32 against C = 320..1280: 10-40x fewer),
and no per-frame copies of the keys and values.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from diffusers.models.attention_processor import Attention


@dataclass
class ContextFold:
    """One attn2's composed maps for V videos: query (V, C, H*T), value (V, H*T, C_out), bias (C_out,)."""
    query: torch.Tensor
    value: torch.Tensor
    bias: torch.Tensor
    heads: int

    @classmethod
    def compose(cls, attn: Attention, context: torch.Tensor) -> ContextFold:
        """context: (V, T, D) the per-video tokens (not repeated per frame)."""
        dtype = attn.to_q.weight.dtype
        wide = torch.promote_types(dtype, torch.float32)  # composed in at least float32, used in the weights'
        heads = attn.heads
        k, v = attn.to_k(context).to(wide), attn.to_v(context).to(wide)  # (V, T, inner)
        videos, tokens, inner = k.shape
        d = inner // heads
        k, v = k.view(videos, tokens, heads, d), v.view(videos, tokens, heads, d)
        w_q = attn.to_q.weight.to(wide).view(heads, d, -1)  # (H, d, C)
        w_o = attn.to_out[0].weight.to(wide).view(-1, heads, d)  # (C_out, H, d)
        query = torch.einsum("hdc,vthd->vcht", w_q, k).reshape(videos, w_q.shape[-1], heads * tokens) * attn.scale
        value = torch.einsum("vthd,ohd->vhto", v, w_o).reshape(videos, heads * tokens, w_o.shape[0])
        bias = attn.to_out[0].bias
        bias = torch.zeros(w_o.shape[0], dtype=wide, device=w_o.device) if bias is None else bias
        return cls(query.to(dtype).contiguous(), value.to(dtype).contiguous(), bias.to(dtype), heads)

    def apply(self, normed: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """x + attn2(normed) for rows (V * F, L, C), video-major (the rows of video v are v*F .. v*F + F-1)."""
        videos = self.query.shape[0]
        n = normed.shape[0] // videos * normed.shape[1]
        scores = torch.bmm(normed.reshape(videos, n, -1), self.query)  # (V, n, H*T)
        probs = scores.view(videos, n, self.heads, -1).softmax(-1).view(videos, n, -1)
        out = (x + self.bias).reshape(videos, n, -1)
        return out.baddbmm_(probs, self.value).view(x.shape)


def can_fold_context(attn: Attention | None) -> bool:
    """attn is a plain biasless-q/k/v cross-attention with a Linear -> Dropout(0) output (what ContextFold
    reproduces)."""
    return (attn is not None and attn.is_cross_attention and attn.to_q.bias is None and attn.to_k.bias is None
            and attn.to_v.bias is None and attn.rescale_output_factor == 1.0 and not attn.residual_connection
            and attn.norm_cross is None and attn.spatial_norm is None and attn.group_norm is None
            and not getattr(attn, "norm_q", None) and not getattr(attn, "norm_k", None))
