"""Image front-end: resizing, ImageNet normalisation, augmentation (torch only).

Geometry modes (see docs/protocols.md): ``crop`` resizes the short side to
``resize`` then centre-crops ``size`` (LVS); ``squash`` resizes straight to
``size`` x ``size`` (EZ-VSL); ``pad`` (letterbox) resizes the long side to
``size``, keeps the aspect and centres the picture on a ``PAD_VALUE`` grey
square (the whole frame undistorted: faces and objects keep their shape).
Boxes follow the same geometry via :func:`transform_boxes`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F

from avloc.config import ConfigValueError, check_positive, check_range

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
#: ``pad`` mode: the grey the letterbox is filled with (mid-range: zero after EfficientNet-Lite's 127/128 scaling)
PAD_VALUE = 0.5
#: largest model input side (px) a config may ask for: 8x the 512 px of the largest inputs of the field's
#: methods, and already 200 MB per float frame batch item; beyond it a typo, not a setting
MAX_SIDE = 4096
#: most frames per sample (``frames``): the field's segment methods use 4-16 (DNM: T = 4)
MAX_FRAMES = 256


@dataclass
class ImageConfig:
    """Model input geometry and normalisation (LVS/EZ-VSL: 224, ImageNet stats)."""

    size: int = 224
    resize: int = 224  # short side before the centre crop (crop mode); LVS uses 224
    mode: Literal["crop", "squash", "pad"] = "squash"
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    #: frames per sample. 1: the frame at the sample's time, ``image`` (3, H, W). T > 1: a segment of
    #: T frames evenly spaced over the audio window centred there (frame k at ``time - W/2 + (k + 0.5) W / T``,
    #: W = ``audio_cfg.window_seconds``, nearest video frame), ``image`` (T, 3, H, W); only datasets with
    #: video provide it (the others raise). Used by segment methods (DNM, Nishikawa et al. Sec. 4.1).
    frames: int = 1

    def __post_init__(self) -> None:
        check_range("size", self.size, 1, MAX_SIDE)
        check_range("resize", self.resize, 1, MAX_SIDE)
        check_range("frames", self.frames, 1, MAX_FRAMES)
        check_positive(**{f"std[{i}]": s for i, s in enumerate(self.std)})
        for i, m in enumerate(self.mean):
            check_range(f"image.mean[{i}]", m)
        if self.mode not in ("crop", "squash", "pad"):
            raise ConfigValueError("mode", f"must be crop, squash or pad, got {self.mode!r}")


def segment_times(center: float, window_seconds: float, frames: int) -> list[float]:
    """Times (s) of the ``frames`` frames of a segment of ``window_seconds`` centred on ``center`` (see ``ImageConfig.frames``)."""
    if frames < 1 or window_seconds <= 0:
        raise ValueError(f"a segment needs frames >= 1 and a positive window, got {frames}, {window_seconds}")
    return [center - window_seconds / 2 + (k + 0.5) * window_seconds / frames for k in range(frames)]


def to_float_image(img: torch.Tensor) -> torch.Tensor:
    """uint8 (…, H, W, 3) or (…, 3, H, W) -> float (…, 3, H, W) in [0, 1]."""
    if img.shape[-1] == 3 and img.shape[-3] != 3:
        img = img.movedim(-1, -3)
    return img.float().div_(255.0) if img.dtype == torch.uint8 else img.float()


def resize(img: torch.Tensor, size: tuple[int, int], antialias: bool = True) -> torch.Tensor:
    """Bilinear resize of (…, C, H, W) to ``size`` = (H, W) (half-pixel centres, like cv2)."""
    shape = img.shape
    x = img.reshape(-1, *shape[-3:])
    if x.shape[-2:] == size:
        return img
    down = x.shape[-2] > size[0] or x.shape[-1] > size[1]
    out = F.interpolate(x, size=size, mode="bilinear", align_corners=False, antialias=antialias and down)
    return out.reshape(*shape[:-2], *size)


def crop_geometry(h: int, w: int, cfg: ImageConfig) -> tuple[float, float, float, float]:
    """Return (scale_x, scale_y, off_x, off_y): input pixel = orig * scale - off."""
    if cfg.mode == "squash":
        return cfg.size / w, cfg.size / h, 0.0, 0.0
    if cfg.mode == "pad":
        nh, nw, top, left = _pad_geometry(h, w, cfg.size)
        return nw / w, nh / h, -float(left), -float(top)
    s = cfg.resize / min(h, w)
    # same resized size and integer crop offsets as preprocess_image / transform_boxes
    nh, nw = max(cfg.size, round(h * s)), max(cfg.size, round(w * s))
    return nw / w, nh / h, float((nw - cfg.size) // 2), float((nh - cfg.size) // 2)


def _pad_geometry(h: int, w: int, size: int) -> tuple[int, int, int, int]:
    """``pad`` mode: (resized h, resized w, top, left) of the picture inside the ``size`` square."""
    s = size / max(h, w)
    nh, nw = max(1, min(size, round(h * s))), max(1, min(size, round(w * s)))
    return nh, nw, (size - nh) // 2, (size - nw) // 2


def preprocess_image(img: torch.Tensor, cfg: ImageConfig) -> torch.Tensor:
    """Image (…, 3, H, W) float [0, 1] or uint8 -> model input (…, 3, size, size) in [0, 1]."""
    x = to_float_image(img)
    h, w = x.shape[-2:]
    if cfg.mode == "squash":
        return resize(x, (cfg.size, cfg.size)).clamp_(0.0, 1.0)  # antialiased kernels overshoot slightly
    if cfg.mode == "pad":
        nh, nw, top, left = _pad_geometry(h, w, cfg.size)
        out = x.new_full((*x.shape[:-2], cfg.size, cfg.size), PAD_VALUE)
        out[..., top : top + nh, left : left + nw] = resize(x, (nh, nw)).clamp_(0.0, 1.0)
        return out
    s = cfg.resize / min(h, w)
    nh, nw = max(cfg.size, round(h * s)), max(cfg.size, round(w * s))
    x = resize(x, (nh, nw))
    top, left = (nh - cfg.size) // 2, (nw - cfg.size) // 2
    return x[..., top : top + cfg.size, left : left + cfg.size].clamp_(0.0, 1.0)


def transform_boxes(boxes: torch.Tensor, orig_hw: tuple[int, int], cfg: ImageConfig) -> torch.Tensor:
    """Pixel boxes (K, 4) in the original frame -> boxes normalised to [0, 1] in the model input.

    Boxes are clipped to the input frame (crop mode can cut them); a box
    entirely cropped away becomes empty (x2 <= x1), which callers may drop.
    """
    h, w = orig_hw
    if cfg.mode == "squash":
        scale = torch.tensor([1 / w, 1 / h, 1 / w, 1 / h], dtype=torch.float32)
        return (boxes.float() * scale).clamp(0, 1)
    if cfg.mode == "pad":
        nh, nw, top, left = _pad_geometry(h, w, cfg.size)
        b = boxes.float() * torch.tensor([nw / w, nh / h, nw / w, nh / h])
        return ((b + torch.tensor([left, top, left, top], dtype=torch.float32)) / cfg.size).clamp(0, 1)
    s = cfg.resize / min(h, w)
    nh, nw = max(cfg.size, round(h * s)), max(cfg.size, round(w * s))
    top, left = (nh - cfg.size) // 2, (nw - cfg.size) // 2
    b = boxes.float() * torch.tensor([nw / w, nh / h, nw / w, nh / h])
    b = b - torch.tensor([left, top, left, top], dtype=torch.float32)
    return (b / cfg.size).clamp(0, 1)


def normalize(img: torch.Tensor, mean: tuple[float, ...] = IMAGENET_MEAN, std: tuple[float, ...] = IMAGENET_STD) -> torch.Tensor:
    """(…, 3, H, W) in [0, 1] -> (x - mean) / std."""
    m = torch.tensor(mean, dtype=img.dtype, device=img.device).view(3, 1, 1)
    s = torch.tensor(std, dtype=img.dtype, device=img.device).view(3, 1, 1)
    return (img - m) / s


def hflip(img: torch.Tensor) -> torch.Tensor:
    return img.flip(-1)


def random_resized_crop(
    img: torch.Tensor,
    size: int,
    scale: tuple[float, float] = (0.5, 1.0),
    ratio: tuple[float, float] = (3 / 4, 4 / 3),
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Random area/aspect crop resized to ``size`` (Inception-style augmentation).

    Returns the crop; the crop box (x1, y1, x2, y2) in input pixels is stored
    on the result's ``crop_box`` attribute is not possible for tensors, so use
    :func:`sample_resized_crop` when boxes must follow.
    """
    box = sample_resized_crop(img.shape[-2], img.shape[-1], scale, ratio, generator)
    return apply_crop(img, box, size)


