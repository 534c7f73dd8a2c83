"""The one training loop every method uses.

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

Run directory
-------------
``config.json`` (method name and config, train config, data specs, world
size, whether the cache was used), ``metrics.jsonl`` (one JSON object per
line: ``{"step", "split": "train"|"val", ...}``), ``curves.png`` (loss and
validation metrics vs step), ``last.safetensors`` / ``best.safetensors``
(:func:`avloc.methods.zoo.save_model`, loadable with ``load_model``) and
``train_state.safetensors``: the full model state, optimizer state (tensors
flattened into safetensors, everything else in a JSON header), step, epoch
and RNG states -- written atomically, never pickled. ``resume=True``
continues exactly: the same weights as an uninterrupted run, provided the
dataset's ``__getitem__`` is deterministic per index (ours are).

Distributed (multi-node too, docs/training.md): run under ``torchrun --nproc_per_node N -m avloc.cli.main train
...``; the process group uses gloo on CPU and NCCL on CUDA, every rank gets a
:class:`~torch.utils.data.DistributedSampler` shard of ``batch_size`` samples
(the global batch is ``N * batch_size``; in-batch negatives stay per rank),
gradients are averaged by :class:`~torch.nn.parallel.DistributedDataParallel`
rank 0 writes the run directory and logs loss terms all-reduced over the ranks.
Precision (``TrainConfig.amp`` / ``amp_dtype``): fp16 autocast with a grad
scaler or bf16 autocast, on CUDA only; on CPU the run is fp32 and says so
(log line and ``config.json`` ``precision``). ``channels_last`` and
``compile`` (``torch.compile``) are options.

Entry point: :func:`train` (library) and :func:`train_from_specs` (what
``avloc train`` calls).
"""

from __future__ import annotations

import json
import logging
import math
import os
import random
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Sampler

from avloc.config import config_from_dict, config_to_dict, read_config_file
from avloc.data.datasets import dataset_image_keys
from avloc.encoders.cache import FeatureBank, encode_dataset
from avloc.errors import CheckpointError, ConfigError, DataError, OutputExistsError
from avloc.io.atomic import atomic_path, write_text_atomic
from avloc.methods.base import LocalizationMethod

_log = logging.getLogger(__name__)

STATE_FILE = "train_state.safetensors"
CONFIG_FILE = "config.json"
METRICS_FILE = "metrics.jsonl"
CURVES_FILE = "curves.png"
_STATE_META_KEY = "avloc_train_state"


# ---------------------------------------------------------------------------------------------
# configuration


@dataclass
class OptimConfig:
    """Optimiser and learning-rate schedule (default: LVS / EZ-VSL, Adam 1e-4 constant, no weight decay).

    ``schedule``: ``constant``; ``cosine`` (to ``min_lr_ratio * lr`` at the last step); ``step``
    (multiply by ``gamma`` at every step count in ``milestones``, or at every fraction of the
    run in ``milestone_fractions``). A linear warm-up of ``warmup_steps`` precedes any of them.
    """

    #: ``adam`` (torch.optim.Adam, L2 weight decay), ``adamw`` (decoupled) or ``sgd`` (with ``momentum``)
    name: Literal["adam", "adamw", "sgd"] = "adam"
    lr: float = 1e-4
    weight_decay: float = 0.0
    betas: tuple[float, float] = (0.9, 0.999)
    #: SGD only
    momentum: float = 0.9
    nesterov: bool = False
    #: linear warm-up from 0 over this many steps, then ``schedule``
    warmup_steps: int = 0
    schedule: Literal["constant", "cosine", "step"] = "constant"
    #: cosine floor as a fraction of ``lr``
    min_lr_ratio: float = 0.0
    #: ``step`` schedule: optimiser steps at which the lr is multiplied by ``gamma`` ...
    milestones: tuple[int, ...] = ()
    #: ... or fractions of the run's total steps (so an epoch-based recipe keeps its shape at any data size)
    milestone_fractions: tuple[float, ...] = ()
    gamma: float = 0.1
    #: max global gradient norm; 0 disables clipping
    grad_clip: float = 0.0

    def __post_init__(self) -> None:
        if not self.lr > 0:
            raise ConfigError(f"optim.lr must be > 0, got {self.lr}")
        if self.weight_decay < 0:
            raise ConfigError(f"optim.weight_decay must be >= 0, got {self.weight_decay}")
        if not all(0 <= b < 1 for b in self.betas):
            raise ConfigError(f"optim.betas must lie in [0, 1), got {list(self.betas)}")
        if not 0 <= self.momentum < 1:
            raise ConfigError(f"optim.momentum must lie in [0, 1), got {self.momentum}")
        if self.nesterov and (self.name != "sgd" or self.momentum == 0):
            raise ConfigError("optim.nesterov needs optim.name=sgd and optim.momentum > 0")
        if self.warmup_steps < 0:
            raise ConfigError(f"optim.warmup_steps must be >= 0, got {self.warmup_steps}")
        if not 0 <= self.min_lr_ratio <= 1:
            raise ConfigError(f"optim.min_lr_ratio must lie in [0, 1], got {self.min_lr_ratio}")
        if self.grad_clip < 0:
            raise ConfigError(f"optim.grad_clip must be >= 0 (0 = off), got {self.grad_clip}")
        if not 0 < self.gamma <= 1:
            raise ConfigError(f"optim.gamma must lie in (0, 1], got {self.gamma}")
        if self.milestones and self.milestone_fractions:
            raise ConfigError("optim: give milestones (steps) or milestone_fractions, not both")
        ms: tuple[float, ...] = self.milestones or self.milestone_fractions
        if list(ms) != sorted(set(ms)) or any(m <= 0 for m in ms):
            raise ConfigError(f"optim milestones must be positive and strictly increasing, got {list(ms)}")
        if any(f >= 1 for f in self.milestone_fractions):
            raise ConfigError(f"optim.milestone_fractions must lie in (0, 1), got {list(self.milestone_fractions)}")
        if self.schedule == "step" and not ms:
            raise ConfigError("optim.schedule=step needs optim.milestones or optim.milestone_fractions")
        if self.schedule != "step" and ms:
            raise ConfigError(f"optim milestones are used by schedule=step only (schedule is {self.schedule!r})")


