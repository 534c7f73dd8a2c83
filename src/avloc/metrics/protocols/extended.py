"""SLAVC's extended protocols: cIoU of audible frames plus AP / max-F1 over sounding and silent frames.

:class:`ExtendedProtocol` / :class:`ExtendedScorer` (SLAVC ``EvaluatorFull``,
:class:`avloc.metrics.extended.ExtendedAP`): a frame's confidence is the mean of the top fraction of its
fixed-bound scores; a frame is a true positive when audible with ``cIoU >= success_threshold``.
Settings and sources: ``docs/protocols.md``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

import numpy as np

from avloc.metrics import ops
from avloc.metrics.base import Accumulator
from avloc.metrics.extended import ExtendedAP, top_fraction_confidence
from avloc.metrics.localization import CIoU
from avloc.metrics.protocols.base import (
    FLICKR_GT,
    SLAVC_REPO,
    VGGSS_GT,
    Protocol,
    ProtocolAccumulator,
    Scored,
    register_protocol,
)
from avloc.metrics.targets import Target

# SLAVC: similarity scores lie in [-1/tau, 1/tau] with tau = 0.03; confidence = mean of the top 25%.
SLAVC_TAU = 0.03
SLAVC_CONFIDENCE_FRACTION = 0.25


@dataclass(frozen=True)
class ExtendedProtocol(Protocol):
    """The shared settings plus the AP rule and the confidence of a frame."""

    ap_rule: Literal["slavc", "all"] = "slavc"  # extended AP / F1: SLAVC utils.py, or every threshold (avloc)
    confidence_fraction: float = SLAVC_CONFIDENCE_FRACTION

    task: ClassVar[str] = "extended"
    scorer: ClassVar[type[ProtocolAccumulator]]


class ExtendedScorer(ProtocolAccumulator):
    """cIoU of the audible frames (:class:`CIoU`) and AP / F1 of every frame (:class:`ExtendedAP`)."""

    protocol: ExtendedProtocol
    overriding: ClassVar[frozenset[str]] = frozenset({"extended"})

    def make_subs(self) -> dict[str, Accumulator]:
        p = self.protocol
        return {
            "ciou": CIoU(p.success_threshold, p.success_op, p.auc_steps),
            "extended": ExtendedAP(p.success_threshold, p.success_op, p.ap_rule),
        }

    def visible(self, targets: Sequence[Target]) -> np.ndarray:
        """Sounding frames as SLAVC splits them: by the pair, not by the boxes (docs/protocols.md).

        A frame is sounding when ``audible`` (the annotation's own frames; the non-sounding pairs of SLAVC's
        csv are not), whatever boxes it has: an audible frame with no box -- e.g. the two VGG-SS entries whose
        only box is degenerate, once a manifest drops it -- stays sounding, with an empty ground truth (cIoU 0,
        or NaN when nothing is predicted). One exception, from the boxes SLAVC drops (``bb = bb[bb[:, 0] >= 0]``,
        test.py 177): under ``box_negative="wrap"`` an audible frame whose every box has a negative left pixel
        bound ``int(S * x1)`` is not sounding.
        """
        p = self.protocol
        out = np.zeros(len(targets), dtype=bool)
        for i, t in enumerate(targets):
            if not t.audible:
                continue
            if p.box_negative == "wrap" and len(t.boxes):
                out[i] = bool((np.trunc(np.clip(t.boxes[:, 0] * p.eval_size, -1e9, 1e9)) >= 0).any())
            else:
                out[i] = True
        return out

    def score_batch(self, arr: np.ndarray, targets: Sequence[Target]) -> Scored:
        p = self.protocol
        ids = [t.id for t in targets]
        counts = self.reader.gt_counts(targets)
        m = self.reader.resize(arr)
        scores = self.reader.ciou(self.reader.binarize(m, counts), counts)
        # confidence on the fixed-bound scores (SLAVC test.py 180-184), not on the relative prediction map
        conf = top_fraction_confidence(ops.normalize_maps(m, "fixed", p.norm_bounds), p.confidence_fraction)
        audible = self.visible(targets)
        aud_ids = [i for i, a in zip(ids, audible, strict=True) if a]
        return [
            ("ciou", {"scores": scores[audible], "ids": aud_ids}),
            ("extended", {"confidence": conf, "scores": scores, "audible": audible, "ids": ids}),
        ]


ExtendedProtocol.scorer = ExtendedScorer

# SLAVC test.py 161-205, utils.py 125-168 / 217-219: bicubic align_corners, scores in [-1/tau, 1/tau],
# relative prediction = normalize_img(scores) >= its median, confidence = float32 mean of the top 25%.
_SLAVC = f"Mo & Morgado, SLAVC, NeurIPS 2022 ({SLAVC_REPO} test.py validate, utils.py EvaluatorFull)"
_slavc: dict[str, Any] = dict(source=_SLAVC, resize="bicubic_align_corners", normalize="fixed_minmax",
                              norm_bounds=(-1 / SLAVC_TAU, 1 / SLAVC_TAU), strict=False,
                              published_inputs="audio 5 s centred; image squash")
for _suffix, _gt in (("", VGGSS_GT), ("-flickr", FLICKR_GT)):
    register_protocol(ExtendedProtocol(f"slavc-extended{_suffix}", notes="AP / F1 as SLAVC EvaluatorFull", **_slavc,
                                       **_gt), __name__)
    register_protocol(
        ExtendedProtocol(
            f"slavc-extended{_suffix}-allthr",
            ap_rule="all",
            notes="avloc variant: AP over every distinct confidence from recall 0, max-F1 over every threshold",
            **_slavc,
            **_gt,
        ),
        __name__,
    )
