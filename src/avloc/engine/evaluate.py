"""The one evaluation path: training-time validation, ``avloc eval`` and the benchmarks all use it.

* :func:`evaluate_model` is :func:`avloc.engine.predict.predict` (the model's maps, computed once) then
  :meth:`~avloc.engine.predict.Predictions.score`; class-aware protocols (``dsol-classaware``,
  ``qian-classaware``) use the class maps of ``localize_classes`` (``Capability.CLASSES``) and fail with a
  clear message when the method does not declare it;
* :func:`evaluate_predictions` feeds saved heatmaps (``id -> 2-D map``) to the
  same accumulator.

Both return ``ProtocolAccumulator.compute()`` (see :mod:`avloc.metrics.protocols`).
torch is imported only inside :func:`evaluate_model`, so scoring saved
predictions stays light.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from avloc.errors import DataError
from avloc.io.arrays import NpzArchive
from avloc.metrics.protocols import Protocol, create_protocol
from avloc.metrics.targets import Target, to_target

#: most bytes of float32 maps stacked into one scoring batch (saved predictions): memory stays bounded whatever
#: the maps' size (512 maps of 224 x 224 are 98 MiB)
BATCH_BYTES = 256 * 2**20

if TYPE_CHECKING:
    import torch

    from avloc.methods.base import LocalizationMethod
    from avloc.metrics.realworld import FramePrediction


def evaluate_model(
    model: LocalizationMethod,
    data: Any,
    protocol: str | Protocol,
    device: str | torch.device = "cpu",
    progress: bool = True,
    batch_size: int = 32,
    num_workers: int = 0,
    max_batches: int | None = None,
    feature_cache: str | Path | None = None,
) -> dict[str, Any]:
    """Evaluate ``model`` on ``data`` (a Dataset of sample dicts, or an iterable of collated batches).

    :func:`avloc.engine.predict.predict` then :meth:`~avloc.engine.predict.Predictions.score`: batches need
    ``id``, ``image`` (B, 3, H, W), ``audio`` (B, N) and the ground-truth keys the protocol uses (``boxes``;
    ``box_labels`` / ``labels`` for class-aware protocols). Class-agnostic protocols use ``localize``
    (``(B, h, w)`` heatmaps); class-aware ones the maps of ``localize_classes`` (``Capability.CLASSES``).
    Under torch.distributed, each process evaluates its shard and the accumulators are merged (duplicate ids
    from sampler padding are dropped and counted).
    """
    from avloc.engine.predict import outputs_for, predict
    from avloc.methods.base import Capability, require

    proto = create_protocol(protocol)
    if proto.prediction == "class_maps":
        require(model, Capability.CLASSES, f"protocol {proto.name} scores one map per sounding class")
    preds = predict(model, data, outputs=outputs_for([proto]), device=device, batch_size=batch_size,
                    num_workers=num_workers, max_batches=max_batches, progress=progress, feature_cache=feature_cache)
    return preds.score(proto)


def evaluate_predictions(
    preds: Mapping[str, np.ndarray],
    gts: Sequence[Target | Mapping[str, Any]] | Mapping[str, Target | Mapping[str, Any]],
    protocol: str | Protocol,
    workers: int = 2,
    batch_size: int = 512,
    chunk_size: int = 16,
    onscreen: Mapping[str, float] | None = None,
    frames: Mapping[str, FramePrediction] | None = None,
) -> dict[str, Any]:
    """Score saved heatmaps: ``preds`` maps each ground-truth id to a raw 2-D map (3-D class maps for class-aware).

    ``onscreen``: optional predicted P(source visible) per id; every target with an on/off-screen label
    then needs one, and the result gains balanced accuracy, both recalls, accuracy and calibration error
    (:func:`avloc.metrics.realworld.onscreen_summary`). ``frames``: optional per-frame records (boxes, peak,
    speaker, heard sources and their maps) of every id; the result gains the box, tile, speaker and class-aware
    scores of :func:`avloc.metrics.realworld.frame_scores`.

    Every ground-truth sample needs a prediction (missing ones raise with
    examples); predictions without ground truth are counted in
    ``n_unused_predictions``. Maps of different sizes are fine (grouped by shape).
    Batches of ``batch_size`` maps (fewer when they would exceed :data:`BATCH_BYTES`) are scored in chunks of ``chunk_size`` on
    ``workers`` threads (small chunks keep the 224x224 intermediates in cache).
    """
    targets = [to_target(g) for g in (gts.values() if isinstance(gts, Mapping) else gts)]
    if not targets:
        raise DataError("no ground-truth samples to evaluate")
    missing = [t.id for t in targets if t.id not in preds]
    if missing:
        raise DataError(
            f"{len(missing)} of {len(targets)} ground-truth ids have no prediction, e.g. {missing[:3]}; "
            "the predictions file must hold one map per clip id"
        )
    proto = create_protocol(protocol)
    acc = proto.accumulator(workers=workers, chunk_size=chunk_size)
    shape_of = preds.shape if isinstance(preds, NpzArchive) else (lambda key: np.shape(preds[key]))  # headers: no read
    by_shape: dict[tuple[int, ...], list[Target]] = {}
    for t in targets:
        by_shape.setdefault(tuple(shape_of(t.id)), []).append(t)
    for shape, group in by_shape.items():
        step = max(1, min(batch_size, BATCH_BYTES // max(1, 4 * math.prod(shape))))  # float32 maps per batch
        for start in range(0, len(group), step):
            part = group[start : start + step]
            acc.update(np.stack([np.asarray(preds[t.id], dtype=np.float32) for t in part]), part)
    out = acc.compute()
    out["n_unused_predictions"] = len(set(preds) - {t.id for t in targets})
    if onscreen is not None:
        from avloc.metrics.realworld import OnscreenMetrics

        labelled = [t for t in targets if t.onscreen is not None]
        lacking = [t.id for t in labelled if t.id not in onscreen]
        if lacking:
            raise DataError(f"{len(lacking)} on/off-screen labelled ids have no on-screen prediction, e.g. {lacking[:3]}")
        if labelled:
            on = OnscreenMetrics()
            on.update([t.id for t in labelled], [onscreen[t.id] for t in labelled], [bool(t.onscreen) for t in labelled])
            out.update(on.compute())
    if frames is not None:
        from avloc.metrics.realworld import frame_scores

        out.update(frame_scores(frames, targets, preds, proto))
    return out
