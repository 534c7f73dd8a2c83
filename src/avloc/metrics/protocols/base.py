"""What every protocol shares: its settings, the map reading, and the accumulating scorer around a task.

* :class:`Protocol`: the typed, frozen config of one named protocol -- how a raw map is read
  (resize, normalise, binarise), how the ground truth is drawn and how a sample counts as a
  success. Each task subclasses it (:mod:`avloc.metrics.protocols.ciou`, ``extended``,
  ``classaware``, ``avsol``, ``realworld``), adds its own settings and declares, in one place,
  what it needs from :func:`avloc.engine.predict.predict` (``prediction``: one map per sample,
  or one map per class) and which scorer accumulates it (``scorer``).
* :class:`MapReader`: the shared map reading every scorer uses (the one place resizing,
  normalisation and binarisation happen), and the ground-truth box counts on the evaluation grid.
* :class:`ProtocolAccumulator`: the scorer base. ``update(maps, targets)`` scores chunks (optionally
  on threads) into the task's metric accumulators; ``compute()`` returns one flat dict;
  ``state_dict()`` / ``merge()`` make it mergeable across processes.

Sources and the exact settings of each protocol are in ``docs/protocols.md`` (facts from
``../shared/docs/PROTOCOLS.md``). Constants live next to the paper they come from.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

import numpy as np

from avloc.errors import ConfigError, DataError
from avloc.metrics import ops
from avloc.metrics.base import Accumulator
from avloc.metrics.localization import SuccessOp, ciou_from_counts
from avloc.metrics.targets import Target, targets_from_batch
from avloc.registry import PROTOCOLS

Binarize = Literal["median", "fixed", "max_fraction", "adaptive"]
#: what a protocol scores: one heatmap per sample (``localize``) or one map per class (``localize_classes``)
Prediction = Literal["maps", "class_maps"]

# Evaluation grid of LVS / EZ-VSL / SLAVC / DSOL: the 224x224 model input.
EVAL_SIZE = 224
# Flickr consensus: a pixel counts fully when 2 of the 3 annotators' boxes cover it (Senocak et al. 2018).
FLICKR_CONSENSUS_DIVISOR = 2.0
# Flickr-SoundNet test list: 249 ids in LVS / EZ-VSL (3908875350 missing), 250 in the original.
FLICKR_TEST_IDS = 249
VGGSS_TEST_IDS = 5158
# MUSIC single and multiple sources (DSOL, the proposal paper, Qian et al.): prediction > 0.1 x max.
MUSIC_MAX_FRACTION = 0.1

#: the ground truth of the two test sets, as every public code reads them
VGGSS_GT: dict[str, Any] = dict(gt="union", expected_samples=VGGSS_TEST_IDS)  # json: clipped to [0, 1] (LVS: max(x, 0))
FLICKR_GT: dict[str, Any] = dict(gt="consensus", expected_samples=FLICKR_TEST_IDS, box_negative="wrap")  # XML: int(224 * v / 256)
TEST_SETS: tuple[tuple[str, dict[str, Any]], ...] = (("vggss", VGGSS_GT), ("flickr", FLICKR_GT))

# Commits of the public repositories the protocols reproduce (docs/protocols.md gives file and lines).
LVS_REPO = "hche11/Localizing-Visual-Sounds-the-Hard-Way@8fe8cbbf810e804cf8cc9b244bb5d77ec8aa8315"
EZVSL_REPO = "stoneMo/EZ-VSL@95ff5bff30191fed11856699a7669419fa59b356"
SLAVC_REPO = "stoneMo/SLAVC@05b429c6f474ca6f1070d08e1d0142948d1625bf"
SSLALIGN_REPO = "kaistmm/SSLalignment@e7ae3c5518e5a4d911c49e034d906612cf922aff"
DSOL_REPO = "DTaoo/Discriminative-Sounding-Objects-Localization@7f402071e2d654e4ff82791bfb3d5218f19f20df"
QIAN_REPO = "shvdiwnkozbw/Multi-Source-Sound-Localization@de67ce37f34f776112cf9b3d61e105388afc4116"
#: how DSOL's MUSIC code reads a map (music-exp/tools.py, eval.py, eval_duet.py): cv2 resize, raw values, pixels
#: above a fraction of the max (each protocol sets the fraction), IoU, negative box bounds wrapping as NumPy slices
DSOL_READING: dict[str, Any] = dict(resize="cv2", normalize="none", binarize="max_fraction", strict=True, score="iou",
                                    box_negative="wrap", published_inputs="audio 1 s at 16 kHz")
#: a paper named with its evaluation code, ``... ({repo} `` + the file, closed by each protocol
DSOL_SOURCE = f"Hu et al., Discriminative Sounding Objects Localization, NeurIPS 2020 ({DSOL_REPO}"


@dataclass(frozen=True)
class Protocol:
    """The settings every protocol has: map reading, ground truth, success test (``docs/protocols.md``)."""

    name: str
    source: str = ""
    eval_size: int = EVAL_SIZE
    resize: ops.ResizeMode = "align_corners"
    normalize: ops.NormalizeMode = "minmax"
    norm_bounds: tuple[float, float] = (0.0, 1.0)
    binarize: Binarize = "median"
    binarize_threshold: float = 0.5  # fixed threshold, or fraction of the max
    strict: bool = False  # prediction = map > thr (True) or map >= thr (False)
    keep_at_one: bool = False  # LVS test.py: also keep pixels whose normalised value is >= 1 (pred[pred < 1] = 0)
    gt: Literal["union", "consensus"] = "union"
    consensus_divisor: float = FLICKR_CONSENSUS_DIVISOR
    consensus_by_annotator: bool = False  # public code sums every box; True unites each annotator's boxes first
    box_negative: ops.BoxNegative = "clip"  # "wrap": negative pixel bounds index from the far edge, as NumPy slices
    success_threshold: float = 0.5
    success_op: SuccessOp = ">="
    auc_steps: int = 21
    score: Literal["ciou", "iou"] = "ciou"
    expected_samples: int | None = None
    tuned_on_test: bool = False
    # what the source's code feeds its models (audio window, image transform), for the report only: scoring
    # never changes a model's inputs -- each model keeps the preprocessing saved in its checkpoint
    published_inputs: str = "audio 3 s centred; image squash"
    notes: str = ""

    #: the task, as docs/protocols.md names it
    task: ClassVar[str] = ""
    #: what the task needs from ``predict``: one map per sample or one map per class
    prediction: ClassVar[Prediction] = "maps"
    #: the accumulator class that scores this task
    scorer: ClassVar[type[ProtocolAccumulator]]

    def __post_init__(self) -> None:
        if self.eval_size < 1:
            raise ConfigError(f"protocol {self.name}: eval_size must be positive, got {self.eval_size}")

    def accumulator(self, workers: int = 1, chunk_size: int = 256) -> ProtocolAccumulator:
        return self.scorer(self, workers=workers, chunk_size=chunk_size)

    def higher_is_better(self, key: str) -> bool:
        """Whether result ``key`` of this protocol is better higher; :class:`ConfigError` when it is not a score."""
        return self.accumulator().higher_is_better(key)

    def describe(self) -> dict[str, Any]:
        """The protocol's settings and task as a plain dict (for reports and run directories)."""
        d = dataclasses.asdict(self)
        return {"task": self.task, **{k: list(v) if isinstance(v, tuple) else v for k, v in d.items()}}


