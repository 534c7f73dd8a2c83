"""What ``avloc train`` calls: configs and data from names, specs, recipe files and overrides, then :func:`train`.

:func:`train_from_specs` builds the method, the datasets and the three configs from a recipe
(``--config``: a file or a shipped ``src/avloc/configs/NAME.json``), ``key=value`` overrides
(:func:`split_overrides` routes them) and data specs; with ``resume`` the run's own ``config.json`` is
the base. :func:`dry_run_adjust` is what ``--dry-run`` changes in a recipe.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

from avloc.config import config_from_dict, read_config_file
from avloc.engine.train.config import DataConfig, TrainConfig
from avloc.engine.train.loop import BestTracker, TrainResult, train
from avloc.engine.train.rundir import RunDir
from avloc.errors import CheckpointError, ConfigError


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


def resolve_configs(
    method: str | None, resume_dir: Path | None, config_file: str | Path | None, overrides: list[str]
) -> tuple[str, Any, TrainConfig, DataConfig]:
    """The method name and its, the train and the data configs: the resumed run's ``config.json`` (when
    ``resume_dir``), then the recipe file, then the ``key=value`` overrides."""
    from avloc.config import apply_overrides
    from avloc.registry import METHODS

    base: dict[str, Any] = {}
    if resume_dir is not None:
        saved = RunDir.check_resumable(resume_dir)  # every file the resume reads; a damaged one is named
        base = {"method": saved["method_config"], "train": saved["train"], "data": saved.get("data") or {}}
        if method is not None and method != saved["method"]:
            raise ConfigError(f"--resume: run {resume_dir} trains {saved['method']!r}, not {method!r}")
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
    m_ov, t_ov, d_ov = split_overrides(overrides, method_cfg, train_cfg, data_cfg)
    return method, apply_overrides(method_cfg, m_ov), apply_overrides(train_cfg, t_ov), apply_overrides(data_cfg, d_ov)


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
    from avloc.data.datasets import dataset_from_spec
    from avloc.methods import create_method

    out = Path(out_dir) if out_dir is not None else Path(".")
    method, method_cfg, train_cfg, data_cfg = resolve_configs(method, out if resume else None, config_file,
                                                              list(overrides or []))
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