def build_optimizer(params: list[nn.Parameter], cfg: OptimConfig) -> torch.optim.Optimizer:
    """The optimiser ``cfg`` names over ``params`` (the lr is set every step by :func:`lr_at`)."""
    if cfg.name == "sgd":
        return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.nesterov, weight_decay=cfg.weight_decay)
    cls = torch.optim.AdamW if cfg.name == "adamw" else torch.optim.Adam
    return cls(params, lr=cfg.lr, betas=cfg.betas, weight_decay=cfg.weight_decay)


@dataclass
class TrainConfig:
    """How to train (independent of the method). ``epochs`` overrides ``steps`` when set."""

    steps: int = 1000
    epochs: int | None = None
    #: per-process batch size (global batch = world size x batch_size)
    batch_size: int = 128
    optim: OptimConfig = field(default_factory=OptimConfig)
    num_workers: int = 0
    seed: int = 0
    #: validate every N steps (and at the end); 0 = only at the end
    val_every: int = 500
    #: write last.safetensors and the resumable state every N steps (and at the end)
    ckpt_every: int = 500
    log_every: int = 10
    #: evaluation protocol (avloc.registry.PROTOCOLS) and the metric that picks best.safetensors
    val_protocol: str = "sslalign-adaptive"
    val_metric: str = "success"
    val_batch_size: int = 32
    #: mixed precision on CUDA: torch.autocast in ``amp_dtype`` (fp16 with a GradScaler; bf16 without).
    #: On CPU it is not used (the run says so in its log and config.json: ``precision``)
    amp: bool = True
    amp_dtype: Literal["float16", "bfloat16"] = "float16"
    #: channels-last memory format for the model and 4-D image batches (helps convolutions under AMP on GPUs)
    channels_last: bool = False
    #: wrap the model in ``torch.compile`` (mode ``compile_mode``); the saved weights are the plain model's
    compile: bool = False
    compile_mode: Literal["default", "reduce-overhead", "max-autotune"] = "default"
    #: DDP ``find_unused_parameters`` (methods whose loss skips some parameters on some steps)
    ddp_find_unused: bool = False
    #: "auto" = cuda when available (the local rank's GPU under torchrun), else cpu
    device: str = "auto"
    #: use cached frozen-backbone features when the method and dataset allow it
    feature_cache: bool = True
    feature_cache_batch_size: int = 64
    #: also keep the cached features on disk (avloc.encoders.cache, keyed by image content), so
    #: later runs with the same encoder, weights and preprocessing skip the encoder; None = memory only
    feature_cache_dir: str | None = None
    progress: bool = True

    def __post_init__(self) -> None:
        for name in ("steps", "batch_size", "log_every", "val_batch_size", "feature_cache_batch_size"):
            if getattr(self, name) < 1:
                raise ConfigError(f"train.{name} must be >= 1, got {getattr(self, name)}")
        if self.epochs is not None and self.epochs < 1:
            raise ConfigError(f"train.epochs must be >= 1 (or null to use steps), got {self.epochs}")
        for name in ("val_every", "ckpt_every", "num_workers"):
            if getattr(self, name) < 0:
                raise ConfigError(f"train.{name} must be >= 0, got {getattr(self, name)}")
        if self.amp_dtype not in ("float16", "bfloat16"):
            raise ConfigError(f"train.amp_dtype must be float16 or bfloat16, got {self.amp_dtype!r}")
        if self.compile_mode not in ("default", "reduce-overhead", "max-autotune"):
            raise ConfigError(f"train.compile_mode must be default, reduce-overhead or max-autotune, got {self.compile_mode!r}")


@dataclass
class DataConfig:
    """Where the data comes from: specs resolved by :func:`avloc.data.datasets.dataset_from_spec`."""

    train: str = ""
    val: str | None = None
    raw: str | None = None
    #: extra factory kwargs, e.g. {"pool": 2000, "count": 200000} for DigitScenes pool mode
    train_kwargs: dict[str, Any] = field(default_factory=dict)
    val_kwargs: dict[str, Any] = field(default_factory=dict)
    #: the ``avloc data prepare`` format the training manifest comes from (vggsound, flickr-train,
    #: music-solo, ave); ``--dry-run`` generates a tiny set in that layout when ``train`` is absent
    prepare: str | None = None


# ---------------------------------------------------------------------------------------------
# distributed helpers


@dataclass
class _Dist:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0


