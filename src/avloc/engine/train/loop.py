"""The one training loop every method uses (:class:`Trainer`, :func:`train`).

Contract (what a method provides; the loop never special-cases a method)
-----------------------------------------------------------------------
A registered :class:`avloc.methods.base.LocalizationMethod` with

* ``forward(batch) -> dict`` of tensors. ``batch`` is the collated sample dict
  (see :mod:`avloc.data.datasets`) moved to the device: ``image`` (B, 3, H, W)
  in [0, 1] -- or, when the feature cache is on, ``vfeat`` (B, C, h, w)
  instead -- and ``audio`` (B, N). Methods read images only through
  ``self.visual_features(batch)``, which returns whichever is present.
* ``build_criterion() -> nn.Module``: ``criterion(outputs, batch) -> dict``
  with a scalar ``loss`` (optimised) and any other scalar terms (logged).
* ``localize(images, audio) -> (B, h, w)``, used by validation through
  :func:`avloc.engine.evaluate.evaluate_model`, the same function as
  ``avloc eval``.
* ``cfg``: its config dataclass (saved in every checkpoint and ``config.json``).
* ``training_free = True`` methods are refused (nothing to train).
* ``after_optimizer_step(step)`` (optional; the base class does nothing) is
  called after every optimiser step with the number of steps done, on the plain
  model under ``torch.no_grad``: momentum (EMA) encoders update there.
* ``prepare_training(train_set, feature_cache=...)`` (optional; the base class
  returns the set unchanged) is called once, after seeding and before the set
  is read: a method's training-only config (data wrappers, pretrained weights)
  applies there, so ``avloc train`` and library callers of :func:`train` agree.

Feature cache (transparent)
---------------------------
When ``TrainConfig.feature_cache`` is on, the method's visual encoder (the
attribute ``visual_encoder``) is frozen and pretrained
(``model.visual_cacheable()``), and the training dataset gives every sample a
stable image key -- ``dataset.feature_cache_keys()``, ``dataset.scene_index(i)``
(DigitScenes; pool mode reuses N images) or the entry ``id`` of a manifest whose entries are still
images -- the loop computes the encoder's features once per key (batched,
with a progress bar), then replaces ``batch["image"]`` by ``batch["vfeat"]``,
looked up by each sample's dataset index (never by a batch field).
Anything else trains end to end, and the run says which in ``config.json``
(``feature_cache.used``) and on stderr. Validation always runs the full model
on images.

Distributed and precision
-------------------------
Under ``torchrun`` (:mod:`avloc.engine.train.distributed`) every rank gets a
:class:`~torch.utils.data.DistributedSampler` shard of ``batch_size`` samples
(the global batch is ``N * batch_size``; in-batch negatives stay per rank),
gradients are averaged by :class:`~torch.nn.parallel.DistributedDataParallel`,
rank 0 writes the run directory and logs loss terms all-reduced over the ranks.
Precision (``TrainConfig.amp`` / ``amp_dtype``): fp16 autocast with a grad
scaler or bf16 autocast, on CUDA only; on CPU the run is fp32 and says so
(log line and ``config.json`` ``precision``). ``channels_last`` and
``compile`` (``torch.compile``) are options.
"""

from __future__ import annotations

import logging
import math
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Sampler

from avloc.config import config_to_dict
from avloc.data.collate import expand_compact
from avloc.data.datasets import dataset_image_keys
from avloc.data.loader import Loader
from avloc.encoders.cache import FeatureBank, encode_dataset
from avloc.engine.train.config import DataConfig, TrainConfig, build_optimizer, lr_at
from avloc.engine.train.distributed import Dist, all_reduce_mean, barrier, init_distributed, sync_buffers
from avloc.engine.train.rundir import STATE_FILE, RunDir, run_config
from avloc.engine.train.state import Progress, gather_rng, restore, save_train_state, seed_everything, worker_init
from avloc.errors import ConfigError, DataError
from avloc.methods.base import LocalizationMethod

_log = logging.getLogger(__name__)


@dataclass
class Precision:
    """What the run computes in: ``fp32``, ``fp16`` (autocast + GradScaler) or ``bf16`` (autocast, no scaler)."""

    used: Literal["fp32", "fp16", "bf16"]
    why: str

    @property
    def dtype(self) -> torch.dtype | None:
        return {"fp16": torch.float16, "bf16": torch.bfloat16}.get(self.used)

    @property
    def scaled(self) -> bool:
        return self.used == "fp16"


