"""The contract every localization method implements.

A method is one module with, in order: building blocks, the model (a
:class:`LocalizationMethod`), its loss (a separate callable), its config
dataclass (a subclass of :class:`MethodConfig`), and registration with
``@register_method(name)``. The training loop, evaluation, CLI and benchmarks
use only this contract:

* ``Method(cfg)`` builds the model; ``Method.config_class`` is its config type.
* ``forward(batch) -> dict`` computes training outputs from a batch dict with
  ``image`` ``(B, 3, H, W)`` in [0, 1] (or cached ``vfeat`` from the frozen
  visual encoder) and ``audio`` waveforms ``(B, N)`` at ``cfg.audio.sample_rate``.
* ``build_criterion() -> nn.Module`` returns the loss: ``criterion(outputs,
  batch) -> dict`` with a scalar ``loss`` (and any logged terms).
* ``localize(images, audio) -> (B, h, w)`` heatmap, higher = more likely
  sounding. It must work at batch size 1 and never depend on the other samples
  in the batch.
* optional ``onscreen(images, audio) -> (B,)`` confidence in [0, 1] that the
  sound's source is visible.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from torch import nn

from avloc.frontends.audio import AudioFrontendConfig
from avloc.frontends.image import ImageConfig


@dataclass
class MethodConfig:
    """Fields every method config has: preprocessing and encoders."""

    audio: AudioFrontendConfig = field(default_factory=AudioFrontendConfig)
    image: ImageConfig = field(default_factory=ImageConfig)
    visual_encoder: str = "efficientnet_lite0"
    visual_encoder_kwargs: dict[str, Any] = field(default_factory=dict)
    audio_encoder: str = "resnet18_audio"
    audio_encoder_kwargs: dict[str, Any] = field(default_factory=dict)
    freeze_visual: bool = True


class LocalizationMethod(nn.Module):
    """Base class of every registered method."""

    config_class: ClassVar[type[MethodConfig]] = MethodConfig
    name: ClassVar[str] = ""
    #: True for methods with nothing to train (usable without a checkpoint).
    training_free: ClassVar[bool] = False

    def __init__(self, cfg: MethodConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.checkpoint_meta: dict[str, Any] = {}

    def forward(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    def build_criterion(self) -> nn.Module:
        raise NotImplementedError

    def localize(self, images: torch.Tensor, audio: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) in [0, 1], (B, N) waveform -> (B, h, w) heatmap."""
        raise NotImplementedError

    def checkpoint_exclude_prefixes(self) -> list[str]:
        """State-dict prefixes not saved in checkpoints (frozen pretrained encoders)."""
        return []

    def onscreen(self, images: torch.Tensor, audio: torch.Tensor) -> torch.Tensor:
        """(B,) confidence that the sound's source is visible; methods may override."""
        raise NotImplementedError(f"{type(self).__name__} has no on-screen head")
