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
* optional, declared by ``analyses_sources = True``: ``analyse_clip(frames,
  audio, times, keep) -> ClipAnalysis`` -- per frame the combined map, the
  on-screen probability and every heard source (:class:`HeardSource`: what is
  heard, its score, how it was grounded and its own map), for methods that
  ground several sounds per frame (``avsemantic``).

Visual encoders and the frozen-feature cache: a method that keeps its visual
encoder in the attribute ``visual_encoder`` and calls
:meth:`LocalizationMethod.visual_features` (never ``self.visual_encoder``
directly) in ``forward`` gets the training engine's feature cache for free:
when ``cfg.freeze_visual`` is true and the encoder is pretrained, the engine
computes the encoder's output once per stable image key and puts it in
``batch["vfeat"]`` (dropping ``batch["image"]``); ``visual_features`` returns
it unchanged. A frozen encoder stays in eval mode (BatchNorm statistics fixed)
even while the rest of the model trains.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from torch import nn
from torch.utils.data import Dataset

from avloc.errors import DataError
from avloc.frontends.audio import AudioFrontendConfig
from avloc.frontends.image import ImageConfig


@dataclass
class HeardSource:
    """One sound heard in a frame and where the method grounds it (``analyse_clip``)."""

    label: str  # what is heard (e.g. an AudioSet class name)
    score: float  # the audio tagger's score in [0, 1]
    kind: str  # "object" | "human" | "none"
    grounding: str  # how it was grounded ("imagenet:207", "face 1", "no face", "not visible", ...)
    map: torch.Tensor | None  # (h, w) its own map in model-input geometry; None when not seen
    detail: dict[str, Any] = field(default_factory=dict)  # JSON-able extras (visible mass, faces, ...)


@dataclass
class ClipAnalysis:
    """``analyse_clip`` output for the kept frames of a clip."""

    maps: torch.Tensor  # (T, h, w) combined maps
    onscreen: torch.Tensor  # (T,) P(source visible)
    sources: list[list[HeardSource]]  # per frame, most probable first
    details: list[dict[str, Any]]  # per frame JSON-able extras (on-screen features, chosen speaker, ...)


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
    #: True for methods implementing ``analyse_clip`` (several heard sources per frame, module doc).
    analyses_sources: ClassVar[bool] = False

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

    def prepare_training(self, train_set: Dataset, *, feature_cache: bool) -> Dataset:
        """Called by the training engine before it reads ``train_set``: return the set to train on.

        The place for what a method's config asks of training only (wrapping the data set,
        initialising weights from pretrained ones); ``feature_cache`` says whether the engine
        will replace the images by cached frozen features. Default: ``train_set`` unchanged.
        """
        return train_set

    def checkpoint_exclude_prefixes(self) -> list[str]:
        """State-dict prefixes not saved in checkpoints (frozen pretrained encoders)."""
        return ["visual_encoder."] if self.visual_cacheable() else []

    # -- visual encoder helpers (see the module docstring) ------------------------------

    def visual_module(self) -> nn.Module | None:
        """The visual encoder (attribute ``visual_encoder``), or ``None`` if the method has none."""
        enc = getattr(self, "visual_encoder", None)
        return enc if isinstance(enc, nn.Module) else None

    def audio_module(self) -> nn.Module | None:
        """The audio encoder (attribute ``audio_encoder`` or ``audio_path.encoder``), or ``None``."""
        enc = getattr(self, "audio_encoder", None)
        if enc is None and isinstance(getattr(self, "audio_path", None), nn.Module):
            enc = getattr(self.audio_path, "encoder", None)
        return enc if isinstance(enc, nn.Module) else None

    def visual_frozen(self) -> bool:
        """True when the method has a visual encoder and ``cfg.freeze_visual`` is set."""
        return self.visual_module() is not None and self.cfg.freeze_visual

    def visual_cacheable(self) -> bool:
        """True when the visual encoder is frozen *and* pretrained: its features can be cached."""
        enc = self.visual_module()
        return enc is not None and self.cfg.freeze_visual and bool(getattr(enc, "pretrained", False))

    def encode_images(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) in [0, 1] -> (B, C, h, w) visual encoder features (no grad when frozen).

        Frame sequences (B, T, 3, H, W) are encoded frame by frame -> (B, T, C, h, w).
        """
        enc = self.visual_module()
        if enc is None:
            raise NotImplementedError(f"{type(self).__name__} has no visual_encoder")
        if images.dim() == 5:
            b, t = images.shape[:2]
            f = self.encode_images(images.flatten(0, 1))  # (B*T, C, h, w)
            return f.view(b, t, *f.shape[1:])
        if images.dim() != 4:
            raise DataError(f"expected images (B, 3, H, W) or (B, T, 3, H, W), got {tuple(images.shape)}")
        if self.visual_frozen():
            with torch.no_grad():
                return enc(images)  # type: ignore[no-any-return]
        return enc(images)  # type: ignore[no-any-return]

    def visual_features(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Visual encoder features for a batch: cached ``vfeat`` if present, else encode ``image``."""
        if "vfeat" in batch:
            return batch["vfeat"]  # (B, C, h, w)
        if "image" not in batch:
            raise KeyError("batch has neither 'image' (B, 3, H, W) nor cached 'vfeat' (B, C, h, w)")
        return self.encode_images(batch["image"])  # (B, C, h, w)

    def train(self, mode: bool = True) -> LocalizationMethod:
        """Like :meth:`nn.Module.train`, but a frozen visual encoder stays in eval mode."""
        super().train(mode)
        enc = self.visual_module()
        if enc is not None and self.visual_frozen():
            enc.eval()
        return self

    def onscreen(self, images: torch.Tensor, audio: torch.Tensor) -> torch.Tensor:
        """(B,) confidence that the sound's source is visible; methods may override."""
        raise NotImplementedError(f"{type(self).__name__} has no on-screen head")

    def analyse_clip(
        self, frames: torch.Tensor, audio: torch.Tensor, times: torch.Tensor, keep: slice | None = None
    ) -> ClipAnalysis:
        """Frames (T, 3, S, S), centred windows (T, N), times (T,) -> :class:`ClipAnalysis` of ``frames[keep]``
        (only for methods declaring ``analyses_sources``)."""
        raise NotImplementedError(f"{type(self).__name__} does not analyse heard sources (analyses_sources is False)")
