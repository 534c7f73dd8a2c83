"""Datasets that read manifests, and the ``--data`` spec resolver.

Every dataset yields the same sample dict (the contract the engine and the
evaluation harness rely on):

================ ==============================================================
``id``           str
``image``        float (3, H, W) in [0, 1] at ``image_cfg.size``
``audio``        float (N,) waveform, ``audio_cfg.num_samples`` at its rate
``boxes``        float (K, 4) sounding boxes, normalised [0, 1], model input frame
``box_labels``   long (K,) class per box (-1 when unknown)
``box_annotator`` long (K,) annotator per box (0 when single-annotator)
``silent_boxes`` float (M, 4) visible silent objects, same frame
``labels``       list[int] sounding classes
``onscreen``     bool, the sound's source is visible
``audible``      bool, there is a sound event at all
``image_id``     str, the entry's ``image_id`` (else its ``id``): IIoU groups
================ ==============================================================

Audio window: ``audio_cfg.window_seconds`` centred at the entry's ``time``
(video entries) or ``audio_time``, else at the middle of the audio file;
samples beyond the file are zero (``avloc.io.audio.window_at``).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from avloc.errors import ConfigError, DataError, MediaError
from avloc.formats.manifest import Entry, read_manifest, resolve_media
from avloc.frontends.audio import AudioFrontendConfig
from avloc.frontends.image import ImageConfig, preprocess_image, segment_times, transform_boxes
from avloc.io.audio import load_audio, window_at
from avloc.io.media import frames_at
from avloc.registry import DATASETS


def load_image(path: str | Path) -> np.ndarray:
    """Read an image file as (H, W, 3) uint8 RGB; :class:`MediaError` if unreadable."""
    from PIL import Image, UnidentifiedImageError

    p = Path(path)
    if not p.is_file():
        raise MediaError(f"image not found: {p}")
    try:
        with Image.open(p) as im:
            return np.array(im.convert("RGB"))
    except (UnidentifiedImageError, OSError) as e:
        raise MediaError(f"{p}: cannot read image ({e})") from None


def read_frame_at(path: str | Path, time: float) -> np.ndarray:
    """The video frame shown at ``time`` seconds, (H, W, 3) uint8."""
    from avloc.io.media import iter_frames

    for fr in iter_frames(path, fps=1.0, start=time, end=time + 1e-3):
        return fr.image
    raise MediaError(f"{path}: no frame at t={time:.3f} s (video shorter?)")


def _boxes_tensor(boxes: list[list[float]] | None) -> torch.Tensor:
    return torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4) if boxes else torch.zeros(0, 4)


def build_sample(
    entry: Entry,
    image: np.ndarray,
    wav: np.ndarray,
    sr: int,
    image_cfg: ImageConfig,
    audio_cfg: AudioFrontendConfig,
    center: float,
    pad: str = "zero",
) -> dict[str, Any]:
    """Assemble the sample dict from decoded media and a manifest entry."""
    img = preprocess_image(torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1), image_cfg)
    audio = window_at(wav, sr, center, audio_cfg.window_seconds, pad)  # type: ignore[arg-type]
    return {"id": entry["id"], "image": img, "audio": torch.from_numpy(audio),
            **annotation_fields(entry, image.shape[:2], image_cfg)}


def annotation_fields(entry: Entry, hw: tuple[int, int], image_cfg: ImageConfig) -> dict[str, Any]:
    """The sample's fields other than ``id``, ``image`` and ``audio``, from its entry (frame of size ``hw``)."""
    n = len(entry.get("boxes") or [])
    return {
        "boxes": _model_boxes(entry.get("boxes"), hw, image_cfg),
        "box_labels": torch.tensor(entry.get("box_labels") or [-1] * n, dtype=torch.long) if n else _NO_LABELS,
        "box_annotator": torch.tensor(entry.get("box_annotator") or [0] * n, dtype=torch.long) if n else _NO_LABELS,
        "silent_boxes": _model_boxes(entry.get("silent_boxes"), hw, image_cfg),
        "labels": list(entry.get("labels") or []),
        "onscreen": bool(entry.get("onscreen", n > 0)),
        "audible": bool(entry.get("audible", True)),
        "image_id": str(entry.get("image_id") or entry["id"]),
    }


#: the fields of a sample without boxes (shared: a tensor with no elements cannot be changed in place)
_NO_BOXES, _NO_LABELS = torch.zeros(0, 4), torch.zeros(0, dtype=torch.long)


def _model_boxes(boxes: list[list[float]] | None, hw: tuple[int, int], image_cfg: ImageConfig) -> torch.Tensor:
    """Pixel boxes of a frame of size ``hw`` -> normalised boxes of the model input, (K, 4)."""
    return transform_boxes(_boxes_tensor(boxes), hw, image_cfg) if boxes else _NO_BOXES


