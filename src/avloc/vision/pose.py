"""People and their body keypoints: MediaPipe BlazePose (detector + GHUM "full" landmarks) in torch.

Bazarevsky et al., "BlazePose: On-device Real-time Body Pose tracking", CVPR-W 2020. Two networks from
the ``mediapipe==0.10.21`` wheel (Apache-2.0; converted by ``tools/convert_mediapipe.py``):

1. **Detection** (``pose_detection.tflite``, :class:`PoseDetectorNet`): an SSD on a letterboxed 224 x 224
   image in [-1, 1]; per anchor a score and 12 numbers: a box (centre, size) and 4 keypoints (hip centre,
   a point on the circle around the whole body, shoulder centre, a point on the upper-body circle). The box
   is around the face (the paper's "face detector as a proxy for a person detector", Sec. 3), about twice
   its size.
   Post-processing as MediaPipe's calculators (``pose_detection_cpu.pbtxt``): SSD anchors
   (``SsdAnchorsCalculator``), decoding (``TensorsToDetectionsCalculator``), weighted non-maximum
   suppression (``NonMaxSuppressionCalculator``, ``WEIGHTED``), letterbox removal.
2. **Region of interest** (``pose_detection_to_roi.pbtxt``): a square centred on keypoint 0 with side
   ``2 |k1 - k0| * 1.25``, turned so that k0 -> k1 points up (``AlignmentPointsRectsCalculator``,
   ``RectTransformationCalculator``).
3. **Landmarks** (``pose_landmark_full.tflite``, :class:`PoseLandmarkNet`) on the 256 x 256 crop of the roi
   in [0, 1] (replicated border): 39 landmarks ``(x, y, z, visibility, presence)`` (33 body + 2 auxiliary +
   4 unused), a pose-presence score (sigmoid in the model), a 256 x 256 person mask (logits) and a 64 x 64
   heatmap that refines each landmark (``RefineLandmarksFromHeatmapCalculator``); landmarks and mask are
   projected back to the image (``LandmarkProjectionCalculator``, ``WarpAffineCalculator``).

Coordinates are MediaPipe's: a normalised x times the image width, so the image spans [0, W] x [0, H].

Differences with MediaPipe's ``PoseLandmarkCpu`` graph, by design: it keeps only the best detection and then
tracks it over frames from the landmarks (``PoseLandmarksToRoi``), smoothing landmarks and mask over time
(``PoseLandmarkFiltering``, ``PoseSegmentationFiltering``); here every image is processed on its own
(detection each time, no temporal filter) and the landmark model runs on up to
:attr:`PoseConfig.max_people` detections, each person with its own mask. In the arithmetic: MediaPipe warps
8-bit pixels with OpenCV's fixed-point bilinear weights and rounds the crop to 8 bits; here float pixels are
sampled with ``grid_sample`` and not rounded (differences of the order of one 8-bit level in the crop).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from avloc.errors import ConfigError, DataError
from avloc.registry import VISION
from avloc.vision._tflite import (
    Act,
    TFConv2d,
    channels_last,
    check_images,
    depth_to_space,
    letterbox_roi,
    load_zoo_weights,
    resize2x,
    to_range,
    unwarp_rois,
    warp_rois,
)

#: zoo files (under avloc/zoo)
DETECTOR_FILE = "vision/pose_detection.safetensors"
LANDMARK_FILE = "vision/pose_landmark_full.safetensors"
#: BlazePose's 33 landmarks (MediaPipe ``PoseLandmark``)
LANDMARK_NAMES = (
    "nose", "left_eye_inner", "left_eye", "left_eye_outer", "right_eye_inner", "right_eye", "right_eye_outer",
    "left_ear", "right_ear", "mouth_left", "mouth_right", "left_shoulder", "right_shoulder", "left_elbow",
    "right_elbow", "left_wrist", "right_wrist", "left_pinky", "right_pinky", "left_index", "right_index",
    "left_thumb", "right_thumb", "left_hip", "right_hip", "left_knee", "right_knee", "left_ankle",
    "right_ankle", "left_heel", "right_heel", "left_foot_index", "right_foot_index",
)  # fmt: skip
NOSE, LEFT_EYE, RIGHT_EYE, LEFT_EAR, RIGHT_EAR, MOUTH_LEFT, MOUTH_RIGHT = 0, 2, 5, 7, 8, 9, 10


# ----------------------------------------------------------------------------- configs
@dataclass(frozen=True)
class DetectorConfig:
    """Pose detection, every value from ``mediapipe/modules/pose_detection/pose_detection_cpu.pbtxt``."""

    #: ``ImageToTensorCalculator``: ``output_tensor_width/height: 224``, ``keep_aspect_ratio: true``.
    input_size: int = 224
    #: ``output_tensor_float_range { min: -1 max: 1 }``.
    input_range: tuple[float, float] = (-1.0, 1.0)
    #: ``border_mode: BORDER_ZERO`` (the letterbox bars are 0, i.e. -1 after the range).
    border: str = "zero"
    #: ``SsdAnchorsCalculator``: ``num_layers: 5``, ``strides: 8, 16, 32, 32, 32``; layers of equal stride share
    #: one grid. ``aspect_ratios: 1.0`` plus ``interpolated_scale_aspect_ratio`` (proto default 1.0): 2 anchors
    #: per layer and cell. ``fixed_anchor_size: true``: every anchor is 1 x 1, so ``min_scale: 0.1484375`` and
    #: ``max_scale: 0.75`` do not enter.
    strides: tuple[int, ...] = (8, 16, 32, 32, 32)
    anchors_per_layer: int = 2
    #: ``anchor_offset_x/y: 0.5``: anchor centres at cell centres.
    anchor_offset: float = 0.5
    #: ``TensorsToDetectionsCalculator``: ``x_scale, y_scale, w_scale, h_scale: 224``, ``num_keypoints: 4``,
    #: ``reverse_output_order: true`` (x before y), ``sigmoid_score: true``, ``score_clipping_thresh: 100``,
    #: ``min_score_thresh: 0.5``.
    coord_scale: float = 224.0
    num_keypoints: int = 4
    score_clip: float = 100.0
    min_score: float = 0.5
    #: ``NonMaxSuppressionCalculator``: ``min_suppression_threshold: 0.3``, IoU, ``WEIGHTED``.
    nms_iou: float = 0.3

    def __post_init__(self) -> None:
        if self.input_size < 32 or any(s < 1 or self.input_size % s for s in self.strides) or not self.strides:
            raise ConfigError(f"DetectorConfig: input_size {self.input_size} must be >= 32 and divisible by the "
                              f"strides {self.strides}")  # fmt: skip
        if list(self.strides) != sorted(self.strides):
            raise ConfigError(f"DetectorConfig.strides must not decrease, got {self.strides}")
        if not self.input_range[0] < self.input_range[1] or self.border not in ("zero", "replicate"):
            raise ConfigError(f"DetectorConfig: bad input_range {self.input_range} or border {self.border!r}")
        if self.anchors_per_layer < 1 or self.num_keypoints < 2 or self.coord_scale <= 0 or self.score_clip <= 0:
            raise ConfigError("DetectorConfig: anchors_per_layer >= 1, num_keypoints >= 2, coord_scale > 0 and "
                              "score_clip > 0 are required")  # fmt: skip
        if not 0.0 <= self.anchor_offset <= 1.0 or not 0.0 < self.min_score < 1.0 or not 0.0 < self.nms_iou < 1.0:
            raise ConfigError(f"DetectorConfig: anchor_offset {self.anchor_offset} must be in [0, 1], min_score "
                              f"{self.min_score} and nms_iou {self.nms_iou} in (0, 1)")  # fmt: skip


@dataclass(frozen=True)
class LandmarkConfig:
    """Landmarks, from ``pose_landmark_by_roi_cpu.pbtxt``, ``pose_detection_to_roi.pbtxt`` and
    ``tensors_to_pose_landmarks_and_segmentation.pbtxt`` (mediapipe/modules/pose_landmark)."""

    #: ``ImageToTensorCalculator``: 256 x 256, ``keep_aspect_ratio: true`` (the roi is square: no bars),
    #: ``output_tensor_float_range { min: 0 max: 1 }``, border mode unset = ``BORDER_REPLICATE``.
    input_size: int = 256
    input_range: tuple[float, float] = (0.0, 1.0)
    border: str = "replicate"
    #: ``AlignmentPointsRectsCalculator``: ``rotation_vector_start/end_keypoint_index: 0, 1``,
    #: ``rotation_vector_target_angle_degrees: 90``; ``RectTransformationCalculator``: ``scale_x/y: 1.25``,
    #: ``square_long: true``.
    roi_keypoints: tuple[int, int] = (0, 1)
    roi_target_angle_deg: float = 90.0
    roi_scale: float = 1.25
    #: ``TensorsToLandmarksCalculator``: ``num_landmarks: 39``, coordinates / 256, ``visibility_activation`` and
    #: ``presence_activation: SIGMOID``; ``SplitNormalizedLandmarkListCalculator``: body landmarks 0..33.
    num_landmarks: int = 39
    num_pose_landmarks: int = 33
    #: ``ThresholdingCalculator`` on the pose flag: ``threshold: 0.5``.
    presence_threshold: float = 0.5
    #: ``RefineLandmarksFromHeatmapCalculator``: ``kernel_size: 7``, ``min_confidence_to_refine`` default 0.5.
    heatmap_kernel: int = 7
    heatmap_min_confidence: float = 0.5

    def __post_init__(self) -> None:
        if self.input_size < 32 or not self.input_range[0] < self.input_range[1]:
            raise ConfigError(f"LandmarkConfig: bad input_size {self.input_size} or input_range {self.input_range}")
        if self.border not in ("zero", "replicate") or self.roi_scale <= 0:
            raise ConfigError(f"LandmarkConfig: bad border {self.border!r} or roi_scale {self.roi_scale}")
        if not 0 < self.num_pose_landmarks <= self.num_landmarks:
            raise ConfigError(f"LandmarkConfig: num_pose_landmarks {self.num_pose_landmarks} must be in "
                              f"(0, {self.num_landmarks}]")  # fmt: skip
        if self.heatmap_kernel < 1 or self.heatmap_kernel % 2 == 0:
            raise ConfigError(f"LandmarkConfig.heatmap_kernel must be odd and >= 1, got {self.heatmap_kernel}")
        for name in ("presence_threshold", "heatmap_min_confidence"):
            if not 0.0 < getattr(self, name) < 1.0:
                raise ConfigError(f"LandmarkConfig.{name} must be in (0, 1), got {getattr(self, name)}")


@dataclass(frozen=True)
class PoseConfig:
    """Detection + landmarks; ``max_people``, ``masks`` and ``box_presence`` are avloc's."""

    detector: DetectorConfig = field(default_factory=DetectorConfig)
    landmark: LandmarkConfig = field(default_factory=LandmarkConfig)
    #: landmark model runs on the best ``max_people`` detections of an image (MediaPipe's graph: 1).
    max_people: int = 4
    #: project each person's mask to the image (an (H, W) tensor per person).
    masks: bool = True
    #: the person box spans the landmarks whose presence (in the image, not cut off) is at least this.
    box_presence: float = 0.5

    def __post_init__(self) -> None:
        if self.max_people < 1:
            raise ConfigError(f"PoseConfig.max_people must be >= 1, got {self.max_people}")
        if not 0.0 <= self.box_presence < 1.0:
            raise ConfigError(f"PoseConfig.box_presence must be in [0, 1), got {self.box_presence}")


