"""Automatic bounding boxes for sounding objects ("Less can be more", Sec. 5.2) and
semi-supervised training data made of them (Sec. 5.2, Table 4).

Procedure (Sec. 5.2): take the top-1 informative moment of a clip (Sec. 5.1,
:mod:`avloc.data.moments`), its attention map (Eq. 4 around that moment), then
"1) binarize the attention map with thresholding ... connected segments of
pixels, and 2) draw a bounding box around the single largest segment":

* :func:`binarize` -- the map is resized to the frame (bilinear, half-pixel
  centres, as the evaluation protocols do), min-max normalised, and pixels
  ``>= threshold`` are kept. The paper does not give the threshold; 0.5 of the
  normalised range is our default (``PseudoBoxConfig.threshold``);
* :func:`largest_component` -- 8- (default) or 4-connected components
  (``scipy.ndimage.label``), the one with most pixels (ties: the first in raster
  order);
* :func:`mask_box` -- its tight box ``[x1, y1, x2, y2]``, exclusive ends (the
  DigitScenes / manifest convention).

:func:`clip_pseudo_boxes` runs it on one clip with a classification model,
:func:`decode_entry` decodes a manifest entry into such a clip and
:func:`boxes_to_entries` turns its boxes into pseudo-labelled manifest entries;
:func:`avloc.applications.pseudo_box_run.run_pseudo_boxes` runs them over a manifest
(``avloc pseudo-boxes``: resumable, one bad entry never stops the others, on Ray
with ``workers``). :class:`BoxSupervised` and :func:`semi_supervised`
turn such a manifest plus unlabelled data into one training set whose batches
carry ``sup_boxes`` and ``box_supervised`` (the supervised part of LVS's optional
box term, ``LVSConfig.box_weight``).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from avloc.errors import ConfigError, DataError

if TYPE_CHECKING:
    from avloc.methods.classif import Classif, ClassifConfig


@dataclass
class PseudoBoxConfig:
    """Sec. 5.2 settings: moments per clip, binarisation threshold, pixel connectivity."""

    #: top-k moments per clip (the paper keeps the top-1 for boxes)
    top_k: int = 1
    #: threshold on the min-max normalised attention map (not given in the paper)
    threshold: float = 0.5
    #: 8 (pixels touching at corners are connected) or 4
    connectivity: int = 8

    def __post_init__(self) -> None:
        if self.top_k < 1:
            raise ConfigError(f"top_k must be >= 1, got {self.top_k}")
        if not 0.0 < self.threshold <= 1.0:
            raise ConfigError(f"threshold must be in (0, 1], got {self.threshold}")
        if self.connectivity not in (4, 8):
            raise ConfigError(f"connectivity must be 4 or 8, got {self.connectivity}")


# ---------------------------------------------------------------------------------------------
# map -> box


def binarize(attn: torch.Tensor | np.ndarray, size: tuple[int, int], threshold: float) -> np.ndarray:
    """Attention map ``(h, w)`` -> bool mask ``(H, W)``: bilinear resize, min-max normalise, ``>= threshold``.

    A constant map (no evidence anywhere) gives an all-false mask.
    """
    a = torch.as_tensor(np.asarray(attn, dtype=np.float32) if isinstance(attn, np.ndarray) else attn.detach().float().cpu())
    if a.dim() != 2:
        raise DataError(f"attention map must be 2-D (h, w), got shape {tuple(a.shape)}")
    up = F.interpolate(a[None, None], size=size, mode="bilinear", align_corners=False)[0, 0]  # (H, W)
    lo, hi = float(up.min()), float(up.max())
    if not hi > lo:
        return np.zeros(size, dtype=bool)
    return ((up - lo) / (hi - lo) >= threshold).numpy()


def largest_component(mask: np.ndarray, connectivity: int = 8) -> np.ndarray:
    """The largest connected component of a bool mask ``(H, W)`` (ties: first in raster order); empty -> empty."""
    from scipy import ndimage

    if mask.ndim != 2:
        raise DataError(f"mask must be 2-D, got shape {mask.shape}")
    if connectivity not in (4, 8):
        raise ConfigError(f"connectivity must be 4 or 8, got {connectivity}")
    structure = np.ones((3, 3), dtype=bool) if connectivity == 8 else ndimage.generate_binary_structure(2, 1)
    labels, n = ndimage.label(mask, structure=structure)
    if n == 0:
        return np.zeros_like(mask, dtype=bool)
    sizes = np.bincount(labels.ravel())[1:]  # (n,) pixels per component, labels in raster order
    return labels == (int(np.argmax(sizes)) + 1)


def mask_box(mask: np.ndarray) -> list[int] | None:
    """Tight box ``[x1, y1, x2, y2]`` (exclusive ends, pixels) of a bool mask, ``None`` when empty."""
    ys, xs = np.nonzero(mask)
    if xs.size == 0:
        return None
    return [int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1]


def pseudo_box(attn: torch.Tensor | np.ndarray, size: tuple[int, int], threshold: float = 0.5, connectivity: int = 8) -> list[int] | None:
    """Sec. 5.2 on one map: binarise at ``size`` = (H, W), largest component, its box (or ``None``)."""
    return mask_box(largest_component(binarize(attn, size, threshold), connectivity))


# ---------------------------------------------------------------------------------------------
# clip -> boxes with a classification model


@dataclass
class ClipBox:
    """One pseudo box: the clip step it comes from, ``S_av`` there, the box in the model input frame (normalised)."""

    step: int
    score: float
    box: list[float] | None  # [x1, y1, x2, y2] in [0, 1] of the model input, None if the map was flat


def clip_pseudo_boxes(model: Classif, frames: torch.Tensor, audio: torch.Tensor, cfg: PseudoBoxConfig) -> list[ClipBox]:
    """Top-k moments of one clip and the pseudo box at each.

    ``frames`` ``(T, 3, H, W)`` preprocessed model input (a still ``(3, H, W)`` is a
    fixed-frame clip), ``audio`` ``(N,)`` spanning the clip. The box is computed at
    the model input resolution ``(H, W)`` and returned normalised to [0, 1].
    """
    from avloc.data.moments import top_k_moments

    with torch.no_grad():
        alpha, s_av = model.clip_attention(frames[None], audio[None])  # (1, T, h, w), (1, T)
    size = (int(frames.shape[-2]), int(frames.shape[-1]))
    out = []
    for step in top_k_moments(s_av[0], min(cfg.top_k, s_av.shape[1])):
        amap = model.localize_at(alpha, step)[0]  # (h, w), Eq. 4 around the moment
        b = pseudo_box(amap, size, cfg.threshold, cfg.connectivity)
        norm = None if b is None else [b[0] / size[1], b[1] / size[0], b[2] / size[1], b[3] / size[0]]
        out.append(ClipBox(step, float(s_av[0, step]), norm))
    return out


def to_frame_pixels(box: Sequence[float], frame_hw: tuple[int, int], image_cfg: Any) -> list[float]:
    """A box normalised in the model input -> pixels of the original ``(H, W)`` frame (inverse of ``transform_boxes``)."""
    from avloc.frontends.image import crop_geometry

    h, w = frame_hw
    sx, sy, ox, oy = crop_geometry(h, w, image_cfg)
    s = image_cfg.size
    x1, y1, x2, y2 = (box[0] * s + ox) / sx, (box[1] * s + oy) / sy, (box[2] * s + ox) / sx, (box[3] * s + oy) / sy
    return [round(min(max(v, 0.0), lim), 2) for v, lim in ((x1, w), (y1, h), (x2, w), (y2, h))]


@dataclass
class EntryClip:
    """One decoded manifest entry: ``frames`` ``(T, 3, S, S)`` model input, ``audio`` ``(N,)``, the frame ``hw``."""

    frames: torch.Tensor
    audio: torch.Tensor
    hw: tuple[int, int]


def decode_entry(model_cfg: ClassifConfig, manifest: str | Path, entry: dict[str, Any]) -> EntryClip:
    """Decode one manifest entry as a clip at ``model_cfg.fps`` (no model needed: a decoding worker can run it).

    Video entries: their frames from the first step time on (the last repeated if the video ends a frame
    before the audio); image entries: the still repeated over the steps its audio spans (a fixed-frame clip).
    """
    from avloc.data.clips import step_time
    from avloc.data.datasets import load_image
    from avloc.formats.manifest import resolve_media
    from avloc.frontends.image import preprocess_image
    from avloc.io.audio import load_audio
    from avloc.io.media import iter_frames

    audio_rel = entry.get("audio") or entry.get("video")
    if audio_rel is None:
        raise DataError(f"{manifest}: entry {entry.get('id')!r} has no 'audio' (nor a 'video')")
    wav, _ = load_audio(resolve_media(manifest, audio_rel), model_cfg.audio.sample_rate)
    steps = model_cfg.steps_for(wav.size)
    if "video" in entry:
        fps = model_cfg.fps
        imgs = [fr.image for fr in iter_frames(resolve_media(manifest, entry["video"]), fps=fps, start=step_time(0, fps))]
        if not imgs:
            raise DataError(f"{manifest}: entry {entry['id']!r}: no frames decoded")
        imgs = (imgs + [imgs[-1]] * steps)[:steps]  # the video may end a frame before the audio
        arr = np.stack(imgs)  # (T, H, W, 3)
    elif "image" in entry:
        arr = load_image(resolve_media(manifest, entry["image"]))[None]  # (1, H, W, 3): a fixed-frame clip
    else:
        raise DataError(f"{manifest}: entry {entry.get('id')!r} needs 'image' or 'video'")
    hw = (int(arr.shape[1]), int(arr.shape[2]))
    frames = preprocess_image(torch.from_numpy(arr).permute(0, 3, 1, 2), model_cfg.image)  # (T|1, 3, S, S)
    if frames.shape[0] == 1:
        frames = frames.expand(steps, -1, -1, -1)
    return EntryClip(frames, torch.from_numpy(np.ascontiguousarray(wav)), hw)


def boxes_to_entries(entry: dict[str, Any], boxes: Sequence[ClipBox], hw: tuple[int, int], model_cfg: ClassifConfig,
                     cfg: PseudoBoxConfig, manifest: str | Path, out_dir: str | Path) -> list[dict[str, Any]]:
    """The pseudo-box manifest entries of one source ``entry`` from its clip's boxes: one per moment with a box
    (``id``, or ``ID-mK`` with ``top_k`` > 1), ``boxes`` in frame pixels, media paths relative to ``out_dir``; video
    entries get ``time`` = the moment's time (the frame and the audio window centred there are what
    :class:`~avloc.data.datasets.ManifestDataset` reads); ``pseudo_box`` true, ``moment_step``, ``moment_time``,
    ``moment_score``, ``source_id``. A clip whose map is flat (no box) gives none."""
    from avloc.data.clips import step_time
    from avloc.formats.manifest import resolve_media

    h, w = hw
    out: list[dict[str, Any]] = []
    for k, cb in enumerate(boxes):
        if cb.box is None:
            continue
        t = round(step_time(cb.step, model_cfg.fps), 6)
        new: dict[str, Any] = {
            "id": entry["id"] if cfg.top_k == 1 else f"{entry['id']}-m{k}",
            "size": [w, h],
            "boxes": [to_frame_pixels(cb.box, (h, w), model_cfg.image)],
            "labels": list(entry.get("labels") or []),
            "pseudo_box": True,
            "moment_step": cb.step,
            "moment_time": t,
            "moment_score": round(cb.score, 6),
            "source_id": entry["id"],
        }
        for key in ("image", "video", "audio"):
            if key in entry:
                new[key] = os.path.relpath(resolve_media(manifest, entry[key]), Path(out_dir).resolve())
        if "video" in entry:
            new["time"] = t
        if "split" in entry:
            new["split"] = entry["split"]
        out.append(new)
    return out


# ---------------------------------------------------------------------------------------------
# semi-supervised training data


SUP_KEYS = ("sup_boxes", "box_supervised")


class BoxSupervised(Dataset):
    """Adds the box-supervision keys to every sample of ``dataset``.

    ``supervised=True``: ``sup_boxes`` = the sample's ``boxes`` (normalised, e.g. pseudo
    boxes read from a manifest) and ``box_supervised`` = True; otherwise empty
    ``sup_boxes`` (0, 4) and False. Only ``keep`` keys are passed on (samples of
    different datasets must have equal keys to be batched), and ``scene_index``
    becomes ``f"{tag}:{key}"`` so the engine's feature cache stays valid across parts.
    """

    KEEP = ("id", "image", "audio", "boxes", "box_labels", "silent_boxes", "labels", "onscreen", "audible")

    def __init__(self, dataset: Dataset, supervised: bool, tag: str, keep: Sequence[str] = KEEP) -> None:
        self.dataset, self.supervised, self.tag, self.keep = dataset, supervised, tag, tuple(keep)

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def feature_cache_keys(self) -> list[str] | None:
        from avloc.data.datasets import dataset_image_keys

        keys = dataset_image_keys(self.dataset)
        return None if keys is None else [f"{self.tag}:{k}" for k in keys]

    def __getitem__(self, i: int) -> dict[str, Any]:
        s = self.dataset[i]
        missing = [k for k in self.keep if k not in s]
        if missing:
            raise DataError(f"sample {s.get('id')!r} lacks {missing}")
        out = {k: s[k] for k in self.keep}
        key = s.get("scene_index", s["id"])
        out["scene_index"] = f"{self.tag}:{key}"
        out["sup_boxes"] = s["boxes"].reshape(-1, 4).float() if self.supervised else torch.zeros(0, 4)
        if self.supervised and out["sup_boxes"].shape[0] == 0:
            raise DataError(f"supervised sample {s['id']!r} has no box")
        out["box_supervised"] = torch.tensor(self.supervised)
        return out


class _Concat(Dataset):
    """Concatenation that keeps the parts' feature-cache keys."""

    def __init__(self, parts: Sequence[BoxSupervised]) -> None:
        self.parts = list(parts)
        self.offsets = np.cumsum([0] + [len(p) for p in self.parts])

    def __len__(self) -> int:
        return int(self.offsets[-1])

    def feature_cache_keys(self) -> list[str] | None:
        keys: list[str] = []
        for p in self.parts:
            k = p.feature_cache_keys()
            if k is None:
                return None
            keys += k
        return keys

    def __getitem__(self, i: int) -> dict[str, Any]:
        if not 0 <= i < len(self):
            raise IndexError(f"index {i} out of range for {len(self)} samples")
        j = int(np.searchsorted(self.offsets, i, side="right")) - 1
        return self.parts[j][i - int(self.offsets[j])]


def semi_supervised(unlabelled: Dataset, labelled: Dataset) -> Dataset:
    """One training set: ``unlabelled`` (no box term) + ``labelled`` (pseudo boxes as the supervised part)."""
    return _Concat([BoxSupervised(unlabelled, False, "u"), BoxSupervised(labelled, True, "s")])