def class_labels(entries: list[Entry], classes: list[str] | str, where: Path) -> list[str]:
    """Give every entry without ``labels`` the integer label of its ``class`` among ``classes`` (a list of names,
    or ``"sorted"``: the sorted class names of the entries); returns the class names."""
    names = sorted({str(e["class"]) for e in entries if "class" in e}) if classes == "sorted" else classes
    if not isinstance(names, list):
        raise ConfigError(f"{where}: classes must be a list of class names or 'sorted', got {classes!r}")
    index = {c: k for k, c in enumerate(names)}
    for e in entries:
        if "labels" in e:
            continue
        if e.get("class") not in index:
            raise DataError(f"{where}: entry {e['id']!r} has class {e.get('class')!r}, not one of the {len(names)} classes given")
        e["labels"] = [index[e["class"]]]
    return list(names)


class ManifestDataset(Dataset):
    """Samples described by a jsonl manifest (see :mod:`avloc.formats.manifest`)."""

    def __init__(
        self,
        manifest: str | Path,
        image_cfg: ImageConfig | None = None,
        audio_cfg: AudioFrontendConfig | None = None,
        audio_pad: str = "zero",
        count: int | None = None,
        classes: list[str] | str | None = None,
    ) -> None:
        self.path = Path(manifest)
        self.entries = read_manifest(self.path)
        if any("shard" in e for e in self.entries):
            raise DataError(f"{self.path} is the manifest of a shard set: read it as `shards:{self.path.parent}` "
                            "(avloc.data.shards.ShardDataset)")
        if classes is not None:  # class names (the prepare steps' ``class``) -> integer ``labels``
            self.classes = class_labels(self.entries, classes, self.path)
        if count is not None:  # the first ``count`` entries
            if count < 1:
                raise ConfigError(f"{self.path}: count must be >= 1, got {count}")
            self.entries = self.entries[:count]
        self.image_cfg = image_cfg or ImageConfig()
        self.audio_cfg = audio_cfg or AudioFrontendConfig()
        self.audio_pad = audio_pad

    def __len__(self) -> int:
        return len(self.entries)

    def __getitem__(self, i: int) -> dict[str, Any]:
        e = self.entries[i]
        segment = self.image_cfg.frames > 1
        if "image" in e:
            if segment:
                raise DataError(f"{self.path}: entry {e['id']!r} is a still image; image_cfg.frames={self.image_cfg.frames} needs video entries")
            image = load_image(resolve_media(self.path, e["image"]))
        else:
            if "time" not in e:
                raise DataError(f"{self.path}: entry {e['id']!r} has 'video' but no 'time' of the frame to use")
            image = read_frame_at(resolve_media(self.path, e["video"]), float(e["time"]))
        audio_rel = e.get("audio") or e.get("video")
        if audio_rel is None:
            raise DataError(f"{self.path}: entry {e['id']!r} has no 'audio' (nor a 'video' to take it from)")
        wav, sr = load_audio(resolve_media(self.path, audio_rel), self.audio_cfg.sample_rate)
        t = e.get("audio_time", e.get("time"))
        center = float(t) if t is not None else wav.size / sr / 2
        sample = build_sample(e, image, wav, sr, self.image_cfg, self.audio_cfg, center, self.audio_pad)
        if segment:  # T frames around the entry's time (ImageConfig.frames); boxes stay those of the frame at `time`
            times = segment_times(float(e["time"]), self.audio_cfg.window_seconds, self.image_cfg.frames)
            # before the start: the first frame; after the video's last frame: that frame (its real timestamp,
            # whatever the frame rate; not an assumed 25 fps)
            frames = frames_at(resolve_media(self.path, e["video"]), [max(t, 0.0) for t in times])
            sample["image"] = torch.stack(
                [preprocess_image(torch.from_numpy(np.ascontiguousarray(f)).permute(2, 0, 1), self.image_cfg) for f in frames]
            )  # (T, 3, S, S)
        return sample


@DATASETS.register("manifest")
def manifest_dataset(
    path: str, image_cfg: ImageConfig | None = None, audio_cfg: AudioFrontendConfig | None = None, **kwargs: Any
) -> ManifestDataset:
    """A :class:`ManifestDataset` (registered so ``--data manifest:PATH`` works)."""
    return ManifestDataset(path, image_cfg, audio_cfg, **kwargs)


#: the keyword arguments a manifest spec takes (:class:`ManifestDataset`), and a shard set's
#: (:class:`avloc.data.shards.ShardDataset`)
MANIFEST_KWARGS = ("audio_pad", "count", "classes")
SHARD_KWARGS = (*MANIFEST_KWARGS, "compact", "verify")


