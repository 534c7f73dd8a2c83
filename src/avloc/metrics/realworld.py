"""Real-footage evaluation (``realclips`` protocol): localisation and on/off-screen on hand-annotated frames.

Per annotated frame (boxes of the visible sounding objects, normalised to the full frame, and an on/off-screen
label) the one map is scored three ways, all on the 224 x 224 grid of the VGG-SS protocol (LVS, Chen et al.
CVPR 2021, ``test.py``: cv2 resize, LVS min-max normalisation, union of boxes):

* **median**: prediction = map > its median (LVS binarisation); success = cIoU >= 0.5, and the mean cIoU;
* **adaptive**: prediction = the top-K pixels, K = ground-truth area (Senocak et al. ICCV 2023's adaptive
  cIoU); success = cIoU >= 0.5, and the mean;
* **pointing**: the map's arg-max lies in a box (Zhang et al., IJCV 2018 "pointing game").

Only frames marked ``scored`` count for localisation. The on/off-screen decision is scored by
:func:`onscreen_summary` (balanced accuracy and calibration error) from the predicted probabilities that
:func:`avloc.engine.evaluate.evaluate_predictions` takes next to the maps.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

import numpy as np

from avloc.errors import DataError
from avloc.metrics.base import Accumulator

SUCCESS_CIOU = 0.5


class RealWorldMetrics(Accumulator):
    """Per-frame median / adaptive cIoU and pointing hits of scored frames; ``compute`` = :func:`realworld_summary`."""

    higher_is_better: ClassVar[Mapping[str, bool]] = {
        "median_success": True, "median_ciou": True, "adaptive_success": True, "adaptive_ciou": True, "pointing": True,
        "onscreen_accuracy": True, "onscreen_balanced_accuracy": True, "onscreen_ece": False,
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
    """Overall and per-clip success / mean cIoU (median, adaptive) and pointing."""
    if len(median) == 0:
        raise DataError("realclips: no scored frames (frames with 'scored': true and at least one box)")

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
    """Balanced and plain accuracy of ``p >= threshold`` against labels ``y``, and the calibration error of ``p``
    (balanced accuracy is NaN when only one of the two labels occurs)."""
    p, y = np.asarray(p, np.float64), np.asarray(y, bool)
    pred = p >= threshold
    return {
        "onscreen_balanced_accuracy": balanced_accuracy(pred, y) if y.any() and not y.all() else float("nan"),
        "onscreen_accuracy": float(np.mean(pred == y)),
        "onscreen_ece": expected_calibration_error(p, y),
        "n_onscreen_labels": len(y),
        "n_offscreen": int((~y).sum()),
    }
