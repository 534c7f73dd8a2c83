"""TensorFlow op semantics in torch, where they differ from torch's: what the ported TF.js graphs compute.

* :func:`resize_bilinear`: ``tf.image.resizeBilinear`` (TF.js CPU kernel): with
  ``half_pixel_centers`` the source coordinate is ``(i + 0.5) * in / out - 0.5`` (clamped at 0),
  which is ``F.interpolate(..., "bilinear", align_corners=False)``; without it (the TF 1 "legacy"
  mode, TF.js's default and the human library's pre-processing) it is ``i * in / out``, sampled
  from the top-left corner, which torch has no mode for. No antialiasing in either. (TF.js
  interpolates along x first, here along y first: the same values to float32 rounding, 5-10x faster.)
* :func:`upsample2x_legacy` (that resize at exactly 2x, faster) and :func:`max_pool` /
  :func:`max_pool_same` (max-pools as separable maxima: torch's CPU kernel is slow on wide NCHW maps);
* :class:`Conv2dSame`: a conv with TF ``SAME`` padding (output ``ceil(in / stride)``; for even
  inputs and stride 2 the extra row/column is padded at the bottom/right, not symmetric).
* :func:`hard_sigmoid` / :func:`hard_swish`: MobileNetV3's ``relu6(x + 3) / 6`` and ``x * relu6(x + 3) / 6``
  (Howard et al., ICCV 2019, Sec. 5.2) with the graph's own ``1/6`` constant: the TF.js shards store
  it as float16, ``0.1666259765625``, and the graph multiplies by that value.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

#: float16(1/6): the ``hard_swish/mul`` and ``squeeze_excite/.../mul`` constant of the float16 TF.js shards
HARD_SCALE = float(np.float16(1.0 / 6.0))
#: the ``add`` constant of hard-sigmoid/hard-swish (exact in float16)
HARD_OFFSET = 3.0


def hard_sigmoid(x: Tensor) -> Tensor:
    """``relu6(x + 3) * c`` with ``c`` = float16(1/6), as the graph computes it."""
    return F.relu6(x + HARD_OFFSET) * HARD_SCALE


def hard_swish(x: Tensor) -> Tensor:
    """``(c * x) * relu6(x + 3)`` with ``c`` = float16(1/6), in the graph's order of operations."""
    return (x * HARD_SCALE) * F.relu6(x + HARD_OFFSET)


def _source_index(out_size: int, in_size: int, half_pixel: bool, device: torch.device) -> tuple[Tensor, Tensor, Tensor]:
    """TF.js ``resizeBilinear`` sampling along one axis: (lower index, upper index, upper weight), each (out,)."""
    scale = in_size / out_size  # float64, as the JS kernel computes it
    src = torch.arange(out_size, dtype=torch.float64, device=device)
    src = (src + 0.5) * scale - 0.5 if half_pixel else src * scale
    lo = src.floor().clamp_min(0)
    frac = (src - lo).to(torch.float32)
    hi = src.ceil().clamp(0, in_size - 1)
    return lo.long(), hi.long(), frac


def resize_bilinear(x: Tensor, size: tuple[int, int], half_pixel_centers: bool) -> Tensor:
    """``tf.image.resizeBilinear(x, size, alignCorners=false, halfPixelCenters)`` of ``x`` (B, C, H, W)."""
    if half_pixel_centers:
        return F.interpolate(x, size=size, mode="bilinear", align_corners=False)
    h, w = x.shape[-2:]
    y0, y1, fy = _source_index(size[0], h, False, x.device)
    x0, x1, fx = _source_index(size[1], w, False, x.device)
    rows = torch.lerp(x[..., y0, :], x[..., y1, :], fy[:, None])  # (B, C, out_h, W): whole rows, contiguous
    return torch.lerp(rows[..., x0], rows[..., x1], fx)  # (B, C, out_h, out_w)