class MapReader:
    """The map reading every protocol shares: raw maps -> the binary prediction the public code thresholds."""

    def __init__(self, protocol: Protocol) -> None:
        self.protocol = protocol

    def resize(self, maps: np.ndarray) -> np.ndarray:
        """Raw ``(B, h, w)`` maps -> resized float32 ``(B, S, S)`` (not normalised)."""
        p = self.protocol
        return ops.resize_maps(maps, (p.eval_size, p.eval_size), p.resize)

    def normalize(self, m: np.ndarray) -> np.ndarray:
        """Resized maps -> the protocol's normalised values (what the public code thresholds)."""
        p = self.protocol
        return ops.normalize_maps(m, p.normalize, p.norm_bounds)

    def prepare(self, maps: np.ndarray) -> np.ndarray:
        """Raw ``(B, h, w)`` maps -> resized, normalised float32 ``(B, S, S)``."""
        return self.normalize(self.resize(maps))

    def binarize(
        self, m: np.ndarray, counts: np.ndarray, threshold: float | None = None, rule: Binarize | None = None
    ) -> np.ndarray:
        """Binary prediction ``(B, S, S)`` from *resized, un-normalised* maps ``m``.

        Equal, bit for bit, to thresholding the normalised map as the public code
        does: every normalisation ``f`` is non-decreasing, so the threshold ``t``
        is computed in normalised units (``np.sort(f(m))[k] == f(np.sort(m)[k])``)
        and mapped back to the smallest raw value ``x`` with ``f(x) >= t`` (``>``
        when strict) by :func:`ops.threshold_preimage`; the prediction is then
        ``m >= x``, one comparison, with no normalised map materialised.
        ``counts``: ground-truth box counts, for the adaptive K. ``threshold``: a fixed
        threshold instead of the protocol's; ``rule``: a binarisation instead of the protocol's.
        """
        p = self.protocol
        rule = p.binarize if rule is None else rule
        n = m.shape[1] * m.shape[2]
        vmin: np.ndarray | None = None
        vmax: np.ndarray | None = None
        if p.normalize in ops.RANGE_MODES or rule == "max_fraction" or p.keep_at_one:
            vmin, vmax = ops.map_range(m)

        def f(v: np.ndarray) -> np.ndarray:
            return ops.apply_normalization(v, p.normalize, p.norm_bounds, vmin, vmax)

        if rule == "median":
            t = f(ops.kth_smallest(m, n // 2))
        elif rule == "fixed":
            t = np.full(len(m), p.binarize_threshold if threshold is None else threshold, dtype=np.float32)
        elif rule == "max_fraction":
            assert vmax is not None
            t = np.float32(p.binarize_threshold) * f(vmax)
        elif rule == "adaptive":
            # SSL-Alignment: K = non-zero GT pixels (n // 2 if none), thr = np.sort(flat)[n - K]
            k = ops.adaptive_k(ops.count_true(counts.reshape(len(counts), -1) > 0), n)
            t = f(ops.kth_smallest(m, n - np.clip(k, 1, n)))
        else:
            raise ConfigError(f"protocol {p.name}: unknown binarisation {rule!r}")
        x = ops.threshold_preimage(f, t, p.strict, vmin, vmax)
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

    def ciou(self, pred: np.ndarray, counts: np.ndarray) -> np.ndarray:
        """Per-sample cIoU of binary predictions against the protocol's ground truth (union or consensus)."""
        p = self.protocol
        return ciou_from_counts(pred, counts, p.consensus_divisor if p.gt == "consensus" else None)


Scored = list[tuple[str, dict[str, Any]]]


class ProtocolAccumulator:
    """Feeds maps + ground truth through a protocol into its task's metric accumulators.

    ``update(maps, targets)``: ``maps`` ``(B, h, w)`` raw heatmaps of any size (``(B, C, h, w)`` class
    maps when the protocol's ``prediction`` is ``class_maps``), ``targets`` a list of sample dicts /
    :class:`Target` or a collated batch. ``compute()`` returns a flat dict of results. ``state_dict()`` /
    ``merge()`` make it mergeable across processes (:func:`avloc.metrics.base.gather`).

    A task subclasses it: :meth:`make_subs` (its metric accumulators) and :meth:`score_batch` (a pure
    function of (maps, targets) -> rows for them).
    """

    #: sub-accumulators whose results override those of earlier ones (others: the first value of a key is kept)
    overriding: ClassVar[frozenset[str]] = frozenset()

    def __init__(self, protocol: Protocol, workers: int = 1, chunk_size: int = 256) -> None:
        self.protocol = protocol
        self.reader = MapReader(protocol)
        self.workers = max(1, int(workers))
        self.chunk_size = max(1, int(chunk_size))
        self.subs: dict[str, Accumulator] = self.make_subs()

    def make_subs(self) -> dict[str, Accumulator]:
        raise NotImplementedError

    def score_batch(self, arr: np.ndarray, targets: Sequence[Target]) -> Scored:
        """Rows for the sub-accumulators from maps already checked against ``protocol.prediction``."""
        raise NotImplementedError

    # ---- scoring: pure functions of (maps, targets) -> rows for the sub-accumulators ----
    def score(self, maps: Any, targets: Sequence[Target]) -> Scored:
        """Check the maps against what the protocol declares it needs, then score them."""
        p = self.protocol
        arr = np.asarray(maps) if not hasattr(maps, "detach") else maps.detach().cpu().numpy()
        if len(arr) != len(targets):
            raise DataError(f"{len(arr)} heatmaps for {len(targets)} samples")
        if p.prediction == "class_maps":
            if arr.ndim != 4:
                raise DataError(f"protocol {p.name} needs class maps (B, C, h, w), got shape {arr.shape}")
        else:
            if arr.ndim == 4 and arr.shape[1] == 1:
                arr = arr[:, 0]
            if arr.ndim != 3:
                raise DataError(f"protocol {p.name} needs one 2-D heatmap per sample, got maps of shape {arr.shape}")
        return self.score_batch(arr, targets)

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
            if name in self.overriding:
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
        return type(self)(self.protocol, self.workers, self.chunk_size)

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


# ---------------------------------------------------------------- registration


def register_protocol(base: Protocol, module: str) -> Protocol:
    """Register ``base`` under its name from ``module`` (the PROTOCOLS table lists it there).

    The registered factory returns ``base`` with setting overrides; a setting its class does not have raises
    listing the valid ones.
    """
    valid = sorted(f.name for f in dataclasses.fields(base))

    def factory(**overrides: Any) -> Protocol:
        unknown = sorted(set(overrides) - set(valid))
        if unknown:
            raise ConfigError(f"unknown protocol settings {unknown}; valid: {valid}")
        return dataclasses.replace(base, **overrides)

    PROTOCOLS.register(base.name, module=module)(factory)
    return base
