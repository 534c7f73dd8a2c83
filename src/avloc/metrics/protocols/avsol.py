"""The AVSOL protocol (DNM, Nishikawa et al., Sec. 3.3): HmBoxAUC and PiBR over AVE frames, PNSR elsewhere.

:class:`AVSOLProtocol` / :class:`AVSOLScorer` feed the normalised maps, the box masks and each frame's kind
(AVE, audible out of view, visible silent, noise) to :class:`avloc.metrics.avsol.AVSOLMetrics`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from avloc.metrics.avsol import FRAME_KINDS, AVSOLMetrics
from avloc.metrics.base import Accumulator
from avloc.metrics.protocols.base import Protocol, ProtocolAccumulator, Scored, register_protocol
from avloc.metrics.targets import Target


@dataclass(frozen=True)
class AVSOLProtocol(Protocol):
    """The AVSOL metrics read maps with the shared settings (resize, normalise); they need no binarisation."""

    task: ClassVar[str] = "avsol"
    scorer: ClassVar[type[ProtocolAccumulator]]


def frame_kind(t: Target) -> int:
    """Index into FRAME_KINDS: AVE if a sounding box, else audible (out of view), visible (silent boxes), noise."""
    if len(t.boxes):
        return FRAME_KINDS.index("ave")
    if t.out_of_view or (t.onscreen is False and t.audible):
        return FRAME_KINDS.index("audible")
    if len(t.silent_boxes):
        return FRAME_KINDS.index("visible")
    return FRAME_KINDS.index("noise")


class AVSOLScorer(ProtocolAccumulator):
    """Every frame's normalised map, box mask and kind (:class:`AVSOLMetrics`)."""

    def make_subs(self) -> dict[str, Accumulator]:
        return {"avsol": AVSOLMetrics()}

    def score_batch(self, arr: np.ndarray, targets: Sequence[Target]) -> Scored:
        counts = self.reader.gt_counts(targets)
        kinds = [frame_kind(t) for t in targets]
        return [("avsol", {"maps": self.reader.prepare(arr), "gt": counts > 0, "kinds": kinds,
                           "ids": [t.id for t in targets]})]


AVSOLProtocol.scorer = AVSOLScorer

register_protocol(
    AVSOLProtocol(
        "avsol",
        source="Nishikawa et al., Dual Normalization Multitasking for AVSOL, Sec. 3.3 (HmBoxAUC, PiBR, PNSR)",
        resize="cv2",
        normalize="none",
        published_inputs="audio per frame at 10 fps",
        notes="HmBoxAUC and PiBR over AVE frames; PNSR over non-AVE frames (all / visible / audible / noise)",
    ),
    __name__,
)