def resolve_precision(cfg: TrainConfig, device: torch.device) -> Precision:
    """``train.amp`` / ``train.amp_dtype`` on this device; never a silent fallback (the result is logged and saved)."""
    if not cfg.amp:
        return Precision("fp32", "train.amp=false")
    if device.type != "cuda":
        return Precision("fp32", f"train.amp=true applies on CUDA only; this run is on {device.type}: fp32")
    if cfg.amp_dtype == "bfloat16":
        if not torch.cuda.is_bf16_supported():
            raise ConfigError(f"train.amp_dtype=bfloat16 but {torch.cuda.get_device_name(device)} has no bf16 support; use float16")
        return Precision("bf16", "train.amp with bfloat16 autocast (no gradient scaler)")
    return Precision("fp16", "train.amp with float16 autocast and a gradient scaler")


def _channels_last(batch: dict[str, Any]) -> None:
    for k, v in batch.items():
        if isinstance(v, torch.Tensor) and v.dim() == 4 and v.is_floating_point():
            batch[k] = v.contiguous(memory_format=torch.channels_last)


class _ListSampler(Sampler[int]):
    """Yields a fixed list of indices (one epoch's shard, minus the batches already done)."""

    def __init__(self, indices: list[int]) -> None:
        self.indices = indices

    def __iter__(self) -> Iterator[int]:
        return iter(self.indices)

    def __len__(self) -> int:
        return len(self.indices)


def _collate() -> Any:
    from avloc.data.collate import collate_samples

    return collate_samples


def _epoch_loader(dataset: Dataset, cfg: TrainConfig, d: Dist, epoch: int, skip_batches: int) -> DataLoader:
    n = len(dataset)  # type: ignore[arg-type]
    sampler: DistributedSampler[int] = DistributedSampler(dataset, num_replicas=d.world, rank=d.rank, shuffle=True, seed=cfg.seed, drop_last=True)
    sampler.set_epoch(epoch)
    idx = list(iter(sampler))
    if len(idx) < cfg.batch_size:
        raise DataError(f"training set has {n} samples: fewer than one batch of {cfg.batch_size} per process ({d.world})")
    idx = idx[skip_batches * cfg.batch_size :]
    g = torch.Generator()
    g.manual_seed(cfg.seed * 100_003 + epoch * 1009 + d.rank)
    return Loader(  # a worker's AvlocError reaches the CLI as itself (one line), not as the worker's traceback
        dataset,
        batch_size=cfg.batch_size,
        sampler=_ListSampler(idx),
        drop_last=True,
        num_workers=cfg.num_workers,
        collate_fn=_collate(),
        worker_init_fn=worker_init,
        generator=g,
        persistent_workers=False,
    )


def _to_device(batch: dict[str, Any], device: torch.device) -> dict[str, Any]:
    """The batch on ``device``; a compact batch (uint8 pictures, int16 audio) is made float there."""
    return expand_compact({k: (v.to(device, non_blocking=True) if isinstance(v, torch.Tensor) else v)
                           for k, v in batch.items()})


# ---------------------------------------------------------------------------------------------
# frozen-feature cache wiring (the cache itself: avloc.encoders.cache)


def build_feature_cache(
    model: LocalizationMethod, dataset: Dataset, keys: list[Any], device: torch.device, cfg: TrainConfig, show: bool
) -> FeatureBank:
    """Run the frozen visual encoder once per distinct key (first sample carrying it) -> :class:`FeatureBank`."""
    disk = model.feature_cache_at(cfg.feature_cache_dir) if cfg.feature_cache_dir is not None else None
    model.eval()
    return encode_dataset(
        lambda images: model.encode_images(images.to(device)).cpu(), dataset, keys,
        batch_size=cfg.feature_cache_batch_size, num_workers=cfg.num_workers, disk=disk, progress=show,
    )


@dataclass
class _CachedFeatures:
    """Replaces ``batch["image"]`` by the cached ``vfeat`` rows of the batch's dataset indices."""

    keys: list[Any]  # keys[i]: the image key of sample i
    bank: FeatureBank  # on the training device

    def apply(self, batch: dict[str, Any], indices: list[int], device: torch.device) -> None:
        # rows by dataset index (a batch field such as scene_index may name a clip whose frames differ)
        batch["vfeat"] = self.bank.bank[self.bank.rows([self.keys[i] for i in indices], device)]  # (B, C, h, w)
        batch.pop("image", None)


@dataclass
class TrainResult:
    out_dir: Path
    step: int
    best: float | None
    last_val: dict[str, Any] | None
    feature_cache: bool


