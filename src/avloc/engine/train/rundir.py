"""The run directory: config, metrics log, curves, checkpoints and the resumable state (rank 0 writes it).

``config.json`` (method name and config, train config, data specs, world size, precision, whether the
feature cache was used), ``metrics.jsonl`` (one JSON object per line: ``{"step", "split": "train"|"val",
...}``), ``curves.png`` (loss and validation metrics vs step), ``last.safetensors`` / ``best.safetensors``
(:func:`avloc.methods.zoo.save_model`, loadable with ``load_model``) and ``train_state.safetensors``
(:mod:`avloc.engine.train.state`). Before a resume every file the resume reads is checked
(:meth:`RunDir.check_resumable`): a missing or damaged one is named in one line, with what to do.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from avloc.config import config_to_dict
from avloc.engine.train.config import DataConfig, TrainConfig
from avloc.engine.train.state import REPAIR, check_state_file
from avloc.errors import ConfigError, DataError, OutputExistsError
from avloc.formats.atomic import atomic_path, write_text_atomic
from avloc.methods.base import LocalizationMethod

STATE_FILE = "train_state.safetensors"
CONFIG_FILE = "config.json"
METRICS_FILE = "metrics.jsonl"
CURVES_FILE = "curves.png"


def _read_metrics(path: Path) -> list[dict[str, Any]]:
    """The rows of a metrics log (none when absent); a line that is not a JSON object with a ``step`` raises."""
    if not path.is_file():
        return []
    rows = []
    for n, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise ValueError(f"line {n}: {e.msg}") from None
        if not isinstance(row, dict) or not isinstance(row.get("step"), int):
            raise ValueError(f"line {n}: not a JSON object with an integer step")
        rows.append(row)
    return rows


def read_metrics(run_dir: str | Path, split: str | None = None) -> list[dict[str, Any]]:
    """A run directory's ``metrics.jsonl`` rows in order (only ``split`` = ``"train"`` / ``"val"`` when given)."""
    path = Path(run_dir) / METRICS_FILE
    if not path.is_file():
        raise DataError(f"{run_dir}: not a training run directory (no {METRICS_FILE})")
    try:
        rows = _read_metrics(path)
    except ValueError as e:
        raise DataError(f"{path}: malformed {e}") from None
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


def check_resume_config(saved: dict[str, Any], now: dict[str, Any]) -> None:
    """Resuming with a different method or training recipe would not continue the same run."""
    free = {"steps", "epochs", "val_every", "ckpt_every", "log_every", "num_workers", "progress", "val_batch_size", "device"}
    if saved.get("method") != now["method"] or saved.get("method_config") != now["method_config"]:
        raise ConfigError("--resume: the method or its config differs from the run's config.json; start a new run")
    a, b = saved.get("train", {}), now["train"]
    diff = sorted(k for k in set(a) | set(b) if k not in free and a.get(k) != b.get(k))
    if diff:
        raise ConfigError(f"--resume: train config differs from the run's config.json in {diff}; only {sorted(free)} may change")


def _read_json_object(path: Path, keys: tuple[str, ...]) -> dict[str, Any]:
    """A JSON object holding ``keys``, or a :class:`DataError` naming the file."""
    if not path.is_file():
        raise DataError(f"cannot resume: {path} not found (not a run directory, or the run never started); {REPAIR}")
    try:
        obj = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise DataError(f"cannot resume: {path} is damaged (not JSON: {e}); {REPAIR}") from None
    missing = [k for k in keys if not isinstance(obj, dict) or k not in obj]
    if missing:
        raise DataError(f"cannot resume: {path} is damaged (no {', '.join(missing)}); {REPAIR}")
    return obj  # type: ignore[no-any-return]


def _check_saved_configs(path: Path, cfg: dict[str, Any]) -> None:
    """The saved method name and its, the train and the data configs parse as when they were written."""
    from avloc.config import config_from_dict
    from avloc.registry import METHODS, RegistryError

    try:
        if not isinstance(cfg["method"], str):
            raise ConfigError(f"'method' must be a name, got {cfg['method']!r}")
        config_from_dict(METHODS.get(cfg["method"]).config_class, cfg["method_config"])
        config_from_dict(TrainConfig, cfg["train"])
        config_from_dict(DataConfig, cfg.get("data") or {})
    except (ConfigError, RegistryError) as e:
        raise DataError(f"cannot resume: {path} is damaged ({e}); {REPAIR}") from None


class RunDir:
    """The run directory (module doc): config, metrics log, curves and checkpoints; written by rank 0 only."""

    def __init__(self, out: Path, main: bool) -> None:
        self.out, self.main = out, main

    @staticmethod
    def check(out: Path, resume: bool, force: bool) -> None:
        """Refuse to overwrite a run (unless ``force``) and to resume one that is incomplete or damaged."""
        if out.exists() and any(out.iterdir()) and not (resume or force):
            raise OutputExistsError(f"{out} exists and is not empty; pass --resume to continue it or --force to overwrite it")
        if resume:
            RunDir.check_resumable(out)

    @staticmethod
    def check_resumable(out: Path) -> dict[str, Any]:
        """Check every file a resume reads (config, state header, metrics log); returns the saved config.

        A missing or damaged file raises :class:`DataError` naming it and what to do (:data:`REPAIR`).
        """
        cfg = _read_json_object(out / CONFIG_FILE, ("method", "method_config", "train"))
        _check_saved_configs(out / CONFIG_FILE, cfg)
        check_state_file(out / STATE_FILE)
        path = out / METRICS_FILE
        try:
            _read_metrics(path)
        except (ValueError, KeyError, TypeError, UnicodeDecodeError) as e:
            raise DataError(f"cannot resume: {path} is damaged ({e}); {REPAIR}") from None
        return cfg

    def check_continues(self, run_cfg: dict[str, Any]) -> None:
        """A resume continues the same run: the method, its config and the recipe as in ``config.json``."""
        check_resume_config(json.loads((self.out / CONFIG_FILE).read_text()), run_cfg)

    def start(self, run_cfg: dict[str, Any], resume: bool) -> None:
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


def run_config(model: LocalizationMethod, method_cfg: dict[str, Any], cfg: TrainConfig, data: DataConfig | None,
                world: int, total: int, use_cache: bool, precision: dict[str, str] | None = None) -> dict[str, Any]:
    return {
        "precision": precision,
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
