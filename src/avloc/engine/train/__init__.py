"""The one training loop every method uses, and the run directory it writes.

* :mod:`~avloc.engine.train.config`: :class:`OptimConfig`, :class:`TrainConfig`, :class:`DataConfig`
  (checked in ``__post_init__``), :func:`build_optimizer`, :func:`lr_at`;
* :mod:`~avloc.engine.train.state`: the resumable state without pickle, RNG states, seeding;
* :mod:`~avloc.engine.train.distributed`: torchrun ranks, device choice, collectives;
* :mod:`~avloc.engine.train.rundir`: config, metrics log, curves, checkpoints; the checks before a resume;
* :mod:`~avloc.engine.train.loop`: the method contract, the :class:`Trainer` and :func:`train`;
* :mod:`~avloc.engine.train.recipes`: :func:`train_from_specs` (what ``avloc train`` calls), overrides,
  ``--dry-run``.

Multi-node training and precision: docs/training.md.
"""

from avloc.engine.train.config import DataConfig, OptimConfig, TrainConfig, build_optimizer, lr_at
from avloc.engine.train.loop import BestTracker, Precision, Trainer, TrainResult, resolve_precision, train
from avloc.engine.train.recipes import DRY_RUN_BATCH, DRY_RUN_STEPS, dry_run_adjust, split_overrides, train_from_specs
from avloc.engine.train.rundir import (
    CONFIG_FILE,
    CURVES_FILE,
    METRICS_FILE,
    STATE_FILE,
    RunDir,
    plot_curves,
    read_metrics,
    train_end,
)
from avloc.engine.train.state import load_train_state, save_train_state, seed_everything

__all__ = [
    "CONFIG_FILE",
    "CURVES_FILE",
    "DRY_RUN_BATCH",
    "DRY_RUN_STEPS",
    "METRICS_FILE",
    "STATE_FILE",
    "BestTracker",
    "DataConfig",
    "OptimConfig",
    "Precision",
    "RunDir",
    "TrainConfig",
    "TrainResult",
    "Trainer",
    "build_optimizer",
    "dry_run_adjust",
    "load_train_state",
    "lr_at",
    "plot_curves",
    "read_metrics",
    "resolve_precision",
    "save_train_state",
    "seed_everything",
    "split_overrides",
    "train",
    "train_end",
    "train_from_specs",
]
