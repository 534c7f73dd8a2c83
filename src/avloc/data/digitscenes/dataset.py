"""On-the-fly DigitScenes as a torch ``Dataset``, registered as ``digitscenes``.

Every ``__getitem__`` composes its sample from the raw sources (no files),
deterministically per (seed, index). Sample dict: the shared contract of
:mod:`avloc.data.datasets` plus ``scene_index``, ``visible_labels`` (sorted
classes of the digits in view, sounding or silent: image tags) and ``time``
for video.

``pool=N`` reuses N fixed images: draw ``i`` shows scene ``i % N`` (its image
depends only on the seed and that index) while the sounding digit among the
visible ones and its utterance are re-drawn for every ``i``; the engine can
cache frozen-backbone image features keyed by ``scene_index``.
"""

from __future__ import annotations

import dataclasses
from collections import OrderedDict
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from avloc.data.digitscenes.config import VariantConfig, VideoConfig, variant_config
from avloc.data.digitscenes.sampler import Clip, DigitScenesSampler, Sample
from avloc.data.sources import RawSources
from avloc.errors import ConfigError
from avloc.frontends.audio import AudioFrontendConfig
from avloc.frontends.image import ImageConfig, preprocess_image, segment_times, transform_boxes
from avloc.io.audio import window_at
from avloc.registry import DATASETS

DEFAULT_COUNT = {"train": 10_000, "val": 1_000, "test": 1_000}
#: video clips kept in memory per dataset (~0.4 MB each: a 6 s sound track and the scene); deterministic either way
CLIP_CACHE_SIZE = 1024


def _boxes(b: list[list[int]]) -> torch.Tensor:
    return torch.tensor(b, dtype=torch.float32).reshape(-1, 4)


def _visible_labels(s: Sample) -> list[int]:
    """Sorted classes of the digits in view on a still sample (sounding or silent): the image's tags."""
    if s.scene is None:
        raise ConfigError(f"DigitScenes sample {s.index} carries no scene: cannot list its visible digits")
    return sorted(d.label for d, b in zip(s.scene.digits, s.scene.boxes(), strict=True) if b is not None)


