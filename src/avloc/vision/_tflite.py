"""TFLite operator semantics in torch, MediaPipe's image-to-tensor warp, and the zoo loader.

Shared by the MediaPipe ports (:mod:`avloc.vision.segmentation`, :mod:`avloc.vision.pose`).

* :class:`TFConv2d`: a TFLite ``CONV_2D`` / ``DEPTHWISE_CONV_2D`` with TensorFlow's padding rules
  (``SAME``: ``pad = max((ceil(n / s) - 1) * s + k - n, 0)``, the smaller half before, so stride-2
  layers pad only after; ``VALID``; or explicit pads from a preceding ``PAD`` op) and its activation.
* :class:`TransposeConvBias`: MediaPipe's custom op ``Convolution2DTransposeBias``
  (``mediapipe/util/tflite/operations/transpose_conv_bias.cc``): every input pixel scatters
  ``w[o, ky, kx, i] * x[i]`` to output ``(y * s - pad + ky, x * s - pad + kx)``, then the bias is added;
  the same sum as ``torch.nn.functional.conv_transpose2d`` (no kernel flip).
* :func:`depth_to_space`: TFLite's ``DEPTH_TO_SPACE`` (NHWC channel order ``(i * bs + j) * C + c``,
  not ``torch.pixel_shuffle``'s ``c * bs^2 + i * bs + j``).
* :func:`warp_rois`: MediaPipe's ``ImageToTensorCalculator`` on the CPU (OpenCV): a rotated rectangle
  of the image is mapped onto the tensor with its corners on the tensor's corners
  (``cv::getPerspectiveTransform`` from ``cv::boxPoints`` to ``(0, 0), (w, 0), (w, h), (0, h)``),
  sampled bilinearly (``cv::warpPerspective``, ``INTER_LINEAR``), with a zero or replicated border.
* :func:`load_zoo_weights`: the safetensors of a port from ``avloc/zoo`` (``importlib.resources``).

Weights of the MediaPipe models are float16 in the TFLite files (``DEQUANTIZE`` to float32 at load,
float32 arithmetic); the zoo files keep them float16 (lossless), the modules compute in float32.
"""

from __future__ import annotations

import enum
import importlib.resources
import math
from collections.abc import Sequence
from pathlib import Path
from typing import TypeVar

import torch
import torch.nn.functional as F
from torch import nn

from avloc.errors import CheckpointError, DataError

#: How a layer's input is padded: TensorFlow's "same" or "valid", or explicit (top, bottom, left, right).
Padding = str | tuple[int, int, int, int]


class Act(enum.Enum):
    """Activation after a layer: fused into the TFLite op or the op that alone consumes its output."""

    NONE = "none"
    RELU = "relu"
    RELU6 = "relu6"
    HARD_SWISH = "hard_swish"  # x * relu6(x + 3) / 6 (TFLite HARD_SWISH)
    SIGMOID = "sigmoid"  # TFLite LOGISTIC


def activate(x: torch.Tensor, act: Act) -> torch.Tensor:
    """``act`` applied to ``x``."""
    if act is Act.RELU:
        return F.relu(x)
    if act is Act.RELU6:
        return F.relu6(x)
    if act is Act.HARD_SWISH:
        return F.hardswish(x)
    if act is Act.SIGMOID:
        return torch.sigmoid(x)
    return x


def same_pads(size: int, kernel: int, stride: int) -> tuple[int, int]:
    """TensorFlow ``SAME`` padding (before, after) of one axis of length ``size``."""
    out = math.ceil(size / stride)
    total = max((out - 1) * stride + kernel - size, 0)
    return total // 2, total - total // 2