# ----------------------------------------------------------------------------- building blocks
class InvertedResidual(nn.Module):
    """MobileNetV2 block (Sandler et al. 2018, Table 1): 1x1 expand (relu6), k x k depthwise (relu6), 1x1
    linear project, residual when shapes allow. A stride-2 block pads explicitly (a TFLite ``PAD`` op) and
    may emit a ``skip`` from its input for the decoder: depthwise 3x3 (``skip_act``), 1x1 to ``skip`` channels
    (relu6). ``hidden == 0``: no expansion; ``cout == 0``: no projection (the last block)."""

    def __init__(self, cin: int, hidden: int, cout: int, kernel: int, stride: int = 1, skip: int = 0,
                 skip_act: Act = Act.NONE) -> None:  # fmt: skip
        super().__init__()
        mid = hidden or cin
        pad: str | tuple[int, int, int, int] = (kernel // 2,) * 4 if stride == 2 else "same"
        self.expand = TFConv2d(cin, hidden, 1, act=Act.RELU6) if hidden else None
        self.skip = (
            nn.Sequential(TFConv2d(cin, cin, 3, depthwise=True, act=skip_act),
                          TFConv2d(cin, skip, 1, padding="valid", act=Act.RELU6))
            if skip else None
        )  # fmt: skip
        self.depthwise = TFConv2d(mid, mid, kernel, stride, depthwise=True, padding=pad, act=Act.RELU6)
        self.project = TFConv2d(mid, cout, 1) if cout else None
        self.residual = stride == 1 and cin == cout

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:  # (B, C, H, W)
        skip = self.skip(x) if self.skip is not None else None
        y = self.depthwise(self.expand(x) if self.expand is not None else x)
        if self.project is not None:
            y = self.project(y)
        return (x + y if self.residual else y), skip


class BlazeBlock(nn.Module):
    """``relu6(shortcut(x) + pw(dw(x)))``: depthwise 3x3 then linear 1x1 (BlazePose Sec. 3); stride 2 takes
    the shortcut through a 2x2 max pool."""

    def __init__(self, channels: int, dw_act: Act, stride: int = 1) -> None:
        super().__init__()
        self.depthwise = TFConv2d(channels, channels, 3, stride, depthwise=True, act=dw_act)
        self.pointwise = TFConv2d(channels, channels, 1, padding="valid")
        self.stride = stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, C, H, W) -> (B, C, H/s, W/s)
        shortcut = F.max_pool2d(x, self.stride) if self.stride > 1 else x
        return F.relu6(shortcut + self.pointwise(self.depthwise(x)))


