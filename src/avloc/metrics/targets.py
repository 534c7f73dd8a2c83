"""Ground-truth records consumed by the protocols.

A :class:`Target` holds what a dataset sample (or a parsed annotation file)
says about one clip, with boxes normalised to [0, 1] in the model-input frame
(``x1, y1, x2, y2``). :func:`to_target` accepts a sample dict (torch tensors,
NumPy arrays or lists — no torch import needed) and :func:`targets_from_batch`
splits a collated batch.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from avloc.errors import DataError


def _numpy(x: Any) -> np.ndarray:
    if hasattr(x, "detach"):  # torch tensor, without importing torch
        x = x.detach().cpu().numpy()
    return np.asarray(x)


def _boxes(x: Any, where: str) -> np.ndarray:
    if x is None:
        return np.zeros((0, 4), dtype=np.float64)
    a = _numpy(x).astype(np.float64)
    if a.size == 0:
        return np.zeros((0, 4), dtype=np.float64)
    if a.ndim != 2 or a.shape[1] != 4:
        raise DataError(f"{where}: boxes must be (K, 4) [x1, y1, x2, y2], got shape {a.shape}")
    return a


@dataclass(frozen=True)
class Tile:
    """One tile of a constructed frame (a mosaic, two speakers side by side): its normalised rectangle in the
    frame, whether its sound is in the soundtrack, the boxes of its sounding objects (normalised to the whole
    frame; only for sounding tiles) and the AudioSet labels of its sound (class-aware scoring)."""

    rect: tuple[float, float, float, float]
    sounding: bool
    boxes: tuple[tuple[float, float, float, float], ...] = ()
    labels: tuple[str, ...] = ()


@dataclass
class Target:
    """Ground truth of one sample (boxes normalised to [0, 1] in the model-input frame)."""

    id: str
    boxes: np.ndarray = field(default_factory=lambda: np.zeros((0, 4)))
    box_annotator: np.ndarray | None = None
    box_wh: np.ndarray | None = None  # (K, 2) normalised w, h when the source gave [x, y, w, h] (DSOL, Qian)
    box_labels: np.ndarray | None = None
    labels: list[int] = field(default_factory=list)
    silent_labels: list[int] | None = None
    silent_boxes: np.ndarray = field(default_factory=lambda: np.zeros((0, 4)))
    onscreen: bool | None = None
    audible: bool = True
    out_of_view: bool = False
    image_id: str = ""
    #: False: the frame is not scored for localisation (real-footage annotations: source ambiguous or unclear)
    scored: bool = True
    #: constructed frames (avloc.data.constructions): the tiles, and the index of the tile whose face speaks
    tiles: tuple[Tile, ...] = ()
    speaker_tile: int | None = None

    def __post_init__(self) -> None:
        if not self.image_id:
            self.image_id = self.id

    def sounding_classes(self) -> list[int]:
        """Sounding classes: ``labels``, else the distinct ``box_labels``."""
        if self.labels:
            return sorted({int(c) for c in self.labels})
        if self.box_labels is not None:
            return sorted({int(c) for c in self.box_labels})
        return []


def _opt_int_array(x: Any, n: int, key: str, where: str) -> np.ndarray | None:
    if x is None:
        return None
    a = _numpy(x).astype(np.int64).reshape(-1)
    if len(a) != n:
        raise DataError(f"{where}: {key} has {len(a)} entries for {n} boxes")
    return a


def _opt_wh(x: Any, n: int, where: str) -> np.ndarray | None:
    if x is None:
        return None
    a = _numpy(x).astype(np.float64).reshape(-1, 2) if _numpy(x).size else np.zeros((0, 2))
    if len(a) != n:
        raise DataError(f"{where}: box_wh has {len(a)} entries for {n} boxes")
    return a


def _as_bool(x: Any, default: bool | None) -> bool | None:
    if x is None:
        return default
    return bool(_numpy(x).reshape(-1)[0]) if not isinstance(x, bool) else x


def to_target(sample: Mapping[str, Any] | Target) -> Target:
    """A :class:`Target` from a sample dict (keys as in the dataset sample schema)."""
    if isinstance(sample, Target):
        return sample
    if "id" not in sample:
        raise DataError(f"sample lacks an 'id' (keys: {sorted(sample)})")
    sid = str(sample["id"])
    boxes = _boxes(sample.get("boxes"), sid)
    labels = sample.get("labels")
    silent_labels = sample.get("silent_labels")
    return Target(
        id=sid,
        boxes=boxes,
        box_annotator=_opt_int_array(sample.get("box_annotator"), len(boxes), "box_annotator", sid),
        box_wh=_opt_wh(sample.get("box_wh"), len(boxes), sid),
        box_labels=_opt_int_array(sample.get("box_labels"), len(boxes), "box_labels", sid),
        labels=[int(c) for c in _numpy(labels).reshape(-1)] if labels is not None else [],
        silent_labels=[int(c) for c in _numpy(silent_labels).reshape(-1)] if silent_labels is not None else None,
        silent_boxes=_boxes(sample.get("silent_boxes"), sid),
        onscreen=_as_bool(sample.get("onscreen"), None),
        audible=bool(_as_bool(sample.get("audible"), True)),
        out_of_view=bool(_as_bool(sample.get("out_of_view"), False)),
        image_id=str(sample.get("image_id") or sid),
        scored=bool(_as_bool(sample.get("scored"), True)),
    )


def targets_from_batch(batch: Mapping[str, Any] | Sequence[Mapping[str, Any] | Target]) -> list[Target]:
    """Split a collated batch (dict of stacked tensors / lists) or a list of samples into targets."""
    if not isinstance(batch, Mapping):
        return [to_target(s) for s in batch]
    if "id" not in batch:
        raise DataError(f"batch lacks 'id' (keys: {sorted(batch)})")
    ids = list(batch["id"])
    keys = [k for k in batch if k not in ("image", "audio")]
    return [to_target({k: batch[k][i] for k in keys}) for i in range(len(ids))]
