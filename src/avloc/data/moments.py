"""Informative moment selection ("Less can be more", Senocak et al. WACV 2022, Sec. 5.1).

LVS and its successors train on the middle frame of each video (and the audio
around it). Sec. 5.1 replaces it by the moment where the classification model's
audio and visual features agree most: ``S_av[t] = z^V_t . z^A_t`` for every step
``t`` of the clip, sorted, top-k (the paper trains on the top-1 moment).

* :func:`top_k_moments` -- the selection rule on one clip's scores;
* :func:`select_moments` -- runs a scorer (``Classif.moment_scores``) over a clip
  dataset (items with ``image`` ``(T, 3, H, W)`` and ``audio`` ``(N,)``, e.g.
  :class:`avloc.data.clips.DigitScenesClips`) and returns the chosen steps of
  every clip, plus the throughput;
* :class:`MomentFrames` -- the reusable sampler: a dataset of still training
  samples (the contract of :mod:`avloc.data.datasets`) at the chosen moments of
  each clip, or at the middle step (the LVS baseline, ``middle_moments``). Any
  method trains on it with ``avloc.engine.train.train``; it gives stable image
  keys, so the engine's frozen-feature cache works.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Protocol

import torch
from torch.utils.data import Dataset

from avloc.errors import ConfigError, DataError
from avloc.frontends.audio import AudioFrontendConfig


class ClipSource(Protocol):
    """What :class:`MomentFrames` needs from a clip dataset."""

    steps: int

    def __len__(self) -> int: ...

    def frame_sample(self, c: int, step: int, audio_cfg: AudioFrontendConfig | None = None) -> dict[str, Any]: ...


def top_k_moments(scores: torch.Tensor, k: int = 1) -> list[int]:
    """Steps of the ``k`` highest ``S_av`` scores ``(T,)``, best first (ties: the earlier step)."""
    if scores.dim() != 1 or scores.numel() == 0:
        raise DataError(f"moment scores must be a non-empty (T,) vector, got shape {tuple(scores.shape)}")
    if not 1 <= k <= scores.numel():
        raise ConfigError(f"top-k needs 1 <= k <= T = {scores.numel()}, got k={k}")
    order = sorted(range(scores.numel()), key=lambda t: (-float(scores[t]), t))
    return order[:k]


def middle_moments(n_clips: int, steps: int, k: int = 1) -> dict[int, list[int]]:
    """The baseline: every clip's middle step (``steps // 2``); with ``k > 1`` the ``k`` steps
    nearest to it (middle, middle - 1, middle + 1, middle - 2, ...), as many frames per clip
    as a top-k selection."""
    if not 1 <= k <= steps:
        raise ConfigError(f"middle moments need 1 <= k <= steps = {steps}, got k={k}")
    mid = steps // 2
    order = sorted(range(steps), key=lambda t: (abs(t - mid), t))[:k]
    return {c: list(order) for c in range(n_clips)}


Scorer = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]  # frames (B, T, 3, H, W), audio (B, N) -> (B, T)


def select_moments(
    scorer: Scorer,
    clips: Dataset,
    k: int = 1,
    batch_size: int = 8,
    indices: Sequence[int] | None = None,
) -> tuple[dict[int, list[int]], dict[int, list[float]], float]:
    """Score every clip's steps and keep the top ``k``.

    Returns ``(moments, scores, videos_per_second)``: ``moments[c]`` = chosen steps of
    clip ``c`` (best first), ``scores[c]`` = its full ``S_av`` vector. ``scorer`` is
    typically ``model.moment_scores`` of a :class:`~avloc.methods.classif.Classif` in
    eval mode; it runs under ``torch.no_grad``.
    """
    from avloc.data.collate import collate_samples

    idx = list(range(len(clips))) if indices is None else list(indices)  # type: ignore[arg-type]
    if not idx:
        raise DataError("no clips to select moments from")
    moments: dict[int, list[int]] = {}
    scores: dict[int, list[float]] = {}
    t0 = time.perf_counter()
    with torch.no_grad():
        for start in range(0, len(idx), batch_size):
            part = idx[start : start + batch_size]
            batch = collate_samples([clips[c] for c in part])
            if not isinstance(batch["image"], torch.Tensor) or batch["image"].dim() != 5:
                raise DataError("moment selection needs clips: 'image' (T, 3, H, W) of equal T per batch")
            s = scorer(batch["image"], batch["audio"])  # (b, T)
            for c, row in zip(part, s):
                moments[c] = top_k_moments(row, k)
                scores[c] = [float(v) for v in row]
    secs = time.perf_counter() - t0
    return moments, scores, len(idx) / max(secs, 1e-9)


class MomentFrames(Dataset):
    """Still training samples at chosen moments of clips (Sec. 5.1), one item per (clip, moment).

    ``moments`` maps clip index -> steps (from :func:`select_moments`, or
    :func:`middle_moments` for the mid-frame baseline). Items are
    ``clips.frame_sample(c, step, audio_cfg)``: the frame, the audio window of
    ``audio_cfg.window_seconds`` centred on it, the annotation of that frame.
    ``image_key`` / ``feature_cache_keys`` identify the frame for the engine's cache.
    ``preload=True`` composes every item once, in clip order, and keeps it in memory:
    a training run that draws each (fixed) frame many times then never re-renders its
    clip (composing a clip costs far more than a training step on cached features).
    """

    def __init__(
        self, clips: ClipSource, moments: Mapping[int, Sequence[int]], audio_cfg: AudioFrontendConfig | None = None, preload: bool = False
    ) -> None:
        self.clips = clips
        self.audio_cfg = audio_cfg
        self.items: list[tuple[int, int]] = []
        for c in sorted(moments):
            if not 0 <= c < len(clips):
                raise DataError(f"moment for clip {c}, but the clip dataset has {len(clips)} clips")
            for s in moments[c]:
                if not 0 <= s < clips.steps:
                    raise DataError(f"moment step {s} of clip {c} outside its {clips.steps} steps")
                self.items.append((c, int(s)))
        if not self.items:
            raise DataError("no moments given: the dataset would be empty")
        self._preloaded: list[dict[str, Any]] | None = [self._compose(i) for i in range(len(self.items))] if preload else None

    def __len__(self) -> int:
        return len(self.items)

    def image_key(self, i: int) -> str:
        c, s = self.items[i]
        return f"{c}:{s}"

    def feature_cache_keys(self) -> list[str]:
        return [self.image_key(i) for i in range(len(self.items))]

    def _compose(self, i: int) -> dict[str, Any]:
        c, s = self.items[i]
        out = self.clips.frame_sample(c, s, self.audio_cfg)
        out["scene_index"] = self.image_key(i)  # the engine's cache key (see feature_cache_keys)
        return out

    def __getitem__(self, i: int) -> dict[str, Any]:
        if self._preloaded is None:
            return self._compose(i)
        return dict(self._preloaded[i])  # a shallow copy: callers may replace fields (e.g. boxes)