def _manifest(
    path: str, image_cfg: ImageConfig | None, audio_cfg: AudioFrontendConfig | None, kwargs: dict[str, Any],
    shards: bool = False,
) -> Dataset:
    """A :class:`ManifestDataset`, or the shard set whose manifest (or folder) ``path`` is."""
    from avloc.formats.shards import is_shard_set

    shards = shards or is_shard_set(path)
    allowed = SHARD_KWARGS if shards else MANIFEST_KWARGS
    unknown = sorted(set(kwargs) - set(allowed))
    if unknown:
        what = "a shard set" if shards else "a manifest"
        raise ConfigError(f"{path}: unknown dataset arguments {unknown}; {what} takes {list(allowed)}")
    if shards:
        from avloc.data.shards import ShardDataset

        return ShardDataset(path, image_cfg, audio_cfg, **kwargs)
    return ManifestDataset(path, image_cfg, audio_cfg, **kwargs)


def dataset_from_spec(
    spec: str,
    raw: str | Path | None = None,
    image_cfg: ImageConfig | None = None,
    audio_cfg: AudioFrontendConfig | None = None,
    **kwargs: Any,
) -> Dataset:
    """Resolve a ``--data`` spec: ``manifest:PATH``, a ``.jsonl`` path (a shard set's manifest too),
    ``shards:DIR`` (``avloc data extract --format shards``), or ``NAME[:VARIANT[:SPLIT]]``.

    ``digitscenes:single:test`` generates that DigitScenes variant and split
    deterministically from the raw sources in ``raw``.
    """
    if spec.startswith("shards:"):
        return _manifest(spec.removeprefix("shards:"), image_cfg, audio_cfg, kwargs, shards=True)
    if spec.startswith("manifest:"):
        return _manifest(spec.removeprefix("manifest:"), image_cfg, audio_cfg, kwargs)
    if spec.endswith(".jsonl") and ":" not in spec.split("/")[-1]:
        return _manifest(spec, image_cfg, audio_cfg, kwargs)
    name, _, rest = spec.partition(":")
    factory_kwargs: dict[str, Any] = dict(kwargs)
    parts = rest.split(":") if rest else []
    if len(parts) > 2:
        raise DataError(f"data spec {spec!r} must look like NAME[:VARIANT[:SPLIT]] or manifest:PATH")
    if parts:
        factory_kwargs["variant"] = parts[0]
    if len(parts) > 1:
        factory_kwargs["split"] = parts[1]
    if raw is None:
        raise DataError(f"data spec {spec!r} generates data from raw sources: pass --raw DIR (or set AVLOC_DATA)")
    return DATASETS.create(name, raw=raw, image_cfg=image_cfg, audio_cfg=audio_cfg, **factory_kwargs)  # type: ignore[no-any-return]


# ---------------------------------------------------------------------------------------------
# stable image keys (the training engine's frozen-feature cache)


def dataset_image_keys(dataset: Dataset) -> list[Any] | None:
    """A stable image key per sample index, or ``None`` when the dataset has none.

    ``dataset.feature_cache_keys()`` when defined, ``dataset.scene_index(i)``
    (DigitScenes; in pool mode N images are reused), the keys of the wrapped set
    for a :class:`torch.utils.data.Subset` / :class:`KeyedSubset`, or the entry
    ``id`` of a manifest made of still images.
    """
    from torch.utils.data import Subset

    if isinstance(dataset, KeyedSubset | Subset):
        inner = dataset_image_keys(dataset.dataset)
        return None if inner is None else [inner[i] for i in dataset.indices]
    fn = getattr(dataset, "feature_cache_keys", None)
    if callable(fn):
        keys = fn()
        return None if keys is None else list(keys)
    scene = getattr(dataset, "scene_index", None)
    if callable(scene):  # DigitScenes: draw i shows scene scene_index(i)
        return [scene(i) for i in range(len(dataset))]  # type: ignore[arg-type]
    if isinstance(dataset, ManifestDataset) and all("image" in e for e in dataset.entries):
        return [e["id"] for e in dataset.entries]
    return None


class KeyedSubset(Dataset):
    """``dataset[indices[i]]``, optionally with some fields replaced per item (``replace[i]``), keeping the
    wrapped set's image keys (:func:`dataset_image_keys`), so the feature cache still applies."""

    def __init__(self, dataset: Dataset, indices: Sequence[int], replace: Sequence[dict[str, Any]] | None = None) -> None:
        if replace is not None and len(replace) != len(indices):
            raise DataError(f"KeyedSubset: {len(replace)} replacements for {len(indices)} indices")
        self.dataset, self.indices, self.replace = dataset, list(indices), replace

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int) -> dict[str, Any]:
        s = dict(self.dataset[self.indices[i]])
        if self.replace is not None:
            s.update(self.replace[i])
        return s
