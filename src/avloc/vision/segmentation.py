"""Person masks: MediaPipe Selfie Segmentation in torch, and the tight box of a mask.

The network (``selfie_segmentation.tflite``, 256 x 256, and ``selfie_segmentation_landscape.tflite``,
144 x 256, of the ``mediapipe==0.10.21`` wheel, Apache-2.0; converted by ``tools/convert_mediapipe.py``)
is a MobileNetV3-small encoder (Howard et al., "Searching for MobileNetV3", ICCV 2019: inverted residuals
with squeeze-and-excitation, hard-swish; a LR-ASPP head, Sec. 6.1.3) and a decoder that upsamples x2
three times, each time fusing the encoder's skip ``s`` with the upsampled ``u`` as
``y = s * sigmoid(W2 relu(W1 avgpool(s + u))) + u``, then ``r = relu(conv1x1(y)); r + relu(dw3x3(r))``;
a 2x2 stride-2 transposed convolution (the custom op ``Convolution2DTransposeBias``) and a sigmoid give
the person probability at the input resolution.

Pre- and post-processing are those of ``selfie_segmentation_cpu.binarypb`` in the same wheel:
``ImageToTensorCalculator`` with ``keep_aspect_ratio: false`` (the whole frame stretched to the input
size), ``output_tensor_float_range {0, 1}``, ``border_mode: BORDER_ZERO``; the output is already a
probability (``TensorsToSegmentationCalculator``, ``activation: NONE``) resized to the frame
(``cv::resize``, bilinear).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import overload

import torch
import torch.nn.functional as F
from torch import nn

from avloc.errors import ConfigError, DataError
from avloc.registry import VISION
from avloc.vision._tflite import (
    Act,
    TFConv2d,
    TransposeConvBias,
    channels_last,
    check_images,
    load_zoo_weights,
    resize2x,
    to_range,
    warp_rois,
)

#: zoo file (under avloc/zoo) and input (height, width) of each variant (MediaPipe's ``model_selection`` 0 and 1)
VARIANTS = {
    "general": ("vision/selfie_segmentation.safetensors", (256, 256)),
    "landscape": ("vision/selfie_segmentation_landscape.safetensors", (144, 256)),
}


@dataclass(frozen=True)
class SegmenterConfig:
    """Selfie segmentation settings (``selfie_segmentation_cpu.binarypb`` of mediapipe 0.10.21)."""

    #: ``"general"`` (256 x 256, MediaPipe's default ``model_selection: 0``) or ``"landscape"`` (144 x 256).
    variant: str = "general"
    #: ``output_tensor_float_range``: pixel values 0..1 map to this range.
    input_range: tuple[float, float] = (0.0, 1.0)
    #: ``border_mode: BORDER_ZERO`` (no effect when the whole frame is stretched onto the tensor).
    border: str = "zero"

    def __post_init__(self) -> None:
        if self.variant not in VARIANTS:
            raise ConfigError(f"SegmenterConfig.variant must be one of {sorted(VARIANTS)}, got {self.variant!r}")
        if not self.input_range[0] < self.input_range[1]:
            raise ConfigError(f"SegmenterConfig.input_range must be increasing, got {self.input_range}")
        if self.border not in ("zero", "replicate"):
            raise ConfigError(f"SegmenterConfig.border must be 'zero' or 'replicate', got {self.border!r}")

    @property
    def input_hw(self) -> tuple[int, int]:
        return VARIANTS[self.variant][1]


# ----------------------------------------------------------------------------- building blocks
class SqueezeExcite(nn.Module):
    """``x * sigmoid(W2 relu(W1 mean_hw(x)))`` (Hu et al. 2018; MobileNetV3's SE with a plain sigmoid)."""

    def __init__(self, channels: int, reduced: int) -> None:
        super().__init__()
        self.reduce = TFConv2d(channels, reduced, 1, padding="valid", act=Act.RELU)
        self.expand = TFConv2d(reduced, channels, 1, padding="valid", act=Act.SIGMOID)

    def gate(self, x: torch.Tensor) -> torch.Tensor:  # (B, C, H, W) -> (B, C, 1, 1) in (0, 1)
        return self.expand(self.reduce(x.mean(dim=(2, 3), keepdim=True)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, C, H, W)
        return x * self.gate(x)


class Bottleneck(nn.Module):
    """MobileNetV3 inverted residual: 1x1 expand, k x k depthwise (stride), optional SE, 1x1 project."""

    def __init__(self, cin: int, hidden: int, cout: int, kernel: int, stride: int, act: Act, se: int = 0) -> None:
        super().__init__()
        self.expand = TFConv2d(cin, hidden, 1, act=act)
        self.depthwise = TFConv2d(hidden, hidden, kernel, stride, depthwise=True, act=act)
        self.se = SqueezeExcite(hidden, se) if se else None
        self.project = TFConv2d(hidden, cout, 1)
        self.residual = stride == 1 and cin == cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, cin, H, W) -> (B, cout, H/s, W/s)
        y = self.depthwise(self.expand(x))
        if self.se is not None:
            y = self.se(y)
        y = self.project(y)
        return x + y if self.residual else y


class FuseUp(nn.Module):
    """Decoder step (module doc): upsample x2, project to the skip's channels, gated fusion, refine."""

    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.project = TFConv2d(cin, cout, 1, padding="valid")
        self.gate = SqueezeExcite(cout, cout)
        self.refine = TFConv2d(cout, cout, 1, padding="valid", act=Act.RELU)
        self.depthwise = TFConv2d(cout, cout, 3, depthwise=True, act=Act.RELU)

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:  # (B, cin, h, w), (B, cout, 2h, 2w)
        u = self.project(resize2x(x))
        r = self.refine(skip * self.gate.gate(skip + u) + u)  # gate (B, cout, 1, 1)
        return r + self.depthwise(r)


class LRASPP(nn.Module):
    """Lite R-ASPP head (MobileNetV3 Sec. 6.1.3): ``relu(conv1x1(x)) * sigmoid(conv1x1(mean_hw(x)))``."""

    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.features = TFConv2d(cin, cout, 1, padding="valid", act=Act.RELU)
        self.attention = TFConv2d(cin, cout, 1, padding="valid", act=Act.SIGMOID)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x) * self.attention(x.mean(dim=(2, 3), keepdim=True))


