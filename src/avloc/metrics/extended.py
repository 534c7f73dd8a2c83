"""Extended Flickr / VGG-SS with non-audible frames (SLAVC, Mo & Morgado, NeurIPS 2022, Sec. 4).

Non-audible pairs take their audio from another clip. Scores are normalised
with fixed bounds ``[-1/tau, 1/tau]`` (tau = 0.03); the confidence of a
prediction is the mean of its top 25% normalised scores. Ranking all pairs by
confidence, a prediction is a true positive when the frame is audible and its
cIoU passes 0.5; every other prediction (a non-audible frame, or a wrong
localisation) is a false positive; the number of positives is the number of
audible frames. AP = sum over distinct confidence thresholds of
``precision * (recall - previous recall)``; max-F1 = max over thresholds of
``2PR / (P + R)``. Ties in confidence are one threshold, so the result does
not depend on sample order.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from avloc.errors import DataError
from avloc.metrics.base import Accumulator
from avloc.metrics.localization import SuccessOp, passes


def top_fraction_confidence(maps: np.ndarray, fraction: float) -> np.ndarray:
    """Mean of the top ``fraction`` of each map's values -> ``(B,)`` (at least one value)."""
    flat = maps.reshape(len(maps), -1)
    n = flat.shape[1]
    k = max(1, int(n * fraction))
    top = np.partition(flat, n - k, axis=1)[:, n - k :]
    return top.astype(np.float64).mean(1)


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

    fields = ("id", "confidence", "score", "audible")

    def __init__(self, success_threshold: float = 0.5, op: SuccessOp = ">=") -> None:
        super().__init__()
        self.success_threshold = success_threshold
        self.op: SuccessOp = op

    def update(self, confidence: np.ndarray, scores: np.ndarray, audible: np.ndarray, ids: Sequence[str]) -> None:
        self._append(
            id=np.asarray([str(i) for i in ids], dtype=str),
            confidence=np.asarray(confidence, dtype=np.float64),
            score=np.asarray(scores, dtype=np.float64),
            audible=np.asarray(audible, dtype=bool),
        )

    def compute(self) -> dict[str, Any]:
        return extended_ap(
            self.state("confidence"), self.state("score"), self.state("audible"), self.success_threshold, self.op
        )
