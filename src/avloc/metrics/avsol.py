"""AVSOL metrics (Nishikawa et al., "Dual Normalization Multitasking", Sec. 3.3, Eqs. 1-3).

Frames are annotated at 10 fps. AVE frames have at least one sounding visible
object; the others are *visible* (only silent objects visible), *audible*
(an out-of-view sound) or *noise* (neither). A frame with both an
out-of-view sound and silent objects counts as *audible*.

* HmBoxAUC (Eqs. 1-2): per AVE frame, precision/recall of ``{h >= tau}``
  against the union of sounding boxes, summed as
  ``sum_d P(tau_d) (R(tau_d) - R(tau_{d-1}))`` over every distinct heatmap
  value tau_d (average precision of the pixel ranking); mean over AVE frames.
* PiBR: fraction of AVE frames whose heatmap peak (first arg-max) lies in a
  sounding box.
* PNSR (Eq. 3): mean over non-AVE frames of ``max h`` divided by the mean over
  AVE frames of the max of h inside the sounding boxes; lower is better;
  reported over all non-AVE frames and per kind.

Heatmap values are used as given (no normalisation): PNSR compares levels.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

import numpy as np

from avloc.errors import DataError
from avloc.metrics.base import Accumulator
from avloc.metrics.ops import peak_in_box

FRAME_KINDS = ("ave", "visible", "audible", "noise")


def pixel_average_precision(maps: np.ndarray, gt: np.ndarray) -> np.ndarray:
    """HmBoxAUC of each frame: AP of the pixel ranking by heatmap value against a binary mask -> ``(B,)``.

    Tied heatmap values form one threshold. Frames with an empty mask give NaN.
    """
    b = len(maps)
    h = maps.reshape(b, -1)
    g = gt.reshape(b, -1) > 0
    order = np.argsort(-h, axis=1, kind="stable")
    hs = np.take_along_axis(h, order, 1)
    gs = np.take_along_axis(g, order, 1)
    tp = np.cumsum(gs, axis=1, dtype=np.int64)  # (B, N)
    n_pred = np.arange(1, h.shape[1] + 1)[None, :]
    last = np.ones_like(gs)
    last[:, :-1] = hs[:, 1:] != hs[:, :-1]  # last pixel of each tie group = one threshold
    # tp at the previous threshold: running max of tp at earlier group ends (tp is non-decreasing)
    tp_at_last = np.where(last, tp, 0)
    prev = np.zeros_like(tp)
    prev[:, 1:] = np.maximum.accumulate(tp_at_last, axis=1)[:, :-1]
    pos = g.sum(1).astype(np.float64)
    contrib = np.where(last, (tp / n_pred) * (tp - prev), 0.0)
    with np.errstate(invalid="ignore", divide="ignore"):
        return contrib.sum(1) / pos


def masked_max(maps: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Max of each map inside its mask (NaN for an empty mask) -> ``(B,)``."""
    flat = maps.reshape(len(maps), -1).astype(np.float64)
    m = mask.reshape(len(mask), -1) > 0
    out = np.where(m, flat, -np.inf).max(1)
    return np.where(m.any(1), out, np.nan)


def avsol_summary(
    kind: np.ndarray, ap: np.ndarray, peak_in: np.ndarray, max_all: np.ndarray, max_box: np.ndarray
) -> dict[str, Any]:
    """HmBoxAUC, PiBR and PNSR (all, visible, audible, noise) from per-frame rows."""
    kind = np.asarray(kind, dtype=np.int64)
    ave = kind == 0
    valid = ave & np.isfinite(ap)
    if not valid.any():
        raise DataError("AVSOL needs AVE frames (frames with at least one sounding box); none were given")
    out: dict[str, Any] = {
        "hmboxauc": float(ap[valid].mean()),
        "pibr": float(peak_in[valid].mean()),
        "n_ave": int(ave.sum()),
        "n_empty_gt": int((ave & ~np.isfinite(ap)).sum()),
    }
    signal = float(max_box[valid].mean())
    for name, sel in (("pnsr", ~ave), *((f"pnsr_{k}", kind == i) for i, k in enumerate(FRAME_KINDS) if i > 0)):
        out[name] = float(max_all[sel].mean() / signal) if sel.any() and signal != 0 else float("nan")
    for i, k in enumerate(FRAME_KINDS):
        if i > 0:
            out[f"n_{k}"] = int((kind == i).sum())
    return out


class AVSOLMetrics(Accumulator):
    """Accumulates per-frame AP, peak-in-box and peak levels; ``compute`` = :func:`avsol_summary`."""

    #: PNSR (Eq. 3) is peak-to-mean on frames without a visible sounding source: lower is better
    higher_is_better: ClassVar[Mapping[str, bool]] = {"hmboxauc": True, "pibr": True, "pnsr": False}
    fields = ("id", "kind", "ap", "peak_in", "max_all", "max_box")

    def update(self, maps: np.ndarray, gt: np.ndarray, kinds: Sequence[int] | np.ndarray, ids: Sequence[str]) -> None:
        """``maps`` and binary ``gt`` ``(B, H, W)`` (sounding boxes), ``kinds`` indices into :data:`FRAME_KINDS`."""
        kind = np.asarray(kinds, dtype=np.int64)
        ave = kind == 0
        ap = np.full(len(maps), np.nan)
        if ave.any():
            ap[ave] = pixel_average_precision(maps[ave], gt[ave])
        self._append(
            id=np.asarray([str(i) for i in ids], dtype=str),
            kind=kind,
            ap=ap,
            peak_in=peak_in_box(maps, gt),
            max_all=maps.reshape(len(maps), -1).max(1).astype(np.float64),
            max_box=masked_max(maps, gt),
        )

    def compute(self) -> dict[str, Any]:
        return avsol_summary(
            self.state("kind"), self.state("ap"), self.state("peak_in"), self.state("max_all"), self.state("max_box")
        )