# ----------------------------------------------------------------------------- the network
#: encoder bottlenecks: (in, hidden, out, kernel, stride, activation, SE channels) as in the TFLite graph
ENCODER = (
    (16, 16, 16, 3, 2, Act.RELU, 8),  # -> 1/4, skip
    (16, 72, 24, 3, 2, Act.RELU, 0),
    (24, 88, 24, 3, 1, Act.RELU, 0),  # -> 1/8, skip
    (24, 96, 32, 5, 2, Act.HARD_SWISH, 24),
    (32, 128, 32, 5, 1, Act.HARD_SWISH, 32),
    (32, 128, 32, 5, 1, Act.HARD_SWISH, 32),
    (32, 96, 32, 5, 1, Act.HARD_SWISH, 24),
    (32, 96, 32, 5, 1, Act.HARD_SWISH, 24),  # -> 1/16
)
#: blocks whose outputs are decoder skips (1/4 and 1/8); the stem's output is the 1/2 skip
SKIPS = (0, 2)


class SelfieSegmentationNet(nn.Module):
    """MediaPipe selfie segmentation network: (B, 3, h, w) in ``input_range`` -> (B, 1, h, w) probability."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = TFConv2d(3, 16, 3, 2, act=Act.HARD_SWISH)
        self.blocks = nn.ModuleList(Bottleneck(*spec) for spec in ENCODER)
        self.head = LRASPP(32, 128)
        self.up8 = FuseUp(128, 24)
        self.up4 = FuseUp(24, 16)
        self.up2 = FuseUp(16, 16)
        self.segment = TransposeConvBias(16, 1, 2, 2, act=Act.SIGMOID)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, 3, h, w) -> (B, 1, h, w)
        x = self.stem(x.contiguous(memory_format=torch.channels_last))  # (B, 16, h/2, w/2); NHWC: faster convs
        skips = [x]
        for i, block in enumerate(self.blocks):
            x = block(x)
            if i in SKIPS:
                skips.append(x)
        x = self.head(x)  # (B, 128, h/16, w/16)
        x = self.up8(x, skips[2])  # (B, 24, h/8, w/8)
        x = self.up4(x, skips[1])  # (B, 16, h/4, w/4)
        x = self.up2(x, skips[0])  # (B, 16, h/2, w/2)
        return self.segment(x)


class PersonSegmenter(nn.Module):
    """Selfie segmentation with MediaPipe's pre- and post-processing (module doc)."""

    def __init__(self, config: SegmenterConfig | None = None) -> None:
        super().__init__()
        self.config = config or SegmenterConfig()
        self.net = SelfieSegmentationNet()

    def preprocess(self, images: list[torch.Tensor]) -> torch.Tensor:
        """Images (3, H, W) in [0, 1] -> the network's input (B, 3, h, w): stretched, in ``input_range``."""
        c = self.config
        crops = []
        for im in images:
            H, W = im.shape[-2:]
            roi = torch.tensor([[W / 2.0, H / 2.0, float(W), float(H), 0.0]])
            crops.append(warp_rois(im, roi, c.input_hw, c.border))
        return to_range(torch.cat(crops), *c.input_range)

    @overload
    def segment(self, images: torch.Tensor) -> torch.Tensor: ...

    @overload
    def segment(self, images: Sequence[torch.Tensor]) -> list[torch.Tensor]: ...

    @torch.inference_mode()
    def segment(self, images: torch.Tensor | Sequence[torch.Tensor]) -> torch.Tensor | list[torch.Tensor]:
        """Person probability at each image's size: (B, 3, H, W) -> (B, H, W); a list of (3, H_i, W_i) -> a list.

        Images are float RGB in [0, 1], on this module's device.
        """
        items = check_images(images, "PersonSegmenter.segment")
        dev = next(self.net.parameters()).device
        if any(im.device != dev for im in items):
            raise DataError(f"PersonSegmenter.segment: images must be on {dev}, the segmenter's device")
        probs = self.net(self.preprocess(items))  # (B, 1, h, w)
        out = [
            F.interpolate(p[None], size=tuple(im.shape[-2:]), mode="bilinear", align_corners=False)[0, 0]
            for p, im in zip(probs, items)
        ]
        if isinstance(images, torch.Tensor):
            return torch.stack(out)
        return out