def _backbone(specs: Sequence[tuple[int, int, int, int, int, int]], skip_act: Act) -> nn.ModuleList:
    """Inverted residual blocks from (in, hidden, out, kernel, stride, skip channels) rows."""
    return nn.ModuleList(InvertedResidual(cin, hidden, cout, k, stride, skip, skip_act=skip_act)
                         for cin, hidden, cout, k, stride, skip in specs)  # fmt: skip


# ----------------------------------------------------------------------------- detector network
#: (in, hidden, out, kernel, stride, skip channels) per block, as in pose_detection.tflite
DETECTOR_BLOCKS = (
    (24, 0, 16, 3, 1, 0), (16, 64, 24, 3, 2, 0), (24, 144, 24, 3, 1, 0), (24, 144, 40, 5, 2, 0),
    (40, 240, 40, 5, 1, 0), (40, 240, 80, 3, 2, 96), (80, 480, 80, 3, 1, 0), (80, 480, 80, 3, 1, 0),
    (80, 480, 112, 5, 1, 0), (112, 672, 112, 5, 1, 0), (112, 672, 112, 5, 1, 0), (112, 672, 192, 5, 2, 192),
    (192, 1152, 192, 5, 1, 0), (192, 1152, 192, 5, 1, 0), (192, 1152, 192, 5, 1, 0), (192, 1152, 0, 3, 1, 0),
)  # fmt: skip
#: (stride, input channels, anchors per cell) of the three SSD heads
DETECTOR_HEADS = ((8, 24, 2), (16, 48, 2), (32, 288, 6))
#: numbers per anchor: box (4) + 4 keypoints (8)
DETECTOR_COORDS = 12


class SSDHead(nn.Module):
    """Scores and boxes of one level: a shared explicit pad, then per output a stride-2 depthwise 3x3 and a 1x1."""

    def __init__(self, cin: int, anchors: int) -> None:
        super().__init__()
        pad = (1, 1, 1, 1)
        self.cls_dw = TFConv2d(cin, cin, 3, 2, depthwise=True, padding=pad)
        self.cls = TFConv2d(cin, anchors, 1)
        self.reg_dw = TFConv2d(cin, cin, 3, 2, depthwise=True, padding=pad)
        self.reg = TFConv2d(cin, anchors * DETECTOR_COORDS, 1)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:  # (B, C, 2h, 2w)
        B = x.shape[0]
        scores = self.cls(self.cls_dw(x)).permute(0, 2, 3, 1).reshape(B, -1, 1)  # (B, h*w*A, 1), TFLite order
        boxes = self.reg(self.reg_dw(x)).permute(0, 2, 3, 1).reshape(B, -1, DETECTOR_COORDS)  # (B, h*w*A, 12)
        return scores, boxes


