"""The prediction layer: a model and a data set -> :class:`Predictions`, computed once, scored by any protocols.

:func:`predict` runs the model (eval mode, ``torch.no_grad()``) over a dataset or
an iterable of collated batches and keeps what was asked for:

* ``maps``: ``localize(images, audio)`` ``(B, h, w)`` per batch;
* ``class_maps``: ``localize_classes(...).scaled()`` ``(B, C, h, w)``, each class's map times its audio class
  probability (``Capability.CLASSES``; the reading the class-aware protocols score, so a silent class's map is dark
  for DSOL's NSA), with the probabilities themselves in ``class_probs`` ``(B, C)``;
* ``boxes``: ``boxes(images, audio)`` per sample ``(K, 5)`` (``Capability.BOXES``);
* ``onscreen``: ``onscreen(images, audio)`` per sample (``Capability.ONSCREEN``);

together with each sample's id and ground truth (:class:`avloc.metrics.targets.Target`).
:meth:`Predictions.score` feeds them to a protocol's accumulator batch by batch,
exactly as they were produced, so scoring several protocols costs one forward pass
and gives the numbers each protocol would give alone. Training-time validation,
``avloc eval`` (:func:`avloc.engine.evaluate.evaluate_model`) and the benchmarks use it.

Feature cache: with ``feature_cache`` (a directory or an
:class:`avloc.encoders.cache.FeatureCache`) a model with a frozen pretrained visual
encoder reads its encoder's features from the disk cache (computing the missing
ones), so several models sharing one encoder (seeds, variants, heads) encode each
test image once. Cached features are float32: scores are the same cold or warm.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterable, Iterator, Sequence, Sized
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from avloc.errors import DataError
from avloc.metrics.protocols import Protocol, create_protocol
from avloc.metrics.targets import Target, targets_from_batch

if TYPE_CHECKING:
    import torch

    from avloc.encoders.cache import FeatureCache
    from avloc.methods.base import LocalizationMethod

#: what :func:`predict` can keep
OUTPUTS = ("maps", "class_maps", "boxes", "onscreen")


def outputs_for(protocols: Iterable[str | Protocol]) -> tuple[str, ...]:
    """The outputs :meth:`Predictions.score` needs for ``protocols``: what each declares (``Protocol.prediction``)."""
    needed = {create_protocol(p).prediction for p in protocols}
    return tuple(kind for kind in ("maps", "class_maps") if kind in needed)


@dataclass
class Predictions:
    """What a model predicted for a data set, batch by batch (in the data's order)."""

    model: str
    targets: list[list[Target]] = field(default_factory=list)  # per batch, each sample's ground truth
    maps: list[np.ndarray] = field(default_factory=list)  # per batch (B, h, w) float32
    class_maps: list[np.ndarray] = field(default_factory=list)  # per batch (B, C, h, w) float32, probability-scaled
    class_probs: list[np.ndarray] = field(default_factory=list)  # per batch (B, C) audio class probabilities
    boxes: list[np.ndarray] = field(default_factory=list)  # per sample (K, 5) model-input pixels + score
    onscreen: list[float] = field(default_factory=list)  # per sample P(source visible)

    @property
    def ids(self) -> list[str]:
        return [t.id for batch in self.targets for t in batch]

    def __len__(self) -> int:
        return sum(len(b) for b in self.targets)

    def map_dict(self, kind: str = "maps") -> dict[str, np.ndarray]:
        """``id -> array`` (``kind`` = ``maps``, ``class_maps`` or ``class_probs``), e.g. for
        :func:`evaluate_predictions` or saving."""
        parts = self._parts(kind)
        return {t.id: m for batch, arr in zip(self.targets, parts, strict=True) for t, m in zip(batch, arr, strict=True)}

    def onscreen_dict(self) -> dict[str, float]:
        if len(self.onscreen) != len(self):
            raise DataError(f"{self.model}: predicted without 'onscreen'")
        return dict(zip(self.ids, self.onscreen, strict=True))

    def subset(self, keep: Callable[[Target], bool]) -> Predictions:
        """The samples whose ground truth satisfies ``keep``, in the same order and batches (empty batches dropped),
        e.g. ``preds.subset(lambda t: len(t.boxes) == 1)`` to score the frames with one sounding box."""
        out = Predictions(self.model)
        chosen = [bool(keep(t)) for batch in self.targets for t in batch]
        start = 0
        for b, batch in enumerate(self.targets):
            sel = np.array(chosen[start : start + len(batch)], dtype=bool)
            start += len(batch)
            if not sel.any():
                continue
            out.targets.append([t for t, s in zip(batch, sel, strict=True) if s])
            for parts, into in ((self.maps, out.maps), (self.class_maps, out.class_maps),
                                (self.class_probs, out.class_probs)):
                if len(parts) == len(self.targets):
                    into.append(parts[b][sel])
        if len(self.boxes) == len(chosen):
            out.boxes = [x for x, s in zip(self.boxes, chosen, strict=True) if s]
        if len(self.onscreen) == len(chosen):
            out.onscreen = [x for x, s in zip(self.onscreen, chosen, strict=True) if s]
        return out

    def _parts(self, kind: str) -> list[np.ndarray]:
        if kind not in ("maps", "class_maps", "class_probs"):
            raise DataError(f"unknown prediction kind {kind!r}; use 'maps', 'class_maps' or 'class_probs'")
        parts: list[np.ndarray] = getattr(self, kind)
        if len(parts) != len(self.targets):
            raise DataError(f"{self.model}: predicted without {kind!r} (pass outputs=... to predict)")
        return parts

    def score(self, protocol: str | Protocol, workers: int = 1, chunk_size: int = 256) -> dict[str, Any]:
        """``protocol``'s results (``ProtocolAccumulator.compute()``); under torch.distributed the shards are merged."""
        from avloc.metrics.base import gather

        acc = create_protocol(protocol).accumulator(workers=workers, chunk_size=chunk_size)
        for maps, targets in zip(self._parts(acc.protocol.prediction), self.targets, strict=True):
            acc.update(maps, targets)
        acc = gather(acc)
        if len(acc) == 0:
            raise DataError("the evaluation data yielded no samples")
        return acc.compute()


def predict(
    model: LocalizationMethod,
    data: Any,
    *,
    outputs: Sequence[str] = ("maps",),
    device: str | torch.device = "cpu",
    batch_size: int = 32,
    num_workers: int = 0,
    max_batches: int | None = None,
    progress: bool = False,
    feature_cache: str | Path | FeatureCache | None = None,
) -> Predictions:
    """Run ``model`` over ``data`` (a Dataset of sample dicts, or an iterable of collated batches) once.

    Batches need ``id``, ``image`` (B, 3, H, W) (or frame stacks), ``audio`` (B, N) and the ground-truth keys the
    protocols to score use. An output whose capability the model does not declare raises
    :class:`avloc.methods.base.CapabilityError` before any work.
    """
    import torch

    from avloc.data.collate import expand_compact
    from avloc.encoders.cache import FeatureCache
    from avloc.methods.base import Capability, require

    unknown = sorted(set(outputs) - set(OUTPUTS))
    if unknown:
        raise DataError(f"unknown prediction outputs {unknown}; valid: {list(OUTPUTS)}")
    needs = {"class_maps": Capability.CLASSES, "boxes": Capability.BOXES, "onscreen": Capability.ONSCREEN}
    for out in outputs:
        if out in needs:
            require(model, needs[out], f"predicting {out!r}")
    cache = model.feature_cache_at(feature_cache) if isinstance(feature_cache, str | Path) else feature_cache
    if cache is not None and not isinstance(cache, FeatureCache):
        raise DataError(f"feature_cache must be a directory or a FeatureCache, got {type(cache).__name__}")
    preds = Predictions(model.name or type(model).__name__)
    dev = torch.device(device)
    was_training = model.training
    model.eval()
    bar = _progress(_as_loader(data, batch_size, num_workers), progress, model.name)
    try:
        with torch.no_grad(), model.use_feature_cache(cache):
            for i, batch in enumerate(bar):
                if max_batches is not None and i >= max_batches:
                    break
                missing = [k for k in ("id", "image", "audio") if k not in batch]
                if missing:
                    raise DataError(f"prediction batch lacks {missing} (keys: {sorted(batch)})")
                moved = expand_compact({"image": batch["image"].to(dev), "audio": batch["audio"].to(dev)})
                images, audio = moved["image"], moved["audio"]  # float on the device (compact sets: converted there)
                n = images.shape[0]
                preds.targets.append(targets_from_batch(batch))
                if "maps" in outputs:
                    preds.maps.append(_check(model.localize(images, audio), n, 3, model, "localize"))
                if "class_maps" in outputs:
                    cm = model.localize_classes(images, audio)
                    preds.class_maps.append(_check(cm.scaled(), n, 4, model, "localize_classes"))
                    preds.class_probs.append(cm.probabilities.detach().float().cpu().numpy())
                if "boxes" in outputs:
                    preds.boxes += [np.asarray(b.detach().cpu(), dtype=np.float64).reshape(-1, 5) for b in model.boxes(images, audio)]
                if "onscreen" in outputs:
                    preds.onscreen += [float(v) for v in model.onscreen(images, audio).reshape(-1).tolist()]
    finally:
        model.train(was_training)
        close = getattr(bar, "close", None)  # a tqdm bar (not a method capability)
        if callable(close):
            close()
    return preds


def _check(maps: torch.Tensor, n: int, dim: int, model: LocalizationMethod, fn: str) -> np.ndarray:
    if maps.dim() != dim or maps.shape[0] != n:
        want = "(B, h, w)" if dim == 3 else "(B, C, h, w)"
        raise DataError(f"{type(model).__name__}.{fn} returned shape {tuple(maps.shape)} for {n} samples; expected {want}")
    return maps.detach().float().cpu().numpy()  # type: ignore[no-any-return]


def _as_loader(data: Any, batch_size: int, num_workers: int) -> Iterable[Any]:
    """A map-style dataset (``__getitem__`` and ``__len__``) -> a DataLoader (sharded under torch.distributed);
    anything else (a DataLoader, a list of collated batches) is iterated as it is."""
    if hasattr(data, "__getitem__") and hasattr(data, "__len__") and not isinstance(data, list | tuple):
        import torch.distributed as dist
        from torch.utils.data import DistributedSampler

        from avloc.data.collate import collate_samples
        from avloc.data.loader import Loader

        sampler: Any = DistributedSampler(data, shuffle=False) if dist.is_available() and dist.is_initialized() else None
        return Loader(
            data, batch_size=batch_size, shuffle=False, sampler=sampler, num_workers=num_workers, collate_fn=collate_samples
        )
    return data  # type: ignore[no-any-return]  # already an iterable of collated batches (a DataLoader, a list of batches)


def _progress(loader: Iterable[Any], enabled: bool, name: str) -> Iterator[Any] | Iterable[Any]:
    if not enabled:
        return loader
    from tqdm import tqdm

    total = len(loader) if isinstance(loader, Sized) else None
    return tqdm(loader, total=total, desc=f"predict {name}", file=sys.stderr, leave=False)
