"""Map sources: what turns a run of analysed frames and their audio windows into heatmaps.

Every source has ``context_seconds`` (frames of context each side a chunk
needs; 0 for per-frame methods) and ``maps(images, audio, times)``:
``images (T, 3, S, S)`` in [0, 1] (model geometry), ``audio (T, N)`` windows
centred on each frame, ``times (T,)`` s -> :class:`SourceOutput`.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from avloc.errors import ConfigError
from avloc.methods.base import Capability, FrameDetails, HeardSource, LocalizationMethod, supports


@dataclass
class SourceOutput:
    maps: np.ndarray  # (T, h, w) float32, model-input geometry
    onscreen: list[float | None] = field(default_factory=list)  # per frame, from a method's onscreen()
    boxes: list[np.ndarray | None] = field(default_factory=list)  # per frame (K, 5) model-input pixels + score
    semantic: list[dict[str, Any] | None] = field(default_factory=list)
    #: per frame, for methods declaring ``Capability.DETECTED`` (class-aware, e.g. twostage): ``probabilities`` (C,),
    #: ``detected`` (C,) bool and ``maps`` (C, h, w) model-input geometry; empty for other sources
    classes: list[dict[str, np.ndarray] | None] = field(default_factory=list)
    #: per frame, for methods declaring ``Capability.SOURCES`` (``avsemantic``): every heard source (maps in
    #: model-input geometry, on the CPU) and the method's per-frame details (on-screen evidence, speaker);
    #: empty for other sources
    sources: list[list[HeardSource]] = field(default_factory=list)
    details: list[FrameDetails] = field(default_factory=list)


def minmax(x: torch.Tensor) -> torch.Tensor:
    """(T, h, w) -> each map in [0, 1] (a constant map becomes 0)."""
    flat = x.flatten(1)
    lo, hi = flat.amin(1, keepdim=True), flat.amax(1, keepdim=True)
    return ((flat - lo) / (hi - lo).clamp_min(1e-12)).view_as(x)


class ModelSource:
    """A registered method, used through its declared capabilities (:class:`avloc.methods.base.Capability`):
    ``localize_clip`` (``CLIP``) or per-frame ``localize`` / ``localize_detected`` (``DETECTED``), plus its
    ``onscreen`` (``ONSCREEN``) and ``boxes`` (``BOXES``) when declared."""

    def __init__(self, model: LocalizationMethod, window_seconds: float | None = None) -> None:
        """``window_seconds``: the audio window per frame when it is not the model's own (``--window``); temporal
        methods then get the difference as extra context each side (their segment follows the window)."""
        self.model = model
        self.analyses_sources = supports(model, Capability.SOURCES)
        self.is_clip = supports(model, Capability.CLIP)
        own = model.cfg.audio.window_seconds
        extra = max(0.0, (window_seconds - own) / 2) if window_seconds is not None else 0.0
        self.context_seconds = float(model.clip_context_seconds) + extra if self.is_clip else 0.0
        self.own_onscreen = supports(model, Capability.ONSCREEN)
        self.own_boxes = supports(model, Capability.BOXES)
        self.own_classes = not self.is_clip and supports(model, Capability.DETECTED)

    @torch.no_grad()
    def maps(self, images: torch.Tensor, audio: torch.Tensor, times: torch.Tensor, keep: slice | None = None) -> SourceOutput:
        """Maps for ``images[keep]`` (the rest is temporal context; per-frame sources get no context)."""
        keep = keep if keep is not None else slice(None)
        if self.analyses_sources:
            return self._analysed(images, audio, times, keep)
        det = None
        if self.is_clip:
            m = self.model.localize_clip(images, audio, times, keep=keep)
        elif self.own_classes:  # one pass gives the class-agnostic map and one map per class
            det = self.model.localize_detected(images[keep], audio[keep])
            m = det.combined
        else:
            m = self.model.localize(images[keep], audio[keep])
        images, audio = images[keep], audio[keep]
        if m.dim() != 3 or m.shape[0] != images.shape[0]:
            raise ConfigError(f"{self.model.name}: localize returned {tuple(m.shape)}, expected (B, h, w) with B={images.shape[0]}")
        t = images.shape[0]
        on: list[float | None] = [None] * t
        if self.own_onscreen:
            on = [float(v) for v in self.model.onscreen(images, audio).reshape(-1).tolist()]
        bx: list[np.ndarray | None] = [None] * t
        if self.own_boxes:
            bx = [np.asarray(b.detach().cpu(), dtype=np.float64).reshape(-1, 5) for b in self.model.boxes(images, audio)]
        cls: list[dict[str, np.ndarray] | None] = [None] * t
        if det is not None:
            cm, pr, dt = (x.detach().float().cpu().numpy() for x in (det.maps, det.probabilities, det.detected))
            cls = [{"probabilities": pr[i], "detected": dt[i] > 0, "maps": cm[i]} for i in range(t)]
        return SourceOutput(m.detach().float().cpu().numpy(), on, bx, [None] * t, cls)

    def _analysed(self, images: torch.Tensor, audio: torch.Tensor, times: torch.Tensor, keep: slice) -> SourceOutput:
        """``analyse_clip`` of a method declaring ``Capability.SOURCES``: maps, on-screen and heard sources."""
        res = self.model.analyse_clip(images, audio, times, keep=keep)
        t = res.maps.shape[0]
        srcs = [[replace(h, map=None if h.map is None else h.map.detach().float().cpu()) for h in frame]
                for frame in res.sources]
        return SourceOutput(
            res.maps.detach().float().cpu().numpy(), [float(v) for v in res.onscreen.reshape(-1).tolist()],
            [None] * t, [None] * t, [None] * t, srcs, list(res.details),
        )


class CombinedSource(ModelSource):
    """``--combine synchrony``: ``minmax(learned map) * (floor + synchrony)`` on the synchrony grid.

    The synchrony cue is :class:`avloc.methods.avsync_prior.AVSyncPrior` without
    its object prior, run on the learned model's own preprocessed frames and
    audio windows (same sample rate), so the two maps share one geometry.
    """

    def __init__(self, model: LocalizationMethod, window_seconds: float | None = None) -> None:
        super().__init__(model, window_seconds)
        if self.is_clip:
            raise ConfigError(f"--combine synchrony needs a per-frame method; {model.name!r} is already temporal")
        from avloc.methods.avsync_prior import AVSyncPrior, AVSyncPriorConfig

        cfg = AVSyncPriorConfig(use_prior=False)
        cfg.audio = model.cfg.audio
        self.sync = AVSyncPrior(cfg)
        self.context_seconds = cfg.context_seconds

    @torch.no_grad()
    def maps(self, images: torch.Tensor, audio: torch.Tensor, times: torch.Tensor, keep: slice | None = None) -> SourceOutput:
        keep = keep if keep is not None else slice(None)
        out = super().maps(images, audio, times, keep)
        sync = self.sync.synchrony(images, audio, times)[keep]  # (T', G, G)
        learned = torch.from_numpy(out.maps)[:, None]
        learned = minmax(F.interpolate(learned, size=sync.shape[-2:], mode="bilinear", align_corners=False)[:, 0])
        out.maps = (learned * (self.sync.cfg.prior_floor + sync)).numpy()
        return out


class VisualOnlySource:
    """``--visual-only``: the object prior of the default model alone (no audio is read)."""

    context_seconds = 0.0
    is_clip = False  # per-frame maps
    analyses_sources = False

    def __init__(self) -> None:
        from avloc.methods.avsync_prior import AVSyncPrior, AVSyncPriorConfig

        self.model = AVSyncPrior(AVSyncPriorConfig())

    @torch.no_grad()
    def maps(self, images: torch.Tensor, audio: torch.Tensor, times: torch.Tensor, keep: slice | None = None) -> SourceOutput:
        images = images[keep if keep is not None else slice(None)]
        m = self.model.object_prior_map(images).float().cpu().numpy()
        t = images.shape[0]
        return SourceOutput(m, [None] * t, [None] * t, [None] * t)
