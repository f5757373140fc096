"""Fast-path convolutions of the denoising step: diffusers' ResnetBlock2D, Downsample2D and Upsample2D with the
same maths and fewer passes (inference only, like `fused`).

- `conv2d`: a convolution whose images each have at most SMALL_PIXELS output pixels runs on CPU as one GEMM of
  the unfolded input (im2col). oneDNN handles such maps badly: at 128 px the UNet's lowest level is 2x2, where
  (one thread) a 1280->1280 3x3 convolution of 32 images takes 96 ms as a convolution and 62 ms as a GEMM,
  2560->1280 318 vs 91 ms, and the 4x4->2x2 stride-2 downsampler 132 vs 55 ms; at 4x4 and larger oneDNN is
  faster than im2col (1280 channels at 4x4: 154 vs 208 ms), so im2col stops there. The GEMM also multiplies the
  zero padding, like the convolution; the order of the sums differs, so results agree to float rounding.
- `winograd`: a 3x3 "same" convolution of maps with 5 to 64 pixels (4x4 and 8x8) runs on CPU as Winograd
  F(2x2, 3x3): 16 instead of 36 multiply-adds per 2x2 output tile and channel pair, as 16 GEMMs, plus additions on
  the input and output tiles. It needs the filters transformed (16/9 the weight's size); doing that on every call
  costs about what it saves at 4x4, so `kept_filters` keeps them, up to WINOGRAD_CACHE_BYTES for all modules
  together; past that the convolutions stay oneDNN's. At 16x16 the transforms cost more than the GEMMs save.
- `resnet`: ResnetBlock2D with SiLU in place on the GroupNorm outputs, the time embedding added in place and the
  shortcut added into the second convolution's result (no division by an output scale factor of 1).
- `upsample_conv`: nearest 2x upsampling then a 3x3 convolution (diffusers' Upsample2D) as four 2x2
  convolutions of the small input, one per output pixel parity: 16 instead of 36 multiply-adds per output pixel
  and channel pair (on CPU, 2.0x faster at (32, 640, 8, 8) and (2, 640, 32, 32), 1.4x at (32, 1280, 2, 2)).
"""
from __future__ import annotations

import weakref

import torch
import torch.nn.functional as F
from torch import nn

from .fused import active, derived

SMALL_PIXELS = 4  # output pixels per image up to which a convolution runs as im2col + GEMM on CPU


def conv2d(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None, stride=(1, 1), padding=(0, 0),
           residual: torch.Tensor | None = None, filters=None) -> torch.Tensor:
    """residual + F.conv2d(x, weight, bias, stride, padding) (groups 1, dilation 1, zero padding) for x (N, C, H, W);
    residual (N, O, Ho, Wo) or None. filters: `winograd_filter(weight)`, to run a 3x3 convolution that
    `winograd_applies` to as Winograd, or None."""
    kh, kw = weight.shape[-2:]
    out_h = (x.shape[-2] + 2 * padding[0] - kh) // stride[0] + 1
    out_w = (x.shape[-1] + 2 * padding[1] - kw) // stride[1] + 1
    if filters is not None and winograd_applies(x, weight, stride, padding):
        return winograd(x, filters, bias, residual)
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
    filters = kept_filters(module) if winograd_applies(x, module.weight, module.stride, module.padding) else None
    return conv2d(x, module.weight, module.bias, module.stride, module.padding, residual, filters)


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


# Winograd F(2x2, 3x3) (Lavin and Gray, arXiv 1509.09308): each 2x2 output tile from a 4x4 input tile with 16
# multiplies per channel pair instead of 36. The transforms only add, subtract and halve, so the result agrees
# with the direct convolution to float rounding. Y = A^T [(G g G^T) * (B^T d B)] A, with B^T's rows
# (1, 0, -1, 0), (0, 1, 1, 0), (0, -1, 1, 0), (0, 1, 0, -1) applied as additions (`_combine`).
_G = ((1, 0, 0), (0.5, 0.5, 0.5), (0.5, -0.5, 0.5), (0, 0, 1))
_AT = ((1, 1, 1, 0), (0, 1, -1, -1))
WINOGRAD_PIXELS = 64  # output pixels per image up to which 3x3 convolutions run as Winograd on CPU
WINOGRAD_CACHE_BYTES = 2 ** 31  # the most memory all kept Winograd filters may take (16/9 of their weights):
# full-size Hallo keeps 1.60 GB at 128 px (1.26 at 4x4, 0.34 at 8x8); at 256 px it asks for 3.04 GB, 2 GiB are kept
_KEPT: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # conv module -> bytes of its kept filters


