"""DigitScenes ``video`` training-data wrappers of DNM (Nishikawa et al., Sec. 5.1).

* :class:`RedrawnSoundTracks`: each clip seen with ``draws`` sound tracks (the pictures,
  hence the frozen features, shared) -- DNMConfig ``sound_draws`` / ``pixels_once``;
* :class:`OtherTimeNegatives`: AVC negatives from the same clip at another time
  (``batch["neg_audio"]``) -- DNMConfig ``neg_other_time``.

:meth:`avloc.methods.dnm.SegmentMethod.prepare_training` applies them; both keep the wrapped
set's feature-cache keys (``scene_index``).
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any

import torch
from torch.utils.data import Dataset

from avloc.errors import ConfigError
from avloc.frontends.image import transform_boxes
from avloc.io.audio import window_at


def _video_boxes(ds: Any, boxes: list[list[int]]) -> torch.Tensor:
    """Pixel boxes of a DigitScenes video frame -> the dataset's item boxes (K, 4) (its image config, else normalised)."""
    side = ds.config.scene.size
    b = torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4)
    if ds.image_cfg is not None:
        return transform_boxes(b, (side, side), ds.image_cfg)
    return b / side


class RedrawnSoundTracks(Dataset):
    """A DigitScenes ``video`` set seen with ``draws`` sound tracks per clip (the still variants' ``pool`` for video).

    Item ``k * len(dataset) + r`` shows item r's frames with sound track k of its clip:
    k = 0 is the clip as drawn, k > 0 a new draw of who speaks, when, which utterance and
    which ambient sound (``DigitScenesSampler.clip(c, audio_draw=k)``), with the
    annotation (sounding boxes, labels, AVE flags) of that track. The pictures, hence the
    frozen features, are shared by the ``draws`` versions (``scene_index`` = r), so the
    engine encodes ``len(dataset)`` segments and trains on ``draws`` times as many
    distinct audio-visual pairs; the per-clip ambient sound no longer identifies a clip.
    Clip ``k * n_clips + c`` of :meth:`video_clip` is clip c with track k.

    ``pixels_once=True`` (training with the engine's frozen-feature cache only): the
    engine reads item r < ``len(dataset)`` once, to encode its pictures (key r); every
    later read returns the item without ``image``, since the engine replaces it by the
    cached features anyway. This skips composing 4 frames per item per step (the
    bulk of a training step's CPU time here); without the cache such items would fail.
    """

    def __init__(self, dataset: Any, draws: int, pixels_once: bool = False) -> None:
        if not callable(getattr(dataset, "video_clip", None)) or not hasattr(getattr(dataset, "config", None), "fps"):
            raise ConfigError(f"RedrawnSoundTracks needs a DigitScenes video dataset, got {type(dataset).__name__}")
        if draws < 1:
            raise ConfigError(f"draws must be >= 1, got {draws}")
        self.dataset, self.draws = dataset, int(draws)
        self.config, self.audio_cfg, self.image_cfg = dataset.config, dataset.audio_cfg, dataset.image_cfg
        self.frames = dataset.config.annotated_frames()
        self.n_clips = len(dataset) // len(self.frames)
        self._clips: OrderedDict[int, Any] = OrderedDict()
        self.pixels_once = pixels_once
        self._served: set[int] = set()  # items already given with their pictures (pixels_once)

    def __len__(self) -> int:
        return self.draws * len(self.dataset)

    def scene_index(self, i: int) -> int:
        return i % len(self.dataset)  # the pictures of item i: those of the wrapped item

    def video_clip(self, g: int) -> Any:
        k, c = divmod(g, self.n_clips)
        if k == 0:
            return self.dataset.video_clip(c)
        clip = self._clips.get(g)
        if clip is None:
            clip = self._clips[g] = self.dataset.sampler.clip(c, audio_draw=k)
            if len(self._clips) > 1024:
                self._clips.popitem(last=False)
        self._clips.move_to_end(g)
        return clip

    def __getitem__(self, i: int) -> dict[str, Any]:
        if not 0 <= i < len(self):
            raise IndexError(f"index {i} out of range for {len(self)} items")
        k, r = divmod(i, len(self.dataset))
        c, f = divmod(r, len(self.frames))
        if not self.pixels_once or (k == 0 and r not in self._served):
            self._served.add(r)
            item = dict(self.dataset[r])  # with the rendered segment
            if k == 0:
                return item
        else:  # no pixels: the engine reads features from its cache by the index
            base = self.dataset.video_clip(c)
            ann0 = base.annotation(self.frames[f])
            item = {
                "id": f"digitscenes-video-{self.dataset.split}-{self.dataset.seed}-{c:07d}-f{self.frames[f]:04d}",
                "visible_labels": sorted(ann0["box_labels"] + ann0["silent_labels"]),
                "scene_index": c, "time": ann0["time"],
            }
        clip = self.video_clip(k * self.n_clips + c)
        ann = clip.annotation(self.frames[f])
        item.update(
            id=f"{item['id']}-a{k}" if k else item["id"],
            audio=torch.from_numpy(window_at(clip.audio, clip.sample_rate, ann["time"], self.audio_cfg.window_seconds)),
            boxes=_video_boxes(self.dataset, ann["boxes"]),
            silent_boxes=_video_boxes(self.dataset, ann["silent_boxes"]),
            box_labels=torch.tensor(ann["box_labels"], dtype=torch.long),
            labels=ann["labels"],
            onscreen=ann["onscreen"],
            audible=ann["audible"],
            out_of_view=ann["out_of_view"],
        )
        return item