def _init_distributed(device_pref: str) -> tuple[_Dist, torch.device]:
    """Join the torchrun process group if launched by torchrun; pick the device."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    use_cuda = torch.cuda.is_available() and device_pref in ("auto", "cuda")
    if device_pref not in ("auto", "cuda", "cpu"):
        raise ConfigError(f"train.device must be auto, cuda or cpu, got {device_pref!r}")
    if device_pref == "cuda" and not torch.cuda.is_available():
        raise ConfigError("train.device=cuda but CUDA is not available")
    if world <= 1:
        return _Dist(), torch.device("cuda" if use_cuda else "cpu")
    import torch.distributed as dist

    rank, local = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if use_cuda else "gloo")
    if use_cuda:
        torch.cuda.set_device(local)
    return _Dist(rank, world, local), torch.device(f"cuda:{local}" if use_cuda else "cpu")


def _barrier(d: _Dist) -> None:
    if d.world > 1:
        import torch.distributed as dist

        dist.barrier()



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


def _all_reduce_mean(values: dict[str, float], d: _Dist, device: torch.device) -> dict[str, float]:
    """Mean over ranks of every logged scalar (one all-reduce), so rank 0 logs the global figures."""
    if d.world <= 1 or not values:
        return values
    import torch.distributed as dist

    keys = sorted(values)
    t = torch.tensor([values[k] for k in keys], dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return {k: float(v) / d.world for k, v in zip(keys, t.tolist(), strict=True)}


def _channels_last(batch: dict[str, Any]) -> None:
    for k, v in batch.items():
        if isinstance(v, torch.Tensor) and v.dim() == 4 and v.is_floating_point():
            batch[k] = v.contiguous(memory_format=torch.channels_last)


# ---------------------------------------------------------------------------------------------
# learning-rate schedule and seeding


def lr_at(step: int, total: int, cfg: OptimConfig) -> float:
    """Learning rate for optimizer step ``step`` (0-based): linear warm-up, then constant, cosine or step decay."""
    if cfg.warmup_steps > 0 and step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    if cfg.schedule == "constant":
        return cfg.lr
    if cfg.schedule == "step":
        marks = cfg.milestones or tuple(round(f * total) for f in cfg.milestone_fractions)
        return cfg.lr * cfg.gamma ** sum(step >= m for m in marks)
    span = max(1, total - cfg.warmup_steps)
    t = min(1.0, (step - cfg.warmup_steps) / span)
    return cfg.lr * (cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * t)))


def seed_everything(seed: int) -> None:
    """Seed python, numpy and torch (all devices)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)  # noqa: NPY002
    torch.manual_seed(seed)


def _worker_init(worker_id: int) -> None:
    s = torch.initial_seed() % 2**32
    random.seed(s)
    np.random.seed(s)  # noqa: NPY002


# ---------------------------------------------------------------------------------------------
# resumable state without pickle


def _split_tensors(obj: Any, prefix: str, tensors: dict[str, torch.Tensor]) -> Any:
    """Replace tensors in a nested dict/list by references; collect them in ``tensors``."""
    if isinstance(obj, torch.Tensor):
        tensors[prefix] = obj.detach().cpu().contiguous()
        return {"__tensor__": prefix}
    if isinstance(obj, dict):
        return {"__dict__": [[k, _split_tensors(v, f"{prefix}/{k}", tensors)] for k, v in obj.items()]}
    if isinstance(obj, (list, tuple)):
        kind = "__tuple__" if isinstance(obj, tuple) else "__list__"
        return {kind: [_split_tensors(v, f"{prefix}/{i}", tensors) for i, v in enumerate(obj)]}
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    raise TypeError(f"cannot store {type(obj).__name__} at {prefix} in a training state")


def _join_tensors(obj: Any, tensors: dict[str, torch.Tensor]) -> Any:
    if isinstance(obj, dict):
        if "__tensor__" in obj:
            return tensors[obj["__tensor__"]]
        if "__dict__" in obj:
            return {k: _join_tensors(v, tensors) for k, v in obj["__dict__"]}
        if "__list__" in obj:
            return [_join_tensors(v, tensors) for v in obj["__list__"]]
        if "__tuple__" in obj:
            return tuple(_join_tensors(v, tensors) for v in obj["__tuple__"])
    return obj


def _rng_state() -> dict[str, Any]:
    np_state = np.random.get_state()  # noqa: NPY002  (the legacy global RNG is what datasets may use)
    st: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": [np_state[0], torch.from_numpy(np.asarray(np_state[1], dtype=np.int64)), *map(_py, np_state[2:])],  # type: ignore[index]
        "python": json.dumps(random.getstate()),
    }
    if torch.cuda.is_available():
        st["cuda"] = torch.cuda.get_rng_state_all()
    return st


def _py(x: Any) -> Any:
    return x.item() if hasattr(x, "item") else x


def _set_rng_state(st: dict[str, Any]) -> None:
    torch.set_rng_state(st["torch"].to(torch.uint8))
    name, keys, pos, has_gauss, gauss = st["numpy"]
    np_state = (name, keys.numpy().astype(np.uint32), int(pos), int(has_gauss), float(gauss))
    np.random.set_state(np_state)  # noqa: NPY002
    v = json.loads(st["python"])
    random.setstate((v[0], tuple(v[1]), v[2]))
    if "cuda" in st and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([t.to(torch.uint8) for t in st["cuda"]])


def save_train_state(path: str | Path, state: dict[str, Any]) -> Path:
    """Write a nested dict of tensors and JSON scalars as one safetensors file, atomically."""
    from safetensors.torch import save_file

    tensors: dict[str, torch.Tensor] = {}
    skeleton = _split_tensors(state, "s", tensors)
    with atomic_path(path, suffix=".safetensors") as tmp:
        save_file(tensors, str(tmp), metadata={_STATE_META_KEY: json.dumps(skeleton)})
    return Path(path)


def load_train_state(path: str | Path) -> dict[str, Any]:
    """Read a file written by :func:`save_train_state`."""
    from safetensors import safe_open
    from safetensors.torch import load_file

    p = Path(path)
    if not p.is_file():
        raise DataError(f"cannot resume: no training state {p} (the run never reached a checkpoint)")
    with safe_open(str(p), framework="pt") as f:
        meta = f.metadata() or {}
    if _STATE_META_KEY not in meta:
        raise DataError(f"{p} is not an avloc training state")
    out = _join_tensors(json.loads(meta[_STATE_META_KEY]), load_file(str(p)))
    assert isinstance(out, dict)
    return out


