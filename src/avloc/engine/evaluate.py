"""The one evaluation path: training-time validation, ``avloc eval`` and the benchmarks all use it.

* :func:`evaluate_model` runs ``model.localize(images, audio)`` (eval mode,
  ``torch.no_grad()``) over a dataset or loader and feeds the protocol's
  accumulator; class-aware protocols (``dsol-classaware``, ``qian-classaware``)
  call the method's ``localize_classes(images, audio)`` instead (per-class maps
  ``(B, C, h, w)``, optionally returned with class probabilities as a tuple) and
  fail with a clear message when the method has none;
* :func:`evaluate_predictions` feeds saved heatmaps (``id -> 2-D map``) to the
  same accumulator.

Both return ``ProtocolAccumulator.compute()`` (see :mod:`avloc.metrics.protocols`).
torch is imported only inside :func:`evaluate_model`, so scoring saved
predictions stays light.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterable, Mapping, Sequence, Sized
from typing import TYPE_CHECKING, Any

import numpy as np

from avloc.errors import DataError
from avloc.metrics.protocols import Protocol, create_protocol
from avloc.metrics.targets import Target, to_target

if TYPE_CHECKING:
    import torch

    from avloc.methods.base import LocalizationMethod


def evaluate_model(
    model: LocalizationMethod,
    data: Any,
    protocol: str | Protocol,
    device: str | torch.device = "cpu",
    progress: bool = True,
    batch_size: int = 32,
    num_workers: int = 0,
    max_batches: int | None = None,
) -> dict[str, Any]:
    """Evaluate ``model`` on ``data`` (a Dataset of sample dicts, or an iterable of collated batches).

    Batches need ``id``, ``image`` (B, 3, H, W), ``audio`` (B, N) and the
    ground-truth keys the protocol uses (``boxes``; ``box_labels`` / ``labels``
    for class-aware protocols). Class-agnostic protocols use ``localize``
    (``(B, h, w)`` heatmaps); class-aware ones use ``localize_classes``
    (``(B, C, h, w)`` class maps). Under torch.distributed, each process evaluates its shard
    and the accumulators are merged (duplicate ids from sampler padding are
    dropped and counted).
    """
    import torch

    from avloc.metrics.base import gather

    acc = create_protocol(protocol).accumulator()
    localize = _localizer(model, acc.protocol)
    loader = _as_loader(data, batch_size, num_workers)
    dev = torch.device(device)
    was_training = model.training
    model.eval()
    bar = _progress(loader, progress, acc.protocol.name)
    try:
        with torch.no_grad():
            for i, batch in enumerate(bar):
                if max_batches is not None and i >= max_batches:
                    break
                missing = [k for k in ("id", "image", "audio") if k not in batch]
                if missing:
                    raise DataError(f"evaluation batch lacks {missing} (keys: {sorted(batch)})")
                images = batch["image"].to(dev)
                audio = batch["audio"].to(dev)
                maps = localize(images, audio)
                if maps.shape[0] != images.shape[0]:
                    raise DataError(f"{type(model).__name__} returned {maps.shape[0]} maps for {images.shape[0]} samples")
                acc.update(maps.detach().float().cpu().numpy(), batch)
    finally:
        model.train(was_training)
        if hasattr(bar, "close"):
            bar.close()
    acc = gather(acc)
    if len(acc) == 0:
        raise DataError("the evaluation data yielded no samples")
    return acc.compute()


def evaluate_predictions(
    preds: Mapping[str, np.ndarray],
    gts: Sequence[Target | Mapping[str, Any]] | Mapping[str, Target | Mapping[str, Any]],
    protocol: str | Protocol,
    workers: int = 2,
    batch_size: int = 512,
    chunk_size: int = 16,
    onscreen: Mapping[str, float] | None = None,
) -> dict[str, Any]:
    """Score saved heatmaps: ``preds`` maps each ground-truth id to a raw 2-D map (3-D class maps for class-aware).

    ``onscreen``: optional predicted P(source visible) per id; every target with an on/off-screen label
    then needs one, and the result gains balanced accuracy, accuracy and calibration error
    (:func:`avloc.metrics.realworld.onscreen_summary`).

    Every ground-truth sample needs a prediction (missing ones raise with
    examples); predictions without ground truth are counted in
    ``n_unused_predictions``. Maps of different sizes are fine (grouped by shape).
    Batches of ``batch_size`` maps are scored in chunks of ``chunk_size`` on
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
    acc = create_protocol(protocol).accumulator(workers=workers, chunk_size=chunk_size)
    by_shape: dict[tuple[int, ...], list[Target]] = {}
    for t in targets:
        by_shape.setdefault(np.shape(preds[t.id]), []).append(t)
    for group in by_shape.values():
        for start in range(0, len(group), batch_size):
            part = group[start : start + batch_size]
            acc.update(np.stack([np.asarray(preds[t.id], dtype=np.float32) for t in part]), part)
    out = acc.compute()
    out["n_unused_predictions"] = len(set(preds) - {t.id for t in targets})
    if onscreen is not None:
        from avloc.metrics.realworld import onscreen_summary

        labelled = [t for t in targets if t.onscreen is not None]
        lacking = [t.id for t in labelled if t.id not in onscreen]
        if lacking:
            raise DataError(f"{len(lacking)} on/off-screen labelled ids have no on-screen prediction, e.g. {lacking[:3]}")
        if labelled:
            out.update(onscreen_summary(np.array([onscreen[t.id] for t in labelled]), np.array([t.onscreen for t in labelled])))
    return out


CLASS_AWARE_TASKS = ("dsol_classaware", "qian_classaware")


def _localizer(model: LocalizationMethod, protocol: Protocol) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """``localize`` for class-agnostic protocols; the class maps of ``localize_classes`` for class-aware ones."""
    from avloc.methods.base import Capability, require

    if protocol.task not in CLASS_AWARE_TASKS:
        return model.localize
    require(model, Capability.CLASSES, f"protocol {protocol.name} scores one map per sounding class")

    def class_maps(images: torch.Tensor, audio: torch.Tensor) -> torch.Tensor:
        maps = model.localize_classes(images, audio).maps
        if maps.dim() != 4:
            raise DataError(f"{type(model).__name__}.localize_classes must return (B, C, h, w) class maps, got shape {tuple(maps.shape)}")
        return maps

    return class_maps


def _as_loader(data: Any, batch_size: int, num_workers: int) -> Iterable[Any]:
    if hasattr(data, "__getitem__") and hasattr(data, "__len__") and not isinstance(data, (list, tuple)):
        import torch.distributed as dist
        from torch.utils.data import DataLoader, DistributedSampler

        from avloc.data.collate import collate_samples

        sampler: Any = DistributedSampler(data, shuffle=False) if dist.is_available() and dist.is_initialized() else None
        return DataLoader(
            data, batch_size=batch_size, shuffle=False, sampler=sampler, num_workers=num_workers, collate_fn=collate_samples
        )
    return data  # already an iterable of collated batches (a DataLoader, a list of batches)


def _progress(loader: Iterable[Any], enabled: bool, name: str) -> Iterable[Any]:
    if not enabled:
        return loader
    from tqdm import tqdm

    total = len(loader) if isinstance(loader, Sized) else None
    return tqdm(loader, total=total, desc=f"eval {name}", file=sys.stderr, leave=False)