def winograd_applies(x: torch.Tensor, weight: torch.Tensor, stride, padding) -> bool:
    """A float32/64 3x3 stride-1 'same' convolution on CPU of even-sized maps with more than SMALL_PIXELS and at
    most WINOGRAD_PIXELS pixels. Measured (one thread, 32 images, filters kept, against oneDNN): 1280->1280 at 4x4
    213 -> 111 ms, 2560->1280 479 -> 190 ms; 640->640 at 8x8 150 -> 116 ms, 1920->640 405 -> 255 ms. At 16x16 the
    tile transforms, four times the input's size, outweigh the saved multiply-adds (320->320: 180 -> 210 ms)."""
    h, w = x.shape[-2:]
    return (x.device.type == "cpu" and x.dtype in (torch.float32, torch.float64) and weight.shape[-2:] == (3, 3)
            and tuple(stride) == (1, 1) and tuple(padding) == (1, 1) and h % 2 == 0 and w % 2 == 0
            and SMALL_PIXELS < h * w <= WINOGRAD_PIXELS)


def kept_filters(module: nn.Conv2d) -> torch.Tensor | None:
    """The module's Winograd filters, computed once and kept while its weight is unchanged (`derived`), as long as
    all modules' kept filters stay within WINOGRAD_CACHE_BYTES; None past that (the convolution stays oneDNN's).
    Transforming the filters on every call costs about what Winograd saves: this machine streams the 16/9-size
    copy of a 1280x1280 weight in ~80 ms, while the convolution it speeds up takes ~110 ms."""
    size = 16 * module.weight.shape[0] * module.weight.shape[1] * module.weight.element_size()
    if module not in _KEPT and sum(_KEPT.values()) + size > WINOGRAD_CACHE_BYTES:
        return None
    _KEPT[module] = size
    return derived(module, "_emo_winograd", (module.weight,), lambda: winograd_filter(module.weight))


def winograd_filter(weight: torch.Tensor) -> torch.Tensor:
    """(O, C, 3, 3) -> the 16 transformed filters G g G^T as (16, O, C)."""
    out_ch, in_ch = weight.shape[:2]
    g = torch.tensor(_G, dtype=weight.dtype, device=weight.device)
    return (torch.kron(g, g) @ weight.reshape(out_ch * in_ch, 9).t()).view(16, out_ch, in_ch)


def winograd(x: torch.Tensor, filters: torch.Tensor, bias: torch.Tensor | None,
             residual: torch.Tensor | None) -> torch.Tensor:
    """residual + conv3x3(x) + bias for x (N, C, H, W) with H, W even, filters from `winograd_filter`."""
    n, c, h, w = x.shape
    tiles = _input_tiles(x)  # (16, N * H/2 * W/2, C)
    products = torch.bmm(tiles, filters.transpose(1, 2))  # (16, tiles, O)
    if bias is not None:
        products[5].add_(bias)  # A^T e A with e at (1, 1) is all ones: the bias reaches every output once
    at = torch.tensor(_AT, dtype=x.dtype, device=x.device)
    out_ch = products.shape[-1]
    y = (torch.kron(at, at) @ products.view(16, -1)).view(2, 2, n, h // 2, w // 2, out_ch)
    y = y.permute(2, 5, 3, 0, 4, 1).reshape(n, out_ch, h, w) if residual is None else \
        torch.add(residual, y.permute(2, 5, 3, 0, 4, 1).reshape(n, out_ch, h, w))
    return y.contiguous()


def _input_tiles(x: torch.Tensor) -> torch.Tensor:
    """B^T d B of every 4x4 tile d (stride 2) of x zero-padded by 1, channels last: (16, tiles, C). Separable:
    the rows of B^T combine rows of the padded input, then the same combinations of their columns."""
    n, c, h, w = x.shape
    padded = x.new_zeros(n, h + 2, w + 2, c)
    padded[:, 1:-1, 1:-1] = x.permute(0, 2, 3, 1)
    out = x.new_empty(16, n, h // 2, w // 2, c)
    rows = [padded[:, i:i + h - 1:2] for i in range(4)]  # input rows 2t + i of output tile row t
    for r, combined in enumerate(_combine(rows)):
        cols = [combined[:, :, i:i + w - 1:2] for i in range(4)]
        _combine(cols, out[4 * r:4 * r + 4])
    return out.view(16, -1, c)


def _combine(d, out=None):
    """The rows of B^T applied to four tensors: (d0 - d2, d1 + d2, d2 - d1, d1 - d3), into out[0..3] if given."""
    ops = ((torch.sub, 0, 2), (torch.add, 1, 2), (torch.sub, 2, 1), (torch.sub, 1, 3))
    if out is None:
        return [op(d[a], d[b]) for op, a, b in ops]
    for k, (op, a, b) in enumerate(ops):
        op(d[a], d[b], out=out[k])
    return out