class OtherTimeNegatives(Dataset):
    """A DigitScenes ``video`` training set whose items also carry ``neg_audio`` (N,): same clip, another time.

    Item i (clip c, annotated frame at time t) gets the ``audio_cfg.window_seconds``
    window of clip c's sound track centred on another annotated time t' with
    |t' - t| >= ``min_sep`` s (default: the window, so the two windows do not
    overlap), drawn uniformly with the torch RNG on every access -- re-drawn every
    epoch as in the paper ("the video is combined with the audio of a different clip
    or time ... shuffled for each training epoch"). No labels are used: it stays
    self-supervised. :class:`avloc.methods.dnm.DNM` uses it when ``neg_other_time`` > 0. The frozen
    feature cache keys are the wrapped set's (``scene_index``).
    """

    def __init__(self, dataset: Any, min_sep: float | None = None) -> None:
        if not callable(getattr(dataset, "video_clip", None)) or not hasattr(getattr(dataset, "config", None), "fps"):
            raise ConfigError(f"OtherTimeNegatives needs a DigitScenes video dataset, got {type(dataset).__name__}")
        self.dataset = dataset
        self.window = float(dataset.audio_cfg.window_seconds)
        self.min_sep = self.window if min_sep is None else float(min_sep)
        fps = dataset.config.fps
        self.times = [j / fps for j in dataset.config.annotated_frames()]  # annotated times of a clip, s
        self.others = [[u for u in self.times if abs(u - t) >= self.min_sep - 1e-9] for t in self.times]
        if not all(self.others):
            raise ConfigError(
                f"clips of {dataset.config.seconds} s have annotated times with no other time >= {self.min_sep} s away; "
                "lower min_sep or use longer clips"
            )

    def __len__(self) -> int:
        return len(self.dataset)

    def scene_index(self, i: int) -> int:
        return int(self.dataset.scene_index(i))

    def __getitem__(self, i: int) -> dict[str, Any]:
        item = dict(self.dataset[i])
        c, f = divmod(i, len(self.times))
        clip = self.dataset.video_clip(c)
        cands = self.others[f]
        t_neg = cands[int(torch.randint(len(cands), (1,)))]
        item["neg_audio"] = torch.from_numpy(window_at(clip.audio, clip.sample_rate, t_neg, self.window))
        item["neg_time"] = t_neg
        return item