class PoseDetectorNet(nn.Module):
    """BlazePose detector: (B, 3, 224, 224) in [-1, 1] -> boxes (B, 2254, 12), scores (B, 2254, 1) (raw)."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = TFConv2d(3, 24, 3, 2, padding=(1, 1, 1, 1), act=Act.RELU6)
        self.blocks = _backbone(DETECTOR_BLOCKS, skip_act=Act.NONE)
        self.up16 = TFConv2d(1152, 192, 1, padding="valid", act=Act.RELU6)
        self.blaze16 = nn.Sequential(BlazeBlock(192, Act.NONE), BlazeBlock(192, Act.NONE))
        self.up8 = TFConv2d(192, 96, 1, padding="valid", act=Act.RELU6)
        self.blaze8 = nn.Sequential(BlazeBlock(96, Act.NONE), BlazeBlock(96, Act.NONE))
        self.heads = nn.ModuleList(SSDHead(c, a) for _, c, a in DETECTOR_HEADS)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.stem(x.contiguous(memory_format=torch.channels_last))  # (B, 24, 112, 112); NHWC: faster convs
        skips = []
        for block in self.blocks:
            x, skip = block(x)
            if skip is not None:
                skips.append(skip)  # (B, 96, 28, 28), (B, 192, 14, 14)
        f32 = depth_to_space(x, 2)  # (B, 288, 14, 14)
        x = self.blaze16(self.up16(resize2x(x)) + skips[1])  # (B, 192, 14, 14)
        f16 = depth_to_space(x, 2)  # (B, 48, 28, 28)
        x = self.blaze8(self.up8(resize2x(x)) + skips[0])  # (B, 96, 28, 28)
        f8 = depth_to_space(x, 2)  # (B, 24, 56, 56)
        outs = [head(f) for head, f in zip(self.heads, (f8, f16, f32))]
        return torch.cat([b for _, b in outs], dim=1), torch.cat([s for s, _ in outs], dim=1)


# ----------------------------------------------------------------------------- landmark network
#: (in, hidden, out, kernel, stride, skip channels) per block, as in pose_landmark_full.tflite
LANDMARK_BLOCKS = (
    (24, 0, 16, 3, 1, 0), (16, 64, 24, 3, 2, 8), (24, 144, 24, 3, 1, 0), (24, 144, 32, 5, 2, 48),
    (32, 192, 32, 5, 1, 0), (32, 192, 64, 3, 2, 48), (64, 384, 64, 3, 1, 0), (64, 384, 64, 3, 1, 0),
    (64, 384, 88, 5, 1, 0), (88, 528, 88, 5, 1, 0), (88, 528, 88, 5, 1, 0), (88, 528, 144, 5, 2, 48),
    (144, 864, 144, 5, 1, 0), (144, 864, 144, 5, 1, 0), (144, 864, 144, 5, 1, 0), (144, 864, 0, 3, 1, 0),
)  # fmt: skip
#: blaze blocks of the regression branch at 1/64 and 1/128 of the input (the first of each with stride 2)
LANDMARK_REGRESSION = (5, 6)
LANDMARK_VALUES = 5  # x, y, z, visibility, presence
WORLD_VALUES = 3  # x, y, z in metres (the world landmarks, not used here)


def _dw_pw(cin: int, cout: int) -> nn.Sequential:
    """Depthwise 3x3 (relu6) then 1x1 (relu6, VALID): the landmark model's branch entries."""
    return nn.Sequential(TFConv2d(cin, cin, 3, depthwise=True, act=Act.RELU6),
                         TFConv2d(cin, cout, 1, padding="valid", act=Act.RELU6))  # fmt: skip


class PoseLandmarkNet(nn.Module):
    """BlazePose GHUM full: (B, 3, 256, 256) in [0, 1] -> landmarks (B, 195), flag (B, 1) (sigmoid),
    mask logits (B, 1, 256, 256), heatmap logits (B, 39, 64, 64), world landmarks (B, 117)."""

    def __init__(self, num_landmarks: int = 39) -> None:
        super().__init__()
        self.stem = TFConv2d(3, 24, 3, 2, padding=(1, 1, 1, 1), act=Act.RELU6)
        self.blocks = _backbone(LANDMARK_BLOCKS, skip_act=Act.RELU6)
        self.neck = _dw_pw(864, 48)
        self.seg_in = _dw_pw(48, 8)
        self.seg_blaze = nn.ModuleList(BlazeBlock(8, Act.RELU6) for _ in range(4))
        self.seg_out = TFConv2d(8, 1, 3)
        self.heatmap = TFConv2d(48, num_landmarks, 1)
        self.reg_in = _dw_pw(864, 288)
        self.reg_blaze = nn.Sequential(*(BlazeBlock(288, Act.RELU6, 2 if i in (0, LANDMARK_REGRESSION[0]) else 1)
                                         for i in range(sum(LANDMARK_REGRESSION))))  # fmt: skip
        self.landmarks = TFConv2d(288, num_landmarks * LANDMARK_VALUES, 2, padding="valid")
        self.world = TFConv2d(288, num_landmarks * WORLD_VALUES, 2, padding="valid")
        self.flag = TFConv2d(288, 1, 2, padding="valid", act=Act.SIGMOID)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        x = self.stem(x.contiguous(memory_format=torch.channels_last))  # (B, 24, 128, 128); NHWC: faster convs
        skips = []
        for block in self.blocks:
            x, skip = block(x)
            if skip is not None:
                skips.append(skip)  # 1/2 (8 ch), 1/4, 1/8, 1/16 (48 ch)
        y = self.neck(x)  # (B, 48, 8, 8)
        for skip in reversed(skips[1:]):
            y = resize2x(y) + skip  # -> (B, 48, 64, 64)
        s = resize2x(self.seg_in(y)) + skips[0]  # (B, 8, 128, 128)
        s = self.seg_blaze[1](self.seg_blaze[0](s))
        s = resize2x(s)  # (B, 8, 256, 256)
        mask = self.seg_out(self.seg_blaze[3](self.seg_blaze[2](s)))  # (B, 1, 256, 256)
        heat = self.heatmap(y)  # (B, 39, 64, 64)
        r = self.reg_blaze(self.reg_in(x))  # (B, 288, 2, 2)
        return self.landmarks(r).flatten(1), self.flag(r).flatten(1), mask, heat, self.world(r).flatten(1)