def _scalar_terms(losses: dict[str, torch.Tensor]) -> dict[str, float]:
    return {k: float(v.detach()) for k, v in losses.items() if isinstance(v, torch.Tensor) and v.numel() == 1}


def _validate(model: LocalizationMethod, val_set: Dataset, cfg: TrainConfig, device: torch.device) -> dict[str, Any]:
    from avloc.engine.evaluate import evaluate_model

    res = evaluate_model(model, val_set, cfg.val_protocol, device, batch_size=cfg.val_batch_size, progress=False)
    return {k: v for k, v in res.items() if isinstance(v, (int, float, str, bool)) or v is None}


@dataclass
class BestTracker:
    """Keeps the best validation score of ``metric`` in its direction (``Protocol.higher_is_better``).

    An undefined (NaN) score never improves on a defined one.
    """

    metric: str
    higher_is_better: bool
    best: float | None = None

    @classmethod
    def for_protocol(cls, protocol: str, metric: str, best: float | None = None) -> BestTracker:
        from avloc.metrics.protocols import create_protocol

        try:
            higher = create_protocol(protocol).higher_is_better(metric)
        except ConfigError as e:
            raise ConfigError(f"train.val_metric: {e}") from None
        return cls(metric, higher, best)

    def update(self, results: dict[str, Any]) -> bool:
        """Take this validation's results; True when the score is the best so far (then ``best`` is it)."""
        score = results.get(self.metric)
        if not isinstance(score, (int, float)):
            raise ConfigError(f"train.val_metric {self.metric!r} not in the validation results {sorted(results)}")
        score = float(score)
        if self.best is None or math.isnan(self.best):
            better = self.best is None or not math.isnan(score)
        elif math.isnan(score):
            better = False
        else:
            better = score > self.best if self.higher_is_better else score < self.best
        if better:
            self.best = score
        return better