def sample_resized_crop(
    h: int, w: int, scale: tuple[float, float], ratio: tuple[float, float], generator: torch.Generator | None = None
) -> tuple[int, int, int, int]:
    """Sample a crop box (x1, y1, x2, y2) with area fraction in ``scale`` and aspect in ``ratio``."""
    area = h * w
    for _ in range(10):
        u = torch.rand(2, generator=generator).tolist()
        target = area * (scale[0] + (scale[1] - scale[0]) * u[0])
        logr = math.log(ratio[0]) + (math.log(ratio[1]) - math.log(ratio[0])) * u[1]
        ar = math.exp(logr)
        cw, ch = round(math.sqrt(target * ar)), round(math.sqrt(target / ar))
        if 0 < cw <= w and 0 < ch <= h:
            p = torch.rand(2, generator=generator).tolist()
            x1, y1 = int(p[0] * (w - cw + 1)), int(p[1] * (h - ch + 1))
            return x1, y1, x1 + cw, y1 + ch
    side = min(h, w)
    x1, y1 = (w - side) // 2, (h - side) // 2
    return x1, y1, x1 + side, y1 + side


def apply_crop(img: torch.Tensor, box: tuple[int, int, int, int], size: int) -> torch.Tensor:
    x1, y1, x2, y2 = box
    return resize(img[..., y1:y2, x1:x2], (size, size))