# ----------------------------------------------------------------------------- detection post-processing
def ssd_anchors(cfg: DetectorConfig) -> torch.Tensor:
    """Anchor centres (N, 2) in [0, 1], MediaPipe's ``SsdAnchorsCalculator`` order: per group of layers with
    equal stride, rows, columns, then the ``anchors_per_layer * layers`` anchors of the cell."""
    out = []
    i = 0
    while i < len(cfg.strides):
        j = i
        while j < len(cfg.strides) and cfg.strides[j] == cfg.strides[i]:
            j += 1
        n = math.ceil(cfg.input_size / cfg.strides[i])
        c = (torch.arange(n, dtype=torch.float64) + cfg.anchor_offset) / n
        yy, xx = torch.meshgrid(c, c, indexing="ij")
        grid = torch.stack((xx, yy), dim=-1).reshape(-1, 1, 2)  # (n*n, 1, 2) x, y
        out.append(grid.expand(-1, cfg.anchors_per_layer * (j - i), 2).reshape(-1, 2))
        i = j
    return torch.cat(out).float()


def decode_detections(raw_boxes: torch.Tensor, raw_scores: torch.Tensor, anchors: torch.Tensor,
                      cfg: DetectorConfig) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:  # fmt: skip
    """``TensorsToDetectionsCalculator``: raw (B, N, 12), (B, N, 1) -> boxes (B, N, 4) ``[x1, y1, x2, y2]``,
    keypoints (B, N, K, 2), scores (B, N) in the letterboxed input's [0, 1], and the kept mask (B, N):
    score >= ``min_score`` and a box of non-negative (not NaN) size."""
    s = cfg.coord_scale
    centre = raw_boxes[..., 0:2] / s + anchors  # (B, N, 2), anchors are 1 x 1
    size = raw_boxes[..., 2:4] / s  # (B, N, 2)
    boxes = torch.cat((centre - size / 2, centre + size / 2), dim=-1)  # (B, N, 4)
    kp = raw_boxes[..., 4 : 4 + 2 * cfg.num_keypoints].unflatten(-1, (cfg.num_keypoints, 2))  # (B, N, K, 2)
    keypoints = kp / s + anchors[:, None, :]
    scores = torch.sigmoid(raw_scores[..., 0].clamp(-cfg.score_clip, cfg.score_clip))  # (B, N)
    keep = (scores >= cfg.min_score) & (size >= 0).all(dim=-1)  # NaN compares False
    return boxes, keypoints, scores, keep