class Trainer:
    """One training run: the model on its device (DDP, compile), optimiser, scaler, feature cache, run directory.

    ``Trainer(...).fit()`` is :func:`train`; the constructor does everything before the first step (seeding,
    ``prepare_training``, run directory, resume, feature cache), :meth:`fit` the steps, validation and
    checkpoints.
    """

    def __init__(self, model: LocalizationMethod, train_set: Dataset, out: Path, cfg: TrainConfig,
                 val_set: Dataset | None, resume: bool, data: DataConfig | None) -> None:
        self.model, self.out, self.cfg, self.val_set = model, out, cfg, val_set
        self.tracker = BestTracker.for_protocol(cfg.val_protocol, cfg.val_metric) if val_set is not None else None
        self.dist, self.device = init_distributed(cfg.device)
        self.show = cfg.progress and self.dist.main
        seed_everything(cfg.seed + self.dist.rank)
        requested = config_to_dict(model.cfg)  # before prepare_training applies (and clears) one-off initialisations
        # what the method's config asks of training only (e.g. wrapping the data set); default: unchanged
        self.train_set = model.prepare_training(train_set, feature_cache=cfg.feature_cache and model.visual_cacheable())
        steps_per_epoch = len(self.train_set) // (cfg.batch_size * self.dist.world)  # type: ignore[arg-type]
        if steps_per_epoch < 1:
            raise DataError(f"training set of {len(self.train_set)} samples is smaller than one global batch")  # type: ignore[arg-type]
        self.total = cfg.epochs * steps_per_epoch if cfg.epochs is not None else cfg.steps
        keys = dataset_image_keys(self.train_set) if cfg.feature_cache and model.visual_cacheable() else None
        self.use_cache = keys is not None
        self.precision = resolve_precision(cfg, self.device)
        self.run = RunDir(out, self.dist.main)
        run_cfg = run_config(model, requested, cfg, data, self.dist.world, self.total, self.use_cache,
                             {"used": self.precision.used, "why": self.precision.why})
        self.params, self.opt = self._optimiser()
        self.pos = Progress()
        if resume:  # before anything is written or announced: a refused resume leaves the run as it was
            self.run.check_continues(run_cfg)
            self.pos, best = restore(out / STATE_FILE, model, self.opt, self.device, self.dist)
            if self.tracker is not None:
                self.tracker.best = best
        self.run.start(run_cfg, resume)
        self._announce()
        barrier(self.dist)
        if resume:
            self.run.truncate_metrics(self.pos.step)
        self.criterion = model.build_criterion().to(self.device)
        self.cached = None
        if keys is not None:
            bank = build_feature_cache(model, self.train_set, keys, self.device, cfg, self.show).to(self.device)
            self.cached = _CachedFeatures(keys, bank)
        self.net = self._wrap(model)
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.precision.scaled)
        self.title = f"{model.name} ({out.name})"

    def _announce(self) -> None:
        if not self.dist.main:
            return
        cfg, p = self.cfg, self.precision
        _log.info("avloc train: %s for %d steps, batch %d x %d on %s; visual features: %s; precision %s (%s)%s%s",
                  self.model.name, self.total, cfg.batch_size, self.dist.world, self.device,
                  "cached (frozen pretrained encoder)" if self.use_cache else "computed end to end", p.used, p.why,
                  "; channels_last" if cfg.channels_last else "",
                  f"; torch.compile ({cfg.compile_mode})" if cfg.compile else "")

    def _optimiser(self) -> tuple[list[nn.Parameter], torch.optim.Optimizer]:
        """The model on its device and memory format; the optimiser over its trainable parameters."""
        self.model.to(self.device)
        if self.cfg.channels_last:
            self.model.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
        params = [p for p in self.model.parameters() if p.requires_grad]
        if not params:
            raise ConfigError(f"method {self.model.name!r} has no trainable parameters with this config")
        return params, build_optimizer(params, self.cfg.optim)

    def _wrap(self, model: LocalizationMethod) -> nn.Module:
        """DDP across ranks, then ``torch.compile`` when asked; the weights stay shared with ``model``."""
        net: nn.Module = model
        if self.dist.world > 1:
            from torch.nn.parallel import DistributedDataParallel

            net = DistributedDataParallel(model, device_ids=[self.device.index] if self.device.type == "cuda" else None,
                                          find_unused_parameters=self.cfg.ddp_find_unused)
        if self.cfg.compile:
            net = torch.compile(net, mode=self.cfg.compile_mode)  # type: ignore[assignment]
        return net

    # ---- the loop
    def fit(self) -> TrainResult:
        """Train to ``total`` steps (validating and checkpointing on the way), then validate and save the end."""
        from tqdm import tqdm

        bar = tqdm(total=self.total, initial=self.pos.step, desc=f"train {self.model.name}", unit="step",
                   disable=not self.show, file=sys.stderr, dynamic_ncols=True)
        self.model.train()
        last_val: dict[str, Any] | None = None
        self._t_log, self._n_log = time.perf_counter(), 0
        while self.pos.step < self.total:
            last_val = self._epoch(bar) or last_val
        bar.close()
        sync_buffers(self.model, self.dist)
        last_val = self.validate() if self.val_set is not None else last_val
        self.save_state()
        self.run.plot(self.title)
        barrier(self.dist)
        return TrainResult(self.out, self.pos.step, None if self.tracker is None else self.tracker.best, last_val,
                           self.use_cache)

    def _epoch(self, bar: Any) -> dict[str, Any] | None:
        """The rest of the current epoch (or up to ``total``); returns the last validation's results, if any."""
        cfg, pos = self.cfg, self.pos
        loader = _epoch_loader(self.train_set, cfg, self.dist, pos.epoch, pos.batch_in_epoch)
        order: list[int] = loader.sampler.indices  # type: ignore[attr-defined]  # dataset index of each sample, in batch order
        last_val = None
        for b, raw_batch in enumerate(loader):
            batch = _to_device(raw_batch, self.device)
            if self.cached is not None:
                self.cached.apply(batch, order[b * cfg.batch_size : (b + 1) * cfg.batch_size], self.device)
            if cfg.channels_last:
                _channels_last(batch)
            lr = lr_at(pos.step, self.total, cfg.optim)
            losses = _step(self.net, self.criterion, self.opt, self.scaler, self.params, batch, lr, cfg,
                           self.precision, pos.step, self.device)
            pos.step += 1
            with torch.no_grad():  # non-gradient updates of the method (momentum encoders), on the plain model
                self.model.after_optimizer_step(pos.step)
            pos.batch_in_epoch += 1
            self._n_log += len(raw_batch["audio"]) * self.dist.world
            bar.update(1)
            if pos.step % cfg.log_every == 0 or pos.step == self.total:
                self._log_train(bar, lr, losses)
            if cfg.val_every and pos.step % cfg.val_every == 0 and pos.step < self.total:
                last_val = self.validate()
            if cfg.ckpt_every and pos.step % cfg.ckpt_every == 0 and pos.step < self.total:
                self.save_state()
            if pos.step >= self.total:
                return last_val
        pos.epoch += 1
        pos.batch_in_epoch = 0
        return last_val

    def _log_train(self, bar: Any, lr: float, losses: dict[str, torch.Tensor]) -> None:
        """One ``train`` row: the loss terms averaged over ranks, the lr and the throughput since the last row."""
        dt = time.perf_counter() - self._t_log
        terms = all_reduce_mean(_scalar_terms(losses), self.dist, self.device)  # every rank joins
        rec = {"step": self.pos.step, "split": "train", "lr": lr, **terms,
               "samples_per_s": round(self._n_log / max(dt, 1e-9), 2)}
        self.run.log(rec)
        bar.set_postfix(loss=f"{rec['loss']:.4f}", sps=f"{rec['samples_per_s']:.1f}")
        self._t_log, self._n_log = time.perf_counter(), 0

    def validate(self) -> dict[str, Any] | None:
        """Evaluate on the validation set (every rank its shard), log it, keep ``best.safetensors``."""
        if self.val_set is None or self.tracker is None:
            return None
        sync_buffers(self.model, self.dist)  # every rank evaluates its shard; evaluate_model merges them
        t0 = time.perf_counter()
        res = _validate(self.model, self.val_set, self.cfg, self.device)
        if self.dist.main:
            self.run.log({"step": self.pos.step, "split": "val", **res, "seconds": round(time.perf_counter() - t0, 2)})
            if self.tracker.update(res):
                self.run.save_model(self.model, "best.safetensors",
                                    {"step": self.pos.step, "val": res, "feature_cache": self.use_cache})
            self.run.plot(self.title)
        barrier(self.dist)
        self.model.train()
        return res

    def save_state(self) -> None:
        """``last.safetensors`` and the resumable state (weights, optimiser, progress, every rank's RNG)."""
        sync_buffers(self.model, self.dist)
        rngs = gather_rng(self.dist)
        if not self.dist.main:
            return
        from avloc.formats.atomic import atomic_paths
        from avloc.methods.zoo import save_model

        pos = self.pos
        # one set: a full disk on the second file leaves both previous files, never a last model of one step
        # beside the state of another
        with atomic_paths(self.out / "last.safetensors", self.out / STATE_FILE) as (t_last, t_state):
            save_model(self.model, t_last, meta={"step": pos.step, "run": str(self.out), "feature_cache": self.use_cache})
            save_train_state(t_state, {
                "model": self.model.state_dict(), "optim": self.opt.state_dict(), "step": pos.step,
                "epoch": pos.epoch, "batch_in_epoch": pos.batch_in_epoch,
                "best": None if self.tracker is None else self.tracker.best, "rng": rngs,
            })


