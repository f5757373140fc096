"""The fast path's convolutions (emo_core.models.fused_conv) against the torch / diffusers modules they replace."""
from __future__ import annotations

import gc

import pytest
import torch
import torch.nn.functional as F
from diffusers.models.resnet import Downsample2D, ResnetBlock2D
from torch.testing import assert_close

from emo_core import fastpath
from emo_core.models import fused_conv


def _count_convolutions(monkeypatch) -> list:
    """Record each F.conv2d call fused_conv makes (the GEMM path makes none)."""
    calls, real = [], F.conv2d
    monkeypatch.setattr(fused_conv.F, "conv2d", lambda *a, **k: calls.append(a[0].shape) or real(*a, **k))
    return calls


@pytest.mark.parametrize("size, kernel, stride, padding", [
    ((2, 2), 3, 1, 1), ((1, 1), 3, 1, 1), ((4, 4), 3, 2, 1), ((2, 1), 3, 1, 1), ((2, 2), 1, 1, 0),
    ((3, 3), 2, 1, 0), ((5, 4), 3, 2, 1)])
def test_small_convolutions_run_as_one_gemm_and_equal_conv2d(size, kernel, stride, padding, monkeypatch):
    torch.manual_seed(0)
    x = torch.randn(5, 6, *size, dtype=torch.float64)
    w, b = torch.randn(7, 6, kernel, kernel, dtype=torch.float64), torch.randn(7, dtype=torch.float64)
    residual = torch.randn_like(F.conv2d(x, w, b, stride, padding))
    want = F.conv2d(x, w, b, stride, padding)
    calls = _count_convolutions(monkeypatch)
    got = fused_conv.conv2d(x, w, b, (stride, stride), (padding, padding))
    with_residual = fused_conv.conv2d(x, w, None, (stride, stride), (padding, padding), residual)
    out_pixels = want.shape[-1] * want.shape[-2]
    assert len(calls) == (0 if out_pixels <= fused_conv.SMALL_PIXELS else 2)
    assert got.is_contiguous() and with_residual.is_contiguous()
    assert_close(got, want, atol=1e-12, rtol=1e-12)
    assert_close(with_residual, residual + F.conv2d(x, w, None, stride, padding), atol=1e-12, rtol=1e-12)


