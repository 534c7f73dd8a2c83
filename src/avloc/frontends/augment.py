"""Training-time image augmentation of a whole batch on its device (torch only).

The contrastive localisation papers augment the training images; their public
codes do it per sample in the data loader with PIL. avloc does it in the
method, on the batch already on the device, so any dataset (manifests,
DigitScenes) gets it and a GPU is not fed by CPU-side transforms:

* **geometric** -- a random resized crop (area fraction in ``crop_scale``,
  aspect ratio in ``crop_ratio``, log-uniform) and a horizontal flip with
  probability ``hflip``, as one affine resampling per sample
  (``F.affine_grid`` + bilinear ``F.grid_sample``, half-pixel centres). EZ-VSL,
  SLAVC and FNAC resize to 1.1x and crop the input size at a random place:
  ``crop_scale = (1/1.1**2, 1/1.1**2)``, ``crop_ratio = (1, 1)``, ``hflip = 0.5``
  (:data:`EZVSL_CROP_AREA`);
* **appearance** -- brightness, contrast and saturation factors drawn in
  ``[1 - s, 1 + s]`` and a grayscale conversion with probability ``grayscale``
  (the colour part of SimCLR-style view augmentation, Chen et al. 2020, Sec. 3);
  luma weights ITU-R BT.601.

Each sample draws its own transform from the torch generator given (the global
one by default, which the training engine seeds per rank). Boxes are not
transformed: the augmented batch is for self-supervised losses, never scored.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from avloc.config import check_range
from avloc.errors import DataError

#: EZ-VSL / SLAVC / FNAC training crops: a 224 crop of the image resized to 1.1 x 224 (area (1/1.1)^2)
EZVSL_CROP_AREA = 1 / 1.1**2
#: ITU-R BT.601 luma weights (R, G, B), the grayscale of PIL's ``convert("L")`` and torchvision
LUMA = (0.299, 0.587, 0.114)
#: largest aspect-ratio bound of a crop (beyond it a typo: a 1 x 100 sliver)
MAX_RATIO = 10.0


@dataclass
class AugmentConfig:
    """Per-sample training augmentation (module docstring); the default changes nothing.

    ``crop_scale``: (min, max) area fraction of the crop (1, 1: no crop).
    ``crop_ratio``: (min, max) aspect ratio w / h of the crop, drawn log-uniformly.
    ``hflip``: probability of a horizontal flip.
    ``brightness`` / ``contrast`` / ``saturation``: strength ``s`` of a factor drawn in ``[1 - s, 1 + s]``.
    ``grayscale``: probability of a grayscale conversion (after the colour factors).
    """

    crop_scale: tuple[float, float] = (1.0, 1.0)
    crop_ratio: tuple[float, float] = (1.0, 1.0)
    hflip: float = 0.0
    brightness: float = 0.0
    contrast: float = 0.0
    saturation: float = 0.0
    grayscale: float = 0.0

    def __post_init__(self) -> None:
        lo, hi = self.crop_scale
        check_range("augment.crop_scale[0]", lo, 0.0, 1.0, low_open=True)
        check_range("augment.crop_scale[1]", hi, lo, 1.0)
        rlo, rhi = self.crop_ratio
        check_range("augment.crop_ratio[0]", rlo, 1 / MAX_RATIO, MAX_RATIO)
        check_range("augment.crop_ratio[1]", rhi, rlo, MAX_RATIO)
        for name in ("hflip", "grayscale"):
            check_range(f"augment.{name}", getattr(self, name), 0.0, 1.0)
        for name in ("brightness", "contrast", "saturation"):
            check_range(f"augment.{name}", getattr(self, name), 0.0, 1.0)

    @property
    def geometric(self) -> bool:
        """True when the crop or the flip changes the geometry."""
        return self.crop_scale != (1.0, 1.0) or self.crop_ratio != (1.0, 1.0) or self.hflip > 0

    @property
    def enabled(self) -> bool:
        """True when some transform is not the identity."""
        return self.geometric or self.grayscale > 0 or self.brightness > 0 or self.contrast > 0 or self.saturation > 0


def _uniform(lo: float, hi: float, n: int, generator: torch.Generator | None) -> torch.Tensor:
    return lo + (hi - lo) * torch.rand(n, generator=generator)  # (n,) on the CPU (the generator's device)


def crop_affines(n: int, cfg: AugmentConfig, generator: torch.Generator | None = None) -> torch.Tensor:
    """``(n, 2, 3)`` affine matrices (output -> input coordinates in [-1, 1]) of random resized crops and flips.

    A crop of area fraction ``s`` and aspect ``r`` has relative width ``sqrt(s r)`` and height ``sqrt(s / r)``
    (each at most 1), at a uniform position inside the image; a flip negates the x scale.
    """
    area = _uniform(*cfg.crop_scale, n, generator)  # (n,)
    log_r = _uniform(math.log(cfg.crop_ratio[0]), math.log(cfg.crop_ratio[1]), n, generator)
    ratio = log_r.exp()
    w = (area * ratio).sqrt().clamp(max=1.0)  # (n,) crop width / image width
    h = (area / ratio).sqrt().clamp(max=1.0)
    cx = (1 - w) * _uniform(-1.0, 1.0, n, generator)  # centre in [-1, 1] units, crop inside the image
    cy = (1 - h) * _uniform(-1.0, 1.0, n, generator)
    flip = torch.where(torch.rand(n, generator=generator) < cfg.hflip, -1.0, 1.0)
    theta = torch.zeros(n, 2, 3)
    theta[:, 0, 0] = w * flip
    theta[:, 0, 2] = cx
    theta[:, 1, 1] = h
    theta[:, 1, 2] = cy
    return theta


def _gray(x: torch.Tensor) -> torch.Tensor:
    """(B, 3, H, W) -> (B, 1, H, W) luma."""
    w = torch.tensor(LUMA, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    return (x * w).sum(dim=1, keepdim=True)


def _factor(strength: float, n: int, generator: torch.Generator | None, like: torch.Tensor) -> torch.Tensor:
    return _uniform(1 - strength, 1 + strength, n, generator).to(like).view(n, 1, 1, 1)


def jitter_colours(x: torch.Tensor, cfg: AugmentConfig, generator: torch.Generator | None = None) -> torch.Tensor:
    """Brightness, contrast, saturation (in that order) and grayscale of (B, 3, H, W) in [0, 1], per sample."""
    n = x.shape[0]
    if cfg.brightness > 0:
        x = x * _factor(cfg.brightness, n, generator, x)
    if cfg.contrast > 0:
        mean = _gray(x).mean(dim=(2, 3), keepdim=True)  # (B, 1, 1, 1)
        x = mean + (x - mean) * _factor(cfg.contrast, n, generator, x)
    if cfg.saturation > 0:
        g = _gray(x)
        x = g + (x - g) * _factor(cfg.saturation, n, generator, x)
    if cfg.grayscale > 0:
        pick = (torch.rand(n, generator=generator) < cfg.grayscale).to(x.device).view(n, 1, 1, 1)
        x = torch.where(pick, _gray(x).expand_as(x), x)
    return x.clamp(0.0, 1.0)


def augment_images(images: torch.Tensor, cfg: AugmentConfig, generator: torch.Generator | None = None) -> torch.Tensor:
    """(B, 3, H, W) in [0, 1] -> the same shape, each sample cropped, flipped and colour-jittered on its own."""
    if images.dim() != 4 or images.shape[1] != 3:
        raise DataError(f"augmentation expects images (B, 3, H, W), got {tuple(images.shape)}")
    if not cfg.enabled:
        return images
    x = images
    if cfg.geometric:
        theta = crop_affines(x.shape[0], cfg, generator).to(x)  # (B, 2, 3)
        grid = F.affine_grid(theta, list(x.shape), align_corners=False)  # (B, H, W, 2)
        x = F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)
    return jitter_colours(x, cfg, generator)
