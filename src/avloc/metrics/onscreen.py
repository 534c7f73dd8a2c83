"""On-screen / off-screen sound recognition accuracy (Xuan et al., proposal paper, Sec. 3.4 and Table 1).

* m_on: a pair is on-screen when its audio-visual distance in the common
  space is below ``m`` = the average of the median distance of positive
  (on-screen) pairs and the median distance of negative pairs. Unless ``m``
  is given (e.g. measured on training pairs), it is measured on the
  evaluated pairs themselves, which the result flags.
* d_on: on-screen when the maximum proposal similarity exceeds 0.2.
* the OR of both criteria (the paper's best).
Accuracy = fraction of pairs whose prediction matches the on-screen label.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

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
) -> dict[str, Any]:
    """Accuracy of m_on (distance < m), d_on (similarity > d_threshold) and their OR, for the inputs given."""
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
    if not preds:
        raise DataError("give distances (m_on), similarities (d_on) or both")
    return out


class OnscreenAccuracy(Accumulator):
    """Accumulates (distance, similarity, label) per pair; NaN marks a criterion not provided."""

    fields = ("id", "distance", "similarity", "onscreen")

    def __init__(self, d_threshold: float = 0.2, m_threshold: float | None = None) -> None:
        super().__init__()
        self.d_threshold = d_threshold
        self.m_threshold = m_threshold

    def update(
        self,
        onscreen: np.ndarray,
        ids: Sequence[str],
        distances: np.ndarray | None = None,
        similarities: np.ndarray | None = None,
    ) -> None:
        n = len(ids)
        self._append(
            id=np.asarray([str(i) for i in ids], dtype=str),
            distance=np.full(n, np.nan) if distances is None else np.asarray(distances, dtype=np.float64),
            similarity=np.full(n, np.nan) if similarities is None else np.asarray(similarities, dtype=np.float64),
            onscreen=np.asarray(onscreen, dtype=bool),
        )

    def compute(self) -> dict[str, Any]:
        d, s = self.state("distance"), self.state("similarity")
        return onscreen_accuracy(
            self.state("onscreen"),
            None if np.isnan(d).any() else d,
            None if np.isnan(s).any() else s,
            self.d_threshold,
            self.m_threshold,
        )
