"""Shared types and post-processing of the COCO detectors and the pose model of :mod:`avloc.vision`.

* :class:`Detections` (and :class:`Poses`): what ``detect`` returns for one image, in that
  image's pixels, on its device;
* :data:`COCO_CLASSES`: the 80 COCO names in the order the detectors' class channels use
  (the ``labels.ts`` list of the human library, which is the COCO-80 order of the
  ``instances_*.json`` category ids without the 11 unused ids);
* :class:`DetectorConfig`: the fields every model has (input size, score threshold, NMS IoU,
  maximum detections, a weights file), validated once;
* :class:`Detector`: the ``nn.Module`` base with the one ``detect(images)`` entry point: images of
  any size and aspect (a ``(B, 3, H, W)`` batch or a list of ``(3, H, W)``) are resized to the
  network input, run as one batch, decoded by the subclass and mapped back per image;
* :func:`select_candidates` + :func:`batched_nms`: vectorised over images, anchors and classes.
  NMS is exact greedy NMS (Neubeck & Van Gool, ICPR 2006) computed as the unique fixed point of
  ``keep[j] = not any(keep[i] and IoU(i, j) > t for i ranked before j)``: each iteration is one
  masked reduction over the ``(B, K, K)`` IoU tensor (:func:`avloc.metrics.ops.box_iou` under
  ``torch.vmap``), and the first ``n`` ranks are final after ``n`` iterations, so it stops after
  as many iterations as the longest suppression chain (a handful), not one per box;
* :func:`load_zoo_weights`: the converted weights shipped in ``avloc/zoo/vision`` (safetensors),
  checked strictly against the module.
"""

from __future__ import annotations

from abc import abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass, fields, replace
from importlib import resources
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from avloc.errors import CheckpointError, ConfigError, MediaError
from avloc.metrics.ops import box_iou
from avloc.vision.tfops import resize_bilinear

#: COCO-80 class names, index = the detectors' class channel (human ``src/object/labels.ts``)
COCO_CLASSES: tuple[str, ...] = (
    "person", "bicycle", "car", "motorcycle", "airplane", "bus", "train", "truck", "boat", "traffic light",
    "fire hydrant", "stop sign", "parking meter", "bench", "bird", "cat", "dog", "horse", "sheep", "cow",
    "elephant", "bear", "zebra", "giraffe", "backpack", "umbrella", "handbag", "tie", "suitcase", "frisbee",
    "skis", "snowboard", "sports ball", "kite", "baseball bat", "baseball glove", "skateboard", "surfboard",
    "tennis racket", "bottle", "wine glass", "cup", "fork", "knife", "spoon", "bowl", "banana", "apple",
    "sandwich", "orange", "broccoli", "carrot", "hot dog", "pizza", "donut", "cake", "chair", "couch",
    "potted plant", "bed", "dining table", "toilet", "tv", "laptop", "mouse", "remote", "keyboard",
    "cell phone", "microwave", "oven", "toaster", "sink", "refrigerator", "book", "clock", "vase",
    "scissors", "teddy bear", "hair drier", "toothbrush",
)  # fmt: skip


@dataclass
class Detections:
    """Detections in one image: ``boxes`` (K, 4) float ``[x1, y1, x2, y2]`` in the input image's pixels,
    ``scores`` (K,) float in [0, 1], ``labels`` (K,) int64 index into :data:`COCO_CLASSES`; by decreasing score."""

    boxes: Tensor
    scores: Tensor
    labels: Tensor

    def __post_init__(self) -> None:
        k = self.scores.shape[0] if self.scores.dim() == 1 else -1
        if self.boxes.shape != (k, 4) or self.labels.shape != (k,) or self.labels.dtype != torch.int64:
            raise ValueError(
                f"Detections need boxes (K, 4), scores (K,), int64 labels (K,); got {tuple(self.boxes.shape)}, "
                f"{tuple(self.scores.shape)}, {tuple(self.labels.shape)} {self.labels.dtype}"
            )

    def __len__(self) -> int:
        return int(self.scores.shape[0])

    def names(self) -> list[str]:
        """The COCO class name of each detection."""
        return [COCO_CLASSES[i] for i in self.labels.tolist()]

    def to(self, device: torch.device | str) -> Detections:
        """The same detections with every tensor on ``device``."""
        return replace(self, **{f.name: getattr(self, f.name).to(device) for f in fields(self)})


