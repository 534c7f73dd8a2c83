"""TensorFlow op semantics in torch, where they differ from torch's: what the ported TF.js graphs compute.

* :func:`resize_bilinear`: ``tf.image.resizeBilinear`` (TF.js CPU kernel): with
  ``half_pixel_centers`` the source coordinate is ``(i + 0.5) * in / out - 0.5`` (clamped at 0),
  which is ``F.interpolate(..., "bilinear", align_corners=False)``; without it (the TF 1 "legacy"
  mode, TF.js's default and the human library's pre-processing) it is ``i * in / out``, sampled
  from the top-left corner, which torch has no mode for. No antialiasing in either.
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
    left = x.index_select(-1, x0)  # (B, C, H, out_w): along x first, as the TF.js kernel
    cols = left + (x.index_select(-1, x1) - left) * fx
    top = cols.index_select(-2, y0)  # (B, C, out_h, out_w)
    return top + (cols.index_select(-2, y1) - top) * fy[:, None]


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
        if any(pads):
            x = F.pad(x, pads)
        return super().forward(x)


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