# ---------------------------------------------------------------------------------------------
# data


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


def _epoch_loader(dataset: Dataset, cfg: TrainConfig, d: _Dist, epoch: int, skip_batches: int) -> DataLoader:
    n = len(dataset)  # type: ignore[arg-type]
    sampler: DistributedSampler[int] = DistributedSampler(dataset, num_replicas=d.world, rank=d.rank, shuffle=True, seed=cfg.seed, drop_last=True)
    sampler.set_epoch(epoch)
    idx = list(iter(sampler))
    if len(idx) < cfg.batch_size:
        raise DataError(f"training set has {n} samples: fewer than one batch of {cfg.batch_size} per process ({d.world})")
    idx = idx[skip_batches * cfg.batch_size :]
    g = torch.Generator()
    g.manual_seed(cfg.seed * 100_003 + epoch * 1009 + d.rank)
    return DataLoader(
        dataset,
        batch_size=cfg.batch_size,
        sampler=_ListSampler(idx),
        drop_last=True,
        num_workers=cfg.num_workers,
        collate_fn=_collate(),
        worker_init_fn=_worker_init,
        generator=g,
        persistent_workers=False,
    )


def _to_device(batch: dict[str, Any], device: torch.device) -> dict[str, Any]:
    return {k: (v.to(device, non_blocking=True) if isinstance(v, torch.Tensor) else v) for k, v in batch.items()}


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


# ---------------------------------------------------------------------------------------------
# logging and curves


def _read_metrics(path: Path) -> list[dict[str, Any]]:
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def read_metrics(run_dir: str | Path, split: str | None = None) -> list[dict[str, Any]]:
    """A run directory's ``metrics.jsonl`` rows in order (only ``split`` = ``"train"`` / ``"val"`` when given)."""
    path = Path(run_dir) / METRICS_FILE
    if not path.is_file():
        raise DataError(f"{run_dir}: not a training run directory (no {METRICS_FILE})")
    try:
        rows = _read_metrics(path)
    except json.JSONDecodeError as e:
        raise DataError(f"{path}: malformed line {e.lineno}: {e.msg}") from None
    return [r for r in rows if split is None or r.get("split") == split]


#: logged training fields that are bookkeeping, not loss terms or accuracies
_NOT_TERMS = frozenset({"step", "split", "lr", "samples_per_s", "seconds", "epoch"})


