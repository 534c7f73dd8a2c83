"""Extended Flickr / VGG-SS with non-audible frames (SLAVC, Mo & Morgado, NeurIPS 2022, Sec. 4).

Non-audible pairs take their audio from another clip. Scores are normalised
with fixed bounds ``[-1/tau, 1/tau]`` (tau = 0.03); the confidence of a
prediction is the float32 mean of its top 25% normalised scores
(``np.sort(s.flatten())[-n//4:].mean()``, SLAVC test.py 184).

Two AP / F1 rules:

* :func:`slavc_ap_f1` — SLAVC ``utils.EvaluatorFull`` (utils.py 125-168,
  217-219), what its numbers are: at a confidence threshold t, an audible
  frame (``bb > 0``) with confidence >= t is a true positive when its cIoU
  >= 0.5 and a false positive otherwise (confident but mislocalised); an
  audible frame below t is a false negative; a non-audible frame above t is a
  false positive. precision = TP / (TP + FP) (1 when nothing is predicted),
  recall = TP / (TP + FN) (1 when 0/0). AP: thresholds = every
  ``max(1, N // 200)``-th sorted confidence, descending, the largest
  excluded; precision made monotone (max over the later thresholds);
  ``sum_i P_i (R_{i+1} - R_i)`` (no segment from recall 0). max-F1: over the
  thresholds ``sorted(conf)[::max(1, N // 10)]``.
* :func:`extended_ap` — every distinct confidence a threshold, positives =
  the audible frames (a mislocalised frame is a false positive *and* leaves a
  positive unfound), ``sum P * dR`` from recall 0; max-F1 over every
  threshold. avloc's earlier rule, kept as the ``*-allthr`` protocols.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

import numpy as np

from avloc.errors import DataError
from avloc.metrics.base import Accumulator
from avloc.metrics.localization import SuccessOp, passes


def top_fraction_confidence(maps: np.ndarray, fraction: float) -> np.ndarray:
    """Mean of the top ``ceil(n * fraction)`` values of each map -> ``(B,)`` float32.

    SLAVC's ``np.sort(s.flatten())[-n//4:].mean()``: the same values in the same
    (ascending) order, summed by NumPy's float32 pairwise sum along the row, so
    the float32 result is the same bit for bit (tested).
    """
    flat = maps.reshape(len(maps), -1)
    n = flat.shape[1]
    k = min(n, max(1, int(np.ceil(n * fraction))))
    top = np.sort(np.partition(flat, n - k, axis=1)[:, n - k :], axis=1)
    return np.ascontiguousarray(top).mean(1)  # type: ignore[no-any-return]


def _pr_at(conf: np.ndarray, correct: np.ndarray, visible: np.ndarray, thr: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """SLAVC ``calc_precision_recall`` at each threshold of ``thr`` (confidence >= t is a prediction)."""
    c_all = np.sort(conf)
    c_tp = np.sort(conf[correct])
    c_vis = np.sort(conf[visible])
    n_pred = len(c_all) - np.searchsorted(c_all, thr, side="left")
    tp = len(c_tp) - np.searchsorted(c_tp, thr, side="left")
    fn = np.searchsorted(c_vis, thr, side="left")
    fp = n_pred - tp
    with np.errstate(invalid="ignore", divide="ignore"):
        precision = np.where(tp + fp == 0, 1.0, tp / np.maximum(tp + fp, 1))
        recall = np.where(tp + fn == 0, 1.0, tp / np.maximum(tp + fn, 1))
    return precision.astype(np.float64), recall.astype(np.float64)


def slavc_ap_f1(
    confidence: np.ndarray,
    scores: np.ndarray,
    visible: np.ndarray,
    success_threshold: float = 0.5,
    op: SuccessOp = ">=",
) -> dict[str, float]:
    """AP and max-F1 as SLAVC's ``EvaluatorFull.calc_ap`` / ``finalize_stats`` compute them (module docstring)."""
    visible = np.asarray(visible, dtype=bool)
    n = len(visible)
    if n == 0:
        raise DataError("no samples were evaluated")
    if not visible.any():
        raise DataError("the extended protocol needs audible frames; every sample is marked non-audible")
    conf = np.asarray(confidence)
    correct = visible & passes(np.asarray(scores, dtype=np.float64), success_threshold, op)
    skip = max(1, n // 200)
    thr_ap = np.sort(conf)[:-1][::-skip]
    p, r = _pr_at(conf, correct, visible, thr_ap)
    if len(p) > 1:
        p_max = np.maximum.accumulate(p[::-1])[::-1]
        ap = float(sum((p_max[:-1] * np.diff(r)).tolist()))  # Python's left-to-right sum, as there
    else:
        ap = 0.0
    thr_f1 = np.sort(conf)[:: max(1, n // 10)]
    pf, rf = _pr_at(conf, correct, visible, thr_f1)
    with np.errstate(invalid="ignore", divide="ignore"):
        f1 = np.where(pf + rf > 0, 2 * rf * pf / (rf + pf), 0.0)
    p_all, _ = _pr_at(conf, correct, visible, np.array([-1000.0]))
    return {
        "ap": ap,
        "max_f1": float(f1.max()),
        "precision": float(p_all[0]),
        "n_audible": int(visible.sum()),
        "n_silent": int((~visible).sum()),
    }


def precision_recall(
    confidence: np.ndarray, correct: np.ndarray, n_positives: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Precision and recall at each distinct confidence threshold (descending) -> (thresholds, P, R)."""
    confidence = np.asarray(confidence, dtype=np.float64)
    correct = np.asarray(correct, dtype=bool)
    order = np.argsort(-confidence, kind="stable")
    conf = confidence[order]
    tp = np.cumsum(correct[order])
    n_pred = np.arange(1, len(conf) + 1)
    last = np.r_[conf[1:] != conf[:-1], True]  # last index of each tie group
    tp, n_pred, thr = tp[last], n_pred[last], conf[last]
    precision = tp / n_pred
    recall = tp / n_positives if n_positives > 0 else np.zeros_like(precision, dtype=np.float64)
    return thr, precision, recall


def extended_ap(
    confidence: np.ndarray,
    scores: np.ndarray,
    audible: np.ndarray,
    success_threshold: float = 0.5,
    op: SuccessOp = ">=",
) -> dict[str, float]:
    """AP and max-F1 of confident-and-correct predictions over audible and non-audible frames."""
    audible = np.asarray(audible, dtype=bool)
    if len(audible) == 0:
        raise DataError("no samples were evaluated")
    n_pos = int(audible.sum())
    if n_pos == 0:
        raise DataError("the extended protocol needs audible frames; every sample is marked non-audible")
    correct = audible & passes(np.asarray(scores, dtype=np.float64), success_threshold, op)
    _, p, r = precision_recall(confidence, correct, n_pos)
    ap = float(np.sum(p * np.diff(np.r_[0.0, r])))
    with np.errstate(invalid="ignore", divide="ignore"):
        f1 = np.where(p + r > 0, 2 * p * r / (p + r), 0.0)
    return {"ap": ap, "max_f1": float(f1.max()), "n_audible": n_pos, "n_silent": int((~audible).sum())}


class ExtendedAP(Accumulator):
    """Accumulates (confidence, cIoU, audible) per sample; ``compute`` = :func:`extended_ap`."""

    higher_is_better: ClassVar[Mapping[str, bool]] = {"ap": True, "max_f1": True}
    fields = ("id", "confidence", "score", "audible")

    def __init__(self, success_threshold: float = 0.5, op: SuccessOp = ">=", rule: str = "slavc") -> None:
        super().__init__()
        if rule not in ("slavc", "all"):
            raise ValueError(f"unknown AP rule {rule!r}; use 'slavc' or 'all'")
        self.success_threshold = success_threshold
        self.op: SuccessOp = op
        self.rule = rule

    def update(self, confidence: np.ndarray, scores: np.ndarray, audible: np.ndarray, ids: Sequence[str]) -> None:
        self._append(
            id=np.asarray([str(i) for i in ids], dtype=str),
            confidence=np.asarray(confidence, dtype=np.float64),  # float32 values, exactly
            score=np.asarray(scores, dtype=np.float64),
            audible=np.asarray(audible, dtype=bool),
        )

    def compute(self) -> dict[str, Any]:
        if self.rule == "slavc":
            return slavc_ap_f1(
                self.state("confidence"), self.state("score"), self.state("audible"), self.success_threshold, self.op
            )
        return extended_ap(
            self.state("confidence"), self.state("score"), self.state("audible"), self.success_threshold, self.op
        )