@dataclass
class Poses(Detections):
    """People with keypoints: :class:`Detections` (label 0, "person") plus ``keypoints`` (P, 17, 3)
    ``[x, y, score]`` in the input image's pixels, in the COCO keypoint order (:data:`KEYPOINTS`)."""

    keypoints: Tensor

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.keypoints.shape != (len(self), len(KEYPOINTS), 3):
            raise ValueError(f"Poses need keypoints ({len(self)}, 17, 3), got {tuple(self.keypoints.shape)}")


#: the 17 COCO keypoints, in the order of MoveNet's outputs (human ``src/body/movenetcoords.ts``)
KEYPOINTS: tuple[str, ...] = (
    "nose", "left_eye", "right_eye", "left_ear", "right_ear", "left_shoulder", "right_shoulder", "left_elbow",
    "right_elbow", "left_wrist", "right_wrist", "left_hip", "right_hip", "left_knee", "right_knee", "left_ankle",
    "right_ankle",
)  # fmt: skip


@dataclass
class DetectorConfig:
    """Fields every vision model has; each model's config subclass gives its defaults and their sources.

    ``pre_nms_top_k``: the best (location, class) pairs that enter NMS; ``class_agnostic_nms``: one NMS
    over all classes instead of one per class; ``letterbox``: how an image is fitted to the square
    input (:func:`fit_to_canvas`); ``weights``: a safetensors file to load instead of the one shipped
    in ``avloc/zoo/vision``.
    """

    input_size: int = 0
    score_threshold: float = 0.2
    iou_threshold: float = 0.6
    max_detections: int = 100
    pre_nms_top_k: int = 1000
    class_agnostic_nms: bool = False
    letterbox: bool = True
    weights: str | None = None

    def __post_init__(self) -> None:
        if self.input_size < 32 or self.input_size % 32:
            raise ConfigError(f"input_size must be a positive multiple of 32, got {self.input_size}")
        if not 0.0 <= self.score_threshold < 1.0:
            raise ConfigError(f"score_threshold must be in [0, 1), got {self.score_threshold}")
        if not 0.0 < self.iou_threshold <= 1.0:
            raise ConfigError(f"iou_threshold must be in (0, 1], got {self.iou_threshold}")
        if self.max_detections < 1:
            raise ConfigError(f"max_detections must be >= 1, got {self.max_detections}")
        if self.pre_nms_top_k < self.max_detections:
            raise ConfigError(f"pre_nms_top_k ({self.pre_nms_top_k}) must be >= max_detections ({self.max_detections})")

    @classmethod
    def from_kwargs(cls, **kwargs: Any) -> DetectorConfig:
        """The config from keyword arguments; unknown names raise with the valid ones."""
        valid = {f.name for f in fields(cls)}
        unknown = sorted(set(kwargs) - valid)
        if unknown:
            raise ConfigError(f"unknown {cls.__name__} field(s) {unknown}; valid: {sorted(valid)}")
        return cls(**kwargs)


def as_image_list(images: Tensor | Sequence[Tensor]) -> list[Tensor]:
    """``(B, 3, H, W)`` or a list of ``(3, H, W)`` float RGB images in [0, 1] -> a list of ``(3, H, W)``."""
    if isinstance(images, Tensor) and images.dim() != 4:
        raise MediaError(
            f"detect() takes a (B, 3, H, W) batch or a list of (3, H, W) images, got {tuple(images.shape)}"
        )
    items = list(images.unbind(0)) if isinstance(images, Tensor) else list(images)
    if not items:
        raise MediaError("detect() got no images")
    for i, im in enumerate(items):
        if not isinstance(im, Tensor) or im.dim() != 3 or im.shape[0] != 3 or not im.is_floating_point():
            what = tuple(im.shape) if isinstance(im, Tensor) else type(im).__name__
            raise MediaError(f"image {i}: expected a float (3, H, W) RGB tensor in [0, 1], got {what}")
        if min(im.shape[1:]) < 1:
            raise MediaError(f"image {i} is empty: {tuple(im.shape)}")
    return items