class TFConv2d(nn.Module):
    """A TFLite convolution (regular or depthwise) with its padding and activation (module doc).

    ``weight`` is (out, in / groups, k, k) in torch's layout; the converter maps TFLite's
    (out, k, k, in) for ``CONV_2D`` and (1, k, k, channels) for ``DEPTHWISE_CONV_2D``.
    """

    def __init__(self, cin: int, cout: int, kernel: int, stride: int = 1, *, depthwise: bool = False,
                 padding: Padding = "same", act: Act = Act.NONE) -> None:  # fmt: skip
        super().__init__()
        if depthwise and cin != cout:
            raise ValueError(f"a depthwise layer keeps its channels, got {cin} -> {cout}")
        if isinstance(padding, str) and padding not in ("same", "valid"):
            raise ValueError(f"padding must be 'same', 'valid' or 4 ints, got {padding!r}")
        self.kind = "depthwise" if depthwise else "conv"
        self.kernel, self.stride, self.padding, self.act = kernel, stride, padding, act
        self.groups = cin if depthwise else 1
        self.weight = nn.Parameter(torch.zeros(cout, cin // self.groups, kernel, kernel))
        self.bias = nn.Parameter(torch.zeros(cout))

    def _pads(self, h: int, w: int) -> tuple[int, int, int, int]:
        if self.padding == "valid":
            return 0, 0, 0, 0
        if self.padding == "same":
            return (*same_pads(h, self.kernel, self.stride), *same_pads(w, self.kernel, self.stride))
        assert isinstance(self.padding, tuple)
        return self.padding

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, C, H, W) -> (B, O, H', W')
        top, bottom, left, right = self._pads(x.shape[-2], x.shape[-1])
        if top == bottom and left == right:
            y = F.conv2d(x, self.weight, self.bias, self.stride, (top, left), groups=self.groups)
        else:
            y = F.conv2d(F.pad(x, (left, right, top, bottom)), self.weight, self.bias, self.stride, groups=self.groups)
        return activate(y, self.act)


class TransposeConvBias(nn.Module):
    """MediaPipe's ``Convolution2DTransposeBias`` custom op with ``SAME`` padding (module doc).

    ``weight`` is (in, out, k, k) (torch's ``conv_transpose2d`` layout; TFLite stores (out, k, k, in)).
    The output is ``stride`` times the input; the models here use ``kernel == stride``, where ``SAME``
    pads nothing.
    """

    def __init__(self, cin: int, cout: int, kernel: int, stride: int, act: Act = Act.NONE) -> None:
        super().__init__()
        if kernel < stride:
            raise ValueError(f"Convolution2DTransposeBias: kernel {kernel} < stride {stride} is not reproduced")
        self.kind = "transpose"
        self.kernel, self.stride, self.padding, self.act = kernel, stride, "same", act
        self.weight = nn.Parameter(torch.zeros(cin, cout, kernel, kernel))
        self.bias = nn.Parameter(torch.zeros(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, I, H, W) -> (B, O, s H, s W)
        # SAME: out = in * s; the full output is (in - 1) * s + k long, the surplus k - s is cut,
        # the smaller half at the start (TFLite's ComputePadding for transposed convolutions).
        y = F.conv_transpose2d(x, self.weight, self.bias, self.stride)
        surplus = self.kernel - self.stride
        start = surplus // 2
        h, w = x.shape[-2] * self.stride, x.shape[-1] * self.stride
        return activate(y[..., start : start + h, start : start + w], self.act)


def resize2x(x: torch.Tensor) -> torch.Tensor:
    """TFLite ``RESIZE_BILINEAR`` to twice the size with half-pixel centres (= torch, ``align_corners=False``)."""
    return F.interpolate(x, size=(2 * x.shape[-2], 2 * x.shape[-1]), mode="bilinear", align_corners=False)


def depth_to_space(x: torch.Tensor, block: int) -> torch.Tensor:
    """TFLite ``DEPTH_TO_SPACE``: (B, bs*bs*C, H, W) -> (B, C, H*bs, W*bs), channel ``(i*bs + j)*C + c``."""
    B, C, H, W = x.shape
    c = C // (block * block)
    x = x.reshape(B, block, block, c, H, W)  # (B, i, j, c, H, W)
    return x.permute(0, 3, 4, 1, 5, 2).reshape(B, c, H * block, W * block)


def tflite_layers(model: nn.Module) -> list[tuple[str, TFConv2d | TransposeConvBias]]:
    """The parameterised layers of a port in registration order (= the TFLite graph's execution order)."""
    return [(name, m) for name, m in model.named_modules() if isinstance(m, TFConv2d | TransposeConvBias)]


ModuleT = TypeVar("ModuleT", bound=nn.Module)


def channels_last(model: ModuleT) -> ModuleT:
    """``model`` with its 4-D weights in channels-last memory (what ``Module.to(memory_format=...)`` does):
    with channels-last inputs the CPU convolutions of these small networks run about 1.5 to 2 times faster."""
    for p in model.parameters():
        if p.ndim == 4:
            p.data = p.data.contiguous(memory_format=torch.channels_last)
    return model


# ----------------------------------------------------------------------------- MediaPipe image -> tensor
def check_images(images: torch.Tensor | Sequence[torch.Tensor], who: str) -> list[torch.Tensor]:
    """``(B, 3, H, W)`` or a sequence of ``(3, H, W)`` float RGB images in [0, 1] -> a list of (3, H, W)."""
    items = list(images.unbind(0)) if isinstance(images, torch.Tensor) and images.ndim == 4 else images
    if isinstance(items, torch.Tensor) or not len(items):
        shape = tuple(items.shape) if isinstance(items, torch.Tensor) else "an empty sequence"
        raise DataError(f"{who}: images must be (B, 3, H, W) or a non-empty list of (3, H, W), got {shape}")
    for i, im in enumerate(items):
        if not isinstance(im, torch.Tensor) or im.ndim != 3 or im.shape[0] != 3 or not im.is_floating_point():
            got = f"{tuple(im.shape)} {im.dtype}" if isinstance(im, torch.Tensor) else type(im).__name__
            raise DataError(f"{who}: image {i} must be a float RGB tensor (3, H, W), got {got}")
        if im.shape[1] < 2 or im.shape[2] < 2:
            raise DataError(f"{who}: image {i} is {tuple(im.shape[1:])} pixels; at least 2 x 2 are needed")
        lo, hi = float(im.amin()), float(im.amax())
        if not (lo >= 0.0 and hi <= 1.0):  # also catches NaN
            raise DataError(f"{who}: image {i} has values in [{lo:.3g}, {hi:.3g}]; RGB must be scaled to [0, 1]")
    return list(items)


def letterbox_roi(h: int, w: int, out_h: int, out_w: int) -> tuple[torch.Tensor, tuple[float, float]]:
    """The whole image, padded to the tensor's aspect (``ImageToTensorCalculator``, ``keep_aspect_ratio``).

    Returns the roi ``(cx, cy, rw, rh, angle)`` in pixels and the (horizontal, vertical) padding, each a
    fraction of the padded roi on one side (MediaPipe's ``PadRoi``; the ``LETTERBOX_PADDING`` output).
    """
    tensor_aspect, roi_aspect = out_h / out_w, h / w
    if tensor_aspect > roi_aspect:
        rw, rh = float(w), w * tensor_aspect
        pads = (0.0, (1.0 - roi_aspect / tensor_aspect) / 2.0)
    else:
        rw, rh = h / tensor_aspect, float(h)
        pads = ((1.0 - tensor_aspect / roi_aspect) / 2.0, 0.0)
    return torch.tensor([w / 2.0, h / 2.0, rw, rh, 0.0], dtype=torch.float64), pads


def warp_rois(image: torch.Tensor, rois: torch.Tensor, out_hw: tuple[int, int], border: str) -> torch.Tensor:
    """Crops of one image (3, H, W) at rotated rectangles ``rois`` (N, 5) -> (N, 3, h, w) (module doc).

    A roi is ``(cx, cy, width, height, angle)`` in pixels (OpenCV coordinates: pixel centres at integers)
    and radians (``cv::RotatedRect`` convention: the rectangle's x axis is turned by ``angle`` towards +y).
    Tensor pixel ``(u, v)`` samples the image at ``c + R(angle) ((u / w - 1/2) width, (v / h - 1/2) height)``.
    ``border`` is ``"zero"`` or ``"replicate"`` (MediaPipe's ``BORDER_ZERO`` / ``BORDER_REPLICATE``).
    """
    if border not in ("zero", "replicate"):
        raise ValueError(f"border must be 'zero' or 'replicate', got {border!r}")
    H, W = image.shape[-2:]
    h, w = out_hw
    n = rois.shape[0]
    r = rois.to(device=image.device, dtype=torch.float32)
    u = torch.arange(w, device=image.device, dtype=torch.float32) / w - 0.5  # (w,)
    v = torch.arange(h, device=image.device, dtype=torch.float32) / h - 0.5  # (h,)
    lx = u[None, None, :] * r[:, 2, None, None]  # (N, 1, w)
    ly = v[None, :, None] * r[:, 3, None, None]  # (N, h, 1)
    cos, sin = torch.cos(r[:, 4])[:, None, None], torch.sin(r[:, 4])[:, None, None]
    sx = r[:, 0, None, None] + cos * lx - sin * ly  # (N, h, w) image x
    sy = r[:, 1, None, None] + sin * lx + cos * ly  # (N, h, w) image y
    grid = torch.stack(((2.0 * sx + 1.0) / W - 1.0, (2.0 * sy + 1.0) / H - 1.0), dim=-1)  # (N, h, w, 2)
    src = image[None].expand(n, -1, -1, -1)
    mode = "zeros" if border == "zero" else "border"
    return F.grid_sample(src, grid, mode="bilinear", padding_mode=mode, align_corners=False)


def to_range(x: torch.Tensor, lo: float, hi: float) -> torch.Tensor:
    """[0, 1] -> [lo, hi] (``output_tensor_float_range``: MediaPipe maps 0..255 to lo..hi linearly)."""
    return x * (hi - lo) + lo


# ----------------------------------------------------------------------------- zoo
def zoo_file(name: str) -> Path:
    """Path of ``avloc/zoo/NAME`` (``NAME`` may hold a ``/``) in the installed package (it may not exist)."""
    res = importlib.resources.files("avloc").joinpath("zoo", *name.split("/"))
    return Path(str(res))


def load_zoo_weights(model: nn.Module, name: str, path: str | Path | None = None) -> None:
    """Load ``avloc/zoo/NAME`` (or ``path``) into ``model``: every key, shape and float16 dtype checked.

    Raises :class:`CheckpointError` (one line) when the file is missing, unreadable or does not fit.
    """
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    p = Path(path) if path is not None else zoo_file(name)
    regen = "reinstall avloc or regenerate it with python tools/convert_mediapipe.py"
    if not p.is_file():
        raise CheckpointError(f"{p}: MediaPipe weights not found ({regen})")
    try:
        state = load_file(str(p))
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(f"{p}: not a readable safetensors file ({e}); {regen}") from None
    expected = model.state_dict()
    missing, extra = sorted(set(expected) - set(state)), sorted(set(state) - set(expected))
    if missing or extra:
        raise CheckpointError(f"{p}: does not fit {type(model).__name__}: missing {missing[:3]}, unexpected {extra[:3]}")
    for k, t in state.items():
        if t.shape != expected[k].shape or t.dtype != torch.float16:
            raise CheckpointError(f"{p}: {k} is {tuple(t.shape)} {t.dtype}, expected {tuple(expected[k].shape)} float16")
        if not bool(torch.isfinite(t).all()):
            raise CheckpointError(f"{p}: {k} holds non-finite values; {regen}")
    model.load_state_dict({k: t.float() for k, t in state.items()})


def unwarp_rois(crops: torch.Tensor, rois: torch.Tensor, image_hw: tuple[int, int]) -> torch.Tensor:
    """Crops (N, h, w) made by :func:`warp_rois` -> (N, H, W) on the image, zero outside the rois.

    MediaPipe's ``WarpAffineCalculator`` with the inverse of the crop's matrix (``BORDER_ZERO``, bilinear):
    image pixel ``p`` samples the crop at ``((R(-angle) (p - c)) / (width, height) + 1/2) * (w, h)``. Only the
    pixels of each roi's bounding box (widened by one crop pixel, the bilinear reach) are sampled.
    """
    H, W = image_hw
    n, h, w = crops.shape
    out = crops.new_zeros(n, H, W)
    r = rois.to(device=crops.device, dtype=torch.float32)
    for i, (cx, cy, rw, rh, angle) in enumerate(rois.tolist()):
        cos, sin = abs(math.cos(angle)), abs(math.sin(angle))
        ex = (cos * rw + sin * rh) / 2 + max(rw / w, rh / h) + 1  # half extent of the turned box + reach
        ey = (sin * rw + cos * rh) / 2 + max(rw / w, rh / h) + 1
        x0, x1 = max(0, math.floor(cx - ex)), min(W, math.ceil(cx + ex) + 1)
        y0, y1 = max(0, math.floor(cy - ey)), min(H, math.ceil(cy + ey) + 1)
        if x1 <= x0 or y1 <= y0:
            continue
        dx = torch.arange(x0, x1, device=crops.device, dtype=torch.float32)[None, :] - r[i, 0]  # (1, w')
        dy = torch.arange(y0, y1, device=crops.device, dtype=torch.float32)[:, None] - r[i, 1]  # (h', 1)
        c, s = torch.cos(r[i, 4]), torch.sin(r[i, 4])
        u = ((c * dx + s * dy) / r[i, 2] + 0.5) * w  # (h', w') crop x
        v = ((-s * dx + c * dy) / r[i, 3] + 0.5) * h
        grid = torch.stack(((2.0 * u + 1.0) / w - 1.0, (2.0 * v + 1.0) / h - 1.0), dim=-1)  # (h', w', 2)
        out[i, y0:y1, x0:x1] = F.grid_sample(crops[i, None, None], grid[None], mode="bilinear",
                                             padding_mode="zeros", align_corners=False)[0, 0]  # fmt: skip
    return out
