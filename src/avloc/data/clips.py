"""Whole DigitScenes video clips as dataset items (clip-level training, moment selection).

The ``digitscenes`` dataset yields one item per *annotated frame* (a still with its
audio window). Clip-level models -- the classification model of "Less can be
more" (:mod:`avloc.methods.classif`) -- need the whole clip: its frames sampled at
the model's ``fps`` and its whole sound track. :class:`DigitScenesClips` yields

================ ==============================================================
``id``           str, ``digitscenes-clip-{split}-{seed}-{index}``
``image``        float ``(T, 3, H, W)`` in [0, 1]: frame ``j`` shows time ``(j + 0.5) / fps``
                 (the centre of the audio step it is paired with)
``audio``        float ``(N,)``: the whole clip at ``audio_cfg.sample_rate``
``labels``       list[int]: every spoken digit class of the clip (video-level label)
``scene_index``  int: the clip index (stable key of the frozen-feature cache)
================ ==============================================================

and :meth:`DigitScenesClips.frame_sample` builds the still sample (the contract of
:mod:`avloc.data.datasets`, with the clip's true annotation at that frame) of any
step, which is what :mod:`avloc.data.moments` feeds to other methods' training.
Registered as ``digitscenes-clips`` (spec ``digitscenes-clips:video:train``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from avloc.data.digitscenes.config import VideoConfig, variant_config
from avloc.data.digitscenes.dataset import DEFAULT_COUNT
from avloc.data.digitscenes.sampler import Clip, DigitScenesSampler
from avloc.data.sources import RawSources
from avloc.errors import ConfigError
from avloc.frontends.audio import AudioFrontendConfig
from avloc.frontends.image import ImageConfig, preprocess_image, transform_boxes
from avloc.io.audio import window_at
from avloc.registry import DATASETS


def step_time(step: int, fps: float) -> float:
    """Time (s) shown by clip step ``step`` at ``fps``: the centre of its audio interval."""
    return (step + 0.5) / fps


class DigitScenesClips(Dataset):
    """DigitScenes ``video`` clips, one item per clip (see the module docstring)."""

    def __init__(
        self,
        raw: str | Path | RawSources,
        split: str = "train",
        count: int | None = None,
        seed: int = 0,
        image_cfg: ImageConfig | None = None,
        audio_cfg: AudioFrontendConfig | None = None,
        fps: float = 4.0,
        config: VideoConfig | None = None,
    ) -> None:
        cfg = config if config is not None else variant_config("video")
        if not isinstance(cfg, VideoConfig):
            raise ConfigError(f"digitscenes-clips needs the video variant's config, got {type(cfg).__name__}")
        if audio_cfg is not None and audio_cfg.sample_rate != cfg.audio.sample_rate:
            import dataclasses

            cfg = dataclasses.replace(cfg, audio=dataclasses.replace(cfg.audio, sample_rate=audio_cfg.sample_rate))
        if not 0 < fps <= cfg.fps:
            raise ConfigError(f"clip fps must be in (0, {cfg.fps}] (the video's frame rate), got {fps}")
        self.cfg, self.split, self.seed, self.fps = cfg, split, seed, float(fps)
        self.image_cfg = image_cfg or ImageConfig()
        self.audio_cfg = audio_cfg or AudioFrontendConfig(sample_rate=cfg.audio.sample_rate)
        self.count = DEFAULT_COUNT.get(split, 1_000) if count is None else int(count)
        if self.count <= 0:
            raise ConfigError(f"count must be positive, got {count}")
        sources = raw if isinstance(raw, RawSources) else RawSources(raw)
        sources.check()
        self.sampler = DigitScenesSampler(sources, "video", split, cfg, seed)
        self.steps = round(cfg.seconds * self.fps)
        self._clip: Clip | None = None

    def __len__(self) -> int:
        return self.count

    def clip(self, c: int) -> Clip:
        """Clip ``c`` (the last one is kept: consecutive calls share it)."""
        if not 0 <= c < self.count:
            raise IndexError(f"clip {c} out of range for {self.count} clips")
        if self._clip is None or self._clip.index != c:
            self._clip = self.sampler.clip(c)
        return self._clip

    def video_frame(self, step: int) -> int:
        """Index of the source video frame shown at clip step ``step``."""
        return min(self.cfg.n_frames - 1, int(step_time(step, self.fps) * self.cfg.fps))

    def feature_cache_keys(self) -> list[int]:
        return list(range(self.count))

    def scene_index(self, i: int) -> int:
        return i

    def __getitem__(self, c: int) -> dict[str, Any]:
        clip = self.clip(c)
        frames = np.stack([clip.frame(self.video_frame(j)) for j in range(self.steps)])  # (T, H, W, 3) uint8
        img = torch.from_numpy(frames).permute(0, 3, 1, 2)  # (T, 3, H, W)
        return {
            "id": f"digitscenes-clip-{self.split}-{self.seed}-{c:07d}",
            "image": preprocess_image(img, self.image_cfg),
            "audio": torch.from_numpy(np.ascontiguousarray(clip.audio)),
            "labels": sorted({int(u["label"]) for u in clip.utterances}),
            "scene_index": c,
        }

    def frame_sample(self, c: int, step: int, audio_cfg: AudioFrontendConfig | None = None) -> dict[str, Any]:
        """Still sample of clip ``c`` at ``step``: its frame, the audio window centred there, the true annotation."""
        acfg = audio_cfg or self.audio_cfg
        clip = self.clip(c)
        j = self.video_frame(step)
        ann = clip.annotation(j)
        frame = clip.frame(j)
        h, w = frame.shape[:2]
        img = torch.from_numpy(frame).permute(2, 0, 1)  # (3, H, W) uint8

        def boxes(b: list[list[int]]) -> torch.Tensor:
            return transform_boxes(torch.tensor(b, dtype=torch.float32).reshape(-1, 4), (h, w), self.image_cfg)

        t = step_time(step, self.fps)
        return {
            "id": f"digitscenes-clip-{self.split}-{self.seed}-{c:07d}-s{step:04d}",
            "image": preprocess_image(img, self.image_cfg),
            "audio": torch.from_numpy(window_at(clip.audio, clip.sample_rate, t, acfg.window_seconds)),
            "boxes": boxes(ann["boxes"]),
            "box_labels": torch.tensor(ann["box_labels"], dtype=torch.long),
            "silent_boxes": boxes(ann["silent_boxes"]),
            "labels": ann["labels"],
            "onscreen": ann["onscreen"],
            "audible": ann["audible"],
            "time": t,
        }


@DATASETS.register("digitscenes-clips")
def digitscenes_clips(
    raw: str | Path,
    variant: str = "video",
    split: str = "train",
    count: int | None = None,
    seed: int = 0,
    image_cfg: ImageConfig | None = None,
    audio_cfg: AudioFrontendConfig | None = None,
    fps: float = 4.0,
    **variant_overrides: Any,
) -> DigitScenesClips:
    """Whole clips of the DigitScenes ``video`` variant (``variant`` must be ``video``)."""
    if variant != "video":
        raise ConfigError(f"digitscenes-clips is made of video clips: variant must be 'video', got {variant!r}")
    cfg = variant_config("video", **variant_overrides)
    assert isinstance(cfg, VideoConfig)
    return DigitScenesClips(raw, split, count, seed, image_cfg, audio_cfg, fps, cfg)