@VISION.register("selfie-segmentation")
def load_segmenter(device: str | torch.device = "cpu", config: SegmenterConfig | None = None,
                   path: str | Path | None = None) -> PersonSegmenter:  # fmt: skip
    """The segmenter with the shipped weights (``avloc/zoo``, or ``path``), in eval mode on ``device``
    (channels-last weights: about twice as fast on CPU as NCHW, same values)."""
    model = PersonSegmenter(config)
    load_zoo_weights(model.net, VARIANTS[model.config.variant][0], path)
    return channels_last(model.eval().to(device))


# ----------------------------------------------------------------------------- mask geometry
def person_extent(mask: torch.Tensor, box: torch.Tensor | Sequence[float], threshold: float = 0.5) -> torch.Tensor | None:
    """The tight box ``[x1, y1, x2, y2]`` (pixels, x2/y2 exclusive) of ``mask >= threshold`` inside ``box``.

    ``mask`` is (H, W) person probability; ``box`` ``[x1, y1, x2, y2]`` in the same pixels (a detector or
    pose box), clipped to the image; pixels count when their centre lies in the box. ``None`` when no pixel
    of the box reaches the threshold.
    """
    if mask.ndim != 2:
        raise DataError(f"person_extent: mask must be (H, W), got {tuple(mask.shape)}")
    if not 0.0 < threshold <= 1.0:
        raise ConfigError(f"person_extent: threshold must be in (0, 1], got {threshold}")
    b = [float(v) for v in (box.tolist() if isinstance(box, torch.Tensor) else box)]
    if len(b) != 4 or not b[0] <= b[2] or not b[1] <= b[3]:
        raise DataError(f"person_extent: box must be [x1, y1, x2, y2] with x1 <= x2, y1 <= y2, got {b}")
    H, W = mask.shape
    # pixel i (centre i + 0.5) is inside [a, b) when a <= i + 0.5 < b, i.e. ceil(a - 0.5) <= i < ceil(b - 0.5)
    x1, y1 = max(0, math.ceil(b[0] - 0.5)), max(0, math.ceil(b[1] - 0.5))
    x2, y2 = min(W, math.ceil(b[2] - 0.5)), min(H, math.ceil(b[3] - 0.5))
    if x2 <= x1 or y2 <= y1:
        return None
    on = mask[y1:y2, x1:x2] >= threshold  # (h, w)
    cols, rows = on.any(dim=0).nonzero(), on.any(dim=1).nonzero()
    if not len(cols):
        return None
    return mask.new_tensor([x1 + int(cols[0]), y1 + int(rows[0]), x1 + int(cols[-1]) + 1, y1 + int(rows[-1]) + 1],
                           dtype=torch.float32)  # fmt: skip
