"""Real-footage dev set: any ``avloc localize`` configuration scored on hand-annotated frames (docs/RESULTS.md).

    python bench/paper/avsemantic/realclips.py [--data DIR] [--config NAME ...] [--set KEY=VALUE ...] [--fps 5] [--per-clip]
    python bench/paper/avsemantic/realclips.py --table            # the RESULTS table: every named configuration below
    python bench/paper/avsemantic/realclips.py --fit-onscreen     # fit avsemantic's on-screen model, cross-validated by clip
    python bench/paper/avsemantic/realclips.py --constructions DIR [--no-dev]   # also every construction kind

``--data``: a folder with ``annotations.json`` (default ``$AVLOC_DATA/realclips_dev``). ``--constructions``: a
folder built by ``avloc data make realclips-constructions`` (mosaics, swapped audio, two speakers); one table
per kind, with ``visual-only`` always among the configurations as the chance line, and an on/off-screen table
over the dev set and the constructions. Scores come from the ``realclips`` protocol through the one evaluate
function (:mod:`avloc.applications.realworld`), read from what each frame's record says, so any configuration is
scored alike.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

#: named configurations: (model name or None for --visual-only, method overrides, use the old --audio-tagger)
CONFIGS: dict[str, tuple[str | None, list[str], bool]] = {
    "avsync-objectness": ("avsync-objectness", [], False),
    "visual-only": (None, [], False),
    "audio-tagger (old)": ("avsync-objectness", [], True),
    "avsemantic": ("avsemantic", [], False),
    "avsemantic, no faces": ("avsemantic", ["use_faces=false"], False),
    "avsemantic, no synchrony": ("avsemantic", ["use_synchrony=false"], False),
    "avsemantic, stride 32 only": ("avsemantic", ["cam_strides=[32]"], False),
    "avsemantic, old 42 groups": ("avsemantic", ["mapping=legacy"], False),
}
CHANCE = "visual-only"
COLUMNS = ("median_success", "median_ciou", "adaptive_success", "adaptive_ciou", "pointing",
           "top_box_iou50", "any_box_iou50", "box_precision",
           "onscreen_balanced_accuracy", "onscreen_recall", "offscreen_recall", "onscreen_ece")
_MOSAIC = ("pointing", "tile_pointing", "adaptive_success", "median_success", "top_box_iou50", "any_box_iou50",
           "box_precision", "onscreen_recall")
_CLASSAWARE = ("classaware_ciou", "classaware_success", "classaware_coverage")
_SPEAKERS = ("speaker_accuracy", "speaker_coverage", "n_speaker_frames", "tile_pointing", "pointing", "adaptive_success",
             "top_box_iou50", "onscreen_recall")
#: the columns of each construction kind's table (avloc.data.constructions.KINDS)
KIND_COLUMNS: dict[str, tuple[str, ...]] = {
    "mosaic-1x2-one": _MOSAIC, "mosaic-2x2-one": _MOSAIC,
    "mosaic-1x2-two": _MOSAIC + _CLASSAWARE, "mosaic-2x2-two": _MOSAIC + _CLASSAWARE,
    "swapped": ("offscreen_recall", "onscreen_ece"),
    "two-speakers": _SPEAKERS, "two-speakers-same": _SPEAKERS,
}
ONOFF_COLUMNS = ("onscreen_balanced_accuracy", "onscreen_recall", "offscreen_recall", "onscreen_ece", "n_onscreen_labels",
                 "n_offscreen")  # n: the scored frames


def build(name: str, extra: list[str], data: Path) -> tuple[Any, Any, Any]:
    from avloc.config import apply_overrides
    from avloc.inference import LocalizeConfig
    from avloc.methods import create_method
    from avloc.registry import METHODS

    model_name, overrides, tagger = CONFIGS[name] if name in CONFIGS else (name, [], False)
    cfg = LocalizeConfig(visual_only=model_name is None)
    if model_name is None:
        return None, cfg, None
    cls = METHODS.get(model_name)
    model = create_method(model_name, apply_overrides(cls.config_class(), overrides + extra)).eval()
    sem = None
    if tagger:
        from avloc.inference.semantic import SemanticMapper

        sem = SemanticMapper(data.parent / "yamnet" / "yamnet.tflite")
    return model, cfg, sem


def fit_onscreen(records: dict[str, Any], clips: list[Any]) -> None:
    """Leave-one-clip-out logistic regression on the avsemantic on-screen features."""
    from avloc.methods.avsemantic.onscreen import design_row, fit_logistic
    from avloc.metrics.realworld import balanced_accuracy, expected_calibration_error

    rows, ys, groups = [], [], []
    for c in clips:
        for f in c.frames:
            if f.onscreen is None:
                continue
            rows.append(design_row(records[c.frame_id(f)].onscreen_features))
            ys.append(f.onscreen)
            groups.append(c.name)
    x, y, g = np.stack(rows), np.asarray(ys, bool), np.asarray(groups)
    p_cv = np.zeros(len(y))
    for clip in sorted(set(g)):
        tr = g != clip
        w, b = fit_logistic(x[tr], y[tr])
        p_cv[~tr] = 1 / (1 + np.exp(-(x[~tr] @ w + b)))
    w, b = fit_logistic(x, y)
    print(f"leave-one-clip-out: balanced accuracy {balanced_accuracy(p_cv >= 0.5, y):.3f}, "
          f"ECE {expected_calibration_error(p_cv, y):.3f} on {len(y)} frames ({(~y).sum()} off-screen)")
    print(f"fit on all: onscreen_weights = ({', '.join(f'{v:.3f}' for v in w)}), onscreen_bias = {b:.3f}")


def table(title: str, columns: tuple[str, ...], rows: list[tuple[str, dict[str, Any]]]) -> None:
    """A markdown table, one row per configuration; ``n``: the scored frames, else the on/off-screen labels."""
    def cell(v: Any) -> str:
        return f"{v:d}" if isinstance(v, (int, np.integer)) else f"{float(v):.3f}"

    print(f"\n{title}\n")
    print("| configuration | " + " | ".join(columns) + " | n |")
    print("|---|" + "---:|" * (len(columns) + 1))
    for name, s in rows:
        n = s["n"] or s.get("n_onscreen_labels", 0)
        print(f"| {name} | " + " | ".join(cell(s.get(k, float("nan"))) for k in columns) + f" | {n} |")


def merged(*runs: Any) -> Any:
    """One :class:`RealClipsRun` holding the frames of several (ids are distinct across sets)."""
    from avloc.applications.realworld import RealClipsRun

    out = RealClipsRun()
    for r in runs:
        out.preds.update(r.preds)
        out.onscreen.update(r.onscreen)
        out.records.update(r.records)
        out.frames.update(r.frames)
    return out


def score_constructions(run: Any, clips: list[Any], name: str, tables: dict[str, list[tuple[str, dict[str, Any]]]]) -> None:
    """Score ``run`` per construction kind into ``tables[kind]``."""
    from avloc.applications.realworld import score_run
    from avloc.data.constructions import KINDS

    for kind in KINDS:
        part = [c for c in clips if c.construction == kind]
        if part:
            tables.setdefault(kind, []).append((name, score_run(run, part)))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    ap.add_argument("--data", type=Path, default=None, help="set folder (default $AVLOC_DATA/realclips_dev)")
    ap.add_argument("--constructions", type=Path, default=None, help="a folder built by avloc data make realclips-constructions")
    ap.add_argument("--no-dev", action="store_true", help="with --constructions: do not score the dev set")
    ap.add_argument("--config", nargs="+", default=None, help=f"named configurations or method names; known: {list(CONFIGS)}")
    ap.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="method config overrides for every config")
    ap.add_argument("--table", action="store_true", help="every named configuration (the RESULTS table)")
    ap.add_argument("--fit-onscreen", action="store_true", help="fit avsemantic's on-screen model (leave-one-clip-out)")
    ap.add_argument("--fps", type=float, default=5.0)
    ap.add_argument("--per-clip", action="store_true")
    ap.add_argument("--clips", nargs="+", default=None, metavar="STEM", help="only these clips (file stems)")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    data = args.data or Path(os.environ.get("AVLOC_DATA", Path(__file__).resolve().parents[2] / "shared" / "data")) / "realclips_dev"

    from dataclasses import replace

    from avloc.applications.realworld import localize_clips, run_on_clips, score_run
    from avloc.data.realclips import load_realclips

    dev = not (args.no_dev and args.constructions)
    clips = load_realclips(data) if dev else []
    if args.clips:
        unknown = sorted(set(args.clips) - {c.name for c in clips})
        if unknown:
            ap.error(f"unknown clips {unknown}; the set has {[c.name for c in clips]}")
        clips = [c for c in clips if c.name in args.clips]
    built = load_realclips(args.constructions) if args.constructions else []
    names = list(CONFIGS) if args.table else (args.config or ["avsemantic"])
    if built and CHANCE not in names:
        names.append(CHANCE)
    rows: list[tuple[str, dict[str, Any]]] = []
    kinds: dict[str, list[tuple[str, dict[str, Any]]]] = {}
    onoff: list[tuple[str, dict[str, Any]]] = []
    with tempfile.TemporaryDirectory(prefix="avloc-realclips-") as tmp:
        for name in names:
            model, cfg, tagger = build(name, args.set, data)
            cfg = replace(cfg, fps=args.fps)
            run = run_on_clips(clips, model, cfg, Path(tmp) / "out", tagger=tagger) if dev else None
            if run is not None:
                rows.append((name, run.scores))
                if args.per_clip:
                    print(f"\n{name}: per clip")
                    for clip, s in run.scores["per_clip"].items():
                        print(f"  {clip:32s} " + "  ".join(f"{k} {s[k]:.3f}" for k in ("median_success", "adaptive_success", "pointing")) + f"  n={s['n']}")
                if args.fit_onscreen and all(r.onscreen_features is not None for r in run.records.values()):
                    print(f"\n{name}: on-screen model")
                    fit_onscreen(run.records, clips)
            if built:
                crun = localize_clips(built, model, cfg, Path(tmp) / "constructions", tagger=tagger)
                score_constructions(crun, built, name, kinds)
                onoff.append((f"{name}: constructions", score_run(crun, built)))
                if run is not None:
                    onoff.append((f"{name}: dev + constructions", score_run(merged(run, crun), clips + built)))
    if rows:
        print(f"\n{len(clips)} clips, {rows[0][1]['n']} scored frames, {rows[0][1].get('n_onscreen_labels', 0)} on/off labels ({data})")
        table("dev set", COLUMNS, rows)
    for kind, krows in kinds.items():
        table(f"constructions: {kind} ({args.constructions})", KIND_COLUMNS[kind], krows)
    if onoff:
        table("on/off-screen over the constructions (and the dev set)", ONOFF_COLUMNS, onoff)
    return 0


if __name__ == "__main__":
    sys.exit(main())