def train_end(run_dir: str | Path, last: int = 100, keys: Sequence[str] | None = None, points: int = 4) -> dict[str, Any]:
    """The memorisation check of a finished run: the mean of each logged training term (``keys``, default every
    loss term and accuracy logged) over its last ``last`` steps, how many logged batches that mean covers, and the
    loss at ``points`` evenly spaced steps (the learning curve, e.g. quarters). A training loss far below what the
    held-out data reaches, with held-out scores at chance, says the model memorised its training clips."""
    rows = read_metrics(run_dir, "train")
    if not rows:
        raise DataError(f"{run_dir}: no training rows in {METRICS_FILE}")
    end = int(rows[-1]["step"])
    tail = [r for r in rows if int(r["step"]) > end - last]
    names = list(keys) if keys is not None else sorted(
        {k for r in tail for k, v in r.items() if k not in _NOT_TERMS and isinstance(v, int | float) and not isinstance(v, bool)}
    )
    out: dict[str, Any] = {"steps": f"{max(end - last + 1, 1)}-{end}", "logged": len(tail)}
    for k in names:
        vals = [float(r[k]) for r in tail if k in r]
        if vals:
            out[k] = float(np.mean(vals))
    marks = {end * q // points for q in range(1, points + 1)}
    out["loss_at"] = {str(r["step"]): float(r["loss"]) for r in rows if int(r["step"]) in marks and "loss" in r}
    return out


def plot_curves(metrics: list[dict[str, Any]], out: Path, title: str = "") -> None:
    """Loss (train) and validation metrics vs step as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tr = [m for m in metrics if m.get("split") == "train"]
    va = [m for m in metrics if m.get("split") == "val"]
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    # the total loss and the terms a criterion logs next to it (tri, edu, ...); rates and the lr are not losses
    skip = ("step", "loss", "lr", "samples_per_s")
    logged = {k for m in tr for k, v in m.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
    terms = ["loss", *sorted(logged - set(skip))]
    for k in terms:
        pts = [(m["step"], m[k]) for m in tr if isinstance(m.get(k), (int, float))]
        axes[0].plot([p[0] for p in pts], [p[1] for p in pts], label=k, lw=2.0 if k == "loss" else 1.0)
    axes[0].set_xlabel("step")
    axes[0].set_ylabel("training loss and logged terms")
    axes[0].grid(alpha=0.3)
    if len(terms) > 1 and tr:
        axes[0].legend(fontsize=7)
    # scores only: counts (n, n_undefined, ...), timings and flags are logged but not plotted
    keys = sorted({
        k for m in va for k, v in m.items()
        if isinstance(v, (int, float)) and not isinstance(v, bool) and k not in ("step", "seconds")
        and not k.startswith("n_") and k != "n"
    })
    for k in keys:
        pts = [(m["step"], m[k]) for m in va if isinstance(m.get(k), (int, float))]
        axes[1].plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=k)
    axes[1].set_xlabel("step")
    axes[1].set_ylabel("validation")
    axes[1].grid(alpha=0.3)
    if keys:
        axes[1].legend(fontsize=7)
    else:
        axes[1].text(0.5, 0.5, "no validation in this run\n(no --val data or val_every = 0)", ha="center",
                     va="center", transform=axes[1].transAxes, color="0.4")
    fig.suptitle(title)
    fig.tight_layout()
    with atomic_path(out, suffix=".png") as tmp:
        fig.savefig(tmp, dpi=90, format="png")
    plt.close(fig)


# ---------------------------------------------------------------------------------------------
# the loop


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


def _check_resume_config(saved: dict[str, Any], now: dict[str, Any]) -> None:
    """Resuming with a different method or training recipe would not continue the same run."""
    free = {"steps", "epochs", "val_every", "ckpt_every", "log_every", "num_workers", "progress", "val_batch_size", "device"}
    if saved.get("method") != now["method"] or saved.get("method_config") != now["method_config"]:
        raise ConfigError("--resume: the method or its config differs from the run's config.json; start a new run")
    a, b = saved.get("train", {}), now["train"]
    diff = sorted(k for k in set(a) | set(b) if k not in free and a.get(k) != b.get(k))
    if diff:
        raise ConfigError(f"--resume: train config differs from the run's config.json in {diff}; only {sorted(free)} may change")


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


class RunDir:
    """The run directory (module doc): config, metrics log, curves and checkpoints; written by rank 0 only."""

    def __init__(self, out: Path, main: bool) -> None:
        self.out, self.main = out, main

    @staticmethod
    def check(out: Path, resume: bool, force: bool) -> None:
        """Refuse to overwrite a run (unless ``force``) and to resume one that has no state."""
        if out.exists() and any(out.iterdir()) and not (resume or force):
            raise OutputExistsError(f"{out} exists and is not empty; pass --resume to continue it or --force to overwrite it")
        if resume and not (out / STATE_FILE).is_file():
            raise DataError(f"cannot resume: {out / STATE_FILE} not found")

    def start(self, run_cfg: dict[str, Any], resume: bool) -> None:
        if resume:
            _check_resume_config(json.loads((self.out / CONFIG_FILE).read_text()), run_cfg)
        if not self.main:
            return
        self.out.mkdir(parents=True, exist_ok=True)
        if not resume:
            for name in (STATE_FILE, METRICS_FILE, CURVES_FILE, "last.safetensors", "best.safetensors"):
                (self.out / name).unlink(missing_ok=True)
        write_text_atomic(self.out / CONFIG_FILE, json.dumps(run_cfg, indent=2) + "\n")

    def truncate_metrics(self, step: int) -> None:
        """Drop log lines past ``step`` (a resumed run rewrites them)."""
        if self.main:
            kept = [m for m in _read_metrics(self.out / METRICS_FILE) if m["step"] <= step]
            write_text_atomic(self.out / METRICS_FILE, "".join(json.dumps(m) + "\n" for m in kept))

    def log(self, rec: dict[str, Any]) -> None:
        if self.main:
            with (self.out / METRICS_FILE).open("a") as f:
                f.write(json.dumps(rec) + "\n")

    def plot(self, title: str) -> None:
        if self.main:
            plot_curves(_read_metrics(self.out / METRICS_FILE), self.out / CURVES_FILE, title)

    def save_model(self, model: LocalizationMethod, name: str, meta: dict[str, Any]) -> None:
        if self.main:
            from avloc.methods.zoo import save_model

            save_model(model, self.out / name, meta=meta)


@dataclass
class _Progress:
    """Where the loop is: what the resumable state holds besides weights, optimizer and RNG."""

    step: int = 0
    epoch: int = 0
    batch_in_epoch: int = 0


def _gather_rng(d: _Dist) -> list[Any]:
    """Every rank's RNG states (rank order), for the resumable state."""
    rng = _rng_state()
    if d.world <= 1:
        return [rng]
    import torch.distributed as dist

    gathered: list[Any] = [None] * d.world
    dist.all_gather_object(gathered, {"torch": rng["torch"].tolist(), "py": rng["python"], "np": [rng["numpy"][0], rng["numpy"][1].tolist(), *rng["numpy"][2:]]})
    return [
        {"torch": torch.tensor(g["torch"], dtype=torch.uint8), "python": g["py"],
         "numpy": [g["np"][0], torch.tensor(g["np"][1], dtype=torch.int64), *g["np"][2:]]}
        for g in gathered
    ]


def _restore(out: Path, model: LocalizationMethod, opt: torch.optim.Optimizer, device: torch.device, d: _Dist) -> tuple[_Progress, float | None]:
    """Load the resumable state: weights, optimizer, RNG (this rank's); returns the progress and the best score."""
    st = load_train_state(out / STATE_FILE)
    model.load_state_dict({k: v.to(device) for k, v in st["model"].items()})
    opt.load_state_dict(st["optim"])
    rngs = st["rng"]
    _set_rng_state(rngs[d.rank] if isinstance(rngs, list) and d.rank < len(rngs) else rngs[0])
    return _Progress(int(st["step"]), int(st["epoch"]), int(st["batch_in_epoch"])), st.get("best")


def _sync_buffers(model: LocalizationMethod, d: _Dist) -> None:
    """DDP keeps parameters equal; BatchNorm running statistics are per rank: take rank 0's."""
    if d.world > 1:
        import torch.distributed as dist

        for buf in model.buffers():
            dist.broadcast(buf.data, 0)


def _run_config(model: LocalizationMethod, method_cfg: dict[str, Any], cfg: TrainConfig, data: DataConfig | None,
                world: int, total: int, use_cache: bool, precision: Precision | None = None) -> dict[str, Any]:
    return {
        "precision": None if precision is None else {"used": precision.used, "why": precision.why},
        "method": model.name,
        "method_config": method_cfg,
        "train": config_to_dict(cfg),
        "data": config_to_dict(data) if data is not None else None,
        "world_size": world,
        "total_steps": total,
        "feature_cache": {
            "requested": cfg.feature_cache,
            "used": use_cache,
            "why": "frozen pretrained visual encoder, stable image keys"
            if use_cache
            else ("off by config" if not cfg.feature_cache else "visual encoder trainable or not pretrained, or no stable image key: end to end"),
        },
    }


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
    """Train ``model`` on ``train_set``, writing the run directory ``out_dir`` (see module doc).

    Raises :class:`OutputExistsError` if ``out_dir`` holds a run and neither
    ``resume`` nor ``force`` is given.
    """
    if model.training_free:
        raise ConfigError(f"method {model.name!r} is training-free: nothing to train")
    out = Path(out_dir)
    RunDir.check(out, resume, force)
    tracker = BestTracker.for_protocol(cfg.val_protocol, cfg.val_metric) if val_set is not None else None
    dist_info, device = _init_distributed(cfg.device)
    show = cfg.progress and dist_info.main
    seed_everything(cfg.seed + dist_info.rank)
    requested = config_to_dict(model.cfg)  # before prepare_training applies (and clears) one-off initialisations
    # what the method's config asks of training only (e.g. wrapping the data set); default: unchanged
    train_set = model.prepare_training(train_set, feature_cache=cfg.feature_cache and model.visual_cacheable())

    steps_per_epoch = len(train_set) // (cfg.batch_size * dist_info.world)  # type: ignore[arg-type]
    if steps_per_epoch < 1:
        raise DataError(f"training set of {len(train_set)} samples is smaller than one global batch")  # type: ignore[arg-type]
    total = cfg.epochs * steps_per_epoch if cfg.epochs is not None else cfg.steps
    keys = dataset_image_keys(train_set) if cfg.feature_cache and model.visual_cacheable() else None
    use_cache = keys is not None
    precision = resolve_precision(cfg, device)
    run = RunDir(out, dist_info.main)
    run.start(_run_config(model, requested, cfg, data, dist_info.world, total, use_cache, precision), resume)
    if dist_info.main:
        _log.info("avloc train: %s for %d steps, batch %d x %d on %s; visual features: %s; precision %s (%s)%s%s", model.name, total,
                  cfg.batch_size, dist_info.world, device,
                  "cached (frozen pretrained encoder)" if use_cache else "computed end to end", precision.used, precision.why,
                  "; channels_last" if cfg.channels_last else "", f"; torch.compile ({cfg.compile_mode})" if cfg.compile else "")
    _barrier(dist_info)

    model.to(device)
    if cfg.channels_last:
        model.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise ConfigError(f"method {model.name!r} has no trainable parameters with this config")
    opt = build_optimizer(params, cfg.optim)
    pos = _Progress()
    if resume:
        pos, best = _restore(out, model, opt, device, dist_info)
        if tracker is not None:
            tracker.best = best
        run.truncate_metrics(pos.step)
    criterion = model.build_criterion().to(device)
    cached = None
    if keys is not None:
        cached = _CachedFeatures(keys, build_feature_cache(model, train_set, keys, device, cfg, show).to(device))
    net: nn.Module = model
    if dist_info.world > 1:
        from torch.nn.parallel import DistributedDataParallel

        net = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None,
                                      find_unused_parameters=cfg.ddp_find_unused)
    if cfg.compile:
        net = torch.compile(net, mode=cfg.compile_mode)  # type: ignore[assignment]  # weights stay shared with `model`
    scaler = torch.amp.GradScaler(device.type, enabled=precision.scaled)
    title = f"{model.name} ({out.name})"

    def save_state() -> None:
        _sync_buffers(model, dist_info)
        rngs = _gather_rng(dist_info)
        if not dist_info.main:
            return
        run.save_model(model, "last.safetensors", {"step": pos.step, "run": str(out), "feature_cache": use_cache})
        save_train_state(out / STATE_FILE, {
            "model": model.state_dict(), "optim": opt.state_dict(), "step": pos.step, "epoch": pos.epoch,
            "batch_in_epoch": pos.batch_in_epoch, "best": None if tracker is None else tracker.best, "rng": rngs,
        })

    def validate() -> dict[str, Any] | None:
        if val_set is None or tracker is None:
            return None
        _sync_buffers(model, dist_info)  # every rank evaluates its shard; evaluate_model merges them
        t0 = time.perf_counter()
        res = _validate(model, val_set, cfg, device)
        if dist_info.main:
            run.log({"step": pos.step, "split": "val", **res, "seconds": round(time.perf_counter() - t0, 2)})
            if tracker.update(res):
                run.save_model(model, "best.safetensors", {"step": pos.step, "val": res, "feature_cache": use_cache})
            run.plot(title)
        _barrier(dist_info)
        model.train()
        return res

    from tqdm import tqdm

    bar = tqdm(total=total, initial=pos.step, desc=f"train {model.name}", unit="step", disable=not show, file=sys.stderr, dynamic_ncols=True)
    model.train()
    last_val: dict[str, Any] | None = None
    t_log, n_log = time.perf_counter(), 0
    while pos.step < total:
        loader = _epoch_loader(train_set, cfg, dist_info, pos.epoch, pos.batch_in_epoch)
        order: list[int] = loader.sampler.indices  # type: ignore[attr-defined]  # dataset index of each sample, in batch order
        for b, raw_batch in enumerate(loader):
            batch = _to_device(raw_batch, device)
            if cached is not None:
                cached.apply(batch, order[b * cfg.batch_size : (b + 1) * cfg.batch_size], device)
            if cfg.channels_last:
                _channels_last(batch)
            lr = lr_at(pos.step, total, cfg.optim)
            losses = _step(net, criterion, opt, scaler, params, batch, lr, cfg, precision, pos.step, device)
            pos.step += 1
            pos.batch_in_epoch += 1
            n_log += len(raw_batch["audio"]) * dist_info.world
            bar.update(1)
            if pos.step % cfg.log_every == 0 or pos.step == total:
                dt = time.perf_counter() - t_log
                terms = _all_reduce_mean(_scalar_terms(losses), dist_info, device)  # every rank joins
                rec = {"step": pos.step, "split": "train", "lr": lr, **terms, "samples_per_s": round(n_log / max(dt, 1e-9), 2)}
                run.log(rec)
                bar.set_postfix(loss=f"{rec['loss']:.4f}", sps=f"{rec['samples_per_s']:.1f}")
                t_log, n_log = time.perf_counter(), 0
            if cfg.val_every and pos.step % cfg.val_every == 0 and pos.step < total:
                last_val = validate()
            if cfg.ckpt_every and pos.step % cfg.ckpt_every == 0 and pos.step < total:
                save_state()
            if pos.step >= total:
                break
        else:
            pos.epoch += 1
            pos.batch_in_epoch = 0
    bar.close()
    _sync_buffers(model, dist_info)
    last_val = validate() if val_set is not None else last_val
    save_state()
    run.plot(title)
    _barrier(dist_info)
    return TrainResult(out, pos.step, None if tracker is None else tracker.best, last_val, use_cache)


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


