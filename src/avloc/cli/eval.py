"""``avloc eval``: score saved predictions or a model with a named protocol.

Saved predictions::

    avloc eval --gt vggss.json --pred preds.npz --protocol ezvsl-vggss --json [--out-md t.md] [--plot c.png]

``preds.npz`` maps each clip id (the VGG-SS ``file``, the Flickr XML stem,
the manifest ``id``) to a raw 2-D map of any size. ``--gt`` is a VGG-SS
json, a Flickr-SoundNet XML folder, an AVSOL / MUSIC json, or an avloc jsonl
manifest (boxes normalised by the entry's ``size``: predictions cover the
whole frame).

A model::

    avloc eval --model NAME_OR_PATH (--manifest M | --data SPEC --raw DIR) --protocol P --json

Top-level imports stay light (the parser is built for every ``avloc``
command); everything heavy is imported inside :func:`run`.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path
from typing import Any


def add_parser(sub: Any, name: str) -> None:
    p = sub.add_parser(name, help="evaluate saved predictions or a model with a named protocol")
    src = p.add_argument_group("what to evaluate (saved predictions, or a model)")
    src.add_argument("--gt", action="append", help="ground truth (repeatable, e.g. VGG-SS json + SLAVC non-sounding csv): "
                     "VGG-SS json, Flickr XML folder, DSOL / Qian / AVSOL / MUSIC json, SLAVC csv, or jsonl manifest")
    src.add_argument("--pred", help="predictions .npz: clip id -> 2-D heatmap (any size, numeric, at most 256 MiB each)")
    src.add_argument("--model", help="registered model name or checkpoint path (avloc.methods.zoo.load_model)")
    src.add_argument("--manifest", help="jsonl manifest to evaluate the model on")
    src.add_argument("--data", help="dataset spec (avloc.data.datasets.dataset_from_spec)")
    src.add_argument("--raw", help="raw media folder for --data")
    src.add_argument("--count", type=int, help="for --data: the first N generated samples (default: the dataset's own count)")
    how = p.add_argument_group("protocol")
    how.add_argument("--protocol", required=True, help="named protocol (see `avloc info`), e.g. ezvsl-vggss")
    how.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                     help="override one protocol setting (JSON value), e.g. --set box_negative='\"clip\"'")
    how.add_argument("--device", default="cpu")
    how.add_argument("--batch-size", type=int, default=32)
    how.add_argument("--workers", type=int, default=2, help="threads scoring saved predictions")
    out = p.add_argument_group("output")
    out.add_argument("--json", action="store_true", help="print one JSON object")
    out.add_argument("--out-md", help="write a markdown results table here")
    out.add_argument("--plot", help="write a success-vs-threshold curve PNG here")
    out.add_argument("--force", action="store_true", help="overwrite existing output files")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from avloc.errors import AvlocError
    from avloc.formats.atomic import check_writable
    from avloc.metrics.protocols import create_protocol

    protocol = create_protocol(args.protocol, **_overrides(args.set))  # unknown names fail before any work
    _keep_freed_memory()
    for path in (args.out_md, args.plot):
        if path:
            check_writable(path, args.force)
    if args.pred or args.gt:
        if args.model:
            raise AvlocError("give either --gt/--pred (saved predictions) or --model, not both")
        if not (args.pred and args.gt):
            raise AvlocError("saved predictions need both --gt and --pred")
        results = _eval_predictions(args.gt, args.pred, protocol, args.workers)
    elif args.model:
        results = _eval_model(args)
    else:
        raise AvlocError("nothing to evaluate: give --gt and --pred, or --model with --manifest or --data")
    if args.out_md:
        _write_markdown(args.out_md, results, protocol)
    if args.plot:
        _plot(args.plot, results)
    summary = {k: v for k, v in results.items() if k not in ("curve", "sweep")}
    if args.json:
        print(json.dumps(_jsonable(results), sort_keys=True))
    else:
        for k, v in summary.items():
            print(f"{k}: {v:.4f}" if isinstance(v, float) else f"{k}: {v}")
    return 0


# glibc mallopt parameters (malloc.h)
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
_KEEP_BYTES = 256 * 2**20  # keep up to this much freed heap memory instead of returning it to the OS
_MMAP_BYTES = 32 * 2**20  # glibc's largest mmap threshold: blocks below it come from the reused heap


def _keep_freed_memory() -> None:
    """Let this short-lived process reuse freed memory (glibc only; performance, never results).

    Scoring allocates and frees the same few-megabyte arrays for every chunk of
    maps; with glibc's default thresholds each one is returned to the OS and
    page-faulted back in, which doubled the CPU time of ``avloc eval --pred``
    on 5,158 maps (sys time 1.5 s of 3.8 s). Other C libraries have no
    ``mallopt`` and keep their own policy.
    """
    import ctypes

    mallopt = getattr(ctypes.CDLL(None), "mallopt", None)
    if mallopt is None:
        return
    mallopt(_M_TRIM_THRESHOLD, _KEEP_BYTES)
    mallopt(_M_MMAP_THRESHOLD, _MMAP_BYTES)


def _overrides(items: list[str]) -> dict[str, Any]:
    """``KEY=VALUE`` strings -> protocol overrides (VALUE parsed as JSON, else kept as a string; lists -> tuples)."""
    from avloc.errors import ConfigError

    out: dict[str, Any] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"--set expects KEY=VALUE, got {item!r}")
        try:
            value = json.loads(raw)
        except json.JSONDecodeError:
            value = raw
        out[key.strip()] = tuple(value) if isinstance(value, list) else value
    return out


def _jsonable(x: Any) -> Any:
    """NaN / inf -> null, so the output is strict JSON."""
    if isinstance(x, float):
        return x if x == x and abs(x) != float("inf") else None
    if isinstance(x, dict):
        return {k: _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    return x


def _eval_predictions(gt: list[str], pred: str, protocol: Any, workers: int) -> dict[str, Any]:
    from avloc.engine.evaluate import evaluate_predictions
    from avloc.errors import DataError
    from avloc.io.arrays import NpzArchive
    from avloc.metrics.groundtruth import load_gt

    p = Path(pred)
    if not p.is_file():
        raise DataError(f"predictions file not found: {p}")
    targets = [t for path in gt for t in load_gt(path)]
    seen: set[str] = set()
    dup = [str(t["id"]) for t in targets if str(t["id"]) in seen or seen.add(str(t["id"]))]  # type: ignore[func-returns-value]
    if dup:
        raise DataError(f"{len(dup)} sample ids appear twice in the --gt files, e.g. {dup[:3]}")
    with NpzArchive(p) as preds:  # checked from its directory and headers; maps are read batch by batch
        bad = [k for k in preds if len(preds.shape(k)) not in (2, 3)]
        if bad:
            raise DataError(f"{p}: maps must be 2-D (or 3-D class maps), e.g. {bad[0]!r} has shape {preds.shape(bad[0])}")
        return evaluate_predictions(preds, targets, protocol, workers=workers)


def _eval_model(args: argparse.Namespace) -> dict[str, Any]:
    from avloc.engine.evaluate import evaluate_model
    from avloc.errors import AvlocError
    from avloc.methods.zoo import load_model  # being written alongside; imported only in model mode

    model = load_model(args.model)
    data: Any
    if args.manifest:
        from avloc.data.datasets import ManifestDataset

        data = ManifestDataset(args.manifest, model.cfg.image, model.cfg.audio)
    elif args.data:
        from avloc.data.datasets import dataset_from_spec

        if args.count is not None and args.count < 1:
            raise AvlocError(f"--count must be >= 1, got {args.count}")
        extra = {} if args.count is None else {"count": args.count}
        data = dataset_from_spec(args.data, raw=args.raw or os.environ.get("AVLOC_DATA"), image_cfg=model.cfg.image,
                                 audio_cfg=model.cfg.audio, **extra)
    else:
        raise AvlocError("--model needs --manifest or --data")
    if args.count is not None and not args.data:
        raise AvlocError("--count applies to generated --data specs only")
    return evaluate_model(model, data, args.protocol, args.device, progress=True, batch_size=args.batch_size)


def _write_markdown(path: str, results: dict[str, Any], protocol: Any) -> None:
    from avloc.formats.atomic import write_text_atomic

    rows = [(k, v) for k, v in results.items() if isinstance(v, (int, float, str, bool)) and k != "protocol"]
    lines = [
        f"## {protocol.name}",
        "",
        f"Source: {protocol.source}",
        "",
        "| metric | value |",
        "|---|---|",
        *[f"| {k} | {v:.4f} |" if isinstance(v, float) else f"| {k} | {v} |" for k, v in rows],
        "",
    ]
    write_text_atomic(path, "\n".join(lines))


def _plot(path: str, results: dict[str, Any]) -> None:
    from avloc.errors import AvlocError

    curve = results.get("curve")
    if not curve:
        raise AvlocError(f"protocol {results.get('protocol')} has no success-vs-threshold curve to plot")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from avloc.formats.atomic import atomic_path

    fig, ax = plt.subplots(figsize=(4.5, 3.5))
    ax.plot(curve["thresholds"], curve["success"], marker="o", ms=3)
    ax.set_xlabel("cIoU threshold")
    ax.set_ylabel("success rate")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_title(f"{results.get('protocol')}: AUC {results.get('auc', float('nan')):.3f}")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    with atomic_path(path, suffix=".png") as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    plt.close(fig)
