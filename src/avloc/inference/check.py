"""Scoring ``avloc localize`` output against known ground truth (generated clips, ``avloc demo``).

* **peak-in-box**: fraction of analysed frames whose heatmap peak lies inside the
  sounding object's box (the "pointing game", Zhang et al., ECCV 2016, Sec. 4.1);
* **mean IoU**: mean over frames of the IoU between the top box and the sounding
  box (0 for a frame with no box);
* the same peak fraction on the *silent* object, which should stay low.

Ground truth of the frame shown at time ``t`` is that of source frame ``floor(t * fps + 1e-6)``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from avloc.formats.localize import FrameRecord, Point
from avloc.metrics.ops import box_iou


@dataclass
class DemoScore:
    frames: int
    peak_in_sounding: float
    peak_in_silent: float
    mean_iou: float
    onscreen_fraction: float

    def passed(self, min_peak: float = 0.5) -> bool:
        """Found: the peak is on the sounding object in at least ``min_peak`` of frames, more often than on the silent one."""
        return self.peak_in_sounding >= min_peak and self.peak_in_sounding > self.peak_in_silent


def _inside(p: Point, b: np.ndarray) -> bool:
    return bool(b[0] <= p.x <= b[2] and b[1] <= p.y <= b[3])


def score_records(records: list[FrameRecord], fps: float, sounding: np.ndarray, silent: np.ndarray) -> DemoScore:
    """Score frame records against per-source-frame boxes (T, 4) of the sounding and silent objects."""
    hit, miss_silent, ious, on = [], [], [], []
    for r in records:
        i = min(int(np.floor(r.time * fps + 1e-6)), len(sounding) - 1)
        hit.append(_inside(r.peak, sounding[i]))
        miss_silent.append(_inside(r.peak, silent[i]))
        b = r.top_box
        ious.append(box_iou(np.array([b.x1, b.y1, b.x2, b.y2]), sounding[i]) if b is not None else 0.0)
        on.append(bool(r.onscreen))
    n = len(records)
    return DemoScore(n, float(np.mean(hit)) if n else 0.0, float(np.mean(miss_silent)) if n else 0.0,
                     float(np.mean(ious)) if n else 0.0, float(np.mean(on)) if n else 0.0)
