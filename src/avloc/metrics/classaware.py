"""Class-aware localisation scores for multi-source scenes.

* DSOL (Hu et al., NeurIPS 2020, Sec. 4 "Evaluation"): for each sounding class,
  its class map is thresholded at 0.5 x its max, IoU with that class's boxes,
  averaged over the sounding classes of the frame; reported as CIoU@0.3,
  CIoU@0.5 and AUC. NSA (No-Sound-Area): fraction of pixels <= 0.2 in the
  map of each silent class, averaged over the frame's silent classes, then
  over frames (music-exp/eval.py 58/89/98).
* Two-stage framework (Qian et al., ECCV 2020, Eq. 9):
  ``cIoU_class = sum_c theta_c cIoU_c / sum_c theta_c`` with theta_c = 1 when
  class c sounds; its public evaluation keeps frames with exactly two sounding
  classes, ReLUs each class map and thresholds it at 0.1 x max.

The per-(frame, class) work is vectorised: pairs are stacked into one batch.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

import numpy as np

from avloc.errors import DataError
from avloc.metrics.base import Accumulator
from avloc.metrics.localization import SuccessOp, passes, success_summary


def class_average(pair_scores: np.ndarray, pair_sample: np.ndarray, n_samples: int) -> np.ndarray:
    """Eq. 9: mean of the per-class scores of each sample (theta_c = 1 for its sounding classes) -> ``(n,)``.

    Samples without any sounding class get NaN.
    """
    total = np.zeros(n_samples, dtype=np.float64)
    count = np.zeros(n_samples, dtype=np.float64)
    np.add.at(total, pair_sample, pair_scores)
    np.add.at(count, pair_sample, 1.0)
    with np.errstate(invalid="ignore", divide="ignore"):
        return total / count


def no_sound_area(maps: np.ndarray, threshold: float) -> np.ndarray:
    """Per map: fraction of pixels ``<= threshold`` (DSOL's NSA, for silent classes) -> ``(P,)``."""
    flat = maps.reshape(len(maps), -1)
    return (flat <= threshold).mean(1).astype(np.float64)


class ClassAwareCIoU(Accumulator):
    """Per-sample class-averaged scores (+ per-sample NSA sums); ``compute`` reports success at several thresholds.

    ``update(scores, ids, nsa_sum=None, nsa_count=None, kept=None)``: samples
    with ``kept=False`` (e.g. not exactly two sounding classes for the
    two-stage protocol) are counted in ``n_skipped`` and not scored.
    """

    higher_is_better: ClassVar[Mapping[str, bool]] = {"success": True, "auc": True, "mean_ciou": True, "mean_ciou_defined": True, "nsa": True}
    fields = ("id", "score", "kept", "nsa_sum", "nsa_count")

    def __init__(
        self,
        success_threshold: float = 0.5,
        extra_thresholds: Sequence[float] = (),
        op: SuccessOp = ">=",
        auc_steps: int = 21,
        with_nsa: bool = False,
    ) -> None:
        super().__init__()
        self.success_threshold = success_threshold
        self.extra_thresholds = tuple(float(t) for t in extra_thresholds)
        self.op: SuccessOp = op
        self.auc_steps = auc_steps
        self.with_nsa = with_nsa

    def update(
        self,
        scores: np.ndarray,
        ids: Sequence[str],
        nsa_sum: np.ndarray | None = None,
        nsa_count: np.ndarray | None = None,
        kept: np.ndarray | None = None,
    ) -> None:
        n = len(ids)
        self._append(
            id=np.asarray([str(i) for i in ids], dtype=str),
            score=np.asarray(scores, dtype=np.float64).reshape(n),
            kept=np.ones(n, dtype=bool) if kept is None else np.asarray(kept, dtype=bool),
            nsa_sum=np.zeros(n) if nsa_sum is None else np.asarray(nsa_sum, dtype=np.float64),
            nsa_count=np.zeros(n) if nsa_count is None else np.asarray(nsa_count, dtype=np.float64),
        )

    def compute(self) -> dict[str, Any]:
        kept = self.state("kept").astype(bool)
        if not kept.any():
            raise DataError(f"no sample qualified for class-aware scoring ({len(kept)} skipped)")
        scores = self.state("score")[kept]
        out = success_summary(scores, self.success_threshold, self.op, self.auc_steps)
        for t in self.extra_thresholds:
            out[f"success@{t:g}"] = float(np.mean(passes(scores, t, self.op)))
        out[f"success@{self.success_threshold:g}"] = out["success"]
        out["n_skipped"] = int((~kept).sum())
        if self.with_nsa:
            # DSOL eval.py 58/89/98: the mean over a frame's silent classes, then over frames (a kept frame
            # without a silent class has np.mean([]) = NaN, and so does the result, as there)
            count = self.state("nsa_count")[kept]
            with np.errstate(invalid="ignore", divide="ignore"):
                per_frame = self.state("nsa_sum")[kept] / count
            out["nsa"] = float(np.mean(per_frame))
            out["n_silent_maps"] = int(count.sum())
        return out