def test_float32_gemm_convolution_agrees_to_rounding():
    torch.manual_seed(1)
    x, w, b = torch.randn(8, 64, 2, 2), torch.randn(32, 64, 3, 3) * 0.05, torch.randn(32)
    assert_close(fused_conv.conv2d(x, w, b, (1, 1), (1, 1)), F.conv2d(x, w, b, 1, 1), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("c_in, c_out, size", [(8, 8, (2, 2)), (12, 8, (2, 2)), (8, 8, (6, 5)), (8, 12, (1, 1)),
                                                (8, 8, (4, 4)), (12, 8, (2, 6)), (12, 8, (8, 8))])
@pytest.mark.parametrize("scale, skip_time_act", [(1.0, False), (2.0, True)])
def test_fused_resnet_equals_diffusers_and_leaves_its_input_alone(c_in, c_out, size, scale, skip_time_act):
    torch.manual_seed(2)
    block = ResnetBlock2D(in_channels=c_in, out_channels=c_out, temb_channels=10, groups=4,
                          output_scale_factor=scale, skip_time_act=skip_time_act).double().eval()
    x, temb = torch.randn(6, c_in, *size, dtype=torch.float64), torch.randn(6, 10, dtype=torch.float64)
    before = x.clone()
    with torch.no_grad():
        assert fused_conv.can_resnet(block)
        got = fused_conv.resnet(block, x, temb)
        want = block(x, temb)
    assert_close(got, want, atol=1e-12, rtol=1e-12)
    assert torch.equal(x, before)


def test_fused_resnet_is_off_for_training_and_the_plain_path():
    block = ResnetBlock2D(in_channels=8, out_channels=8, temb_channels=10, groups=4)
    assert not fused_conv.can_resnet(block)  # autograd on
    with torch.no_grad():
        assert fused_conv.can_resnet(block)
        with fastpath.enabled(False):
            assert not fused_conv.can_resnet(block)
        block.dropout.p = 0.1  # a training-mode dropout would drop: diffusers' forward runs it
        assert not fused_conv.can_resnet(block)
        block.eval()
        assert fused_conv.can_resnet(block)


@pytest.mark.parametrize("size", [(4, 4), (3, 5), (16, 16)])
def test_fused_downsample_equals_diffusers(size, monkeypatch):
    torch.manual_seed(3)
    down = Downsample2D(6, use_conv=True, out_channels=6, padding=1, name="op").double()
    x = torch.randn(4, 6, *size, dtype=torch.float64)
    with torch.no_grad():
        want = down(x)
        calls = _count_convolutions(monkeypatch)
        got = fused_conv.downsample(down, x)
    assert_close(got, want, atol=1e-12, rtol=1e-12)
    assert len(calls) == (0 if want.shape[-1] * want.shape[-2] <= fused_conv.SMALL_PIXELS else 1)


@pytest.mark.parametrize("size", [(4, 4), (2, 4), (6, 2), (2, 8), (8, 8), (6, 10)])
def test_winograd_convolutions_equal_conv2d_without_calling_it(size, monkeypatch):
    torch.manual_seed(4)
    x = torch.randn(3, 6, *size, dtype=torch.float64)
    w, b = torch.randn(5, 6, 3, 3, dtype=torch.float64), torch.randn(5, dtype=torch.float64)
    residual = torch.randn(3, 5, *size, dtype=torch.float64)
    assert fused_conv.winograd_applies(x, w, (1, 1), (1, 1))
    filters = fused_conv.winograd_filter(w)
    calls = _count_convolutions(monkeypatch)
    got = fused_conv.conv2d(x, w, b, (1, 1), (1, 1), filters=filters)
    bare = fused_conv.conv2d(x, w, None, (1, 1), (1, 1), filters=filters)
    with_residual = fused_conv.conv2d(x, w, b, (1, 1), (1, 1), residual, filters)
    monkeypatch.undo()
    assert calls == []
    assert got.is_contiguous() and bare.is_contiguous() and with_residual.is_contiguous()
    assert_close(got, F.conv2d(x, w, b, 1, 1), atol=1e-12, rtol=1e-12)
    assert_close(bare, F.conv2d(x, w, None, 1, 1), atol=1e-12, rtol=1e-12)
    assert_close(with_residual, residual + F.conv2d(x, w, b, 1, 1), atol=1e-12, rtol=1e-12)


@pytest.mark.parametrize("size, kernel, stride, padding, dtype", [
    ((5, 4), 3, 1, 1, torch.float64),  # odd rows: no 2x2 tiling
    ((10, 8), 3, 1, 1, torch.float64),  # more pixels than WINOGRAD_PIXELS
    ((6, 6), 3, 2, 1, torch.float64),  # strided
    ((6, 6), 3, 1, 0, torch.float64),  # not "same"
    ((4, 4), 1, 1, 0, torch.float64),  # 1x1
    ((4, 4), 3, 1, 1, torch.bfloat16),  # half precision keeps oneDNN's accumulation
])
def test_other_convolutions_stay_convolutions(size, kernel, stride, padding, dtype, monkeypatch):
    torch.manual_seed(5)
    x = torch.randn(2, 4, *size).to(dtype)
    w, b = (torch.randn(3, 4, kernel, kernel) * 0.2).to(dtype), torch.randn(3).to(dtype)
    assert not fused_conv.winograd_applies(x, w, (stride, stride), (padding, padding))
    calls = _count_convolutions(monkeypatch)
    filters = fused_conv.winograd_filter(w) if kernel == 3 else None
    got = fused_conv.conv2d(x, w, b, (stride, stride), (padding, padding), filters=filters)
    monkeypatch.undo()
    assert len(calls) == 1
    assert torch.equal(got, F.conv2d(x, w, b, stride, padding))


def test_float32_winograd_agrees_to_rounding():
    torch.manual_seed(6)
    x, w, b = torch.randn(4, 64, 4, 4), torch.randn(32, 64, 3, 3) * 0.05, torch.randn(32)
    got = fused_conv.conv2d(x, w, b, (1, 1), (1, 1), filters=fused_conv.winograd_filter(w))
    assert_close(got, F.conv2d(x, w, b, 1, 1), atol=1e-5, rtol=1e-5)


def test_a_modules_winograd_filters_are_kept_until_its_weight_changes():
    torch.manual_seed(7)
    module = torch.nn.Conv2d(6, 5, 3, padding=1).double()
    x = torch.randn(2, 6, 4, 4, dtype=torch.float64)
    with torch.no_grad():
        fused_conv.conv(module, x)
        kept = module.__dict__["_emo_winograd"][1]
        fused_conv.conv(module, x)
        assert module.__dict__["_emo_winograd"][1] is kept
        module.weight.mul_(-2.0)  # e.g. a LoRA patch applied in place
        got = fused_conv.conv(module, x)
    assert module.__dict__["_emo_winograd"][1] is not kept
    assert_close(got, F.conv2d(x, module.weight, module.bias, 1, 1), atol=1e-12, rtol=1e-12)


def test_kept_winograd_filters_stay_within_their_memory_budget(monkeypatch):
    torch.manual_seed(8)
    first, second = (torch.nn.Conv2d(6, 5, 3, padding=1).double() for _ in range(2))
    size = 16 * 5 * 6 * 8  # bytes of one module's filters
    monkeypatch.setattr(fused_conv, "_KEPT", fused_conv.weakref.WeakKeyDictionary())
    monkeypatch.setattr(fused_conv, "WINOGRAD_CACHE_BYTES", size + size // 2)
    x = torch.randn(2, 6, 4, 4, dtype=torch.float64)
    with torch.no_grad():
        fused_conv.conv(first, x)
        calls = _count_convolutions(monkeypatch)
        got = fused_conv.conv(second, x)  # over the budget: oneDNN's convolution, nothing kept
        assert len(calls) == 1 and "_emo_winograd" not in second.__dict__
        del first
        gc.collect()  # a freed module's filters leave the budget with it
        again = fused_conv.conv(second, x)
        assert len(calls) == 1 and "_emo_winograd" in second.__dict__
    monkeypatch.undo()
    want = F.conv2d(x, second.weight, second.bias, 1, 1)
    assert_close(got, want, atol=1e-12, rtol=1e-12)
    assert_close(again, want, atol=1e-12, rtol=1e-12)
