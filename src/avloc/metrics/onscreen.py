"""On-screen / off-screen sound recognition accuracy (Xuan et al., proposal paper, Sec. 3.4 and Table 1).

* m_on: a pair is on-screen when its audio-visual distance in the common
  space is below ``m`` = the average of the median distance of positive
  (on-screen) pairs and the median distance of negative pairs. Unless ``m``
  is given (e.g. measured on training pairs), it is measured on the
  evaluated pairs themselves, which the result flags.
* d_on: on-screen when the maximum proposal similarity exceeds 0.2.
* the OR of both criteria (the paper's best).
* thresholded confidences: any method's ``onscreen(images, audio)`` confidence
  in [0, 1], on-screen when ``>= c_threshold`` (0.5).
Accuracy = fraction of pairs whose prediction matches the on-screen label.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

import numpy as np

from avloc.errors import DataError
from avloc.metrics.base import Accumulator


def median_distance_threshold(distances: np.ndarray, onscreen: np.ndarray) -> float:
    """``m_on`` = (median distance of on-screen pairs + median distance of off-screen pairs) / 2."""
    d = np.asarray(distances, dtype=np.float64)
    y = np.asarray(onscreen, dtype=bool)
    if not y.any() or y.all():
        raise DataError("m_on needs both on-screen and off-screen pairs to set its distance threshold")
    return float((np.median(d[y]) + np.median(d[~y])) / 2)


def onscreen_accuracy(
    onscreen: np.ndarray,
    distances: np.ndarray | None = None,
    similarities: np.ndarray | None = None,
    d_threshold: float = 0.2,
    m_threshold: float | None = None,
    confidences: np.ndarray | None = None,
    c_threshold: float = 0.5,
) -> dict[str, Any]:
    """Accuracy of m_on (distance < m), d_on (similarity > d_threshold), their OR, and of confidences >= c_threshold."""
    y = np.asarray(onscreen, dtype=bool)
    if len(y) == 0:
        raise DataError("no pairs were evaluated")
    out: dict[str, Any] = {"n": len(y)}
    preds: list[np.ndarray] = []
    if distances is not None:
        d = np.asarray(distances, dtype=np.float64)
        m = median_distance_threshold(d, y) if m_threshold is None else float(m_threshold)
        p_m = d < m
        out.update({"acc_m_on": float(np.mean(p_m == y)), "m_on": m, "m_on_tuned_on_eval": m_threshold is None})
        preds.append(p_m)
    if similarities is not None:
        p_d = np.asarray(similarities, dtype=np.float64) > d_threshold
        out["acc_d_on"] = float(np.mean(p_d == y))
        preds.append(p_d)
    if len(preds) == 2:
        out["acc_or"] = float(np.mean((preds[0] | preds[1]) == y))
    if confidences is not None:
        c = np.asarray(confidences, dtype=np.float64)
        if len(c) != len(y):
            raise DataError(f"{len(c)} confidences for {len(y)} pairs")
        out["acc_confidence"] = float(np.mean((c >= c_threshold) == y))
    if not preds and confidences is None:
        raise DataError("give distances (m_on), similarities (d_on), confidences, or several of them")
    return out


class OnscreenAccuracy(Accumulator):
    """Accumulates (distance, similarity, label) per pair; NaN marks a criterion not provided."""

    higher_is_better: ClassVar[Mapping[str, bool]] = {"acc_m_on": True}
    fields = ("id", "distance", "similarity", "confidence", "onscreen")

    def __init__(self, d_threshold: float = 0.2, m_threshold: float | None = None, c_threshold: float = 0.5) -> None:
        super().__init__()
        self.d_threshold = d_threshold
        self.m_threshold = m_threshold
        self.c_threshold = c_threshold

    def update(
        self,
        onscreen: np.ndarray,
        ids: Sequence[str],
        distances: np.ndarray | None = None,
        similarities: np.ndarray | None = None,
        confidences: np.ndarray | None = None,
    ) -> None:
        n = len(ids)

        def col(x: np.ndarray | None) -> np.ndarray:
            return np.full(n, np.nan) if x is None else np.asarray(x, dtype=np.float64)

        self._append(
            id=np.asarray([str(i) for i in ids], dtype=str),
            distance=col(distances),
            similarity=col(similarities),
            confidence=col(confidences),
            onscreen=np.asarray(onscreen, dtype=bool),
        )

    def compute(self) -> dict[str, Any]:
        d, s, c = self.state("distance"), self.state("similarity"), self.state("confidence")
        return onscreen_accuracy(
            self.state("onscreen"),
            None if np.isnan(d).any() else d,
            None if np.isnan(s).any() else s,
            self.d_threshold,
            self.m_threshold,
            None if np.isnan(c).any() else c,
            self.c_threshold,
        )
