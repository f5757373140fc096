"""The fast path's kernels (emo_core.models.fused, feedforward) against the diffusers modules they replace."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from diffusers.models.attention import FeedForward
from torch import nn
from torch.testing import assert_close

from emo_core import fastpath
from emo_core.models import feedforward, fused, fused_conv
from emo_core.models import attention
from emo_core.models.attention import self_attention
from emo_core.models.motion import TemporalAttention


def test_feed_forward_in_chunks_equals_the_whole(monkeypatch):
    """Row chunks of the feed-forward give the same tokens as one pass (each token's maths is its own)."""
    torch.manual_seed(0)
    ff, norm = FeedForward(16, activation_fn="geglu").double(), nn.LayerNorm(16).double()
    x = torch.randn(3, 50, 16, dtype=torch.float64)
    monkeypatch.setattr(feedforward, "CHUNK_ELEMENTS", 8 * 16 * 20)  # 20-row chunks: 8 of them
    monkeypatch.setattr(feedforward, "MIN_CHUNK_ROWS", 1)
    assert feedforward.chunk_rows(150, 16) == 20
    calls = []
    hook = norm.register_forward_pre_hook(lambda m, a: calls.append(a[0].shape[0]))
    with torch.no_grad():
        chunked = feedforward.feed_forward(ff, norm, x)
        with fastpath.enabled(False):
            whole = feedforward.feed_forward(ff, norm, x)
    hook.remove()
    assert calls[:-1] == [20] * 7 + [10] and calls[-1] == 3  # fast: 8 chunks of rows; plain: one batch call
    assert_close(chunked, whole, atol=1e-12, rtol=1e-12)


def test_feed_forward_chunks_only_where_they_pay():
    """The deep levels' (1280 channels) weights are too big to re-read per chunk; few rows stay whole too."""
    assert feedforward.chunk_rows(9216, 320) >= feedforward.MIN_CHUNK_ROWS
    assert feedforward.chunk_rows(512, 1280) == 0
    assert feedforward.chunk_rows(100, 320) == 0


def test_linear_residual_is_residual_plus_linear_and_leaves_the_residual_alone():
    torch.manual_seed(1)
    lin = nn.Linear(12, 8).double()
    x, residual = torch.randn(5, 7, 12, dtype=torch.float64), torch.randn(5, 7, 8, dtype=torch.float64)
    before = residual.clone()
    out = fused.linear_residual(lin, x, residual)
    assert_close(out, residual + lin(x), atol=1e-12, rtol=1e-12)
    assert torch.equal(residual, before)
    sliced = torch.randn(5, 9, 8, dtype=torch.float64)[:, 2:]  # a non-contiguous residual (motion frames dropped)
    assert_close(fused.linear_residual(lin, x, sliced), sliced + lin(x), atol=1e-12, rtol=1e-12)


def test_geglu_in_two_gemms_equals_diffusers():
    torch.manual_seed(4)
    ff = FeedForward(12, activation_fn="geglu").double()
    x = torch.randn(2, 9, 12, dtype=torch.float64)
    assert_close(fused.geglu(ff.net[0], x), ff.net[0](x), atol=1e-12, rtol=1e-12)


def test_linear_residual_writes_into_a_slice_of_a_larger_result():
    torch.manual_seed(5)
    lin = nn.Linear(6, 4).double()
    x, residual = torch.randn(3, 5, 6, dtype=torch.float64), torch.randn(3, 5, 4, dtype=torch.float64)
    whole = torch.full((5, 5, 4), float("nan"), dtype=torch.float64)
    with torch.no_grad():  # the fused kernels run without autograd only (fused.active())
        returned = fused.linear_residual(lin, x, residual, whole[2:])
    assert returned.data_ptr() == whole[2:].data_ptr()
    assert_close(whole[2:], residual + lin(x), atol=1e-12, rtol=1e-12)
    assert torch.isnan(whole[:2]).all()  # nothing written outside its rows


@pytest.mark.parametrize("keys", [3, 18, fused.SHORT_KEYS + 5])
def test_short_attention_equals_sdpa(keys):
    torch.manual_seed(2)
    q, k, v = (torch.randn(4, 2, n, 8, dtype=torch.float64) for n in (keys, keys, keys))
    assert_close(fused.sdpa(q, k, v), F.scaled_dot_product_attention(q, k, v), atol=1e-12, rtol=1e-12)


def test_fused_attention_equals_diffusers_and_stays_off_for_training():
    torch.manual_seed(3)
    attn = TemporalAttention(16, 2, 32).double()
    norm = nn.LayerNorm(16).double()
    x = torch.randn(6, 18, 16, dtype=torch.float64)
    with torch.no_grad():
        assert fused.active()
        fast = attn.residual(norm(x), x)
        with fastpath.enabled(False):
            plain = attn.residual(norm(x), x)
    assert_close(fast, plain, atol=1e-12, rtol=1e-12)
    assert not fused.active()  # autograd on: the plain modules run (dropout, training)
    assert_close(self_attention(attn, norm(x), x), x + attn(norm(x)))


@pytest.mark.parametrize("size", [(1, 1), (2, 3), (5, 4)])
def test_upsample_conv_by_parity_equals_diffusers_upsample(size):
    """Nearest 2x then 3x3 conv == four 2x2 convs of the small input, interleaved (any size, borders included)."""
    from diffusers.models.resnet import Upsample2D

    torch.manual_seed(6)
    up = Upsample2D(6, use_conv=True, out_channels=5).double()
    x = torch.randn(3, 6, *size, dtype=torch.float64)
    with torch.no_grad():
        assert fused_conv.can_upsample_conv(up, x, None)
        assert fused_conv.can_upsample_conv(up, x, (2 * size[0], 2 * size[1]))
        assert not fused_conv.can_upsample_conv(up, x, (2 * size[0] + 1, 2 * size[1]))  # odd target: diffusers' path
        assert_close(fused_conv.upsample_conv(up, x), up(x), atol=1e-12, rtol=1e-12)


def test_derived_weights_are_rebuilt_when_the_weights_change():
    from diffusers.models.resnet import Upsample2D

    torch.manual_seed(7)
    up = Upsample2D(4, use_conv=True, out_channels=4).double()
    x = torch.randn(2, 4, 3, 3, dtype=torch.float64)
    with torch.no_grad():
        fused_conv.upsample_conv(up, x)
        up.conv.weight.mul_(2.0)  # an optimiser step or a load writes in place: the cached kernels must follow
        assert_close(fused_conv.upsample_conv(up, x), up(x), atol=1e-12, rtol=1e-12)


def test_derived_weights_work_on_inference_tensors():
    """ComfyUI creates and runs models under torch.inference_mode: their weights have no version counter."""
    from diffusers.models.resnet import Upsample2D

    torch.manual_seed(8)
    with torch.inference_mode():
        up = Upsample2D(4, use_conv=True, out_channels=4).double()
        x = torch.randn(2, 4, 3, 3, dtype=torch.float64)
        assert fused_conv.can_upsample_conv(up, x, None)
        assert_close(fused_conv.upsample_conv(up, x), up(x), atol=1e-12, rtol=1e-12)


def test_context_fold_equals_the_identity_cross_attention():
    """attn2 to a few per-video tokens == one GEMM to all heads' scores and one to the projected output."""
    from emo_core.models.attention import attend
    from emo_core.models.context_fold import ContextFold, can_fold_context
    from diffusers.models.attention_processor import Attention

    torch.manual_seed(8)
    attn = Attention(query_dim=24, cross_attention_dim=12, heads=3, dim_head=8, bias=False).double()
    videos, frames, tokens = 2, 3, 5
    context = torch.randn(videos, 4, 12, dtype=torch.float64)
    normed = torch.randn(videos * frames, tokens, 24, dtype=torch.float64)
    x = torch.randn_like(normed)
    with torch.no_grad():
        assert can_fold_context(attn)
        rows = context.repeat_interleave(frames, 0)  # what the plain path feeds attn2: the tokens per frame row
        want = x + attn(normed, encoder_hidden_states=rows)
        got = ContextFold.compose(attn, context).apply(normed, x)
        assert_close(got, want, atol=1e-12, rtol=1e-12)
        assert_close(attend(attn, normed, attn.to_k(rows), attn.to_v(rows), x), want, atol=1e-12, rtol=1e-12)
    assert not can_fold_context(Attention(query_dim=24, heads=3, dim_head=8))  # self-attention: nothing to fold


@pytest.mark.parametrize("attention_blocks, speed", [(1, False), (2, False), (2, True)])
def test_motion_constants_give_the_joined_temporal_module(attention_blocks, speed):
    """Precomputing the motion frames' GroupNorm, proj_in and first-attention projections, and giving the
    dropped motion frames no queries in the last attention, changes nothing in the current frames' output."""
    from emo_core.config import MotionConfig
    from emo_core.models.motion import MotionModule

    torch.manual_seed(9)
    cfg = MotionConfig(heads=2, attention_blocks=attention_blocks, num_blocks=1, norm_num_groups=4, max_len=16)
    module = MotionModule(16, cfg, 8 if speed else None, speed_across_frames=True).double().eval()
    for p in module.parameters():
        torch.nn.init.normal_(p, std=0.3)
    b, n, f, h, w = 2, 3, 5, 2, 3
    x = torch.randn(b, 16, f, h, w, dtype=torch.float64)
    motion_tokens = torch.randn(b, n, h * w, 16, dtype=torch.float64)  # ReferenceFeatures.motion layout
    motion = motion_tokens.permute(0, 3, 1, 2).reshape(b, 16, n, h, w)
    tokens = torch.randn(b, f, 4, 8, dtype=torch.float64) if speed else None
    with torch.no_grad():
        with fastpath.enabled(False):
            plain = module(x, motion, tokens)
        const = module.temporal_transformer.motion_constants(motion_tokens)
        fast = module(x, None, tokens, const)
        joined = module(x, motion, tokens)  # fast path without constants: motion rows skip the last attention's queries
    assert fast.shape == plain.shape == x.shape
    assert_close(fast, plain, atol=1e-12, rtol=1e-12)
    assert_close(joined, plain, atol=1e-12, rtol=1e-12)


@pytest.mark.parametrize("queries, keys", [(5, 5), (4, 7), (6, fused.SHORT_KEYS + 3)])
def test_attention_on_projections_equals_sdpa_over_split_heads(queries, keys):
    """Per-head GEMMs on strided views (short keys) and SDPA (long keys) both equal diffusers' head split."""
    torch.manual_seed(9)
    heads, dim = 3, 4
    q = torch.randn(6, queries, heads * dim, dtype=torch.float64)
    k, v = (torch.randn(6, keys, heads * dim, dtype=torch.float64) for _ in range(2))
    split = lambda t: t.reshape(6, -1, heads, dim).transpose(1, 2)  # noqa: E731
    want = F.scaled_dot_product_attention(split(q), split(k), split(v)).transpose(1, 2).reshape(6, queries, -1)
    assert_close(fused.attention(q, k, v, heads), want, atol=1e-12, rtol=1e-12)


@pytest.mark.parametrize("size", [(8, 8), (16, 6), (4, 4), (2, 6)])
def test_token_layout_in_and_out_equals_the_1x1_convolutions(size, monkeypatch):
    """proj_in / proj_out of the spatial and audio modules: GEMMs on large-enough maps (no convolution), the
    convolution below TOKEN_GEMM_PIXELS and on the plain path; the same values, contiguous tokens."""
    torch.manual_seed(11)
    proj_in, proj_out = nn.Conv2d(6, 10, 1).double(), nn.Conv2d(10, 6, 1).double()
    x = torch.randn(3, 6, *size, dtype=torch.float64)
    tokens = torch.randn(3, size[0] * size[1], 10, dtype=torch.float64)
    with torch.no_grad(), fastpath.enabled(False):
        want_in = proj_in(x).flatten(2).transpose(1, 2)
        want_out = proj_out(tokens.transpose(1, 2).reshape(3, 10, *size)) + x
        assert_close(attention.tokens_in(proj_in, x), want_in, atol=0, rtol=0)
    calls, real = [], F.conv2d
    monkeypatch.setattr(torch.nn.modules.conv.F, "conv2d", lambda *a, **k: calls.append(1) or real(*a, **k))
    with torch.no_grad():
        got_in, got_out = attention.tokens_in(proj_in, x), attention.tokens_out(proj_out, tokens, x)
    gemm = size[0] * size[1] >= attention.TOKEN_GEMM_PIXELS
    assert len(calls) == (0 if gemm else 2)
    assert got_out.shape == x.shape and (got_in.is_contiguous() or not gemm)
    assert_close(got_in, want_in, atol=1e-12, rtol=1e-12)
    assert_close(got_out, want_out, atol=1e-12, rtol=1e-12)
