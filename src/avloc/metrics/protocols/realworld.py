"""avloc's real-footage protocol (``realclips``): median and adaptive cIoU and pointing of scored frames.

The VGG-SS protocol of LVS ``test.py`` on full frames (median: ``pred > median``), the adaptive cIoU of
SSL-Alignment (``pred > sort[n - K]``) and pointing (:mod:`avloc.metrics.realworld`); frames marked
``scored=false`` (source ambiguous or unclear) and frames without a box are left out.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from avloc.metrics import ops
from avloc.metrics.base import Accumulator
from avloc.metrics.protocols.base import Protocol, ProtocolAccumulator, Scored, register_protocol
from avloc.metrics.realworld import RealWorldMetrics
from avloc.metrics.targets import Target


@dataclass(frozen=True)
class RealWorldProtocol(Protocol):
    """The shared settings; the adaptive cIoU is computed next to the protocol's own binarisation."""

    task: ClassVar[str] = "realworld"
    scorer: ClassVar[type[ProtocolAccumulator]]


class RealWorldScorer(ProtocolAccumulator):
    """Per scored frame: median cIoU, adaptive cIoU and whether the peak falls in a box (:class:`RealWorldMetrics`)."""

    def make_subs(self) -> dict[str, Accumulator]:
        return {"realworld": RealWorldMetrics()}

    def score_batch(self, arr: np.ndarray, targets: Sequence[Target]) -> Scored:
        counts = self.reader.gt_counts(targets)
        m = self.reader.resize(arr)
        sel = np.array([t.scored and len(t.boxes) > 0 for t in targets], dtype=bool)
        kept = [t for t, s in zip(targets, sel, strict=True) if s]
        if not kept:
            z = np.zeros(0)
            return [("realworld", {"ids": [], "clips": [], "median": z, "adaptive": z, "pointing": z.astype(bool)})]
        m, counts = m[sel], counts[sel]
        median = self.reader.ciou(self.reader.binarize(m, counts), counts)
        adaptive = self.reader.ciou(self.reader.binarize(m, counts, rule="adaptive"), counts)
        return [("realworld", {
            "ids": [t.id for t in kept], "clips": [t.image_id for t in kept], "median": median, "adaptive": adaptive,
            "pointing": ops.peak_in_box(m, counts > 0),
        })]


RealWorldProtocol.scorer = RealWorldScorer

register_protocol(
    RealWorldProtocol(
        "realclips", source="avloc real-footage dev set (VGG-SS protocol of LVS test.py)",
        resize="cv2", normalize="lvs", strict=True, gt="union", published_inputs="image full frame",
        notes="hand-drawn boxes on full frames; median and adaptive cIoU >= 0.5, pointing; "
        "frames with scored=false skipped; image_id = clip (per-clip breakdown); with the frames' records: "
        "boxes, on/off-screen recalls, tiles, speaker, class-aware cIoU (avloc.metrics.realworld.frame_scores)",
    ),
    __name__,
)