def fit_to_canvas(image: Tensor, size: int, letterbox: bool) -> tuple[Tensor, Tensor]:
    """Resize one ``(3, H, W)`` image onto the ``(3, size, size)`` network canvas.

    ``letterbox``: scaled by ``size / max(H, W)`` (aspect kept), centred, the border 0 (black);
    otherwise stretched to the square. Resizing is ``tf.image.resizeBilinear`` (TF legacy sampling,
    what the human library uses). Returns the canvas and the affine ``(sx, sy, ox, oy)`` (4,) taking
    canvas coordinates to the image's: ``x = sx * u + ox``, ``y = sy * v + oy``.
    """
    h, w = image.shape[1:]
    if not letterbox:
        canvas = resize_bilinear(image[None], (size, size), half_pixel_centers=False)[0]
        return canvas, image.new_tensor([w / size, h / size, 0.0, 0.0])
    scale = size / max(h, w)
    nh, nw = max(1, round(h * scale)), max(1, round(w * scale))
    top, left = (size - nh) // 2, (size - nw) // 2
    canvas = image.new_zeros(3, size, size)
    canvas[:, top : top + nh, left : left + nw] = resize_bilinear(image[None], (nh, nw), half_pixel_centers=False)[0]
    sx, sy = w / nw, h / nh
    return canvas, image.new_tensor([sx, sy, -left * sx, -top * sy])


def boxes_to_image(boxes: Tensor, affine: Tensor, sizes: Tensor) -> Tensor:
    """Canvas boxes (B, K, 4) xyxy -> image pixels with each image's ``affine`` (B, 4), clipped to ``sizes`` (B, 2)."""
    scale = affine[:, None, :2].repeat(1, 1, 2)  # (B, 1, 4)
    offset = affine[:, None, 2:].repeat(1, 1, 2)
    limit = sizes.flip(1)[:, None, :].repeat(1, 1, 2)  # (B, 1, 4): w, h, w, h
    return torch.minimum((boxes * scale + offset).clamp_min(0), limit)


class Detector(nn.Module):
    """Base of the vision models: ``forward`` is the network (raw outputs), ``detect`` the whole pipeline."""

    config: DetectorConfig

    @abstractmethod
    def preprocess(self, image: Tensor) -> tuple[Tensor, Tensor]:
        """One ``(3, H, W)`` image in [0, 1] -> the network input of one image and its canvas affine (4,)
        (:func:`fit_to_canvas`)."""

    @abstractmethod
    def postprocess(self, raw: Tensor | tuple[Tensor, ...], affine: Tensor, sizes: Tensor) -> Sequence[Detections]:
        """Raw outputs of a batch, each image's canvas affine (B, 4) and ``(height, width)`` (B, 2) ->
        detections in each image's pixels."""

    @torch.no_grad()
    def detect(self, images: Tensor | Sequence[Tensor]) -> list[Detections]:
        """Detections of each image: ``(B, 3, H, W)`` or a list of ``(3, H, W)`` float RGB in [0, 1], any size;
        on the images' device (the model runs on its own)."""
        items = as_image_list(images)
        device = next(self.parameters()).device
        sizes = torch.tensor([im.shape[1:] for im in items], dtype=torch.float32, device=device)  # (B, 2) as (h, w)
        inputs, affines = zip(*(self.preprocess(im.to(device=device, dtype=torch.float32)) for im in items))
        out = self.postprocess(self(torch.stack(inputs)), torch.stack(affines), sizes)
        return [d if d.boxes.device == items[0].device else d.to(items[0].device) for d in out]


class BoxDetector(Detector):
    """A COCO detector: the subclass gives ``candidates``, this class thresholds, runs NMS and maps back."""

    @abstractmethod
    def candidates(self, raw: Tensor | tuple[Tensor, ...]) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """Raw outputs -> the ``pre_nms_top_k`` best (box, class) pairs of each image: boxes (B, K, 4)
        xyxy in canvas pixels, scores (B, K), labels (B, K), valid (B, K) (score > ``score_threshold``)."""

    def postprocess(self, raw: Tensor | tuple[Tensor, ...], affine: Tensor, sizes: Tensor) -> list[Detections]:
        cfg = self.config
        boxes, scores, labels, valid = self.candidates(raw)
        keep = batched_nms(boxes, scores, labels, valid, cfg.iou_threshold, cfg.class_agnostic_nms)
        return gather_detections(boxes_to_image(boxes, affine, sizes), scores, labels, keep, cfg.max_detections)


def select_candidates(scores: Tensor, threshold: float, top_k: int) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """The best (location, class) pairs of each image, at most ``top_k``: ``scores`` (B, N, C) ->
    ``(values, locations, labels, valid)``, each (B, K) by decreasing score; ``valid`` marks values >
    ``threshold``. K is cut to the most valid pairs any image has (NMS costs K^2), at least 1."""
    b, n, c = scores.shape
    values, flat = scores.reshape(b, n * c).topk(min(top_k, n * c), dim=1)  # (B, K)
    valid = values > threshold
    k = max(1, int(valid.sum(1).max()))
    values, flat, valid = values[:, :k], flat[:, :k], valid[:, :k]
    return values, flat // c, flat % c, valid


