"""Real-footage evaluation (``realclips`` protocol): localisation and on/off-screen on hand-annotated frames.

Per annotated frame (boxes of the visible sounding objects, normalised to the full frame, and an on/off-screen
label) the one map is scored three ways, all on the 224 x 224 grid of the VGG-SS protocol (LVS, Chen et al.
CVPR 2021, ``test.py``: cv2 resize, LVS min-max normalisation, union of boxes):

* **median**: prediction = map > its median (LVS binarisation); success = cIoU >= 0.5, and the mean cIoU;
* **adaptive**: prediction = the top-K pixels, K = ground-truth area (Senocak et al. ICCV 2023's adaptive
  cIoU); success = cIoU >= 0.5, and the mean;
* **pointing**: the map's arg-max lies in a box (Zhang et al., IJCV 2018 "pointing game").

Only frames marked ``scored`` count for localisation. The on/off-screen decision is scored by
:func:`onscreen_summary` (balanced accuracy, both recalls and calibration error) from the predicted
probabilities that :func:`avloc.engine.evaluate.evaluate_predictions` takes next to the maps.

What a user reads in the per-frame record (:class:`FramePrediction`, normalised to the full frame) is scored by
:func:`frame_scores`:

* **boxes** (scored frames, :func:`box_matches`): top box IoU >= 0.5 with a ground-truth box; any box IoU >= 0.5;
  box precision = predicted boxes matched one-to-one (greedy, best box first, each to the unmatched ground-truth
  box of highest IoU >= 0.5) / predicted boxes;
* **tiles** (constructed frames, :mod:`avloc.data.constructions`): tile pointing = the record's peak lies in a
  sounding tile (a tile of its own clip: the side that sounds, not the object);
* **speaker** (frames with a ``speaker_tile``): accuracy = the centre of the record's speaker head box lies in the
  speaking tile (no speaker chosen = wrong); coverage = a speaker was chosen;
* **class-aware cIoU** (frames where two or more tiles sound; Qian et al., ECCV 2020, Eq. 9): for each sounding
  tile, the map of the heard class matched to it (:func:`match_sources`) against that tile's boxes, adaptive
  cIoU as above; the frame's score is the mean over its sounding tiles. A method that gives no per-source
  maps is scored with its one map for every tile (class-agnostic); ``classaware_coverage`` says how many
  tiles had a map of their own.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

from avloc.errors import DataError
from avloc.metrics import ops
from avloc.metrics.base import Accumulator
from avloc.metrics.targets import Target, Tile

if TYPE_CHECKING:
    from avloc.metrics.protocols import Protocol

SUCCESS_CIOU = 0.5
#: a predicted box matches a ground-truth box at IoU >= 0.5 (PASCAL VOC, Everingham et al., IJCV 2010, Sec. 4.4)
BOX_IOU = 0.5
#: a point lies in a tile when x1 <= x < x2 and y1 <= y < y2 (adjacent tiles share no point)
TILE_EDGES: ops.BoxEdges = "half-open"


@dataclass(frozen=True)
class FramePrediction:
    """What the record of one analysed frame says (:class:`avloc.formats.localize.FrameRecord`), normalised to
    the full frame ([0, 1], x right, y down): the map's peak, the boxes (best first), the chosen speaker's head
    box, the heard sources (label, score) and, for methods that ground heard sources, each one's own map
    (``None``: the method gives no per-source maps)."""

    peak: tuple[float, float]
    boxes: np.ndarray = field(default_factory=lambda: np.zeros((0, 4)))  # (K, 4)
    speaker: tuple[float, float, float, float] | None = None
    sources: tuple[tuple[str, float], ...] = ()
    source_maps: Mapping[str, np.ndarray] | None = None  # label -> (h, w) map


# --------------------------------------------------------------------------- boxes
def box_matches(pred: np.ndarray, gt: np.ndarray, threshold: float = BOX_IOU) -> tuple[bool, bool, int]:
    """(top box hits, any box hits, predicted boxes matched one-to-one) of predicted ``(K, 4)`` boxes (best
    first) against ground-truth ``(M, 4)`` boxes: a hit is IoU >= ``threshold`` with some ground-truth box; the
    one-to-one matching is greedy in prediction order, each box taking the unmatched ground-truth box of
    highest IoU (>= ``threshold``)."""
    pred, gt = np.asarray(pred, np.float64).reshape(-1, 4), np.asarray(gt, np.float64).reshape(-1, 4)
    iou = np.array([[ops.box_iou(p, g) for g in gt] for p in pred]).reshape(len(pred), len(gt))  # (K, M)
    hit = np.asarray((iou >= threshold).any(1) if len(gt) else np.zeros(len(pred), bool))  # (K,)
    free = np.ones(len(gt), bool)
    matched = 0
    for k in range(len(pred)):
        cand = np.where(free & (iou[k] >= threshold))[0]
        if len(cand):
            free[cand[np.argmax(iou[k, cand])]] = False
            matched += 1
    return bool(len(pred) and hit[0]), bool(hit.any()), matched


def box_summary(top: np.ndarray, any_hit: np.ndarray, n_pred: np.ndarray, n_matched: np.ndarray) -> dict[str, Any]:
    """Top / any box hit rates over frames and box precision over all predicted boxes (NaN when none)."""
    if len(top) == 0:
        raise DataError("box metrics of no frames")
    total = int(np.sum(n_pred))
    return {
        "top_box_iou50": float(np.mean(top)), "any_box_iou50": float(np.mean(any_hit)),
        "box_precision": float(np.sum(n_matched) / total) if total else float("nan"), "n_pred_boxes": total,
    }


class BoxMetrics(Accumulator):
    """Per scored frame: top / any box hit, predicted and matched box counts; ``compute`` = :func:`box_summary`."""

    higher_is_better: ClassVar[Mapping[str, bool]] = {"top_box_iou50": True, "any_box_iou50": True, "box_precision": True}
    fields = ("id", "top", "any", "n_pred", "n_matched")

    def update(self, ids: Sequence[str], preds: Sequence[np.ndarray], gts: Sequence[np.ndarray]) -> None:
        rows = [box_matches(p, g) for p, g in zip(preds, gts, strict=True)]
        self._append(id=np.asarray([str(i) for i in ids], dtype=str), top=np.array([r[0] for r in rows], bool),
                     any=np.array([r[1] for r in rows], bool),
                     n_pred=np.array([len(np.reshape(p, (-1, 4))) for p in preds], np.int64),
                     n_matched=np.array([r[2] for r in rows], np.int64))

    def compute(self) -> dict[str, Any]:
        return box_summary(self.state("top"), self.state("any"), self.state("n_pred"), self.state("n_matched"))


# --------------------------------------------------------------------------- tiles and speakers
def in_tile(point: Sequence[float], tile: Tile) -> bool:
    return ops.in_boxes(point, [tile.rect], TILE_EDGES)


def tile_pointing_hit(peak: Sequence[float], tiles: Sequence[Tile]) -> bool:
    """Whether the peak lies in a sounding tile."""
    return any(in_tile(peak, t) for t in tiles if t.sounding)


def speaker_hit(speaker: Sequence[float] | None, tiles: Sequence[Tile], speaker_tile: int) -> tuple[bool, bool]:
    """(a speaker was chosen, the centre of its head box lies in the speaking tile)."""
    if speaker is None:
        return False, False
    x1, y1, x2, y2 = speaker
    return True, in_tile(((x1 + x2) / 2, (y1 + y2) / 2), tiles[speaker_tile])


class TilePointing(Accumulator):
    """Per constructed frame with a sounding tile: the peak in a sounding tile; ``compute``: the hit rate."""

    higher_is_better: ClassVar[Mapping[str, bool]] = {"tile_pointing": True}
    fields = ("id", "hit")

    def update(self, ids: Sequence[str], hits: Sequence[bool]) -> None:
        self._append(id=np.asarray([str(i) for i in ids], dtype=str), hit=np.asarray(hits, bool))

    def compute(self) -> dict[str, Any]:
        hit = self.state("hit")
        if len(hit) == 0:
            raise DataError("tile pointing of no frames")
        return {"tile_pointing": float(np.mean(hit)), "n_tile_frames": len(hit)}


def speaker_summary(chosen: np.ndarray, hit: np.ndarray) -> dict[str, Any]:
    """Speaker accuracy (no speaker chosen counts as wrong) and coverage (a speaker was chosen)."""
    if len(hit) == 0:
        raise DataError("speaker accuracy of no frames")
    return {"speaker_accuracy": float(np.mean(hit)), "speaker_coverage": float(np.mean(chosen)),
            "n_speaker_frames": len(hit)}


class SpeakerMetrics(Accumulator):
    """Per frame with a speaking tile: speaker chosen, speaker in the speaking tile; ``compute`` =
    :func:`speaker_summary`."""

    higher_is_better: ClassVar[Mapping[str, bool]] = {"speaker_accuracy": True, "speaker_coverage": True}
    fields = ("id", "chosen", "hit")

    def update(self, ids: Sequence[str], chosen: Sequence[bool], hits: Sequence[bool]) -> None:
        self._append(id=np.asarray([str(i) for i in ids], dtype=str), chosen=np.asarray(chosen, bool),
                     hit=np.asarray(hits, bool))

    def compute(self) -> dict[str, Any]:
        return speaker_summary(self.state("chosen"), self.state("hit"))


# --------------------------------------------------------------------------- class-aware cIoU
def match_sources(tiles: Sequence[Tile], pred: FramePrediction) -> list[str | None]:
    """The heard label matched to each sounding tile (``None``: none), in tile order.

    A heard label matches a tile when it is one of the tile's AudioSet labels and of no other sounding tile's
    (exact string equality); of the matching heard sources that have a map of their own, the highest-scoring
    one is taken. Without per-source maps (``pred.source_maps is None``) every tile gets ``None``.
    """
    sounding = [t for t in tiles if t.sounding]
    out: list[str | None] = []
    for t in sounding:
        others = {lab for o in sounding if o is not t for lab in o.labels}
        cands = [(score, label) for label, score in pred.sources if label in t.labels and label not in others
                 and pred.source_maps is not None and label in pred.source_maps]
        out.append(max(cands)[1] if cands else None)
    return out


def adaptive_tile_ciou(maps: Sequence[np.ndarray], boxes: Sequence[np.ndarray], protocol: Protocol) -> np.ndarray:
    """Adaptive cIoU ``(P,)`` of raw 2-D maps (any sizes) against box sets, on the protocol's grid, resizing and
    normalisation: the map's top-K pixels, K = the boxes' pixels (Senocak et al., ICCV 2023)."""
    from avloc.metrics.localization import adaptive_ciou

    size = protocol.eval_size
    out = np.zeros(len(maps))
    by_shape: dict[tuple[int, ...], list[int]] = {}
    for i, m in enumerate(maps):
        by_shape.setdefault(np.shape(m), []).append(i)
    for idx in by_shape.values():
        m = ops.resize_maps(np.stack([np.asarray(maps[i], np.float32) for i in idx]), (size, size), protocol.resize)  # (P, S, S)
        m = ops.normalize_maps(m, protocol.normalize, protocol.norm_bounds)
        gt = ops.box_count_maps([np.asarray(boxes[i], np.float64).reshape(-1, 4) for i in idx], size,
                                negative=protocol.box_negative) > 0
        out[idx] = adaptive_ciou(m, gt)
    return out


def classaware_summary(ciou: np.ndarray, covered: np.ndarray) -> dict[str, Any]:
    """Mean class-aware cIoU, success (frame mean >= 0.5) and the fraction of tiles scored with their own map."""
    if len(ciou) == 0:
        raise DataError("class-aware cIoU of no frames")
    return {"classaware_ciou": float(np.mean(ciou)), "classaware_success": float(np.mean(ciou >= SUCCESS_CIOU)),
            "classaware_coverage": float(np.mean(covered)), "n_classaware_frames": len(ciou)}


class ClassAwareTiles(Accumulator):
    """Per frame with two or more sounding tiles: mean class-aware cIoU over them and the fraction scored with a
    map of their own; ``compute`` = :func:`classaware_summary`."""

    higher_is_better: ClassVar[Mapping[str, bool]] = {
        "classaware_ciou": True, "classaware_success": True, "classaware_coverage": True,
    }
    fields = ("id", "ciou", "covered")

    def update(self, ids: Sequence[str], ciou: Sequence[float], covered: Sequence[float]) -> None:
        self._append(id=np.asarray([str(i) for i in ids], dtype=str), ciou=np.asarray(ciou, np.float64),
                     covered=np.asarray(covered, np.float64))

    def compute(self) -> dict[str, Any]:
        return classaware_summary(self.state("ciou"), self.state("covered"))


def classaware_rows(
    targets: Sequence[Target], frames: Mapping[str, FramePrediction], maps: Mapping[str, np.ndarray], protocol: Protocol
) -> tuple[list[float], list[float]]:
    """Per target: the mean over its sounding tiles of the adaptive cIoU of the matched heard class's map
    (methods without per-source maps: the one map; a tile without a matched map: 0) and the covered fraction."""
    pair_maps: list[np.ndarray] = []
    pair_boxes: list[np.ndarray] = []
    pair_frame: list[int] = []
    covered: list[float] = []
    zero: list[tuple[int, int]] = []  # (frame, pair) of tiles whose class has no map: cIoU 0
    for i, t in enumerate(targets):
        pred = frames[t.id]
        labels = match_sources(t.tiles, pred)
        covered.append(float(np.mean([lab is not None for lab in labels])))
        for tile, lab in zip([x for x in t.tiles if x.sounding], labels, strict=True):
            if pred.source_maps is not None and lab is None:
                zero.append((i, len(pair_frame)))
            m = maps[t.id] if pred.source_maps is None or lab is None else pred.source_maps[lab]
            pair_maps.append(np.asarray(m, np.float32))
            pair_boxes.append(np.asarray(tile.boxes, np.float64).reshape(-1, 4))
            pair_frame.append(i)
    scores = adaptive_tile_ciou(pair_maps, pair_boxes, protocol)
    for _, k in zero:
        scores[k] = 0.0
    idx = np.asarray(pair_frame, np.int64)
    return [float(np.mean(scores[idx == i])) for i in range(len(targets))], covered


# --------------------------------------------------------------------------- everything a record says
def frame_scores(
    frames: Mapping[str, FramePrediction], targets: Sequence[Target], maps: Mapping[str, np.ndarray], protocol: Protocol
) -> dict[str, Any]:
    """Box, tile, speaker and class-aware scores (module doc) of the targets; a group without frames is left out.

    ``frames``: the record of every target id; ``maps``: the combined map of every id (the class-agnostic map of
    methods without per-source maps)."""
    lacking = [t.id for t in targets if t.id not in frames]
    if lacking:
        raise DataError(f"{len(lacking)} ids have no frame record, e.g. {lacking[:3]}")
    out: dict[str, Any] = {}
    scored = [t for t in targets if t.scored and len(t.boxes)]
    if scored:
        box = BoxMetrics()
        box.update([t.id for t in scored], [frames[t.id].boxes for t in scored], [t.boxes for t in scored])
        out.update(box.compute())
    tiled = [t for t in targets if t.scored and any(x.sounding for x in t.tiles)]
    if tiled:
        tp = TilePointing()
        tp.update([t.id for t in tiled], [tile_pointing_hit(frames[t.id].peak, t.tiles) for t in tiled])
        out.update(tp.compute())
    speaking = [t for t in targets if t.speaker_tile is not None]
    if speaking:
        rows = [speaker_hit(frames[t.id].speaker, t.tiles, t.speaker_tile) for t in speaking if t.speaker_tile is not None]
        sp = SpeakerMetrics()
        sp.update([t.id for t in speaking], [r[0] for r in rows], [r[1] for r in rows])
        out.update(sp.compute())
    multi = [t for t in targets if t.scored and sum(x.sounding for x in t.tiles) >= 2]
    if multi:
        ca = ClassAwareTiles()
        ca.update([t.id for t in multi], *classaware_rows(multi, frames, maps, protocol))
        out.update(ca.compute())
    return out


class RealWorldMetrics(Accumulator):
    """Per-frame median / adaptive cIoU and pointing hits of scored frames; ``compute`` = :func:`realworld_summary`."""

    higher_is_better: ClassVar[Mapping[str, bool]] = {
        "median_success": True, "median_ciou": True, "adaptive_success": True, "adaptive_ciou": True, "pointing": True,
        "onscreen_accuracy": True, "onscreen_balanced_accuracy": True, "onscreen_ece": False,
        "onscreen_recall": True, "offscreen_recall": True,
        **BoxMetrics.higher_is_better, **TilePointing.higher_is_better, **SpeakerMetrics.higher_is_better,
        **ClassAwareTiles.higher_is_better,
    }
    fields = ("id", "clip", "median", "adaptive", "pointing")

    def update(
        self, ids: Sequence[str], clips: Sequence[str], median: np.ndarray, adaptive: np.ndarray, pointing: np.ndarray
    ) -> None:
        self._append(
            id=np.asarray([str(i) for i in ids], dtype=str), clip=np.asarray([str(c) for c in clips], dtype=str),
            median=np.asarray(median, np.float64), adaptive=np.asarray(adaptive, np.float64),
            pointing=np.asarray(pointing, bool),
        )

    def compute(self) -> dict[str, Any]:
        return realworld_summary(self.state("clip"), self.state("median"), self.state("adaptive"), self.state("pointing"))


def realworld_summary(clips: np.ndarray, median: np.ndarray, adaptive: np.ndarray, pointing: np.ndarray) -> dict[str, Any]:
    """Overall and per-clip success / mean cIoU (median, adaptive) and pointing; NaN with ``n`` 0 when no frame is
    scored (a set with on/off-screen labels only, e.g. swapped audio)."""
    if len(median) == 0:
        keys = ("median_success", "median_ciou", "adaptive_success", "adaptive_ciou", "pointing")
        return {**dict.fromkeys(keys, float("nan")), "n": 0, "per_clip": {}}

    def block(sel: np.ndarray) -> dict[str, float]:
        return {
            "median_success": float(np.mean(median[sel] >= SUCCESS_CIOU)),
            "median_ciou": float(np.mean(median[sel])),
            "adaptive_success": float(np.mean(adaptive[sel] >= SUCCESS_CIOU)),
            "adaptive_ciou": float(np.mean(adaptive[sel])),
            "pointing": float(np.mean(pointing[sel])),
            "n": int(sel.sum()),
        }

    out: dict[str, Any] = block(np.ones(len(median), bool))
    out["per_clip"] = {str(c): block(clips == c) for c in sorted(set(clips.tolist()))}
    return out


def balanced_accuracy(pred: np.ndarray, y: np.ndarray) -> float:
    """Mean of the on-screen and off-screen recalls (a constant answer scores 0.5)."""
    pred, y = np.asarray(pred, bool), np.asarray(y, bool)
    if y.all() or not y.any():
        raise DataError("balanced accuracy needs both on-screen and off-screen labels")
    return float((np.mean(pred[y]) + np.mean(~pred[~y])) / 2)


def expected_calibration_error(p: np.ndarray, y: np.ndarray, bins: int = 10) -> float:
    """ECE (Naeini et al., AAAI 2015): ``sum_b |B_b| / N * |mean(y_b) - mean(p_b)|`` over equal-width bins."""
    p, y = np.asarray(p, np.float64), np.asarray(y, np.float64)
    if len(p) == 0:
        raise DataError("calibration error of no predictions")
    idx = np.minimum((p * bins).astype(int), bins - 1)
    return float(sum((idx == b).mean() * abs(y[idx == b].mean() - p[idx == b].mean()) for b in range(bins) if (idx == b).any()))


def onscreen_summary(p: np.ndarray, y: np.ndarray, threshold: float = 0.5) -> dict[str, Any]:
    """Balanced and plain accuracy of ``p >= threshold`` against labels ``y``, the on-screen recall (on-screen
    frames called on-screen), the off-screen recall (off-screen frames called off-screen) and the calibration
    error of ``p`` (balanced accuracy and a recall are NaN when their label does not occur)."""
    p, y = np.asarray(p, np.float64), np.asarray(y, bool)
    pred = p >= threshold
    return {
        "onscreen_balanced_accuracy": balanced_accuracy(pred, y) if y.any() and not y.all() else float("nan"),
        "onscreen_recall": float(np.mean(pred[y])) if y.any() else float("nan"),
        "offscreen_recall": float(np.mean(~pred[~y])) if (~y).any() else float("nan"),
        "onscreen_accuracy": float(np.mean(pred == y)),
        "onscreen_ece": expected_calibration_error(p, y),
        "n_onscreen_labels": len(y),
        "n_offscreen": int((~y).sum()),
    }


class OnscreenMetrics(Accumulator):
    """Per labelled frame: P(on-screen) and the label; ``compute`` = :func:`onscreen_summary`."""

    higher_is_better: ClassVar[Mapping[str, bool]] = {
        "onscreen_accuracy": True, "onscreen_balanced_accuracy": True, "onscreen_ece": False,
        "onscreen_recall": True, "offscreen_recall": True,
    }
    fields = ("id", "p", "y")

    def __init__(self, threshold: float = 0.5) -> None:
        super().__init__()
        self.threshold = threshold

    def update(self, ids: Sequence[str], p: Sequence[float], y: Sequence[bool]) -> None:
        self._append(id=np.asarray([str(i) for i in ids], dtype=str), p=np.asarray(p, np.float64), y=np.asarray(y, bool))

    def compute(self) -> dict[str, Any]:
        if len(self.state("p")) == 0:
            raise DataError("on-screen scores of no labelled frames")
        return onscreen_summary(self.state("p"), self.state("y"), self.threshold)