class DigitScenes(Dataset):
    """Scenes composed on the fly; see the module docstring and docs/digitscenes.md.

    ``count`` is the number of items (video: of clips; each clip yields its
    annotated frames). With an ``audio_cfg`` the sound is composed at its rate
    and, for still variants, the clip lasts its ``window_seconds``.
    """

    def __init__(
        self,
        raw: str | Path | RawSources,
        variant: str = "single",
        split: str = "train",
        count: int | None = None,
        seed: int = 0,
        image_cfg: ImageConfig | None = None,
        audio_cfg: AudioFrontendConfig | None = None,
        pool: int | None = None,
        config: VariantConfig | None = None,
    ) -> None:
        cfg = config if config is not None else variant_config(variant)
        if audio_cfg is not None:
            changes: dict[str, Any] = {"sample_rate": audio_cfg.sample_rate}
            if not isinstance(cfg, VideoConfig):
                changes["clip_seconds"] = audio_cfg.window_seconds
            cfg = dataclasses.replace(cfg, audio=dataclasses.replace(cfg.audio, **changes))
        self.audio_cfg = audio_cfg or AudioFrontendConfig(
            sample_rate=cfg.audio.sample_rate,
            window_seconds=cfg.seconds if isinstance(cfg, VideoConfig) else cfg.audio.clip_seconds,
        )
        self.image_cfg = image_cfg
        self.count = DEFAULT_COUNT.get(split, 1_000) if count is None else int(count)
        if self.count <= 0:
            raise ConfigError(f"count must be positive, got {count}")
        if pool is not None and (pool <= 0 or isinstance(cfg, VideoConfig)):
            raise ConfigError(f"pool must be a positive number of scenes for a still variant, got {pool} ({variant})")
        self.pool = pool
        sources = raw if isinstance(raw, RawSources) else RawSources(raw)
        sources.check()
        self.sampler = DigitScenesSampler(sources, variant, split, cfg, seed)
        self.variant, self.split, self.seed, self.config = variant, split, seed, cfg
        if image_cfg is not None and image_cfg.frames > 1 and not isinstance(cfg, VideoConfig):
            raise ConfigError(
                f"image_cfg.frames={image_cfg.frames} asks for multi-frame segments: only the 'video' variant has time, not {variant!r}"
            )
        self._frames = cfg.annotated_frames() if isinstance(cfg, VideoConfig) else [0]
        # recently drawn clips (their frames are items; a shuffled loader revisits a clip many times)
        self._clips: OrderedDict[int, Clip] = OrderedDict()

    def __len__(self) -> int:
        return self.count * len(self._frames)

    def scene_index(self, i: int) -> int:
        """The image (scene) used by draw ``i``."""
        return i % self.pool if self.pool else i

    def _tensors(self, image: np.ndarray, boxes: list[list[int]], silent: list[list[int]]) -> dict[str, Any]:
        h, w = image.shape[:2]
        img = torch.from_numpy(image.transpose(2, 0, 1).astype(np.float32) * np.float32(1 / 255.0))  # (3, H, W)
        if self.image_cfg is not None:
            return {
                "image": preprocess_image(img, self.image_cfg),
                "boxes": transform_boxes(_boxes(boxes), (h, w), self.image_cfg),
                "silent_boxes": transform_boxes(_boxes(silent), (h, w), self.image_cfg),
            }
        scale = torch.tensor([1 / w, 1 / h, 1 / w, 1 / h])
        return {"image": img, "boxes": _boxes(boxes) * scale, "silent_boxes": _boxes(silent) * scale}

    def __getitem__(self, i: int) -> dict[str, Any]:
        if not 0 <= i < len(self):
            raise IndexError(f"index {i} out of range for {len(self)} DigitScenes items")
        if isinstance(self.config, VideoConfig):
            return self._video_item(i)
        s = self.sampler.sample(i, self.scene_index(i))
        out: dict[str, Any] = {"id": f"digitscenes-{self.variant}-{self.split}-{self.seed}-{i:07d}"}
        out.update(self._tensors(s.image, s.boxes, s.silent_boxes))
        audio = s.audio
        if audio.size != self.audio_cfg.num_samples:  # a clip set by config, not by audio_cfg
            audio = window_at(audio, s.sample_rate, audio.size / s.sample_rate / 2, self.audio_cfg.window_seconds)
        out.update(
            audio=torch.from_numpy(np.ascontiguousarray(audio)),
            box_labels=torch.tensor(s.box_labels, dtype=torch.long),
            labels=list(s.labels),
            visible_labels=_visible_labels(s),
            onscreen=s.onscreen,
            audible=s.audible,
            scene_index=s.scene_index,
        )
        if "heard" in s.meta:
            out["heard"] = bool(s.meta["heard"])
        return out

    def video_clip(self, c: int) -> Clip:
        """Video clip ``c`` (video variant; items ``c * len(annotated_frames()) + k`` are its annotated frames)."""
        if not isinstance(self.config, VideoConfig):
            raise ConfigError(f"video_clip() is for the video variant, not {self.variant!r}")
        clip = self._clips.get(c)
        if clip is None:
            clip = self._clips[c] = self.sampler.clip(c)
            if len(self._clips) > CLIP_CACHE_SIZE:
                self._clips.popitem(last=False)
        self._clips.move_to_end(c)
        return clip

    def _video_item(self, i: int) -> dict[str, Any]:
        c, f = divmod(i, len(self._frames))
        clip = self.video_clip(c)
        j = self._frames[f]
        ann = clip.annotation(j)
        out: dict[str, Any] = {"id": f"digitscenes-video-{self.split}-{self.seed}-{c:07d}-f{j:04d}"}
        out.update(self._tensors(clip.frame(j), ann["boxes"], ann["silent_boxes"]))
        if self.image_cfg is not None and self.image_cfg.frames > 1:  # a segment around the frame (ImageConfig.frames)
            times = segment_times(ann["time"], self.audio_cfg.window_seconds, self.image_cfg.frames)
            idx = [min(max(round(t * clip.fps), 0), clip.n_frames - 1) for t in times]
            out["image"] = torch.stack([self._tensors(clip.frame(k), [], [])["image"] for k in idx])  # (T, 3, S, S)
        audio = window_at(clip.audio, clip.sample_rate, ann["time"], self.audio_cfg.window_seconds)
        out.update(
            audio=torch.from_numpy(audio),
            box_labels=torch.tensor(ann["box_labels"], dtype=torch.long),
            labels=ann["labels"],
            visible_labels=sorted(ann["box_labels"] + ann["silent_labels"]),
            onscreen=ann["onscreen"],
            audible=ann["audible"],
            out_of_view=ann["out_of_view"],
            scene_index=c,
            time=ann["time"],
        )
        return out


@DATASETS.register("digitscenes")
def digitscenes(
    raw: str | Path,
    variant: str = "single",
    split: str = "train",
    count: int | None = None,
    seed: int = 0,
    image_cfg: ImageConfig | None = None,
    audio_cfg: AudioFrontendConfig | None = None,
    pool: int | None = None,
    **variant_overrides: Any,
) -> Dataset:
    """DigitScenes composed on the fly from the raw sources in ``raw``.

    ``variant_overrides`` set fields of the variant's config dataclass (e.g.
    ``n_visible=(2, 2)``, ``snr_db=(0.0, 10.0)``, ``scene=SceneConfig(size=128)``);
    unknown names raise :class:`ConfigError` listing the valid ones.
    """
    cfg = variant_config(variant, **variant_overrides)
    return DigitScenes(raw, variant, split, count, seed, image_cfg, audio_cfg, pool, cfg)
