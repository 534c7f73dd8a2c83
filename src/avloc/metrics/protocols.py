"""Named evaluation protocols: each fixes resizing, normalisation, binarisation, ground truth and success test.

A :class:`Protocol` is a typed dataclass config registered in
:data:`avloc.registry.PROTOCOLS`; ``create_protocol(name, **overrides)``
returns it and ``protocol.accumulator()`` the :class:`ProtocolAccumulator`
that every evaluation path (training-time validation, ``avloc eval``, the
benchmarks) feeds through :mod:`avloc.engine.evaluate`.

Sources and the exact settings of each protocol are in ``docs/protocols.md``
(facts from ``../shared/docs/PROTOCOLS.md``). Constants live here, each next
to the paper it comes from.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from avloc.errors import ConfigError, DataError
from avloc.metrics import ops
from avloc.metrics.avsol import FRAME_KINDS, AVSOLMetrics
from avloc.metrics.base import Accumulator
from avloc.metrics.classaware import ClassAwareCIoU, class_average, no_sound_area
from avloc.metrics.extended import ExtendedAP, top_fraction_confidence
from avloc.metrics.localization import (
    CIoU,
    SuccessOp,
    ThresholdSweep,
    ciou_from_counts,
    name_prefix_group,
    vggss_name,
)
from avloc.metrics.realworld import RealWorldMetrics
from avloc.metrics.targets import Target, targets_from_batch
from avloc.registry import PROTOCOLS

Task = Literal["ciou", "extended", "dsol_classaware", "qian_classaware", "avsol", "realworld"]
Binarize = Literal["median", "fixed", "max_fraction", "adaptive"]

# Evaluation grid of LVS / EZ-VSL / SLAVC / DSOL: the 224x224 model input.
EVAL_SIZE = 224
# Flickr consensus: a pixel counts fully when 2 of the 3 annotators' boxes cover it (Senocak et al. 2018).
FLICKR_CONSENSUS_DIVISOR = 2.0
# SLAVC: similarity scores lie in [-1/tau, 1/tau] with tau = 0.03; confidence = mean of the top 25%.
SLAVC_TAU = 0.03
SLAVC_CONFIDENCE_FRACTION = 0.25
# MUSIC single source (DSOL, proposal paper) and the two-stage paper: prediction > 0.1 x max.
MUSIC_MAX_FRACTION = 0.1
# DSOL class-aware: class map > 0.5 x max (eval.py 22); duet: > 0.2 x max (eval_duet.py 23); NSA counts
# pixels <= 0.2; CIoU reported at 0.3 as results[6], i.e. cIoU >= 0.05 * 6 (= 0.30000000000000004), and 0.5.
DSOL_CLASS_MAX_FRACTION = 0.5
DSOL_DUET_MAX_FRACTION = 0.2
DSOL_NSA_THRESHOLD = 0.2
DSOL_EXTRA_THRESHOLDS = (0.05 * 6,)
# Two-stage paper (Qian et al. 2020, utils/evaluate.py 100-109): frames with exactly two sounding classes, 256 grid.
QIAN_N_SOURCES = 2
QIAN_EVAL_SIZE = 256
# ACL-SSL: absolute thresholds 0.05, 0.10, ..., 0.95 on sigmoid maps, best kept (tuned on the test set).
ACLSSL_SWEEP = tuple(round(0.05 * i, 2) for i in range(1, 20))
# Flickr-SoundNet test list: 249 ids in LVS / EZ-VSL (3908875350 missing), 250 in the original.
FLICKR_TEST_IDS = 249
VGGSS_TEST_IDS = 5158


@dataclass(frozen=True)
class Protocol:
    """Every setting an evaluation protocol fixes (see ``docs/protocols.md``)."""

    name: str
    task: Task = "ciou"
    source: str = ""
    eval_size: int = EVAL_SIZE
    resize: ops.ResizeMode = "align_corners"
    normalize: ops.NormalizeMode = "minmax"
    norm_bounds: tuple[float, float] = (0.0, 1.0)
    binarize: Binarize = "median"
    binarize_threshold: float = 0.5  # fixed threshold, or fraction of the max
    strict: bool = False  # prediction = map > thr (True) or map >= thr (False)
    keep_at_one: bool = False  # LVS test.py: also keep pixels whose normalised value is >= 1 (pred[pred < 1] = 0)
    sweep: tuple[float, ...] = ()  # absolute thresholds to sweep (labelled tuned variants only)
    gt: Literal["union", "consensus"] = "union"
    consensus_divisor: float = FLICKR_CONSENSUS_DIVISOR
    consensus_by_annotator: bool = False  # public code sums every box; True unites each annotator's boxes first
    box_negative: ops.BoxNegative = "clip"  # "wrap": negative pixel bounds index from the far edge, as NumPy slices
    skip_empty_gt: bool = False  # samples without any box are skipped (DSOL tools.py / eval_duet.py), n_skipped
    success_threshold: float = 0.5
    extra_thresholds: tuple[float, ...] = ()
    success_op: SuccessOp = ">="
    auc_steps: int = 21
    score: Literal["ciou", "iou"] = "ciou"
    iiou: bool = False
    # name_prefix: SSL-Alignment test.py 743 on the id; vggss_name_prefix: on its VGG-SS name (vgg_filename)
    iiou_group: Literal["image_id", "name_prefix", "vggss_name_prefix"] = "image_id"
    ap_rule: Literal["slavc", "all"] = "slavc"  # extended AP / F1: SLAVC utils.py, or every threshold (avloc)
    confidence_fraction: float = SLAVC_CONFIDENCE_FRACTION
    nsa_threshold: float = DSOL_NSA_THRESHOLD
    n_sources: int | None = None
    expected_samples: int | None = None
    tuned_on_test: bool = False
    # what the source's code feeds its models (audio window, image transform), for the report only: scoring
    # never changes a model's inputs -- each model keeps the preprocessing saved in its checkpoint
    published_inputs: str = "audio 3 s centred; image squash"
    notes: str = ""

    def __post_init__(self) -> None:
        if self.eval_size < 1:
            raise ConfigError(f"protocol {self.name}: eval_size must be positive, got {self.eval_size}")
        if (
            self.binarize == "fixed"
            and self.task == "ciou"
            and not (0 <= self.binarize_threshold <= 1)
            and self.normalize != "none"
        ):
            raise ConfigError(f"protocol {self.name}: a fixed threshold on normalised maps must be in [0, 1]")

    def accumulator(self, workers: int = 1, chunk_size: int = 256) -> ProtocolAccumulator:
        return ProtocolAccumulator(self, workers=workers, chunk_size=chunk_size)

    def higher_is_better(self, key: str) -> bool:
        """Whether result ``key`` of this protocol is better higher; :class:`ConfigError` when it is not a score."""
        return self.accumulator().higher_is_better(key)

    def describe(self) -> dict[str, Any]:
        """The protocol's settings as a plain dict (for reports and run directories)."""
        d = dataclasses.asdict(self)
        return {k: list(v) if isinstance(v, tuple) else v for k, v in d.items()}


