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
* ``after_optimizer_step(step)`` (optional; default: nothing): called by the
  training loop after each optimiser step, for non-gradient updates such as
  momentum (EMA) encoders.
* optional abilities are *declared* in the class attribute ``capabilities``
  (a frozenset of :class:`Capability`), each with one signature and one return
  type, defined (and documented) on this base class:

  =============================  =====================================================================
  ``Capability.CLIP``            ``localize_clip(frames (T, 3, S, S), audio (T, N), times (T,), keep)``
                                 ``-> (T', h, w)`` maps of ``frames[keep]``, and ``clip_context_seconds``
                                 (temporal methods: the frames each side a kept frame needs)
  ``Capability.SOURCES``         ``analyse_clip(frames, audio, times, keep) -> ClipAnalysis``: per frame
                                 every heard source (:class:`HeardSource`); implies ``CLIP``
  ``Capability.BOXES``           ``boxes(images, audio) -> list[(K, 5)]`` proposal boxes + scores
  ``Capability.CLASSES``         ``localize_classes(images, audio) -> ClassMaps`` (one map per class)
  ``Capability.DETECTED``        ``localize_detected(images, audio) -> DetectedClasses`` (the
                                 class-agnostic map, class maps and the detected classes); implies
                                 ``CLASSES``
  ``Capability.ONSCREEN``        ``onscreen(images, audio) -> (B,)`` P(the source is visible)
  =============================  =====================================================================

  Callers ask :func:`supports` (or :func:`require`); never ``getattr`` or
  ``inspect``. A class that defines one of these members without declaring it
  (or declares one it does not define) is refused when the class is created.
  ``frame_stacks = True`` says that ``localize`` takes frame stacks
  ``(B, T, 3, H, W)`` only (``synchrony``).

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

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import torch
from torch import nn
from torch.utils.data import Dataset

from avloc.config import ConfigValueError
from avloc.encoders.base import check_widths  # noqa: F401  (re-exported: the range check of method configs)
from avloc.errors import ConfigError, DataError
from avloc.frontends.audio import AudioFrontendConfig
from avloc.frontends.image import ImageConfig

if TYPE_CHECKING:
    from avloc.encoders.cache import FeatureCache


@dataclass(frozen=True)
class Instance:
    """One visible instance a heard source is grounded on: a box in model-input pixels (x1, y1, x2, y2), how sure
    the grounding is (in [0, 1]) and what it is (``"coco:dog"``, ``"face 1"``, ``"person"``, ``"segment"``)."""

    box: tuple[float, float, float, float]
    score: float
    name: str


@dataclass
class HeardSource:
    """One sound heard in a frame and where the method grounds it (``analyse_clip``)."""

    label: str  # what is heard (e.g. an AudioSet class name)
    score: float  # the audio tagger's score in [0, 1]
    kind: str  # "object" | "human" | "none"
    grounding: str  # how it was grounded ("coco:dog", "face 1", "no face", "not visible", ...)
    map: torch.Tensor | None  # (h, w) its own map in model-input geometry; None when not seen
    detail: dict[str, Any] = field(default_factory=dict)  # JSON-able evidence (visible mass, faces, ...)
    #: the visible instances it is grounded on, best first (empty: its boxes come from its map)
    instances: list[Instance] = field(default_factory=list)
    #: P(this source is visible), when the method decides per source
    onscreen: float | None = None


@dataclass
class SpeakerChoice:
    """The face chosen as the one speaking: its track, head box (model-input pixels) and confidence in [0, 1]."""

    track: int
    box: tuple[float, float, float, float]
    confidence: float


@dataclass
class FrameDetails:
    """What a method grounding heard sources reports per frame beside its sources."""

    onscreen_features: dict[str, float] = field(default_factory=dict)  # the evidence its on-screen model reads
    grounded: bool = False  # some heard source was grounded (else the map is a fallback cue)
    faces: int = 0  # faces found in the frame
    speaker: SpeakerChoice | None = None


@dataclass
class ClipAnalysis:
    """``analyse_clip`` output for the kept frames of a clip."""

    maps: torch.Tensor  # (T, h, w) combined maps
    onscreen: torch.Tensor  # (T,) P(source visible)
    sources: list[list[HeardSource]]  # per frame, most probable first
    details: list[FrameDetails]  # per frame


class Capability(StrEnum):
    """An optional ability of a method (module doc): declared in ``LocalizationMethod.capabilities``."""

    CLIP = "clip"
    SOURCES = "sources"
    BOXES = "boxes"
    CLASSES = "classes"
    DETECTED = "detected"
    ONSCREEN = "onscreen"


#: the members each capability defines (all of them overridden by a class declaring it)
CAPABILITY_MEMBERS: dict[Capability, tuple[str, ...]] = {
    Capability.CLIP: ("localize_clip", "clip_context_seconds"),
    Capability.SOURCES: ("analyse_clip",),
    Capability.BOXES: ("boxes",),
    Capability.CLASSES: ("localize_classes",),
    Capability.DETECTED: ("localize_detected",),
    Capability.ONSCREEN: ("onscreen",),
}
#: capabilities that need another one
CAPABILITY_IMPLIES: dict[Capability, Capability] = {Capability.SOURCES: Capability.CLIP, Capability.DETECTED: Capability.CLASSES}


class CapabilityError(ConfigError, NotImplementedError):
    """A capability was used on a method that does not declare it."""


@dataclass
class ClassMaps:
    """``localize_classes`` output."""

    maps: torch.Tensor  # (B, C, h, w) one map per class
    probabilities: torch.Tensor  # (B, C) audio class probabilities (ones when the method has none)

    def scaled(self) -> torch.Tensor:
        """``(B, C, h, w)``: each class's map times its probability, the class-aware reading the evaluation scores
        (thresholds relative to a map's max are unchanged; a silent class's map is dark for DSOL's NSA)."""
        return self.maps * self.probabilities[:, :, None, None]


@dataclass
class DetectedClasses(ClassMaps):
    """``localize_detected`` output: the class maps plus what ``localize`` returns and the detected classes."""

    combined: torch.Tensor  # (B, h, w) the class-agnostic map (= ``localize``)
    detected: torch.Tensor  # (B, C) bool


def supports(model: LocalizationMethod | type[LocalizationMethod], capability: Capability) -> bool:
    """True when ``model`` (an instance or a class) declares ``capability``."""
    cls = model if isinstance(model, type) else type(model)
    return capability in cls.capabilities


def require(model: LocalizationMethod, capability: Capability, why: str) -> None:
    """Raise :class:`CapabilityError` saying ``why`` it is needed when ``model`` does not declare ``capability``."""
    if not supports(model, capability):
        members = " / ".join(CAPABILITY_MEMBERS[capability])
        with_it = sorted(_methods_with(capability))
        raise CapabilityError(
            f"{why}, but {type(model).__name__} has no {members} (it does not declare Capability.{capability.name}); "
            f"methods that do: {with_it or 'none registered'}"
        )


def _methods_with(capability: Capability) -> list[str]:
    from avloc.registry import METHODS

    return [n for n in METHODS.names() if capability in METHODS.get(n).capabilities]


@dataclass
class MethodConfig:
    """Fields every method config has: preprocessing and encoders (validated when built, ``__post_init__``)."""

    audio: AudioFrontendConfig = field(default_factory=AudioFrontendConfig)
    image: ImageConfig = field(default_factory=ImageConfig)
    visual_encoder: str = "efficientnet_lite0"
    visual_encoder_kwargs: dict[str, Any] = field(default_factory=dict)
    audio_encoder: str = "resnet18_audio"
    audio_encoder_kwargs: dict[str, Any] = field(default_factory=dict)
    freeze_visual: bool = True

    def __post_init__(self) -> None:
        for name in ("visual_encoder", "audio_encoder"):
            if not getattr(self, name):
                raise ConfigValueError(name, "must name a registered encoder (see `avloc info`), got an empty name")


class LocalizationMethod(nn.Module):
    """Base class of every registered method."""

    config_class: ClassVar[type[MethodConfig]] = MethodConfig
    name: ClassVar[str] = ""
    #: True for methods with nothing to train (usable without a checkpoint).
    training_free: ClassVar[bool] = False
    #: the optional abilities this method has (module doc); subclasses extend their parent's set
    capabilities: ClassVar[frozenset[Capability]] = frozenset()
    #: True when ``localize`` takes frame stacks (B, T, 3, H, W) only
    frame_stacks: ClassVar[bool] = False

    def __init_subclass__(cls, **kwargs: Any) -> None:
        """Check that the declared capabilities and the defined members agree (module doc)."""
        super().__init_subclass__(**kwargs)
        caps = frozenset(Capability(c) for c in cls.capabilities)
        cls.capabilities = caps
        for cap, members in CAPABILITY_MEMBERS.items():
            defined = [m for m in members if getattr(cls, m) is not getattr(LocalizationMethod, m)]
            if cap in caps and len(defined) != len(members):
                missing = sorted(set(members) - set(defined))
                raise TypeError(f"{cls.__name__} declares Capability.{cap.name} but does not define {missing}")
            if cap not in caps and defined:
                raise TypeError(f"{cls.__name__} defines {defined} but does not declare Capability.{cap.name} in capabilities")
        for cap, needed in CAPABILITY_IMPLIES.items():
            if cap in caps and needed not in caps:
                raise TypeError(f"{cls.__name__}: Capability.{cap.name} needs Capability.{needed.name}")

    def __init__(self, cfg: MethodConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.checkpoint_meta: dict[str, Any] = {}
        self._feature_cache: FeatureCache | None = None

    def forward(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Training outputs; training-free methods return ``{"heatmap": localize(image, audio)}``."""
        if self.training_free:
            return {"heatmap": self.localize(batch["image"], batch["audio"])}
        raise NotImplementedError(f"{type(self).__name__} does not implement forward")

    def build_criterion(self) -> nn.Module:
        """The loss; training-free methods raise :class:`ConfigError` (nothing to train)."""
        if self.training_free:
            raise ConfigError(f"method {self.name!r} is training-free: there is nothing to train (use it directly in eval)")
        raise NotImplementedError(f"{type(self).__name__} does not implement build_criterion")

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

    def after_optimizer_step(self, step: int) -> None:
        """Called by the training engine after every optimiser step (``step``: the steps done so far, from 1).

        The place for updates that are not gradient steps, such as momentum (EMA) encoders; it runs on the
        plain model (never the DDP / compiled wrapper) under ``torch.no_grad``. Default: nothing.
        """

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
                cache = self._feature_cache
                if cache is not None:  # features by image content (use_feature_cache)
                    from avloc.encoders.cache import content_key

                    keys = [content_key(x) for x in images]
                    return cache.get_or_compute(keys, lambda idx: enc(images[idx]).cpu()).to(images.device)
                return enc(images)  # type: ignore[no-any-return]
        return enc(images)  # type: ignore[no-any-return]

    def feature_cache_at(self, root: str | Path) -> FeatureCache:
        """The disk :class:`~avloc.encoders.cache.FeatureCache` of this model's frozen pretrained visual encoder
        (namespaced by encoder, weights and image preprocessing; float32, so cached features are exact)."""
        from avloc.config import config_to_dict
        from avloc.encoders.cache import FeatureCache

        enc = self.visual_module()
        if enc is None or not self.visual_cacheable():
            raise ConfigError(f"{type(self).__name__}: only a frozen pretrained visual encoder's features can be cached")
        return FeatureCache.for_encoder(
            root, self.cfg.visual_encoder, self.cfg.visual_encoder_kwargs, enc,
            {"image": config_to_dict(self.cfg.image)}, dtype="float32",
        )

    @contextlib.contextmanager
    def use_feature_cache(self, cache: FeatureCache | None) -> Iterator[None]:
        """Within the block, :meth:`encode_images` reads and writes frozen features in ``cache`` (``None``: no-op)."""
        before = self._feature_cache
        self._feature_cache = cache
        try:
            yield
        finally:
            self._feature_cache = before

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

    # -- optional capabilities (declared in ``capabilities``; module doc) ---------------------

    def _lacks(self, capability: Capability) -> CapabilityError:
        return CapabilityError(f"{type(self).__name__} does not declare Capability.{capability.name}")

    @property
    def clip_context_seconds(self) -> float:
        """``CLIP``: seconds of frames each side of a kept frame that ``localize_clip`` needs as context."""
        raise self._lacks(Capability.CLIP)

    def localize_clip(
        self, frames: torch.Tensor, audio: torch.Tensor, times: torch.Tensor, keep: slice | None = None
    ) -> torch.Tensor:
        """``CLIP``: consecutive frames (T, 3, S, S) in [0, 1], audio windows centred on them (T, N), times (T,) s
        -> (T', h, w) maps of ``frames[keep]`` (the others are temporal context; ``None`` = all)."""
        raise self._lacks(Capability.CLIP)

    def analyse_clip(
        self, frames: torch.Tensor, audio: torch.Tensor, times: torch.Tensor, keep: slice | None = None
    ) -> ClipAnalysis:
        """``SOURCES``: as :meth:`localize_clip` -> :class:`ClipAnalysis` of ``frames[keep]`` (every heard source)."""
        raise self._lacks(Capability.SOURCES)

    def boxes(self, images: torch.Tensor, audio: torch.Tensor) -> list[torch.Tensor]:
        """``BOXES``: (B, 3, H, W), (B, N) -> per sample (K, 5): x1, y1, x2, y2 in model-input pixels, score."""
        raise self._lacks(Capability.BOXES)

    def localize_classes(self, images: torch.Tensor, audio: torch.Tensor) -> ClassMaps:
        """``CLASSES``: (B, 3, H, W), (B, N) -> :class:`ClassMaps` ((B, C, h, w) maps, (B, C) probabilities)."""
        raise self._lacks(Capability.CLASSES)

    def localize_detected(self, images: torch.Tensor, audio: torch.Tensor) -> DetectedClasses:
        """``DETECTED``: :class:`DetectedClasses` (class maps, probabilities, the ``localize`` map, detected classes)."""
        raise self._lacks(Capability.DETECTED)

    def onscreen(self, images: torch.Tensor, audio: torch.Tensor) -> torch.Tensor:
        """``ONSCREEN``: (B, 3, H, W), (B, N) -> (B,) confidence in [0, 1] that the sound's source is visible."""
        raise self._lacks(Capability.ONSCREEN)