def upsample2x_legacy(x: Tensor) -> Tensor:
    """:func:`resize_bilinear` to twice the size without half-pixel centres, (B, C, H, W) -> (B, C, 2H, 2W).

    Sampling at ``i / 2``: even outputs copy ``x[i]``, odd ones are ``x[i] + (x[i + 1] - x[i]) / 2`` and
    the last repeats ``x[n - 1]``; computed with slices instead of gathers (the head of CenterNet).
    """
    nxt = torch.cat([x[..., 1:, :], x[..., -1:, :]], dim=-2)
    rows = torch.stack([x, x + (nxt - x) * 0.5], dim=-2).flatten(-3, -2)  # (B, C, 2H, W)
    nxt = torch.cat([rows[..., 1:], rows[..., -1:]], dim=-1)
    return torch.stack([rows, rows + (nxt - rows) * 0.5], dim=-1).flatten(-2)  # (B, C, 2H, 2W)


def max_pool(x: Tensor, kernel: int, stride: int, pad: int) -> Tensor:
    """``F.max_pool2d(x, kernel, stride, pad)`` (padding with -inf) of (B, C, H, W), as separable maxima.

    The same values; torch's CPU kernel is up to ~40x slower on NCHW maps (80 channels at 128 x 128).
    """
    p = F.pad(x, (pad, pad, pad, pad), value=-torch.inf)
    oh, ow = (p.shape[-2] - kernel) // stride + 1, (p.shape[-1] - kernel) // stride + 1
    rows = p[..., 0 : stride * (oh - 1) + 1 : stride, :]
    for d in range(1, kernel):
        rows = torch.maximum(rows, p[..., d : d + stride * (oh - 1) + 1 : stride, :])  # (B, C, oh, W + 2 pad)
    out = rows[..., 0 : stride * (ow - 1) + 1 : stride]
    for d in range(1, kernel):
        out = torch.maximum(out, rows[..., d : d + stride * (ow - 1) + 1 : stride])
    return out


def max_pool_same(x: Tensor, kernel: int) -> Tensor:
    """TF ``MaxPool`` with stride 1 and ``SAME`` padding (odd ``kernel``): :func:`max_pool` padded by ``kernel // 2``."""
    return max_pool(x, kernel, 1, kernel // 2)


class Conv2dSame(nn.Conv2d):
    """``nn.Conv2d`` with TF ``SAME`` padding computed from the input size (asymmetric when needed)."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, stride: int = 1, groups: int = 1,
                 bias: bool = True) -> None:  # fmt: skip
        super().__init__(in_channels, out_channels, kernel_size, stride=stride, padding=0, groups=groups, bias=bias)

    def forward(self, x: Tensor) -> Tensor:
        pads: list[int] = []
        for size, k, s in zip(reversed(x.shape[-2:]), reversed(self.kernel_size), reversed(self.stride)):
            total = max((math.ceil(size / s) - 1) * s + k - size, 0)
            pads += [total // 2, total - total // 2]  # (left, right) then (top, bottom)
        if pads[0] == pads[1] and pads[2] == pads[3]:  # symmetric: the conv pads itself, no copy
            return F.conv2d(x, self.weight, self.bias, self.stride, (pads[2], pads[0]), 1, self.groups)
        return super().forward(F.pad(x, pads))


#: activations the TF graphs fuse into or apply after a conv (``None``: linear)
ACTIVATIONS = ("relu", "relu6", "hswish")


class SameConvAct(nn.Module):
    """A TF conv (``SAME`` padding, optional bias, depthwise when ``groups == cin``) + its activation.

    ``act``: ``None``, ``"relu"``, ``"relu6"`` (fused into ``_FusedConv2D`` in the graphs) or ``"hswish"``
    (:func:`hard_swish`, separate ops after the conv).
    """

    def __init__(self, cin: int, cout: int, k: int = 1, stride: int = 1, depthwise: bool = False,
                 bias: bool = True, act: str | None = None) -> None:  # fmt: skip
        super().__init__()
        if act is not None and act not in ACTIVATIONS:
            raise ValueError(f"unknown activation {act!r}; use one of {ACTIVATIONS} or None")
        if depthwise and cin != cout:
            raise ValueError(f"a depthwise conv keeps the channels, got {cin} -> {cout}")
        self.conv = Conv2dSame(cin, cout, k, stride, groups=cin if depthwise else 1, bias=bias)
        self.act = act

    def forward(self, x: Tensor) -> Tensor:
        x = self.conv(x)
        if self.act == "relu":
            return F.relu(x)
        if self.act == "relu6":
            return F.relu6(x)
        if self.act == "hswish":
            return hard_swish(x)
        return x