# ---------------------------------------------------------------------------------------------
# from specs (what `avloc train` calls)


def split_overrides(overrides: list[str], method_cfg: Any, train_cfg: TrainConfig, data_cfg: DataConfig) -> tuple[list[str], list[str], list[str]]:
    """Route ``key=value`` overrides to the method, train or data config.

    Explicit prefixes ``method.``, ``train.``, ``data.`` win; otherwise the
    first key part decides (a name in both configs must be prefixed).
    """
    import dataclasses

    names = {
        "method": {f.name for f in dataclasses.fields(method_cfg)},
        "train": {f.name for f in dataclasses.fields(train_cfg)},
        "data": set(),
    }
    routed: dict[str, list[str]] = {"method": [], "train": [], "data": []}
    for item in overrides:
        key = item.split("=", 1)[0]
        head, _, rest = key.partition(".")
        if head in routed and rest:
            routed[head].append(item[len(head) + 1 :])
            continue
        hits = [k for k in ("method", "train") if head in names[k]]
        if len(hits) != 1:
            raise ConfigError(
                f"override {item!r}: {'ambiguous' if hits else 'unknown'} key {head!r}; prefix it with method., train. or data. "
                f"(method keys: {sorted(names['method'])}; train keys: {sorted(names['train'])})"
            )
        routed[hits[0]].append(item)
    return routed["method"], routed["train"], routed["data"]


