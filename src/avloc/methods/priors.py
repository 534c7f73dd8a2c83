"""Training-free, audio-blind baselines: random map, centre prior, visual objectness.

They bound what a localiser gets *without* listening, so every trained
method's table row can be read against them (not from one paper; the usual
sanity rows of a localization table):

* ``random``: i.i.d. uniform values on a ``map_size x map_size`` grid, seeded by
  ``cfg.seed`` and a hash of the sample's own image and audio bytes — so a map is
  deterministic, identical at any batch size and position, and different per sample.
* ``centre``: an isotropic Gaussian at the image centre,
  ``exp(-((x - 1/2)^2 + (y - 1/2)^2) / (2 sigma^2))`` over cell centres
  ``x, y = (k + 1/2) / map_size``, with ``sigma`` a fraction of the image side.
* ``objectness``: the class-agnostic activation map of the frozen ImageNet-pretrained
  visual encoder (:func:`avloc.methods.blocks.object_prior`; ``l1`` = channel mean of
  ``|f|``, EZ-VSL's object prior), ignoring the audio.

All three have ``training_free = True``: ``load_model("random")`` etc. build them
from their default config with no checkpoint.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import torch

from avloc.config import check_positive, check_range
from avloc.errors import ConfigError
from avloc.frontends.image import MAX_SIDE
from avloc.methods import register_method
from avloc.methods.base import MethodConfig
from avloc.methods.blocks import ObjectPriorKind, TrainingFreeMethod, build_visual_encoder, object_prior

# ----------------------------------------------------------------------------- building blocks


def sample_seed(image: torch.Tensor, audio: torch.Tensor, seed: int) -> int:
    """A 63-bit seed from ``seed`` and the exact bytes of one sample's image (3, H, W) and audio (N,)."""
    h = hashlib.blake2b(digest_size=8)
    h.update(str(seed).encode())
    for t in (image, audio):
        t = t.detach().to("cpu", torch.float32).contiguous()
        h.update(str(tuple(t.shape)).encode())
        h.update(t.numpy().tobytes())
    return int.from_bytes(h.digest(), "little") >> 1


def gaussian_centre_map(size: int, sigma: float) -> torch.Tensor:
    """(size, size) Gaussian centred on the image, ``sigma`` in units of the image side."""
    c = (torch.arange(size, dtype=torch.float32) + 0.5) / size - 0.5  # (size,) cell centres around 0
    d2 = c[:, None].square() + c[None, :].square()  # (size, size)
    return torch.exp(-d2 / (2 * sigma**2))


def _check_batch(images: torch.Tensor, audio: torch.Tensor) -> None:
    if images.dim() != 4 or images.shape[1] != 3:
        raise ConfigError(f"images must be (B, 3, H, W) in [0, 1], got shape {tuple(images.shape)}")
    if audio.dim() != 2 or audio.shape[0] != images.shape[0]:
        raise ConfigError(f"audio must be (B, N) with B = {images.shape[0]}, got shape {tuple(audio.shape)}")


# ----------------------------------------------------------------------------- models


class RandomMap(TrainingFreeMethod):
    """Uniform random heatmap, deterministic per sample (see module doc)."""

    cfg: RandomConfig

    def __init__(self, cfg: RandomConfig) -> None:
        super().__init__(cfg)

    def localize(self, images: torch.Tensor, audio: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W), (B, N) -> (B, map_size, map_size) uniform in [0, 1)."""
        cfg = self.cfg
        _check_batch(images, audio)
        maps = []
        for img, wav in zip(images, audio):
            g = torch.Generator().manual_seed(sample_seed(img, wav, cfg.seed))
            maps.append(torch.rand(cfg.map_size, cfg.map_size, generator=g))
        return torch.stack(maps).to(images.device)  # (B, s, s)


class CentrePrior(TrainingFreeMethod):
    """Gaussian centre prior (the same map for every sample)."""

    def __init__(self, cfg: CentreConfig) -> None:
        super().__init__(cfg)
        self.register_buffer("prior", gaussian_centre_map(cfg.map_size, cfg.sigma), persistent=False)

    def localize(self, images: torch.Tensor, audio: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W), (B, N) -> (B, map_size, map_size) Gaussian, peak 1 at the centre."""
        _check_batch(images, audio)
        prior: torch.Tensor = self.prior  # type: ignore[assignment]
        return prior.expand(images.shape[0], -1, -1).clone()


class Objectness(TrainingFreeMethod):
    """Visual objectness only: the pretrained encoder's class-agnostic activation map, no audio."""

    cfg: ObjectnessConfig

    def __init__(self, cfg: ObjectnessConfig) -> None:
        super().__init__(cfg)
        if not cfg.freeze_visual:
            raise ConfigError("objectness is training-free: freeze_visual must be True")
        self.visual_encoder = build_visual_encoder(cfg)
        if not self.visual_encoder.pretrained:
            raise ConfigError(
                f"objectness needs an ImageNet-pretrained visual encoder; {cfg.visual_encoder!r} is not pretrained "
                "(use visual_encoder='efficientnet_lite0')"
            )

    def _prior(self, feat: torch.Tensor) -> torch.Tensor:
        return object_prior(feat, self.cfg.object_prior)

    def forward(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return {"heatmap": self._prior(self.visual_features(batch))}  # cached vfeat or encoded image

    def localize(self, images: torch.Tensor, audio: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W), (B, N) (ignored) -> object prior (B, h, w) at the encoder's stride."""
        _check_batch(images, audio)
        return self._prior(self.encode_images(images))  # (B, h, w)


# ----------------------------------------------------------------------------- configs


@dataclass
class RandomConfig(MethodConfig):
    """``map_size``: grid side (14 = LVS's map at 224); ``seed``: mixed into every sample's hash."""

    map_size: int = 14
    seed: int = 0

    def __post_init__(self) -> None:
        super().__post_init__()
        check_range("map_size", self.map_size, 1, MAX_SIDE)


@dataclass
class CentreConfig(MethodConfig):
    """``map_size``: grid side; ``sigma``: Gaussian std as a fraction of the image side (ours: 0.25)."""

    map_size: int = 14
    sigma: float = 0.25

    def __post_init__(self) -> None:
        super().__post_init__()
        check_range("map_size", self.map_size, 1, MAX_SIDE)
        check_positive(sigma=self.sigma)


@dataclass
class ObjectnessConfig(MethodConfig):
    """``object_prior``: ``l1`` (channel mean of ``|f|``, EZ-VSL) or ``l2`` (channel norm)."""

    object_prior: ObjectPriorKind = "l1"


# ----------------------------------------------------------------------------- registration

RandomMap.config_class = RandomConfig
CentrePrior.config_class = CentreConfig
Objectness.config_class = ObjectnessConfig
register_method("random")(RandomMap)
register_method("centre")(CentrePrior)
register_method("objectness")(Objectness)
