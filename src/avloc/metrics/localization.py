"""Box-localisation scores: cIoU, success rate, AUC, adaptive cIoU, IIoU.

* cIoU (Senocak et al., CVPR 2018, Sec. 5; the LVS/EZ-VSL ``Evaluator.cal_CIOU``):
  ``sum(B * G) / (sum(G) + sum(B * [G == 0]))`` with B the binary prediction
  and G the (consensus) ground truth. With a binary G this is the IoU.
* success rate: fraction of samples with cIoU ``>=`` 0.5 (every published
  code, SSL-Alignment included); AUC: trapezoid area under success rate vs
  threshold at ``0.05 * i``, i = 0..20 (``sklearn.metrics.auc``), in [0, 1].
* adaptive cIoU (SSL-Alignment, Senocak et al., ICCV 2023, test.py 714-718):
  ``map > np.sort(flat)[n - K]``, K = number of non-zero ground-truth pixels
  (``n // 2`` when there are none); IIoU / IAUC (utils.py 80-138): per group
  of samples sharing an image, the minimum success, averaged over groups.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, ClassVar, Literal

import numpy as np

from avloc.errors import DataError
from avloc.metrics import ops
from avloc.metrics.base import Accumulator

SuccessOp = Literal[">=", ">"]


def ciou(pred: np.ndarray, gt: np.ndarray) -> np.ndarray:
    """Per-sample cIoU of binary predictions ``(B, H, W)`` against ground truth ``(B, H, W)`` -> ``(B,)`` float64.

    0/0 (empty prediction and empty ground truth) gives NaN, as the public code does.
    """
    if pred.shape != gt.shape:
        raise ValueError(f"prediction {pred.shape} and ground truth {gt.shape} differ in shape")
    b = pred.astype(np.float64, copy=False).reshape(len(pred), -1)
    g = gt.astype(np.float64, copy=False).reshape(len(gt), -1)
    inter = (b * g).sum(1)
    denom = g.sum(1) + (b * (g == 0)).sum(1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return inter / denom


def ciou_from_counts(pred: np.ndarray, counts: np.ndarray, divisor: float | None = None) -> np.ndarray:
    """:func:`ciou` with the ground truth given as per-pixel box counts (fast, same result).

    The ground truth is ``counts > 0`` (union, ``divisor=None``) or
    ``min(counts / divisor, 1)`` (consensus). Sums are taken per distinct
    ground-truth value with integer pixel counts; for divisor 2 every partial
    sum is a multiple of 0.5, so the float64 result equals the public
    per-pixel ``np.sum`` exactly.
    """
    if pred.shape != counts.shape:
        raise ValueError(f"prediction {pred.shape} and ground truth {counts.shape} differ in shape")
    b = len(pred)
    p = pred.reshape(b, -1).astype(bool, copy=False)
    c = counts.reshape(b, -1)
    covered = c > 0
    p_in = ops.count_true(p & covered)
    outside = ops.count_true(p) - p_in  # integer counts: |B * [G == 0]| = |B| - |B * [G > 0]|
    if divisor is None:
        inter = p_in.astype(np.float64)
        gsum = ops.count_true(covered).astype(np.float64)
    else:
        inter = np.zeros(b)
        gsum = np.zeros(b)
        full = c >= divisor  # value 1 (clipped)
        inter += ops.count_true(p & full)
        gsum += ops.count_true(full)
        for k in range(1, int(np.ceil(divisor))):
            if k >= divisor:
                break
            level = c == k
            v = k / divisor
            inter += v * ops.count_true(p & level)
            gsum += v * ops.count_true(level)
    with np.errstate(invalid="ignore", divide="ignore"):
        return inter / (gsum + outside)


def passes(scores: np.ndarray, threshold: float, op: SuccessOp) -> np.ndarray:
    """``scores >= threshold`` or ``scores > threshold`` (NaN never passes)."""
    if op == ">=":
        return scores >= threshold
    if op == ">":
        return scores > threshold
    raise ValueError(f"unknown success comparison {op!r}; use '>=' or '>'")


def auc_thresholds(steps: int) -> list[float]:
    """``[step * i for i in range(steps)]`` with step = 1 / (steps - 1): 0, 0.05, ..., 1.0 for 21."""
    if steps < 2:
        raise ValueError(f"AUC needs at least 2 thresholds, got {steps}")
    step = 1.0 / (steps - 1)
    return [step * i for i in range(steps)]


def trapezoid(y: Sequence[float] | np.ndarray, x: Sequence[float] | np.ndarray) -> float:
    """Trapezoid rule, as ``sklearn.metrics.auc`` computes it."""
    return float(np.trapezoid(np.asarray(y), np.asarray(x)))


def success_summary(
    scores: np.ndarray, success_threshold: float = 0.5, op: SuccessOp = ">=", auc_steps: int = 21
) -> dict[str, Any]:
    """Success rate, AUC, mean score and the success-vs-threshold curve of per-sample scores.

    ``mean_ciou`` is ``np.mean`` of every score, as the public codes print it
    (NaN when a score is undefined, i.e. 0/0); ``mean_ciou_defined`` averages
    the defined ones and ``n_undefined`` counts the others. An undefined score
    never passes a threshold (``nan >= t`` is False), as in the public codes.
    """
    scores = np.asarray(scores, dtype=np.float64)
    n = len(scores)
    if n == 0:
        raise DataError("no samples were evaluated")
    thresholds = auc_thresholds(auc_steps)
    curve = [float(np.sum(passes(scores, t, op)) / n) for t in thresholds]
    finite = np.isfinite(scores)
    return {
        "success": float(np.mean(passes(scores, success_threshold, op))),
        "auc": trapezoid(curve, thresholds),
        "mean_ciou": float(np.mean(scores)),
        "mean_ciou_defined": float(np.mean(scores[finite])) if finite.any() else float("nan"),
        "n": n,
        "n_undefined": int((~finite).sum()),
        "curve": {"thresholds": thresholds, "success": curve},
    }


def iiou(scores: np.ndarray, image_ids: np.ndarray, success_threshold: float = 0.5, op: SuccessOp = ">=") -> float:
    """IIoU: per image (shared by several audios), the minimum success; mean over images.

    As SSL-Alignment's ``finalize_cIoU`` (utils.py 124-138): a group holding an
    undefined (NaN) score has NaN as its minimum, and the mean is then NaN.
    """
    s = np.asarray(scores, dtype=np.float64)
    hits = np.where(np.isnan(s), np.nan, passes(s, success_threshold, op).astype(np.float64))
    _, inv = np.unique(np.asarray(image_ids), return_inverse=True)
    per_image = np.ones(inv.max() + 1 if len(inv) else 0, dtype=np.float64)
    with np.errstate(invalid="ignore"):
        np.minimum.at(per_image, inv.reshape(-1), hits)  # np.minimum propagates NaN, like np.min
    return float(per_image.mean()) if len(per_image) else float("nan")


def iauc(scores: np.ndarray, image_ids: np.ndarray, op: SuccessOp = ">=", auc_steps: int = 21) -> float:
    """Area under IIoU vs threshold at ``0.05 * i`` (SSL-Alignment ``finalize_IAUC``, utils.py 80-93)."""
    thresholds = auc_thresholds(auc_steps)
    return trapezoid([iiou(scores, image_ids, t, op) for t in thresholds], thresholds)


def name_prefix_group(name: str) -> str:
    """SSL-Alignment's IIoU key (test.py 743): the file name without ``.jpg`` and without its last ``_`` field.

    A name without ``_`` gives ``''`` (all such samples share one group, as there: e.g. Flickr ids).
    """
    return "_".join(name.split("/")[-1].replace(".jpg", "").split("_")[:-1])


def vggss_name(file: str) -> str:
    """SSL-Alignment's VGG-SS sample name (datasets.py ``vgg_filename``): ``{id11}_{start ms}_{end ms}``.

    ``file`` is a VGG-SS ``file`` (``{11-char YouTube id}_{start s, 6 digits}``); anything else is returned as is.
    """
    tail = file[12:]
    if len(file) > 12 and file[11] == "_" and tail.isdigit():
        start = int(tail)
        return f"{file[:11]}_{start * 1000}_{(start + 10) * 1000}"
    return file


def adaptive_ciou(maps: np.ndarray, gt: np.ndarray) -> np.ndarray:
    """SSL-Alignment's adaptive cIoU (test.py 714-718): ``map > sort(flat)[n - K]``, K = non-zero GT pixels.

    K = n // 2 when the ground truth is empty; without ties K - 1 pixels are kept.
    """
    return ciou(ops.binarize_adaptive(maps, (gt.reshape(len(gt), -1) != 0).sum(1), strict=True), gt)


#: directions of the success-rate scores (``success_summary`` and IIoU)
SUCCESS_DIRECTIONS: dict[str, bool] = {"success": True, "auc": True, "mean_ciou": True, "mean_ciou_defined": True, "mean_iou": True, "iiou": True, "iauc": True}


class CIoU(Accumulator):
    """Accumulates per-sample localisation scores; ``compute`` = :func:`success_summary` (+ IIoU).

    ``update(scores, ids, image_ids=None)`` takes precomputed per-sample scores
    (cIoU, IoU, class-aware cIoU); use :func:`ciou` to get them from maps.
    """

    higher_is_better: ClassVar[Mapping[str, bool]] = SUCCESS_DIRECTIONS
    fields = ("id", "image_id", "score", "kept")

    def __init__(
        self, success_threshold: float = 0.5, op: SuccessOp = ">=", auc_steps: int = 21, with_iiou: bool = False
    ) -> None:
        super().__init__()
        self.success_threshold = success_threshold
        self.op: SuccessOp = op
        self.auc_steps = auc_steps
        self.with_iiou = with_iiou

    def update(
        self,
        scores: np.ndarray,
        ids: Sequence[str],
        image_ids: Sequence[str] | None = None,
        kept: np.ndarray | None = None,
    ) -> None:
        """``kept=False`` marks samples the protocol skips (e.g. frames without boxes): counted in ``n_skipped``."""
        scores = np.asarray(scores, dtype=np.float64)
        ids_arr = np.asarray([str(i) for i in ids], dtype=str)
        img = ids_arr if image_ids is None else np.asarray([str(i) for i in image_ids], dtype=str)
        keep = np.ones(len(ids_arr), dtype=bool) if kept is None else np.asarray(kept, dtype=bool)
        if not (len(scores) == len(ids_arr) == len(img) == len(keep)):
            raise ValueError(f"{len(scores)} scores for {len(ids_arr)} ids")
        self._append(id=ids_arr, image_id=img, score=scores, kept=keep)

    def compute(self) -> dict[str, Any]:
        kept = self.state("kept").astype(bool)
        if len(kept) and not kept.any():
            raise DataError(f"no sample qualified for scoring ({len(kept)} skipped)")
        scores = self.state("score")[kept]
        out = success_summary(scores, self.success_threshold, self.op, self.auc_steps)
        if (~kept).any():
            out["n_skipped"] = int((~kept).sum())
        if self.with_iiou:
            groups = self.state("image_id")[kept]
            out["iiou"] = iiou(scores, groups, self.success_threshold, self.op)
            out["iauc"] = iauc(scores, groups, self.op, self.auc_steps)
            out["n_images"] = len(np.unique(groups))
        return out


class ThresholdSweep(Accumulator):
    """Scores at several absolute binarisation thresholds; reports the best (ACL-SSL's test-set tuning).

    ``update(scores (B, T), ids)``; ``compute`` gives the summary at the
    threshold with the highest success rate, plus the whole sweep.
    """

    higher_is_better: ClassVar[Mapping[str, bool]] = SUCCESS_DIRECTIONS
    fields = ("id", "score")

    def __init__(
        self, thresholds: Sequence[float], success_threshold: float = 0.5, op: SuccessOp = ">=", auc_steps: int = 21
    ) -> None:
        super().__init__()
        if not thresholds:
            raise ValueError("a threshold sweep needs at least one threshold")
        self.thresholds = [float(t) for t in thresholds]
        self.success_threshold = success_threshold
        self.op: SuccessOp = op
        self.auc_steps = auc_steps

    def update(self, scores: np.ndarray, ids: Sequence[str]) -> None:
        scores = np.asarray(scores, dtype=np.float64).reshape(len(ids), len(self.thresholds))
        self._append(id=np.asarray([str(i) for i in ids], dtype=str), score=scores)

    def compute(self) -> dict[str, Any]:
        scores = self.state("score").reshape(-1, len(self.thresholds))
        per = [
            success_summary(scores[:, j], self.success_threshold, self.op, self.auc_steps)
            for j in range(scores.shape[1])
        ]
        best = int(np.argmax([p["success"] for p in per]))  # first best on ties
        out = dict(per[best])
        out["best_threshold"] = self.thresholds[best]
        out["sweep"] = {
            "thresholds": self.thresholds,
            "success": [p["success"] for p in per],
            "auc": [p["auc"] for p in per],
        }
        out["tuned_on_test"] = True
        return out