def batched_nms(boxes: Tensor, scores: Tensor, labels: Tensor, valid: Tensor, iou_threshold: float,
                class_agnostic: bool = False) -> Tensor:  # fmt: skip
    """Greedy NMS per image (and per class unless ``class_agnostic``), all images at once.

    ``boxes`` (B, K, 4) xyxy, ``scores``/``labels``/``valid`` (B, K) -> keep mask (B, K). A box is
    suppressed by a kept, higher-ranked box of the same image (and class) with IoU > ``iou_threshold``;
    ties in score keep the lower index first. Invalid entries are never kept and suppress nothing.
    """
    k = scores.shape[1]
    order = torch.sort(scores.masked_fill(~valid, -torch.inf), dim=1, descending=True, stable=True).indices  # (B, K)
    rank = torch.empty_like(order).scatter_(1, order, torch.arange(k, device=order.device).expand_as(order))
    iou = torch.vmap(box_iou)(boxes, boxes)  # (B, K, K)
    earlier = rank[:, :, None] < rank[:, None, :]  # (B, K, K): i ranked before j
    same = labels[:, :, None] == labels[:, None, :] if not class_agnostic else torch.ones_like(earlier)
    can_suppress = (iou > iou_threshold) & earlier & same & valid[:, :, None]  # (B, K, K): i may suppress j
    keep = valid.clone()
    for _ in range(k):
        new = valid & ~(can_suppress & keep[:, :, None]).any(dim=1)  # (B, K)
        if torch.equal(new, keep):
            break
        keep = new
    return keep


def gather_detections(boxes: Tensor, scores: Tensor, labels: Tensor, keep: Tensor,
                      max_detections: int) -> list[Detections]:  # fmt: skip
    """The kept entries of each image, best ``max_detections`` first: (B, K) inputs -> a list of B."""
    ranked = scores.masked_fill(~keep, -torch.inf)
    top, idx = ranked.topk(min(max_detections, ranked.shape[1]), dim=1)  # (B, M)
    out = []
    for i in range(boxes.shape[0]):
        sel = idx[i][torch.isfinite(top[i])]  # (K_i,)
        out.append(Detections(boxes[i, sel], scores[i, sel], labels[i, sel].to(torch.int64)))
    return out


def zoo_file(name: str) -> Path:
    """The path of a file shipped in ``avloc/zoo/vision`` (a folder of its own: ``avloc/zoo/*.safetensors``
    are the localisation methods' checkpoints, :func:`avloc.methods.zoo.list_zoo`)."""
    return Path(str(resources.files("avloc") / "zoo" / "vision" / name))


def load_zoo_weights(module: nn.Module, filename: str, override: str | None = None, shipped: bool = True) -> None:
    """Load ``avloc/zoo/vision/<filename>`` (or ``override``) into ``module``; keys and shapes checked strictly.

    Tensors stored as float16 (the dtype the TF.js shards hold) are widened to the parameter's dtype.
    Raises :class:`CheckpointError` (one line) when the file is missing, unreadable or does not match;
    ``shipped`` False: avloc does not ship ``filename``, so ``override`` is required.
    """
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    stem = filename.split(".")[0]
    if override is None and not shipped:
        raise CheckpointError(
            f"{stem} weights are not shipped with avloc (see avloc.vision.{stem}): convert them with "
            f"tools/convert_human_models.py --models {stem} --out DIR and pass weights='DIR/{filename}'"
        )
    path = Path(override) if override else zoo_file(filename)
    if not path.is_file():
        raise CheckpointError(
            f"{path}: weights not found; "
            + ("the package ships them: reinstall avloc" if override is None else "check the weights= path")
        )
    try:
        state = load_file(str(path))
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(f"{path}: not a readable safetensors file ({e}); reinstall avloc") from None
    expected = module.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    wrong = [k for k, v in expected.items() if k in state and state[k].shape != v.shape]
    if missing or unexpected or wrong:
        raise CheckpointError(
            f"{path} does not match {type(module).__name__}: missing {missing[:3] or 'none'}, "
            f"unexpected {unexpected[:3] or 'none'}, wrong shapes {wrong[:3] or 'none'}"
        )
    module.load_state_dict({k: v.to(expected[k].dtype) for k, v in state.items()}, strict=True)
