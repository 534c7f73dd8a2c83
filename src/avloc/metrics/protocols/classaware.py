"""Class-aware protocols: one map per sounding class, scored against that class's boxes.

* :class:`ClassAwareProtocol` / :class:`ClassAwareScorer`: Qian et al.'s ``class_eval`` (frames with
  exactly two sounding classes, Eq. 9 average over classes);
* :class:`DSOLProtocol`: DSOL's ``eval.py`` / ``eval_duet.py``, the same per-class cIoU plus the
  no-sound area (NSA) of the silent classes' maps.

Both need ``localize_classes`` (``prediction = "class_maps"``) and report
:class:`avloc.metrics.classaware.ClassAwareCIoU`. Settings and sources: ``docs/protocols.md``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np

from avloc.errors import DataError
from avloc.metrics import ops
from avloc.metrics.base import Accumulator
from avloc.metrics.classaware import ClassAwareCIoU, class_average, no_sound_area
from avloc.metrics.localization import ciou_from_counts
from avloc.metrics.protocols.base import (
    DSOL_READING,
    DSOL_SOURCE,
    MUSIC_MAX_FRACTION,
    QIAN_REPO,
    Prediction,
    Protocol,
    ProtocolAccumulator,
    Scored,
    register_protocol,
)
from avloc.metrics.targets import Target

# DSOL class-aware: class map > 0.5 x max (eval.py 22); duet: > 0.2 x max (eval_duet.py 23); NSA counts
# pixels <= 0.2; CIoU reported at 0.3 as results[6], i.e. cIoU >= 0.05 * 6 (= 0.30000000000000004), and 0.5.
DSOL_CLASS_MAX_FRACTION = 0.5
DSOL_DUET_MAX_FRACTION = 0.2
DSOL_NSA_THRESHOLD = 0.2
DSOL_EXTRA_THRESHOLDS = (0.05 * 6,)
# Two-stage paper (Qian et al. 2020, utils/evaluate.py 100-109): frames with exactly two sounding classes, 256 grid.
QIAN_N_SOURCES = 2
QIAN_EVAL_SIZE = 256


@dataclass(frozen=True)
class ClassAwareProtocol(Protocol):
    """The shared settings plus which frames count and the extra success thresholds."""

    skip_empty_gt: bool = False  # frames without any box are skipped (DSOL eval_duet.py), reported with kept=False
    extra_thresholds: tuple[float, ...] = ()
    n_sources: int | None = None  # keep only frames with exactly this many sounding classes

    task: ClassVar[str] = "qian_classaware"
    prediction: ClassVar[Prediction] = "class_maps"
    scorer: ClassVar[type[ProtocolAccumulator]]


@dataclass(frozen=True)
class DSOLProtocol(ClassAwareProtocol):
    """DSOL's class-aware protocols: as :class:`ClassAwareProtocol` plus the no-sound area of silent classes."""

    nsa_threshold: float = DSOL_NSA_THRESHOLD

    task: ClassVar[str] = "dsol_classaware"


@dataclass
class _Pairs:
    """The (frame, class) pairs a batch scores: sounding pairs with their boxes, silent pairs for NSA."""

    sample: list[int] = field(default_factory=list)
    cls: list[int] = field(default_factory=list)
    boxes: list[np.ndarray] = field(default_factory=list)
    wh: list[np.ndarray | None] = field(default_factory=list)
    silent_sample: list[int] = field(default_factory=list)
    silent_cls: list[int] = field(default_factory=list)