Scored = list[tuple[str, dict[str, Any]]]


class ProtocolAccumulator:
    """Feeds heatmaps + ground truth through a protocol into its metric accumulators.

    ``update(maps, targets)``: ``maps`` ``(B, h, w)`` raw heatmaps of any size
    (``(B, C, h, w)`` class maps for the class-aware tasks), ``targets`` a list
    of sample dicts / :class:`Target` or a collated batch. ``compute()`` returns
    a flat dict of results. ``state_dict()`` / ``merge()`` make it mergeable
    across processes (:func:`avloc.metrics.base.gather`).
    """

    def __init__(self, protocol: Protocol, workers: int = 1, chunk_size: int = 256) -> None:
        self.protocol = protocol
        self.workers = max(1, int(workers))
        self.chunk_size = max(1, int(chunk_size))
        p = protocol
        self.subs: dict[str, Accumulator] = {}
        if p.task == "ciou":
            if p.sweep:
                self.subs["sweep"] = ThresholdSweep(p.sweep, p.success_threshold, p.success_op, p.auc_steps)
            else:
                self.subs["ciou"] = CIoU(p.success_threshold, p.success_op, p.auc_steps, with_iiou=p.iiou)
        elif p.task == "extended":
            self.subs["ciou"] = CIoU(p.success_threshold, p.success_op, p.auc_steps)
            self.subs["extended"] = ExtendedAP(p.success_threshold, p.success_op, p.ap_rule)
        elif p.task in ("dsol_classaware", "qian_classaware"):
            self.subs["class"] = ClassAwareCIoU(
                p.success_threshold, p.extra_thresholds, p.success_op, p.auc_steps, with_nsa=p.task == "dsol_classaware"
            )
        elif p.task == "avsol":
            self.subs["avsol"] = AVSOLMetrics()
        elif p.task == "realworld":
            self.subs["realworld"] = RealWorldMetrics()
        else:
            raise ConfigError(f"protocol {p.name}: unknown task {p.task!r}")

    # ---- map preprocessing (the one place resizing / normalisation happen) ----
    def resize(self, maps: np.ndarray) -> np.ndarray:
        """Raw ``(B, h, w)`` maps -> resized float32 ``(B, S, S)`` (not normalised)."""
        p = self.protocol
        return ops.resize_maps(maps, (p.eval_size, p.eval_size), p.resize)

    def normalize(self, m: np.ndarray) -> np.ndarray:
        """Resized maps -> the protocol's normalised values (what the public code thresholds)."""
        p = self.protocol
        return ops.normalize_maps(m, p.normalize, p.norm_bounds)

    def prepare_maps(self, maps: np.ndarray) -> np.ndarray:
        """Raw ``(B, h, w)`` maps -> resized, normalised float32 ``(B, S, S)``."""
        return self.normalize(self.resize(maps))

    def predict(self, m: np.ndarray, counts: np.ndarray, threshold: float | None = None) -> np.ndarray:
        """Binary prediction ``(B, S, S)`` from *resized, un-normalised* maps ``m``.

        Equal, bit for bit, to thresholding the normalised map as the public code
        does: every normalisation ``f`` is non-decreasing, so the threshold ``t``
        is computed in normalised units (``np.sort(f(m))[k] == f(np.sort(m)[k])``)
        and mapped back to the smallest raw value ``x`` with ``f(x) >= t`` (``>``
        when strict) by :func:`ops.threshold_preimage`; the prediction is then
        ``m >= x``, one comparison, with no normalised map materialised.
        ``counts``: ground-truth box counts, for the adaptive K.
        """
        p = self.protocol
        n = m.shape[1] * m.shape[2]
        vmin: np.ndarray | None = None
        vmax: np.ndarray | None = None
        if p.normalize in ops.RANGE_MODES or p.binarize == "max_fraction" or p.keep_at_one:
            vmin, vmax = ops.map_range(m)

        def f(v: np.ndarray) -> np.ndarray:
            return ops.apply_normalization(v, p.normalize, p.norm_bounds, vmin, vmax)

        strict = p.strict
        if p.binarize == "median":
            t = f(ops.kth_smallest(m, n // 2))
        elif p.binarize == "fixed":
            t = np.full(len(m), p.binarize_threshold if threshold is None else threshold, dtype=np.float32)
        elif p.binarize == "max_fraction":
            assert vmax is not None
            t = np.float32(p.binarize_threshold) * f(vmax)
        elif p.binarize == "adaptive":
            # SSL-Alignment: K = non-zero GT pixels (n // 2 if none), thr = np.sort(flat)[n - K]
            k = ops.adaptive_k(ops.count_true(counts.reshape(len(counts), -1) > 0), n)
            t = f(ops.kth_smallest(m, n - np.clip(k, 1, n)))
        else:
            raise ConfigError(f"protocol {p.name}: unknown binarisation {p.binarize!r}")
        x = ops.threshold_preimage(f, t, strict, vmin, vmax)
        if p.keep_at_one:  # (f(m) > t) or (f(m) >= 1): both are upper sets of the raw values
            x = np.minimum(x, ops.threshold_preimage(f, np.ones(len(m), np.float32), False, vmin, vmax))
        return m >= x[:, None, None]

    def gt_counts(self, targets: Sequence[Target]) -> np.ndarray:
        """Per-pixel box counts ``(B, S, S)`` (per annotator when ``consensus_by_annotator``)."""
        p = self.protocol
        groups = None
        if p.gt == "consensus" and p.consensus_by_annotator:
            missing = [t.id for t in targets if t.box_annotator is None]
            if missing:
                raise DataError(f"protocol {p.name}: consensus_by_annotator needs box_annotator (missing on {missing[:3]})")
            groups = [np.asarray(t.box_annotator) for t in targets]
        return ops.box_count_maps([t.boxes for t in targets], p.eval_size, groups, p.box_negative,
                                  [t.box_wh for t in targets])

    def visible(self, targets: Sequence[Target]) -> np.ndarray:
        """Audible frames with a box, as SLAVC counts them: ``bb = bb[bb[:, 0] >= 0]``, ``bb > 0`` (test.py 177).

        Under ``box_negative="wrap"`` a box whose left pixel bound ``int(S * x1)`` is negative is not counted.
        """
        p = self.protocol
        out = np.zeros(len(targets), dtype=bool)
        for i, t in enumerate(targets):
            if not t.audible or not len(t.boxes):
                continue
            if p.box_negative == "wrap":
                out[i] = bool((np.trunc(np.clip(t.boxes[:, 0] * p.eval_size, -1e9, 1e9)) >= 0).any())
            else:
                out[i] = True
        return out

    def group_keys(self, targets: Sequence[Target]) -> list[str]:
        """IIoU groups: each sample's ``image_id``, or SSL-Alignment's name rule on its id (``iiou_group``)."""
        if self.protocol.iiou_group == "name_prefix":
            return [name_prefix_group(t.id) for t in targets]
        if self.protocol.iiou_group == "vggss_name_prefix":
            return [name_prefix_group(vggss_name(t.id)) for t in targets]
        return [t.image_id for t in targets]

    def score_maps(self, pred: np.ndarray, counts: np.ndarray) -> np.ndarray:
        """Per-sample cIoU against the protocol's ground truth (union or consensus)."""
        p = self.protocol
        return ciou_from_counts(pred, counts, p.consensus_divisor if p.gt == "consensus" else None)

    # ---- scoring: pure functions of (maps, targets) -> rows for the sub-accumulators ----
    def score(self, maps: np.ndarray, targets: Sequence[Target]) -> Scored:
        p = self.protocol
        arr = np.asarray(maps) if not hasattr(maps, "detach") else maps.detach().cpu().numpy()  # type: ignore[union-attr]
        if len(arr) != len(targets):
            raise DataError(f"{len(arr)} heatmaps for {len(targets)} samples")
        ids = [t.id for t in targets]
        if p.task in ("dsol_classaware", "qian_classaware"):
            return self._score_classaware(arr, targets)
        if arr.ndim == 4 and arr.shape[1] == 1:
            arr = arr[:, 0]
        if arr.ndim != 3:
            raise DataError(f"protocol {p.name} needs one 2-D heatmap per sample, got maps of shape {arr.shape}")
        if p.skip_empty_gt and p.task == "ciou" and not p.sweep:
            keep = np.array([len(t.boxes) > 0 for t in targets], dtype=bool)
            if not keep.all():
                return self._score_kept(arr, targets, keep)
        counts = self.gt_counts(targets)
        if p.task == "avsol":
            kinds = [_frame_kind(t) for t in targets]
            return [("avsol", {"maps": self.prepare_maps(arr), "gt": counts > 0, "kinds": kinds, "ids": ids})]
        m = self.resize(arr)
        if p.task == "realworld":
            return self._score_realworld(m, counts, targets)
        if p.task == "extended":
            scores = self.score_maps(self.predict(m, counts), counts)
            # confidence on the fixed-bound scores (SLAVC test.py 180-184), not on the relative prediction map
            conf = top_fraction_confidence(ops.normalize_maps(m, "fixed", p.norm_bounds), p.confidence_fraction)
            audible = self.visible(targets)
            aud_ids = [i for i, a in zip(ids, audible, strict=True) if a]
            return [
                ("ciou", {"scores": scores[audible], "ids": aud_ids}),
                ("extended", {"confidence": conf, "scores": scores, "audible": audible, "ids": ids}),
            ]
        if p.sweep:
            s = np.stack([self.score_maps(self.predict(m, counts, t), counts) for t in p.sweep], 1)  # (B, T)
            return [("sweep", {"scores": s, "ids": ids})]
        scores = self.score_maps(self.predict(m, counts), counts)
        return [("ciou", {"scores": scores, "ids": ids, "image_ids": self.group_keys(targets)})]

    def _score_kept(self, arr: np.ndarray, targets: Sequence[Target], keep: np.ndarray) -> Scored:
        """Score the kept samples; the others are recorded as skipped (``kept=False``)."""
        scores = np.full(len(targets), np.nan)
        if keep.any():
            kept_t = [t for t, k in zip(targets, keep, strict=True) if k]
            (_, sub), = self.score(arr[keep], kept_t)
            scores[keep] = sub["scores"]
        return [("ciou", {"scores": scores, "ids": [t.id for t in targets], "image_ids": self.group_keys(targets),
                          "kept": keep})]

    def _score_realworld(self, m: np.ndarray, counts: np.ndarray, targets: Sequence[Target]) -> Scored:
        """``realworld`` (:mod:`avloc.metrics.realworld`): median and adaptive cIoU and pointing of scored frames."""
        sel = np.array([t.scored and len(t.boxes) > 0 for t in targets], dtype=bool)
        kept = [t for t, s in zip(targets, sel, strict=True) if s]
        if not kept:
            z = np.zeros(0)
            return [("realworld", {"ids": [], "clips": [], "median": z, "adaptive": z, "pointing": z.astype(bool)})]
        m, counts = m[sel], counts[sel]
        median = self.score_maps(self.predict(m, counts), counts)
        adaptive = ProtocolAccumulator(dataclasses.replace(self.protocol, binarize="adaptive"))
        adapt = self.score_maps(adaptive.predict(m, counts), counts)
        return [("realworld", {
            "ids": [t.id for t in kept], "clips": [t.image_id for t in kept], "median": median, "adaptive": adapt,
            "pointing": ops.peak_in_box(m, counts > 0),
        })]

    def _score_classaware(self, arr: np.ndarray, targets: Sequence[Target]) -> Scored:
        p = self.protocol
        if arr.ndim != 4:
            raise DataError(f"protocol {p.name} needs class maps (B, C, h, w), got shape {arr.shape}")
        n_cls = arr.shape[1]
        pair_sample: list[int] = []
        pair_class: list[int] = []
        pair_boxes: list[np.ndarray] = []
        pair_wh: list[np.ndarray | None] = []
        silent_sample: list[int] = []
        silent_class: list[int] = []
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
            for c in classes:
                pair_sample.append(i)
                pair_class.append(c)
                lab = t.box_labels if t.box_labels is not None else np.zeros(0, dtype=np.int64)
                pair_boxes.append(t.boxes[lab == c])
                pair_wh.append(None if t.box_wh is None else t.box_wh[lab == c])
            silent = t.silent_labels if t.silent_labels is not None else [c for c in range(n_cls) if c not in classes]
            for c in silent:
                silent_sample.append(i)
                silent_class.append(int(c))
        n = len(targets)
        scores = np.full(n, np.nan)
        if pair_sample:
            ps = np.asarray(pair_sample)
            m = self.resize(arr[ps, np.asarray(pair_class)])
            counts = ops.box_count_maps(pair_boxes, p.eval_size, negative=p.box_negative, wh=pair_wh)
            pair_scores = ciou_from_counts(self.predict(m, counts), counts)
            scores = class_average(pair_scores, ps, n)
        nsa_sum = np.zeros(n)
        nsa_count = np.zeros(n)
        if silent_sample and p.task == "dsol_classaware":
            ss = np.asarray(silent_sample)
            ms = self.prepare_maps(arr[ss, np.asarray(silent_class)])
            np.add.at(nsa_sum, ss, no_sound_area(ms, p.nsa_threshold))
            np.add.at(nsa_count, ss, 1.0)
        # a kept frame without a sounding class scores NaN (np.mean of no cIoU), which never passes a threshold
        return [
            (
                "class",
                {
                    "scores": scores,
                    "ids": [t.id for t in targets],
                    "nsa_sum": nsa_sum,
                    "nsa_count": nsa_count,
                    "kept": kept,
                },
            )
        ]

    def add(self, scored: Scored) -> None:
        for name, kwargs in scored:
            self.subs[name].update(**kwargs)

    def update(self, maps: Any, targets: Mapping[str, Any] | Sequence[Mapping[str, Any] | Target]) -> None:
        """Score a batch and add it (in chunks, optionally on worker threads)."""
        tg = targets_from_batch(targets)
        if len(maps) != len(tg):
            raise DataError(f"{len(maps)} heatmaps for {len(tg)} samples")
        chunks = [
            (maps[i : i + self.chunk_size], tg[i : i + self.chunk_size]) for i in range(0, len(tg), self.chunk_size)
        ]
        if self.workers > 1 and len(chunks) > 1:
            with ThreadPoolExecutor(self.workers) as ex:  # NumPy releases the GIL in the heavy kernels
                results = list(ex.map(lambda c: self.score(*c), chunks))
        else:
            results = [self.score(*c) for c in chunks]
        for r in results:  # appended in order, on this thread
            self.add(r)

    # ---- results and merging ----
    def compute(self) -> dict[str, Any]:
        p = self.protocol
        out: dict[str, Any] = {"protocol": p.name}
        n_dup = 0
        for name, sub in self.subs.items():
            sub, dup = _dedupe(sub)
            n_dup = max(n_dup, dup)
            res = sub.compute()
            if name == "extended":
                out.update(res)
            else:
                for k, v in res.items():
                    out.setdefault(k, v)
        if p.score == "iou" and "mean_ciou" in out:
            out["mean_iou"] = out["mean_ciou"]
        out["n_duplicates"] = n_dup
        if p.expected_samples is not None:
            out["expected_n"] = p.expected_samples
        if p.tuned_on_test:
            out["tuned_on_test"] = True
        return out

    def higher_is_better(self, key: str) -> bool:
        """Direction of result ``key`` (from the metrics that produce it); :class:`ConfigError` for non-scores."""
        from avloc.metrics.base import score_direction

        dirs = [d for sub in self.subs.values() if (d := score_direction(sub.higher_is_better, key)) is not None]
        if not dirs:
            scores = sorted({k for sub in self.subs.values() for k in sub.higher_is_better})
            raise ConfigError(f"{key!r} is not a score of protocol {self.protocol.name} (scores: {scores})")
        return dirs[0]

    def state_dict(self) -> dict[str, dict[str, np.ndarray]]:
        return {name: sub.state_dict() for name, sub in self.subs.items()}

    def merge(self, other: ProtocolAccumulator | Mapping[str, Any]) -> ProtocolAccumulator:
        state = other.state_dict() if isinstance(other, ProtocolAccumulator) else other
        if set(state) != set(self.subs):
            raise DataError(
                f"cannot merge state with parts {sorted(state)} into protocol {self.protocol.name} ({sorted(self.subs)})"
            )
        for name, sub in self.subs.items():
            sub.merge(state[name])
        return self

    def load_state_dict(self, state: Mapping[str, Any]) -> ProtocolAccumulator:
        self.reset()
        return self.merge(state)

    def reset(self) -> None:
        for sub in self.subs.values():
            sub.reset()

    def empty_like(self) -> ProtocolAccumulator:
        return ProtocolAccumulator(self.protocol, self.workers, self.chunk_size)

    def __len__(self) -> int:
        return max(len(s) for s in self.subs.values())


def _dedupe(sub: Accumulator) -> tuple[Accumulator, int]:
    """Drop repeated sample ids (e.g. DistributedSampler padding), keeping the first; returns the count dropped."""
    ids = sub.state("id")
    if len(ids) == 0:
        return sub, 0
    _, first = np.unique(ids, return_index=True)
    if len(first) == len(ids):
        return sub, 0
    keep = np.sort(first)
    state = {k: v[keep] for k, v in sub.state_dict().items()}
    return sub.empty_like().merge(state), len(ids) - len(keep)


def _frame_kind(t: Target) -> int:
    """Index into FRAME_KINDS: AVE if a sounding box, else audible (out of view), visible (silent boxes), noise."""
    if len(t.boxes):
        return FRAME_KINDS.index("ave")
    if t.out_of_view or (t.onscreen is False and t.audible):
        return FRAME_KINDS.index("audible")
    if len(t.silent_boxes):
        return FRAME_KINDS.index("visible")
    return FRAME_KINDS.index("noise")


# ---------------------------------------------------------------- registry


def _register(base: Protocol) -> Protocol:
    def factory(**overrides: Any) -> Protocol:
        unknown = sorted(set(overrides) - {f.name for f in dataclasses.fields(Protocol)})
        if unknown:
            raise ConfigError(
                f"unknown protocol settings {unknown}; valid: {sorted(f.name for f in dataclasses.fields(Protocol))}"
            )
        return dataclasses.replace(base, **overrides)

    PROTOCOLS.register(base.name)(factory)
    return base


def create_protocol(name: str | Protocol, **overrides: Any) -> Protocol:
    """The registered protocol ``name`` with optional setting overrides (unknown names list the valid ones)."""
    if isinstance(name, Protocol):
        return dataclasses.replace(name, **overrides) if overrides else name
    return PROTOCOLS.create(name, **overrides)  # type: ignore[no-any-return]


def list_protocols() -> list[str]:
    return PROTOCOLS.names()


# Commits of the public repositories each protocol reproduces (docs/protocols.md gives file and lines).
LVS_REPO = "hche11/Localizing-Visual-Sounds-the-Hard-Way@8fe8cbbf810e804cf8cc9b244bb5d77ec8aa8315"
EZVSL_REPO = "stoneMo/EZ-VSL@95ff5bff30191fed11856699a7669419fa59b356"
SLAVC_REPO = "stoneMo/SLAVC@05b429c6f474ca6f1070d08e1d0142948d1625bf"
SSLALIGN_REPO = "kaistmm/SSLalignment@e7ae3c5518e5a4d911c49e034d906612cf922aff"
DSOL_REPO = "DTaoo/Discriminative-Sounding-Objects-Localization@7f402071e2d654e4ff82791bfb3d5218f19f20df"
QIAN_REPO = "shvdiwnkozbw/Multi-Source-Sound-Localization@de67ce37f34f776112cf9b3d61e105388afc4116"

_LVS = f"Chen et al., Localizing Visual Sounds the Hard Way, CVPR 2021 ({LVS_REPO} test.py)"
_EZVSL = f"Mo & Morgado, EZ-VSL, ECCV 2022 ({EZVSL_REPO} test.py validate; also FNAC)"
_SLAVC = f"Mo & Morgado, SLAVC, NeurIPS 2022 ({SLAVC_REPO} test.py validate, utils.py EvaluatorFull)"
_SSLALIGN = f"Senocak et al., Sound Source Localization is All about Cross-Modal Alignment, ICCV 2023 ({SSLALIGN_REPO}"
_ACLSSL = "Park et al., ACL-SSL (thresholds swept on sigmoid maps, best kept: tuned on the test set)"
_DSOL = f"Hu et al., Discriminative Sounding Objects Localization, NeurIPS 2020 ({DSOL_REPO}"
_QIAN = f"Qian et al., A Two-Stage Framework for Multiple Sound-Source Localization, ECCV 2020, Eq. 9 ({QIAN_REPO}"
_DNM = "Nishikawa et al., Dual Normalization Multitasking for AVSOL, Sec. 3.3 (HmBoxAUC, PiBR, PNSR)"

_flickr: dict[str, Any] = dict(gt="consensus", expected_samples=FLICKR_TEST_IDS, box_negative="wrap")  # XML: int(224 * v / 256)
_vggss: dict[str, Any] = dict(gt="union", expected_samples=VGGSS_TEST_IDS)  # json: clipped to [0, 1] (LVS: max(x, 0))
_DATASETS: tuple[tuple[str, dict[str, Any]], ...] = (("vggss", _vggss), ("flickr", _flickr))

# LVS test.py 80-88: cv2, 1 - minmax(-h), pred[pred > thr] = 1; pred[pred < 1] = 0; cal_CIOU(pred >= 0.5)
_lvs: dict[str, Any] = dict(source=_LVS, resize="cv2", normalize="lvs", strict=True, keep_at_one=True, published_inputs="audio 10 s tiled; image crop",
            notes="prediction = (pred > median) or (pred >= 1): a constant map >= 0 predicts all")
for _ds, _gt in _DATASETS:
    _register(Protocol(f"lvs-{_ds}", **_lvs, **_gt))

# avloc's real-footage dev set: the VGG-SS protocol of LVS test.py on full frames (median: pred > median), the
# adaptive cIoU of SSL-Alignment (pred > sort[n - K]) and pointing; see avloc.metrics.realworld
_register(
    Protocol(
        "realclips", task="realworld", source="avloc real-footage dev set (VGG-SS protocol of LVS test.py)",
        resize="cv2", normalize="lvs", strict=True, gt="union", published_inputs="image full frame",
        notes="hand-drawn boxes on full frames; median and adaptive cIoU >= 0.5, pointing; "
        "frames with scored=false skipped; image_id = clip (per-clip breakdown); with the frames' records: "
        "boxes, on/off-screen recalls, tiles, speaker, class-aware cIoU (avloc.metrics.realworld.frame_scores)",
    )
)

# EZ-VSL test.py 106-123 (also FNAC): F.interpolate bilinear align_corners, normalize_img, pred >= median
_ez: dict[str, Any] = dict(source=_EZVSL, resize="align_corners", normalize="minmax", strict=False)
for _ds, _gt in _DATASETS:
    _register(Protocol(f"ezvsl-{_ds}", **_ez, **_gt))

# SSL-Alignment: validate() (test.py 668-800; EZ-VSL / SLAVC / FNAC checkpoints) and validate_lvs() (338-536;
# its own models): binarisation `infer > thr` (utils.py 55/63), success / AUC / IIoU `>=` (69/74/119-133).
_ssl_paths: dict[str, dict[str, Any]] = {
    "": dict(source=_SSLALIGN + " test.py validate)", resize="align_corners", normalize="minmax"),
    "lvs-": dict(source=_SSLALIGN + " test.py validate_lvs)", normalize="lvs"),
}
for _path, _cfg in _ssl_paths.items():
    for _bin in ("median", "adaptive"):
        for _ds, _gt in _DATASETS:
            # validate_lvs resizes with cv2 on VGG-SS (test.py 371), bilinear align_corners on Flickr (438)
            _resize = _cfg.get("resize", "cv2" if _ds == "vggss" else "align_corners")
            _name = f"sslalign-{_path}{'adaptive-' if _bin == 'adaptive' else ''}{_ds}"
            _kw: dict[str, Any] = dict(_cfg, resize=_resize, binarize=_bin, strict=True, iiou=True, **_gt)
            _register(Protocol(_name, notes="IIoU over samples sharing image_id", **_kw))
            _register(
                Protocol(
                    f"{_name}-namegroups",
                    iiou_group="vggss_name_prefix" if _ds == "vggss" else "name_prefix",
                    notes="IIoU groups as test.py 743: the sample name without its last '_' field (VGG-SS names "
                    "are vgg_filename(file) = id_startms_endms)",
                    **_kw,
                )
            )
# earlier names, kept: same settings as the VGG-SS validate() protocols
_register(dataclasses.replace(create_protocol("sslalign-vggss"), name="sslalign"))
_register(dataclasses.replace(create_protocol("sslalign-adaptive-vggss"), name="sslalign-adaptive"))

# SLAVC test.py 161-205, utils.py 125-168 / 217-219: bicubic align_corners, scores in [-1/tau, 1/tau],
# relative prediction = normalize_img(scores) >= its median, confidence = float32 mean of the top 25%.
_slavc: dict[str, Any] = dict(task="extended", source=_SLAVC, resize="bicubic_align_corners", normalize="fixed_minmax",
              norm_bounds=(-1 / SLAVC_TAU, 1 / SLAVC_TAU), strict=False, published_inputs="audio 5 s centred; image squash")
for _suffix, _gt in (("", _vggss), ("-flickr", _flickr)):
    _register(Protocol(f"slavc-extended{_suffix}", notes="AP / F1 as SLAVC EvaluatorFull", **_slavc, **_gt))
    _register(
        Protocol(
            f"slavc-extended{_suffix}-allthr",
            ap_rule="all",
            notes="avloc variant: AP over every distinct confidence from recall 0, max-F1 over every threshold",
            **_slavc,
            **_gt,
        )
    )

for _gt_name, _gt in _DATASETS:
    _register(
        Protocol(
            f"aclssl-sweep-{_gt_name}",
            source=_ACLSSL,
            normalize="none",
            binarize="fixed",
            sweep=ACLSSL_SWEEP,
            tuned_on_test=True,
            published_inputs="audio 10 s at 16 kHz",
            notes="labelled variant: the threshold is tuned on the test set; maps must already be sigmoid outputs",
            **{**_gt, "box_negative": "clip"},
        )
    )
_register(
    Protocol(
        "dsol-music",
        source=_DSOL + " music-exp/tools.py cal_ciou; single-source MUSIC; also the proposal paper)",
        resize="cv2",
        normalize="none",
        binarize="max_fraction",
        binarize_threshold=MUSIC_MAX_FRACTION,
        strict=True,
        score="iou",
        box_negative="wrap",
        skip_empty_gt=True,
        published_inputs="audio 1 s at 16 kHz",
        notes="prediction = pixels > 0.1 x max; IoU with the union of boxes; frames without boxes skipped",
    )
)
_dsol_ca: dict[str, Any] = dict(
    task="dsol_classaware",
    resize="cv2",
    normalize="none",
    binarize="max_fraction",
    strict=True,
    extra_thresholds=DSOL_EXTRA_THRESHOLDS,
    score="iou",
    box_negative="wrap",
    published_inputs="audio 1 s at 16 kHz",
)
_register(
    Protocol(
        "dsol-classaware",
        source=_DSOL + " music-exp/eval.py)",
        binarize_threshold=DSOL_CLASS_MAX_FRACTION,
        notes="per sounding class: class map > 0.5 x max, IoU with that class's boxes, mean over classes; "
        "NSA: mean over a frame's silent classes, then over frames",
        **_dsol_ca,
    )
)
_register(
    Protocol(
        "dsol-duet",
        source=_DSOL + " music-exp/eval_duet.py)",
        binarize_threshold=DSOL_DUET_MAX_FRACTION,
        skip_empty_gt=True,
        notes="as dsol-classaware with class map > 0.2 x max; frames without boxes skipped",
        **_dsol_ca,
    )
)
_register(
    Protocol(
        "qian-classaware",
        task="qian_classaware",
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
    )
)
_register(
    Protocol(
        "avsol",
        task="avsol",
        source=_DNM,
        resize="cv2",
        normalize="none",
        published_inputs="audio per frame at 10 fps",
        notes="HmBoxAUC and PiBR over AVE frames; PNSR over non-AVE frames (all / visible / audible / noise)",
    )
)