def train_from_specs(
    method: str | None,
    out_dir: str | Path | None,
    train_spec: str | None = None,
    val_spec: str | None = None,
    raw: str | None = None,
    config_file: str | Path | None = None,
    overrides: list[str] | None = None,
    resume: bool = False,
    force: bool = False,
    dry_run: bool = False,
    report: list[str] | None = None,
) -> TrainResult:
    """Build method, datasets and configs from names/specs, then :func:`train`.

    ``config_file`` is JSON (or TOML) with optional sections ``method``,
    ``train`` and ``data`` and an optional top-level ``method_name`` (so
    ``--method`` may be left out). With ``resume`` the run's own ``config.json`` is
    the base (then the file and overrides apply).

    ``dry_run``: the recipe's model, data pipeline and optimiser, for
    :data:`DRY_RUN_STEPS` steps (see :func:`dry_run_adjust`); what it changed
    is appended to ``report``.
    """
    from avloc.config import apply_overrides
    from avloc.data.datasets import dataset_from_spec
    from avloc.methods import create_method
    from avloc.registry import METHODS

    out = Path(out_dir) if out_dir is not None else Path(".")
    base: dict[str, Any] = {}
    if resume:
        if not (out / CONFIG_FILE).is_file():
            raise DataError(f"cannot resume: {out / CONFIG_FILE} not found")
        saved = json.loads((out / CONFIG_FILE).read_text())
        base = {"method": saved["method_config"], "train": saved["train"], "data": saved.get("data") or {}}
        if method is not None and method != saved["method"]:
            raise ConfigError(f"--resume: run {out} trains {saved['method']!r}, not {method!r}")
        method = saved["method"]
    if config_file is not None:
        file_cfg = read_config_file(config_file, sections=("method_name", "method", "train", "data"))
        named = file_cfg.get("method_name")
        if named is not None:
            if method is not None and method != named:
                raise ConfigError(f"--method {method!r} but config {config_file} is a recipe for {named!r}")
            method = named
        for sec in ("method", "train", "data"):
            base[sec] = {**base.get(sec, {}), **file_cfg.get(sec, {})}
    if method is None:
        raise ConfigError("--method is required (unless --resume, or a --config recipe with method_name)")
    cls = METHODS.get(method)
    method_cfg = config_from_dict(cls.config_class, base.get("method", {}))
    train_cfg = config_from_dict(TrainConfig, base.get("train", {}))
    data_cfg = config_from_dict(DataConfig, base.get("data", {}))
    m_ov, t_ov, d_ov = split_overrides(list(overrides or []), method_cfg, train_cfg, data_cfg)
    method_cfg = apply_overrides(method_cfg, m_ov)
    train_cfg = apply_overrides(train_cfg, t_ov)
    data_cfg = apply_overrides(data_cfg, d_ov)
    if train_spec is not None:
        data_cfg.train = train_spec
    if val_spec is not None:
        data_cfg.val = val_spec
    if raw is not None:
        data_cfg.raw = raw
    notes: list[str] = report if report is not None else []
    tmp: tempfile.TemporaryDirectory[str] | None = None
    if dry_run:
        tmp = tempfile.TemporaryDirectory(prefix="avloc-dry-run-")
        method_cfg, train_cfg, data_cfg = dry_run_adjust(method_cfg, train_cfg, data_cfg, Path(tmp.name), notes)
        out = Path(tmp.name) / "run" if out_dir is None else out
    if not data_cfg.train:
        raise ConfigError("--train SPEC is required (a manifest path or NAME:VARIANT:SPLIT)")
    if out_dir is None and not dry_run:
        raise ConfigError("--out RUN_DIR is required (except with --dry-run)")
    raw_dir = data_cfg.raw or os.environ.get("AVLOC_DATA")
    model = create_method(method, method_cfg)
    train_set = dataset_from_spec(data_cfg.train, raw=raw_dir, image_cfg=method_cfg.image, audio_cfg=method_cfg.audio, **data_cfg.train_kwargs)
    val_set = (
        dataset_from_spec(data_cfg.val, raw=raw_dir, image_cfg=method_cfg.image, audio_cfg=method_cfg.audio, **data_cfg.val_kwargs)
        if data_cfg.val and not dry_run
        else None
    )
    if dry_run:
        from avloc.metrics.protocols import create_protocol

        create_protocol(train_cfg.val_protocol)  # the recipe's evaluation protocol exists
        BestTracker.for_protocol(train_cfg.val_protocol, train_cfg.val_metric)  # and reports its val_metric
        val_set = None
        notes.append(f"validation skipped (the recipe evaluates with {train_cfg.val_protocol!r}, picking {train_cfg.val_metric!r})")
    try:
        return train(model, train_set, out, train_cfg, val_set, resume=resume, force=force or dry_run, data=data_cfg)
    finally:
        if tmp is not None and out_dir is None:
            tmp.cleanup()


