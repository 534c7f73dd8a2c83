"""Training configuration: the optimiser and schedule, the run, the data (typed dataclasses, checked in ``__post_init__``).

:class:`OptimConfig` (optimiser, learning-rate schedule, clipping), :class:`TrainConfig` (steps or epochs,
batch, validation, checkpoints, precision, feature cache, device) and :class:`DataConfig` (the data specs);
:func:`build_optimizer` and :func:`lr_at` read them. Every number is checked to be finite and in its range
when the config is built, so a bad value fails before any data is read (:class:`avloc.errors.ConfigError`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from torch import nn

from avloc.errors import ConfigError


def _finite(where: str, *values: float) -> None:
    """Raise unless every value is a finite number (NaN and infinities are never a setting)."""
    bad = [v for v in values if not math.isfinite(v)]
    if bad:
        raise ConfigError(f"{where} must be a finite number, got {bad[0]}")


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
        _finite("optim.lr", self.lr)
        _finite("optim.weight_decay", self.weight_decay)
        _finite("optim.betas", *self.betas)
        _finite("optim.momentum / min_lr_ratio / gamma / grad_clip", self.momentum, self.min_lr_ratio, self.gamma,
                self.grad_clip)
        _finite("optim.milestone_fractions", *self.milestone_fractions)
        if not self.lr > 0:
            raise ConfigError(f"optim.lr must be > 0, got {self.lr}")
        if self.weight_decay < 0:
            raise ConfigError(f"optim.weight_decay must be >= 0, got {self.weight_decay}")
        if self.lr * self.weight_decay >= 1:
            # decay multiplies every weight by (1 - lr * weight_decay) per step: at >= 1 it zeroes or flips them
            raise ConfigError(f"optim.lr x optim.weight_decay must be < 1 (each step scales weights by 1 - lr x "
                              f"weight_decay), got {self.lr} x {self.weight_decay}")
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
        for name in ("steps", "epochs", "batch_size", "num_workers", "val_every", "ckpt_every", "log_every",
                     "val_batch_size", "feature_cache_batch_size"):
            v = getattr(self, name)
            if v is not None and (isinstance(v, bool) or not isinstance(v, int)):
                raise ConfigError(f"train.{name} must be a whole number, got {v!r}")
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
        if not self.val_protocol or not self.val_metric:
            raise ConfigError("train.val_protocol and train.val_metric must name a protocol and one of its scores")


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