def box_iou(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """IoU of boxes (..., N, 4) and (..., M, 4) ``[x1, y1, x2, y2]`` -> (..., N, M); 0 without overlap."""
    lt = torch.maximum(a[..., :, None, :2], b[..., None, :, :2])
    rb = torch.minimum(a[..., :, None, 2:], b[..., None, :, 2:])
    inter = (rb - lt).clamp(min=0).prod(dim=-1)  # (..., N, M)
    area_a = (a[..., 2:] - a[..., :2]).prod(dim=-1)
    area_b = (b[..., 2:] - b[..., :2]).prod(dim=-1)
    union = area_a[..., :, None] + area_b[..., None, :] - inter
    return torch.where(union > 0, inter / union.clamp(min=1e-12), torch.zeros_like(inter))


def weighted_nms(boxes: torch.Tensor, keypoints: torch.Tensor, scores: torch.Tensor, keep: torch.Tensor,
                 iou: float, max_out: int | None = None) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:  # fmt: skip
    """MediaPipe's ``WeightedNonMaxSuppression``, all images at once: repeatedly take the best remaining
    detection, gather every remaining one with IoU > ``iou`` with it (itself included), and output their
    score-weighted mean box and keypoints with the best one's score; those leave the pool. A best box
    that overlaps nothing (zero area) is output as is and ends that image, as in MediaPipe.

    boxes (B, N, 4), keypoints (B, N, K, 2), scores, keep (B, N) -> per image (boxes (n, 4), keypoints
    (n, K, 2), scores (n,)), best first; at most ``max_out`` per image.
    """
    B = boxes.shape[0]
    m = int(keep.sum(dim=1).max()) if B else 0
    order = scores.masked_fill(~keep, -1.0).argsort(dim=1, descending=True)[:, :m]  # (B, M)
    bx = boxes.gather(1, order[..., None].expand(-1, -1, 4))  # (B, M, 4)
    kp = keypoints.gather(1, order[..., None, None].expand(-1, -1, *keypoints.shape[2:]))  # (B, M, K, 2)
    sc = scores.gather(1, order)  # (B, M)
    pool = keep.gather(1, order)  # (B, M) remaining
    overlap = box_iou(bx, bx)  # (B, M, M)
    outs: list[tuple[torch.Tensor, ...]] = []
    rows = torch.arange(B, device=boxes.device)
    while bool(pool.any()) and (max_out is None or len(outs) < max_out):
        active = pool.any(dim=1)  # (B,)
        top = pool.int().argmax(dim=1)  # (B,) first remaining = best
        cand = (overlap[rows, top] > iou) & pool  # (B, M)
        w = sc * cand  # (B, M)
        total = w.sum(dim=1).clamp(min=1e-12)
        wb = (w[..., None] * bx).sum(dim=1) / total[:, None]  # (B, 4)
        wk = (w[..., None, None] * kp).sum(dim=1) / total[:, None, None]  # (B, K, 2)
        alone = ~cand.any(dim=1)  # zero-area best: output unweighted, stop this image
        wb = torch.where(alone[:, None], bx[rows, top], wb)
        wk = torch.where(alone[:, None, None], kp[rows, top], wk)
        outs.append((wb, wk, sc[rows, top], active))
        pool = pool & ~cand & ~alone[:, None]
    result = []
    for b in range(B):
        sel = [o for o in outs if bool(o[3][b])]
        if not sel:
            result.append((boxes.new_zeros(0, 4), keypoints.new_zeros(0, *keypoints.shape[2:]), scores.new_zeros(0)))
            continue
        result.append((torch.stack([o[0][b] for o in sel]), torch.stack([o[1][b] for o in sel]),
                       torch.stack([o[2][b] for o in sel])))  # fmt: skip
    return result


def detection_rois(keypoints: torch.Tensor, image_hw: tuple[int, int], cfg: LandmarkConfig) -> torch.Tensor:
    """Keypoints (n, K, 2) in [0, 1] of the image -> rois (n, 5) ``(cx, cy, side, side, angle)`` in pixels.

    ``AlignmentPointsRectsCalculator``: centre k0, side ``2 |k1 - k0|``, angle ``target - atan2(-(y1 - y0),
    x1 - x0)`` normalised to [-pi, pi); ``RectTransformationCalculator``: side times ``roi_scale``.
    """
    H, W = image_hw
    scale = keypoints.new_tensor([W, H])
    p0 = keypoints[:, cfg.roi_keypoints[0]] * scale  # (n, 2) pixels
    p1 = keypoints[:, cfg.roi_keypoints[1]] * scale
    d = p1 - p0
    side = 2.0 * d.norm(dim=-1) * cfg.roi_scale  # (n,)
    angle = math.radians(cfg.roi_target_angle_deg) - torch.atan2(-d[:, 1], d[:, 0])
    angle = angle - 2 * math.pi * torch.floor((angle + math.pi) / (2 * math.pi))
    return torch.stack((p0[:, 0], p0[:, 1], side, side, angle), dim=-1)


# ----------------------------------------------------------------------------- landmark post-processing
def refine_with_heatmap(xy: torch.Tensor, heatmap: torch.Tensor, cfg: LandmarkConfig) -> torch.Tensor:
    """``RefineLandmarksFromHeatmapCalculator``: landmarks (N, L, 2) in the crop's [0, 1], heatmap logits
    (N, L, h, w) -> refined landmarks. Around cell ``(int(y h), int(x w))`` (truncated), the sigmoid
    confidences of a ``kernel`` window clipped to the map give ``x = sum(c col) / sum(c) / w`` (and y) when
    their maximum reaches ``heatmap_min_confidence``. As in MediaPipe, a column outside the map or a negative
    row leaves the landmark as is; a row below the map is not checked (its window is clipped)."""
    N, L, h, w = heatmap.shape
    conf = torch.sigmoid(heatmap)
    col = torch.trunc(xy[..., 0] * w).long()  # (N, L)
    row = torch.trunc(xy[..., 1] * h).long()
    half = (cfg.heatmap_kernel - 1) // 2
    offs = torch.arange(-half, half + 1, device=xy.device)
    rr = row[..., None, None] + offs[:, None]  # (N, L, k, 1)
    cc = col[..., None, None] + offs[None, :]  # (N, L, 1, k)
    inside = (rr >= 0) & (rr < h) & (cc >= 0) & (cc < w)  # (N, L, k, k)
    n_idx = torch.arange(N, device=xy.device)[:, None, None, None]
    l_idx = torch.arange(L, device=xy.device)[None, :, None, None]
    c = conf[n_idx, l_idx, rr.clamp(0, h - 1), cc.clamp(0, w - 1)] * inside  # (N, L, k, k)
    total = c.sum(dim=(2, 3))
    x_new = (c * cc).sum(dim=(2, 3)) / total.clamp(min=1e-12) / w
    y_new = (c * rr).sum(dim=(2, 3)) / total.clamp(min=1e-12) / h
    ok = (col >= 0) & (col < w) & (row >= 0) & (c.amax(dim=(2, 3)) >= cfg.heatmap_min_confidence) & (total > 0)
    return torch.where(ok[..., None], torch.stack((x_new, y_new), dim=-1), xy)


def project_to_image(xy: torch.Tensor, rois: torch.Tensor) -> torch.Tensor:
    """Crop coordinates (N, L, 2) in [0, 1] -> image pixels: ``c + R(angle) ((x - 1/2) w, (y - 1/2) h)``
    (``LandmarkProjectionCalculator``; the roi is square in pixels, so normalised and pixel rotation agree)."""
    lx = (xy[..., 0] - 0.5) * rois[:, None, 2]
    ly = (xy[..., 1] - 0.5) * rois[:, None, 3]
    cos, sin = torch.cos(rois[:, None, 4]), torch.sin(rois[:, None, 4])
    return torch.stack((rois[:, None, 0] + cos * lx - sin * ly, rois[:, None, 1] + sin * lx + cos * ly), dim=-1)


def decode_landmarks(raw: torch.Tensor, heatmap: torch.Tensor, rois: torch.Tensor,
                     cfg: LandmarkConfig) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:  # fmt: skip
    """``TensorsToLandmarksCalculator`` + heatmap refinement + projection: raw (N, 195), heatmap (N, 39, h, w),
    rois (N, 5) -> body keypoints (N, 33, 2) in image pixels, visibility and presence (N, 33) (sigmoids)."""
    v = raw.unflatten(-1, (cfg.num_landmarks, LANDMARK_VALUES))  # (N, 39, 5)
    xy = refine_with_heatmap(v[..., :2] / cfg.input_size, heatmap, cfg)  # (N, 39, 2) in the crop's [0, 1]
    n = cfg.num_pose_landmarks
    return project_to_image(xy[:, :n], rois), torch.sigmoid(v[:, :n, 3]), torch.sigmoid(v[:, :n, 4])


# ----------------------------------------------------------------------------- the pipeline
@dataclass
class Person:
    """One person of an image; coordinates in that image's pixels (module doc)."""

    keypoints: torch.Tensor  # (33, 2) x, y of LANDMARK_NAMES
    visibility: torch.Tensor  # (33,) probability the landmark is visible (not occluded)
    presence: torch.Tensor  # (33,) probability the landmark is inside the image
    score: float  # the landmark model's pose presence
    box: torch.Tensor  # (4,) [x1, y1, x2, y2] of the present landmarks, clipped to the image
    detection_box: torch.Tensor  # (4,) the detector's box (the face)
    detection_score: float
    roi: torch.Tensor  # (5,) cx, cy, width, height (pixels), angle (radians) of the landmark crop
    image_hw: tuple[int, int]
    mask: torch.Tensor | None = None  # (H, W) person probability (zero outside the roi)


class PoseEstimator(nn.Module):
    """Detector + landmark model with MediaPipe's pre- and post-processing (module doc). Batched over images
    of any sizes; device-agnostic (the module's device)."""

    anchors: torch.Tensor  # (2254, 2) SSD anchor centres, a buffer

    def __init__(self, config: PoseConfig | None = None) -> None:
        super().__init__()
        self.config = config or PoseConfig()
        self.detector = PoseDetectorNet()
        self.landmarker = PoseLandmarkNet(self.config.landmark.num_landmarks)
        d = self.config.detector
        anchors = ssd_anchors(d)
        expected = sum((d.input_size // s) ** 2 * a for s, _, a in DETECTOR_HEADS)
        if anchors.shape[0] != expected:
            raise ConfigError(f"DetectorConfig gives {anchors.shape[0]} anchors; the network outputs {expected}")
        self.register_buffer("anchors", anchors, persistent=False)

    @property
    def device(self) -> torch.device:
        return self.anchors.device

    def detector_input(self, images: list[torch.Tensor]) -> tuple[torch.Tensor, list[tuple[float, float]]]:
        """Images (3, H, W) in [0, 1] -> the detector's input (B, 3, 224, 224) (letterboxed, in its range) and
        each image's (horizontal, vertical) letterbox padding."""
        d = self.config.detector
        size = (d.input_size, d.input_size)
        rois, pads = zip(*(letterbox_roi(im.shape[-2], im.shape[-1], *size) for im in images))
        x = torch.cat([warp_rois(im, r[None], size, d.border) for im, r in zip(images, rois)])
        return to_range(x, *d.input_range), list(pads)

    def landmark_input(self, images: list[torch.Tensor], rois: list[torch.Tensor]) -> torch.Tensor:
        """Each image's rois (n_i, 5) -> the landmark model's input (sum n_i, 3, 256, 256), in its range."""
        c = self.config.landmark
        size = (c.input_size, c.input_size)
        crops = [warp_rois(im, r, size, c.border) for im, r in zip(images, rois) if len(r)]
        return to_range(torch.cat(crops), *c.input_range)

    def detect(self, images: list[torch.Tensor]) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        """Images (3, H, W) in [0, 1] -> per image the detections after NMS: boxes (n, 4), keypoints (n, K, 2)
        in [0, 1] of the image (letterbox removed), scores (n,), best first."""
        d = self.config.detector
        x, pads = self.detector_input(images)
        raw_boxes, raw_scores = self.detector(x)  # (B, N, 12), (B, N, 1)
        boxes, kps, scores, keep = decode_detections(raw_boxes, raw_scores, self.anchors, d)
        out = []
        for (bx, kp, sc), (ph, pv) in zip(weighted_nms(boxes, kps, scores, keep, d.nms_iou, self.config.max_people),
                                          pads):  # fmt: skip
            lo, span = bx.new_tensor([ph, pv]), bx.new_tensor([1 - 2 * ph, 1 - 2 * pv])
            out.append((((bx.unflatten(-1, (2, 2)) - lo) / span).flatten(-2), (kp - lo) / span, sc))
        return out

    def rois(self, images: list[torch.Tensor],
             detections: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]) -> list[torch.Tensor]:  # fmt: skip
        """Each image's landmark rois (n_i, 5) from its detections (:func:`detection_rois`)."""
        c = self.config.landmark
        return [detection_rois(kp, (im.shape[-2], im.shape[-1]), c) for im, (_, kp, _) in zip(images, detections)]

    @torch.inference_mode()
    def forward(self, images: torch.Tensor | Sequence[torch.Tensor]) -> list[list[Person]]:
        """People in each image: (B, 3, H, W) or a list of (3, H_i, W_i), float RGB in [0, 1]."""
        items = check_images(images, "PoseEstimator")
        if any(im.device != self.device for im in items):
            raise DataError(f"PoseEstimator: images must be on {self.device}, the model's device")
        c = self.config.landmark
        dets = self.detect(items)
        rois = self.rois(items, dets)
        if not any(len(r) for r in rois):
            return [[] for _ in items]
        raw, flag, mask_logits, heat, _ = self.landmarker(self.landmark_input(items, rois))
        all_rois = torch.cat(rois)  # (N, 5)
        kp, vis, pres = decode_landmarks(raw, heat, all_rois, c)
        people: list[list[Person]] = []
        start = 0
        for im, r, (boxes, _, scores) in zip(items, rois, dets):
            sl = slice(start, start + len(r))
            start += len(r)
            masks = torch.sigmoid(mask_logits[sl, 0]) if self.config.masks and len(r) else None
            people.append(self._people(im, r, boxes, scores, kp[sl], vis[sl], pres[sl], flag[sl, 0], masks))
        return people

    def _people(self, image: torch.Tensor, rois: torch.Tensor, boxes: torch.Tensor, scores: torch.Tensor,
                kp: torch.Tensor, vis: torch.Tensor, pres: torch.Tensor, flag: torch.Tensor,
                masks: torch.Tensor | None) -> list[Person]:  # fmt: skip
        """The people of one image whose pose presence passes (``ThresholdingCalculator``)."""
        H, W = image.shape[-2:]
        keep = flag > self.config.landmark.presence_threshold
        full = unwarp_rois(masks[keep], rois[keep], (H, W)) if masks is not None and bool(keep.any()) else None
        scale = boxes.new_tensor([W, H, W, H])
        out = []
        for j, i in enumerate(keep.nonzero()[:, 0].tolist()):
            present = pres[i] >= self.config.box_presence
            pts = kp[i][present] if bool(present.any()) else kp[i]
            lo = torch.minimum(pts.amin(dim=0), pts.new_tensor([W, H])).clamp(min=0)
            hi = torch.minimum(pts.amax(dim=0), pts.new_tensor([W, H])).clamp(min=0)
            out.append(Person(keypoints=kp[i], visibility=vis[i], presence=pres[i], score=float(flag[i]),
                              box=torch.cat((lo, hi)), detection_box=boxes[i] * scale,
                              detection_score=float(scores[i]), roi=rois[i], image_hw=(H, W),
                              mask=full[j] if full is not None else None))  # fmt: skip
        return out


@VISION.register("blazepose")
def load_pose(device: str | torch.device = "cpu", config: PoseConfig | None = None,
              detector_path: str | Path | None = None, landmark_path: str | Path | None = None) -> PoseEstimator:  # fmt: skip
    """The pose estimator with the shipped weights (``avloc/zoo``, or the given files), eval mode, on ``device``
    (channels-last weights: about 1.5 to 2 times as fast on CPU as NCHW, same values)."""
    model = PoseEstimator(config)
    load_zoo_weights(model.detector, DETECTOR_FILE, detector_path)
    load_zoo_weights(model.landmarker, LANDMARK_FILE, landmark_path)
    return channels_last(model.eval().to(device))


# ----------------------------------------------------------------------------- the head
@dataclass(frozen=True)
class HeadConfig:
    """Head box from the face landmarks, in units ``u`` of the eye-to-mouth distance.

    ``u = max(|eye mid - mouth mid|, ears * |left ear - right ear|, eyes * |left eye - right eye|)``: the
    eye-to-mouth height does not shrink when the head turns (the ear and eye spans do), the spans take over
    when the head tilts towards or away from the camera. Adult anthropometry (rounded means): pupils to
    mouth ~7 cm, ear to ear (bitragion) ~14 cm (``ears`` 0.5), pupil to pupil ~6.3 cm (``eyes`` 1.1); the
    pupils lie about half-way between chin and crown. The box is laid along the face's up axis (mouth ->
    eyes), centred across it between the ear mid and the nose (the head's centre, frontal or in profile), at
    eye level along it; ``half_width`` 1.4 u and 1.9 u above and below (a head ~16 x 25 cm with hair, drawn
    generously as the dev set's hand-drawn speaker boxes are: about 20 x 27 cm). The axis-aligned bounds of
    that box are returned, clipped to the image.
    """

    ears: float = 0.5
    eyes: float = 1.1
    half_width: float = 1.4
    above: float = 1.9
    below: float = 1.9
    #: the head is not placed when the mean presence (in the image) of the 11 face landmarks is below this
    min_presence: float = 0.5

    def __post_init__(self) -> None:
        for name in ("ears", "eyes", "half_width", "above", "below"):
            if not getattr(self, name) > 0:
                raise ConfigError(f"HeadConfig.{name} must be > 0, got {getattr(self, name)}")
        if not 0.0 <= self.min_presence < 1.0:
            raise ConfigError(f"HeadConfig.min_presence must be in [0, 1), got {self.min_presence}")


def head_box(person: Person, config: HeadConfig | None = None) -> torch.Tensor | None:
    """The speaker's head ``[x1, y1, x2, y2]`` in image pixels from the face landmarks (:class:`HeadConfig`);
    ``None`` when the face is out of the image."""
    c = config or HeadConfig()
    k = person.keypoints.double()
    if float(person.presence[: MOUTH_RIGHT + 1].mean()) < c.min_presence:
        return None
    eyes = (k[LEFT_EYE] + k[RIGHT_EYE]) / 2
    mouth = (k[MOUTH_LEFT] + k[MOUTH_RIGHT]) / 2
    ears = (k[LEFT_EAR] + k[RIGHT_EAR]) / 2
    up = eyes - mouth
    u = max(float(up.norm()), c.ears * float((k[LEFT_EAR] - k[RIGHT_EAR]).norm()),
            c.eyes * float((k[LEFT_EYE] - k[RIGHT_EYE]).norm()))  # fmt: skip
    if u <= 0:
        return None
    up = up / up.norm() if float(up.norm()) > 0 else k.new_tensor([0.0, -1.0])  # image y grows downwards
    across = k.new_tensor([-up[1], up[0]])
    centre = eyes + (((k[NOSE] + ears) / 2 - eyes) @ across) * across  # across: head centre; along: eye level
    corners = torch.stack([centre + across * a * c.half_width * u + up * b * u
                           for a in (-1.0, 1.0) for b in (c.above, -c.below)])  # fmt: skip
    H, W = person.image_hw
    lo = corners.amin(dim=0).clamp(min=0)
    hi = torch.minimum(corners.amax(dim=0), k.new_tensor([W, H]))
    if bool((hi <= lo).any()):
        return None
    return torch.cat((lo, hi)).float()