#: optimiser steps of ``avloc train --dry-run``, and the per-process batch it uses at most
DRY_RUN_STEPS = 2
DRY_RUN_BATCH = 2


def dry_run_adjust(method_cfg: Any, train_cfg: TrainConfig, data_cfg: DataConfig, scratch: Path,
                   notes: list[str]) -> tuple[Any, TrainConfig, DataConfig]:
    """What ``--dry-run`` changes in a recipe, each change appended to ``notes``.

    :data:`DRY_RUN_STEPS` steps at a batch of at most :data:`DRY_RUN_BATCH` (the recipe's model,
    image size, audio front-end, optimiser and schedule are kept), no validation or intermediate
    checkpoints, no workers; a training manifest that does not exist is replaced by a tiny set
    generated in the recipe's ``data.prepare`` layout and prepared with that step; ImageNet
    weights that are not on this machine are replaced by a random initialisation.
    """
    import dataclasses

    from avloc.data.prepare import prepare
    from avloc.data.prepare.fixtures import write_layout_fixture

    batch = min(train_cfg.batch_size, DRY_RUN_BATCH)
    if batch != train_cfg.batch_size:
        notes.append(f"batch {batch} instead of the recipe's {train_cfg.batch_size}")
    train_cfg = dataclasses.replace(
        train_cfg, steps=DRY_RUN_STEPS, epochs=None, batch_size=batch, val_every=0, ckpt_every=0, log_every=1,
        num_workers=0, progress=False, feature_cache_dir=None,
    )
    train_path = data_cfg.train.removeprefix("manifest:")
    is_manifest = data_cfg.train.startswith("manifest:") or data_cfg.train.endswith(".jsonl")
    if is_manifest and not Path(train_path).is_file():
        if data_cfg.prepare is None:
            raise ConfigError(f"--dry-run: {train_path} not found and the recipe names no data.prepare layout to generate")
        # clips a little longer than the recipe's audio window (segment methods read frames across it), 25 fps
        root = write_layout_fixture(data_cfg.prepare, scratch / "data" / data_cfg.prepare, n=DRY_RUN_STEPS * batch + 2,
                                    seconds=max(2.0, float(method_cfg.audio.window_seconds) + 0.5), fps=25.0,
                                    sample_rate=method_cfg.audio.sample_rate)
        manifest = scratch / "data" / f"{data_cfg.prepare}.jsonl"
        res = prepare(data_cfg.prepare, root, manifest)
        notes.append(f"{train_path} not found: generated {res.n_written} {data_cfg.prepare}-layout clips, prepared into {manifest}")
        kwargs = dict(data_cfg.train_kwargs)
        if kwargs.get("count") is not None:
            kwargs.pop("count")
            notes.append("data.train_kwargs.count dropped (the generated set is smaller)")
        data_cfg = dataclasses.replace(data_cfg, train=str(manifest), train_kwargs=kwargs)
    vk = dict(getattr(method_cfg, "visual_encoder_kwargs", {}) or {})
    if vk.get("weights") == "imagenet":
        from avloc.encoders.resnet import imagenet_weights_path

        try:
            imagenet_weights_path()
        except CheckpointError as e:
            vk["weights"] = None
            method_cfg = dataclasses.replace(method_cfg, visual_encoder_kwargs=vk)
            notes.append(f"random visual initialisation ({e})")
    return method_cfg, train_cfg, data_cfg
