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

Distributed: run under ``torchrun --nproc_per_node N -m avloc.cli.main train
...``; the process group uses gloo on CPU and NCCL on CUDA, every rank gets a
:class:`~torch.utils.data.DistributedSampler` shard of ``batch_size`` samples
(the global batch is ``N * batch_size``; in-batch negatives stay per rank),
gradients are averaged by :class:`~torch.nn.parallel.DistributedDataParallel`
and rank 0 writes the run directory. AMP (``torch.autocast`` fp16 with a
grad scaler) is used only on CUDA.

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
import time
from collections.abc import Iterator
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
from avloc.errors import ConfigError, DataError, OutputExistsError
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
    """Adam with linear warm-up (LVS: Adam, lr 1e-4, no weight decay)."""

    lr: float = 1e-4
    weight_decay: float = 0.0
    betas: tuple[float, float] = (0.9, 0.999)
    #: linear warm-up from 0 over this many steps, then ``schedule``
    warmup_steps: int = 0
    schedule: Literal["constant", "cosine"] = "constant"
    #: cosine floor as a fraction of ``lr``
    min_lr_ratio: float = 0.0
    #: max global gradient norm; 0 disables clipping
    grad_clip: float = 0.0


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
    #: torch.autocast fp16 on CUDA (ignored on CPU)
    amp: bool = True
    #: "auto" = cuda when available (the local rank's GPU under torchrun), else cpu
    device: str = "auto"
    #: use cached frozen-backbone features when the method and dataset allow it
    feature_cache: bool = True
    feature_cache_batch_size: int = 64
    #: also keep the cached features on disk (avloc.encoders.cache, keyed by image content), so
    #: later runs with the same encoder, weights and preprocessing skip the encoder; None = memory only
    feature_cache_dir: str | None = None
    progress: bool = True


@dataclass
class DataConfig:
    """Where the data comes from: specs resolved by :func:`avloc.data.datasets.dataset_from_spec`."""

    train: str = ""
    val: str | None = None
    raw: str | None = None
    #: extra factory kwargs, e.g. {"pool": 2000, "count": 200000} for DigitScenes pool mode
    train_kwargs: dict[str, Any] = field(default_factory=dict)
    val_kwargs: dict[str, Any] = field(default_factory=dict)


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


# ---------------------------------------------------------------------------------------------
# learning-rate schedule and seeding


def lr_at(step: int, total: int, cfg: OptimConfig) -> float:
    """Learning rate for optimizer step ``step`` (0-based): linear warm-up, then constant or cosine."""
    if cfg.warmup_steps > 0 and step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    if cfg.schedule == "constant":
        return cfg.lr
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
                world: int, total: int, use_cache: bool) -> dict[str, Any]:
    return {
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
    run = RunDir(out, dist_info.main)
    run.start(_run_config(model, requested, cfg, data, dist_info.world, total, use_cache), resume)
    if dist_info.main:
        _log.info("avloc train: %s for %d steps, batch %d x %d on %s; visual features: %s", model.name, total,
                  cfg.batch_size, dist_info.world, device,
                  "cached (frozen pretrained encoder)" if use_cache else "computed end to end")
    _barrier(dist_info)

    model.to(device)
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise ConfigError(f"method {model.name!r} has no trainable parameters with this config")
    opt = torch.optim.Adam(params, lr=cfg.optim.lr, betas=cfg.optim.betas, weight_decay=cfg.optim.weight_decay)
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

        net = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    amp = cfg.amp and device.type == "cuda"
    scaler = torch.amp.GradScaler("cuda", enabled=amp)
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
            lr = lr_at(pos.step, total, cfg.optim)
            losses = _step(net, criterion, opt, scaler, params, batch, lr, cfg, amp, pos.step, device)
            pos.step += 1
            pos.batch_in_epoch += 1
            n_log += len(raw_batch["audio"]) * dist_info.world
            bar.update(1)
            if pos.step % cfg.log_every == 0 or pos.step == total:
                dt = time.perf_counter() - t_log
                rec = {"step": pos.step, "split": "train", "lr": lr, **_scalar_terms(losses), "samples_per_s": round(n_log / max(dt, 1e-9), 2)}
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
    batch: dict[str, Any], lr: float, cfg: TrainConfig, amp: bool, step: int, device: torch.device,
) -> dict[str, torch.Tensor]:
    """One optimisation step (forward, loss, backward, clipping, Adam); returns the loss terms."""
    for g in opt.param_groups:
        g["lr"] = lr
    with torch.autocast(device_type=device.type, dtype=torch.float16, enabled=amp):
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
    out_dir: str | Path,
    train_spec: str | None = None,
    val_spec: str | None = None,
    raw: str | None = None,
    config_file: str | Path | None = None,
    overrides: list[str] | None = None,
    resume: bool = False,
    force: bool = False,
) -> TrainResult:
    """Build method, datasets and configs from names/specs, then :func:`train`.

    ``config_file`` is JSON (or TOML) with optional sections ``method``,
    ``train`` and ``data``, and optionally ``method_name`` (the registered method the
    config is for; then ``method`` may be ``None``). With ``resume`` the run's own ``config.json`` is
    the base (then the file and overrides apply).
    """
    from avloc import methods  # noqa: F401  (fills the registry)
    from avloc.config import apply_overrides
    from avloc.data.datasets import dataset_from_spec
    from avloc.methods import create_method
    from avloc.registry import METHODS

    out = Path(out_dir)
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
        if named is not None and method is not None and named != method:
            raise ConfigError(f"{config_file} is a config of method {named!r}, not {method!r}")
        method = method or named
        for sec in ("method", "train", "data"):
            base[sec] = {**base.get(sec, {}), **file_cfg.get(sec, {})}
    if method is None:
        raise ConfigError("--method is required (unless --resume or the config file names it in 'method_name')")
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
    if not data_cfg.train:
        raise ConfigError("--train SPEC is required (a manifest path or NAME:VARIANT:SPLIT)")
    raw_dir = data_cfg.raw or os.environ.get("AVLOC_DATA")
    model = create_method(method, method_cfg)
    train_set = dataset_from_spec(data_cfg.train, raw=raw_dir, image_cfg=method_cfg.image, audio_cfg=method_cfg.audio, **data_cfg.train_kwargs)
    val_set = (
        dataset_from_spec(data_cfg.val, raw=raw_dir, image_cfg=method_cfg.image, audio_cfg=method_cfg.audio, **data_cfg.val_kwargs)
        if data_cfg.val
        else None
    )
    return train(model, train_set, out, train_cfg, val_set, resume=resume, force=force, data=data_cfg)
