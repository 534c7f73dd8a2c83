"""cIoU protocols: one binarised heatmap per sample against the union or consensus of its boxes.

* :class:`CIoUProtocol` / :class:`CIoUScorer`: success rate, AUC and mean cIoU (IIoU / IAUC for
  SSL-Alignment), the protocols of LVS, EZ-VSL (also FNAC), SSL-Alignment and DSOL's single-source
  MUSIC (:class:`avloc.metrics.localization.CIoU`);
* :class:`SweepProtocol` / :class:`SweepScorer`: ACL-SSL's sweep of absolute thresholds, the best kept
  (tuned on the test set; :class:`avloc.metrics.localization.ThresholdSweep`).

Settings and sources: ``docs/protocols.md``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

import numpy as np

from avloc.errors import ConfigError
from avloc.metrics.base import Accumulator
from avloc.metrics.localization import CIoU, ThresholdSweep, name_prefix_group, vggss_name
from avloc.metrics.protocols.base import (
    DSOL_READING,
    DSOL_SOURCE,
    EZVSL_REPO,
    LVS_REPO,
    MUSIC_MAX_FRACTION,
    SSLALIGN_REPO,
    TEST_SETS,
    Protocol,
    ProtocolAccumulator,
    Scored,
    register_protocol,
)
from avloc.metrics.targets import Target

# ACL-SSL: absolute thresholds 0.05, 0.10, ..., 0.95 on sigmoid maps, best kept (tuned on the test set).
ACLSSL_SWEEP = tuple(round(0.05 * i, 2) for i in range(1, 20))


def _check_fixed_threshold(p: Protocol) -> None:
    if p.binarize == "fixed" and not (0 <= p.binarize_threshold <= 1) and p.normalize != "none":
        raise ConfigError(f"protocol {p.name}: a fixed threshold on normalised maps must be in [0, 1]")


@dataclass(frozen=True)
class CIoUProtocol(Protocol):
    """A cIoU protocol: the shared settings plus empty-frame skipping and the IIoU grouping."""

    skip_empty_gt: bool = False  # samples without any box are skipped (DSOL tools.py), reported with kept=False
    iiou: bool = False
    # name_prefix: SSL-Alignment test.py 743 on the id; vggss_name_prefix: on its VGG-SS name (vgg_filename)
    iiou_group: Literal["image_id", "name_prefix", "vggss_name_prefix"] = "image_id"

    task: ClassVar[str] = "ciou"
    scorer: ClassVar[type[ProtocolAccumulator]]

    def __post_init__(self) -> None:
        super().__post_init__()
        _check_fixed_threshold(self)


class CIoUScorer(ProtocolAccumulator):
    """Per-sample cIoU of the binarised map (:class:`CIoU`: success, AUC, mean; IIoU when asked)."""

    protocol: CIoUProtocol

    def make_subs(self) -> dict[str, Accumulator]:
        p = self.protocol
        return {"ciou": CIoU(p.success_threshold, p.success_op, p.auc_steps, with_iiou=p.iiou)}

    def group_keys(self, targets: Sequence[Target]) -> list[str]:
        """IIoU groups: each sample's ``image_id``, or SSL-Alignment's name rule on its id (``iiou_group``)."""
        if self.protocol.iiou_group == "name_prefix":
            return [name_prefix_group(t.id) for t in targets]
        if self.protocol.iiou_group == "vggss_name_prefix":
            return [name_prefix_group(vggss_name(t.id)) for t in targets]
        return [t.image_id for t in targets]

    def score_batch(self, arr: np.ndarray, targets: Sequence[Target]) -> Scored:
        if self.protocol.skip_empty_gt:
            keep = np.array([len(t.boxes) > 0 for t in targets], dtype=bool)
            if not keep.all():
                return self._score_kept(arr, targets, keep)
        counts = self.reader.gt_counts(targets)
        m = self.reader.resize(arr)
        scores = self.reader.ciou(self.reader.binarize(m, counts), counts)
        return [("ciou", {"scores": scores, "ids": [t.id for t in targets], "image_ids": self.group_keys(targets)})]

    def _score_kept(self, arr: np.ndarray, targets: Sequence[Target], keep: np.ndarray) -> Scored:
        """Score the kept samples; the others are recorded as skipped (``kept=False``)."""
        scores = np.full(len(targets), np.nan)
        if keep.any():
            kept_t = [t for t, k in zip(targets, keep, strict=True) if k]
            (_, sub), = self.score_batch(arr[keep], kept_t)
            scores[keep] = sub["scores"]
        return [("ciou", {"scores": scores, "ids": [t.id for t in targets], "image_ids": self.group_keys(targets),
                          "kept": keep})]


@dataclass(frozen=True)
class SweepProtocol(Protocol):
    """A threshold sweep: cIoU at each absolute threshold of ``sweep``, the best kept (a labelled tuned variant)."""

    sweep: tuple[float, ...] = ACLSSL_SWEEP

    task: ClassVar[str] = "sweep"
    scorer: ClassVar[type[ProtocolAccumulator]]

    def __post_init__(self) -> None:
        super().__post_init__()
        if not self.sweep:
            raise ConfigError(f"protocol {self.name}: sweep needs at least one threshold")
        _check_fixed_threshold(self)


class SweepScorer(ProtocolAccumulator):
    """cIoU of every sample at every threshold of the sweep (:class:`ThresholdSweep`)."""

    protocol: SweepProtocol

    def make_subs(self) -> dict[str, Accumulator]:
        p = self.protocol
        return {"sweep": ThresholdSweep(p.sweep, p.success_threshold, p.success_op, p.auc_steps)}

    def score_batch(self, arr: np.ndarray, targets: Sequence[Target]) -> Scored:
        counts = self.reader.gt_counts(targets)
        m = self.reader.resize(arr)
        s = np.stack([self.reader.ciou(self.reader.binarize(m, counts, t), counts) for t in self.protocol.sweep], 1)
        return [("sweep", {"scores": s, "ids": [t.id for t in targets]})]  # s: (B, T)


CIoUProtocol.scorer = CIoUScorer
SweepProtocol.scorer = SweepScorer

# ---------------------------------------------------------------- the registered protocols

_LVS = f"Chen et al., Localizing Visual Sounds the Hard Way, CVPR 2021 ({LVS_REPO} test.py)"
_EZVSL = f"Mo & Morgado, EZ-VSL, ECCV 2022 ({EZVSL_REPO} test.py validate; also FNAC)"
_SSLALIGN = f"Senocak et al., Sound Source Localization is All about Cross-Modal Alignment, ICCV 2023 ({SSLALIGN_REPO}"
_ACLSSL = "Park et al., ACL-SSL (thresholds swept on sigmoid maps, best kept: tuned on the test set)"


_made: dict[str, Protocol] = {}


def _register(p: Protocol) -> Protocol:
    _made[p.name] = register_protocol(p, __name__)
    return p


# LVS test.py 80-88: cv2, 1 - minmax(-h), pred[pred > thr] = 1; pred[pred < 1] = 0; cal_CIOU(pred >= 0.5)
_lvs: dict[str, Any] = dict(source=_LVS, resize="cv2", normalize="lvs", strict=True, keep_at_one=True,
                            published_inputs="audio 10 s tiled; image crop",
                            notes="prediction = (pred > median) or (pred >= 1): a constant map >= 0 predicts all")
for _ds, _gt in TEST_SETS:
    _register(CIoUProtocol(f"lvs-{_ds}", **_lvs, **_gt))

# EZ-VSL test.py 106-123 (also FNAC): F.interpolate bilinear align_corners, normalize_img, pred >= median
_ez: dict[str, Any] = dict(source=_EZVSL, resize="align_corners", normalize="minmax", strict=False)
for _ds, _gt in TEST_SETS:
    _register(CIoUProtocol(f"ezvsl-{_ds}", **_ez, **_gt))

# SSL-Alignment: validate() (test.py 668-800; EZ-VSL / SLAVC / FNAC checkpoints) and validate_lvs() (338-536;
# its own models): binarisation `infer > thr` (utils.py 55/63), success / AUC / IIoU `>=` (69/74/119-133).
_ssl_paths: dict[str, dict[str, Any]] = {
    "": dict(source=_SSLALIGN + " test.py validate)", resize="align_corners", normalize="minmax"),
    "lvs-": dict(source=_SSLALIGN + " test.py validate_lvs)", normalize="lvs"),
}
for _path, _cfg in _ssl_paths.items():
    for _bin in ("median", "adaptive"):
        for _ds, _gt in TEST_SETS:
            # validate_lvs resizes with cv2 on VGG-SS (test.py 371), bilinear align_corners on Flickr (438)
            _resize = _cfg.get("resize", "cv2" if _ds == "vggss" else "align_corners")
            _name = f"sslalign-{_path}{'adaptive-' if _bin == 'adaptive' else ''}{_ds}"
            _kw: dict[str, Any] = dict(_cfg, resize=_resize, binarize=_bin, strict=True, iiou=True, **_gt)
            _register(CIoUProtocol(_name, notes="IIoU over samples sharing image_id", **_kw))
            _register(
                CIoUProtocol(
                    f"{_name}-namegroups",
                    iiou_group="vggss_name_prefix" if _ds == "vggss" else "name_prefix",
                    notes="IIoU groups as test.py 743: the sample name without its last '_' field (VGG-SS names "
                    "are vgg_filename(file) = id_startms_endms)",
                    **_kw,
                )
            )
# earlier names, kept: same settings as the VGG-SS validate() protocols
_register(dataclasses.replace(_made["sslalign-vggss"], name="sslalign"))
_register(dataclasses.replace(_made["sslalign-adaptive-vggss"], name="sslalign-adaptive"))

for _gt_name, _gt in TEST_SETS:
    _register(
        SweepProtocol(
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
    CIoUProtocol(
        "dsol-music",
        source=DSOL_SOURCE + " music-exp/tools.py cal_ciou; single-source MUSIC; also the proposal paper)",
        binarize_threshold=MUSIC_MAX_FRACTION,
        skip_empty_gt=True,
        **DSOL_READING,
        notes="prediction = pixels > 0.1 x max; IoU with the union of boxes; frames without boxes skipped",
    )
)
