"""Evaluation metrics and the named protocols of the field (see ``docs/protocols.md``).

The protocols are listed in :data:`avloc.registry.PROTOCOLS`, which imports a protocol's task module
when it is asked for; importing this package registers nothing.
NumPy (and OpenCV); torch only for resizing when it is already imported (see :func:`ops.resize_maps`).
"""

from __future__ import annotations

from avloc.metrics import ops
from avloc.metrics.avc import avc_accuracy, roc_auc
from avloc.metrics.avsol import AVSOLMetrics, avsol_summary, masked_max, pixel_average_precision
from avloc.metrics.base import Accumulator, gather
from avloc.metrics.classaware import ClassAwareCIoU, class_average, no_sound_area
from avloc.metrics.extended import ExtendedAP, extended_ap, precision_recall, top_fraction_confidence
from avloc.metrics.localization import (
    CIoU,
    ThresholdSweep,
    adaptive_ciou,
    auc_thresholds,
    ciou,
    iiou,
    success_summary,
)
from avloc.metrics.onscreen import OnscreenAccuracy, median_distance_threshold, onscreen_accuracy
from avloc.metrics.ops import in_boxes, peak_in_box, peak_places, peak_points
from avloc.metrics.protocols import Protocol, ProtocolAccumulator, create_protocol, list_protocols
from avloc.metrics.targets import Target, targets_from_batch, to_target

__all__ = [
    "AVSOLMetrics",
    "Accumulator",
    "CIoU",
    "ClassAwareCIoU",
    "ExtendedAP",
    "OnscreenAccuracy",
    "Protocol",
    "ProtocolAccumulator",
    "Target",
    "ThresholdSweep",
    "adaptive_ciou",
    "auc_thresholds",
    "avc_accuracy",
    "avsol_summary",
    "ciou",
    "class_average",
    "create_protocol",
    "extended_ap",
    "gather",
    "iiou",
    "in_boxes",
    "list_protocols",
    "masked_max",
    "median_distance_threshold",
    "no_sound_area",
    "onscreen_accuracy",
    "ops",
    "peak_in_box",
    "peak_places",
    "peak_points",
    "pixel_average_precision",
    "precision_recall",
    "roc_auc",
    "success_summary",
    "targets_from_batch",
    "to_target",
    "top_fraction_confidence",
]