class ClassAwareScorer(ProtocolAccumulator):
    """Per frame, the mean over its sounding classes of the class map's IoU with that class's boxes."""

    protocol: ClassAwareProtocol

    def make_subs(self) -> dict[str, Accumulator]:
        p = self.protocol
        with_nsa = isinstance(p, DSOLProtocol)
        return {"class": ClassAwareCIoU(p.success_threshold, p.extra_thresholds, p.success_op, p.auc_steps,
                                        with_nsa=with_nsa)}

    def _pairs(self, targets: Sequence[Target], n_cls: int) -> tuple[_Pairs, np.ndarray]:
        """The scored pairs and which frames are kept (``n_sources``, ``skip_empty_gt``)."""
        p = self.protocol
        out = _Pairs()
        kept = np.ones(len(targets), dtype=bool)
        for i, t in enumerate(targets):
            classes = t.sounding_classes()
            bad = [c for c in classes if not 0 <= c < n_cls]
            if bad:
                raise DataError(f"sample {t.id}: sounding classes {bad} outside the {n_cls} class maps")
            if t.box_labels is None and t.boxes.size:
                raise DataError(f"sample {t.id}: class-aware protocols need box_labels for every box")
            if (p.n_sources is not None and len(classes) != p.n_sources) or (p.skip_empty_gt and not len(t.boxes)):
                kept[i] = False
                continue
            lab = t.box_labels if t.box_labels is not None else np.zeros(0, dtype=np.int64)
            for c in classes:
                out.sample.append(i)
                out.cls.append(c)
                out.boxes.append(t.boxes[lab == c])
                out.wh.append(None if t.box_wh is None else t.box_wh[lab == c])
            silent = t.silent_labels if t.silent_labels is not None else [c for c in range(n_cls) if c not in classes]
            for c in silent:
                out.silent_sample.append(i)
                out.silent_cls.append(int(c))
        return out, kept

    def score_batch(self, arr: np.ndarray, targets: Sequence[Target]) -> Scored:
        p = self.protocol
        n = len(targets)
        pairs, kept = self._pairs(targets, arr.shape[1])  # arr: (B, C, h, w)
        scores = np.full(n, np.nan)
        if pairs.sample:
            ps = np.asarray(pairs.sample)
            m = self.reader.resize(arr[ps, np.asarray(pairs.cls)])  # (P, S, S)
            counts = ops.box_count_maps(pairs.boxes, p.eval_size, negative=p.box_negative, wh=pairs.wh)
            pair_scores = ciou_from_counts(self.reader.binarize(m, counts), counts)
            scores = class_average(pair_scores, ps, n)
        nsa_sum = np.zeros(n)
        nsa_count = np.zeros(n)
        if pairs.silent_sample and isinstance(p, DSOLProtocol):
            ss = np.asarray(pairs.silent_sample)
            ms = self.reader.prepare(arr[ss, np.asarray(pairs.silent_cls)])
            np.add.at(nsa_sum, ss, no_sound_area(ms, p.nsa_threshold))
            np.add.at(nsa_count, ss, 1.0)
        # a kept frame without a sounding class scores NaN (np.mean of no cIoU), which never passes a threshold
        return [("class", {"scores": scores, "ids": [t.id for t in targets], "nsa_sum": nsa_sum,
                           "nsa_count": nsa_count, "kept": kept})]


ClassAwareProtocol.scorer = ClassAwareScorer

_QIAN = f"Qian et al., A Two-Stage Framework for Multiple Sound-Source Localization, ECCV 2020, Eq. 9 ({QIAN_REPO}"
_dsol_ca: dict[str, Any] = dict(DSOL_READING, extra_thresholds=DSOL_EXTRA_THRESHOLDS)
register_protocol(
    DSOLProtocol(
        "dsol-classaware",
        source=DSOL_SOURCE + " music-exp/eval.py)",
        binarize_threshold=DSOL_CLASS_MAX_FRACTION,
        notes="per sounding class: class map > 0.5 x max, IoU with that class's boxes, mean over classes; "
        "NSA: mean over a frame's silent classes, then over frames",
        **_dsol_ca,
    ),
    __name__,
)
register_protocol(
    DSOLProtocol(
        "dsol-duet",
        source=DSOL_SOURCE + " music-exp/eval_duet.py)",
        binarize_threshold=DSOL_DUET_MAX_FRACTION,
        skip_empty_gt=True,
        notes="as dsol-classaware with class map > 0.2 x max; frames without boxes skipped",
        **_dsol_ca,
    ),
    __name__,
)
register_protocol(
    ClassAwareProtocol(
        "qian-classaware",
        source=_QIAN + " utils/evaluate.py class_eval)",
        eval_size=QIAN_EVAL_SIZE,
        resize="cv2",
        normalize="relu",
        binarize="max_fraction",
        binarize_threshold=MUSIC_MAX_FRACTION,
        strict=True,
        n_sources=QIAN_N_SOURCES,
        box_negative="wrap",
        published_inputs="audio 5 s at 22.05 kHz; image squash 256",
        notes="frames with exactly two sounding classes; 256 grid, ReLU, > 0.1 x max per class map; Eq. 9 average",
    ),
    __name__,
)