def train(
    model: LocalizationMethod,
    train_set: Dataset,
    out_dir: str | Path,
    cfg: TrainConfig,
    val_set: Dataset | None = None,
    *,
    resume: bool = False,
    force: bool = False,
    data: DataConfig | None = None,
) -> TrainResult:
    """Train ``model`` on ``train_set``, writing the run directory ``out_dir`` (:mod:`avloc.engine.train.rundir`).

    Raises :class:`OutputExistsError` if ``out_dir`` holds a run and neither ``resume`` nor ``force`` is given,
    and a one-line :class:`DataError` naming the file when a run to resume is incomplete or damaged.
    """
    if model.training_free:
        raise ConfigError(f"method {model.name!r} is training-free: nothing to train")
    out = Path(out_dir)
    RunDir.check(out, resume, force)
    return Trainer(model, train_set, out, cfg, val_set, resume, data).fit()


def _step(
    net: nn.Module, criterion: nn.Module, opt: torch.optim.Optimizer, scaler: torch.amp.GradScaler, params: list[nn.Parameter],
    batch: dict[str, Any], lr: float, cfg: TrainConfig, precision: Precision, step: int, device: torch.device,
) -> dict[str, torch.Tensor]:
    """One optimisation step (forward, loss, backward, clipping, optimiser); returns the loss terms."""
    for g in opt.param_groups:
        g["lr"] = lr
    with torch.autocast(device_type=device.type, dtype=precision.dtype or torch.float32, enabled=precision.dtype is not None):
        outputs = net(batch)
        losses: dict[str, torch.Tensor] = criterion(outputs, batch)
    loss = losses["loss"]
    if not torch.isfinite(loss):
        raise FloatingPointError(f"non-finite loss {float(loss)} at step {step}; lower optim.lr or check the data")
    opt.zero_grad(set_to_none=True)
    scaler.scale(loss).backward()
    if cfg.optim.grad_clip > 0:
        scaler.unscale_(opt)
        torch.nn.utils.clip_grad_norm_(params, cfg.optim.grad_clip)
    scaler.step(opt)
    scaler.update()
    return losses
