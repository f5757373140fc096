"""Fast-path convolutions of the denoising step: diffusers' ResnetBlock2D, Downsample2D and Upsample2D with the
same maths and fewer passes (inference only, like `fused`).

- `conv2d`: a convolution whose images each have at most SMALL_PIXELS output pixels runs on CPU as one GEMM of
  the unfolded input (im2col). oneDNN handles such maps badly: at 128 px the UNet's lowest level is 2x2, where
  (one thread) a 1280->1280 3x3 convolution of 32 images takes 96 ms as a convolution and 62 ms as a GEMM,
  2560->1280 318 vs 91 ms, and the 4x4->2x2 stride-2 downsampler 132 vs 55 ms; at 4x4 and larger oneDNN is
  faster (1280 channels at 4x4: 154 vs 208 ms), so those stay convolutions. The GEMM also multiplies the zero
  padding, like the convolution; the order of the sums differs, so results agree to float rounding.
- `resnet`: ResnetBlock2D with SiLU in place on the GroupNorm outputs, the time embedding added in place and the
  shortcut added into the second convolution's result (no division by an output scale factor of 1).
- `upsample_conv`: nearest 2x upsampling then a 3x3 convolution (diffusers' Upsample2D) as four 2x2
  convolutions of the small input, one per output pixel parity: 16 instead of 36 multiply-adds per output pixel
  and channel pair (on CPU, 2.0x faster at (32, 640, 8, 8) and (2, 640, 32, 32), 1.4x at (32, 1280, 2, 2)).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .fused import active, derived

SMALL_PIXELS = 4  # output pixels per image up to which a convolution runs as im2col + GEMM on CPU


def conv2d(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None, stride=(1, 1), padding=(0, 0),
           residual: torch.Tensor | None = None) -> torch.Tensor:
    """residual + F.conv2d(x, weight, bias, stride, padding) (groups 1, dilation 1, zero padding) for x (N, C, H, W);
    residual (N, O, Ho, Wo) or None."""
    kh, kw = weight.shape[-2:]
    out_h = (x.shape[-2] + 2 * padding[0] - kh) // stride[0] + 1
    out_w = (x.shape[-1] + 2 * padding[1] - kw) // stride[1] + 1
    if x.device.type != "cpu" or out_h * out_w > SMALL_PIXELS:
        y = F.conv2d(x, weight, bias, stride, padding)
        return y if residual is None else y.add_(residual)
    n, c = x.shape[:2]
    padded = F.pad(x, (padding[1], padding[1], padding[0], padding[0])) if any(padding) else x
    windows = padded.unfold(2, kh, stride[0]).unfold(3, kw, stride[1])  # (N, C, Ho, Wo, kh, kw)
    cols = windows.permute(0, 2, 3, 1, 4, 5).reshape(n * out_h * out_w, c * kh * kw)  # the weight's (C, kh, kw) order
    flat_weight = weight.reshape(weight.shape[0], -1).t()
    y = torch.mm(cols, flat_weight) if bias is None else torch.addmm(bias, cols, flat_weight)
    y = y.view(n, out_h, out_w, -1).permute(0, 3, 1, 2)
    return y.contiguous() if residual is None else residual + y


def conv(module: nn.Conv2d, x: torch.Tensor, residual: torch.Tensor | None = None) -> torch.Tensor:
    """residual + module(x) through `conv2d` where the module is a plain zero-padded convolution."""
    if not _plain_conv(module):
        y = module(x)
        return y if residual is None else y.add_(residual)
    return conv2d(x, module.weight, module.bias, module.stride, module.padding, residual)


def _plain_conv(module) -> bool:
    return (isinstance(module, nn.Conv2d) and module.groups == 1 and module.dilation == (1, 1)
            and module.padding_mode == "zeros" and isinstance(module.padding, tuple))


def can_resnet(block) -> bool:
    """diffusers ResnetBlock2D in the configuration the UNets here build (SiLU, GroupNorms, no resampling inside,
    time embedding added between the convolutions), under the fused kernels."""
    return (active() and block.upsample is None and block.downsample is None
            and block.time_embedding_norm == "default" and isinstance(block.nonlinearity, nn.SiLU)
            and isinstance(block.norm1, nn.GroupNorm) and isinstance(block.norm2, nn.GroupNorm)
            and (block.dropout.p == 0 or not block.training)
            and _plain_conv(block.conv1) and _plain_conv(block.conv2))


def resnet(block, x: torch.Tensor, temb: torch.Tensor | None) -> torch.Tensor:
    """block(x, temb) where can_resnet(block): x (N, C, H, W), temb (N, T) or None."""
    h = conv(block.conv1, F.silu(block.norm1(x), inplace=True))
    if temb is not None and block.time_emb_proj is not None:
        t = temb if block.skip_time_act else F.silu(temb)
        h += block.time_emb_proj(t)[:, :, None, None]
    h = F.silu(block.norm2(h), inplace=True)
    shortcut = x if block.conv_shortcut is None else conv(block.conv_shortcut, x)
    out = conv(block.conv2, h, residual=shortcut)
    return out if block.output_scale_factor == 1.0 else out.div_(block.output_scale_factor)


def downsample(down, x: torch.Tensor) -> torch.Tensor:
    """diffusers Downsample2D(x), its convolution through `conv` when it is a plain padded one."""
    if active() and down.norm is None and down.use_conv and down.padding != 0 and _plain_conv(down.conv):
        return conv(down.conv, x)
    return down(x)


# Which of a 3x3 kernel's taps land on each of the two input rows (or columns) an output pixel of parity 0 / 1
# reads after nearest 2x upsampling: parity 0 reads rows (i-1, i) with taps (0 | 1, 2), parity 1 reads (i, i+1)
# with taps (0, 1 | 2).
_TAPS = (((1.0, 0.0, 0.0), (0.0, 1.0, 1.0)), ((1.0, 1.0, 0.0), (0.0, 0.0, 1.0)))


def can_upsample_conv(upsampler, x: torch.Tensor, size) -> bool:
    """diffusers Upsample2D doing exactly nearest 2x then Conv2d(3x3, stride 1, padding 1), on CPU."""
    conv = getattr(upsampler, "conv", None)
    return (active() and x.device.type == "cpu" and upsampler.norm is None and not upsampler.use_conv_transpose
            and upsampler.interpolate and upsampler.use_conv and upsampler.name == "conv"
            and isinstance(conv, nn.Conv2d) and conv.kernel_size == (3, 3) and conv.stride == (1, 1)
            and conv.padding == (1, 1) and conv.dilation == (1, 1) and conv.groups == 1
            and (size is None or tuple(size) == (2 * x.shape[-2], 2 * x.shape[-1])))


def upsample_conv(upsampler, x: torch.Tensor) -> torch.Tensor:
    """upsampler(x) for x (N, C, h, w) -> (N, O, 2h, 2w) where can_upsample_conv: per parity (py, px) a 2x2
    convolution of x padded on the side that parity reads, then the four results interleaved."""
    conv = upsampler.conv
    kernels = derived(upsampler, "_emo_parity_kernels", (conv.weight,), lambda: _parity_kernels(conv.weight))
    n, _, h, w = x.shape
    rows = []
    for py in (0, 1):
        cols = [conv2d(F.pad(x, (1 - px, px, 1 - py, py)), kernels[py][px], conv.bias) for px in (0, 1)]
        rows.append(torch.stack(cols, -1))  # (N, O, h, w, 2)
    return torch.stack(rows, 3).reshape(n, -1, 2 * h, 2 * w)  # (N, O, h, 2, w, 2) -> interleaved


def _parity_kernels(weight: torch.Tensor) -> list[list[torch.Tensor]]:
    taps = [torch.tensor(t, dtype=torch.promote_types(weight.dtype, torch.float32), device=weight.device)
            for t in _TAPS]
    wide = weight.to(taps[0].dtype)
    return [[torch.einsum("ay,oiyx,bx->oiab", taps[py], wide, taps[px]).to(weight.dtype).contiguous()
             for px in (0, 1)] for py in (0, 1)]
