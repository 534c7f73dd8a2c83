"""``avloc localize INPUT... --out DIR``: find the sounding objects in videos (docs/localize.md)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from avloc.errors import ConfigError


def add_parser(sub: Any, name: str) -> None:
    p = sub.add_parser(name, help=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument("inputs", nargs="+", metavar="INPUT",
                   help="video files, folders of videos, a .txt of paths or a .jsonl manifest (path/video keys)")
    p.add_argument("--out", required=True, help="output folder")
    c = p.add_argument_group("collections (a list, several videos or --workers: DIR/run.json, resumable)")
    c.add_argument("--workers", type=int, default=None, metavar="N",
                   help="N model workers on Ray (pip install 'avloc[ray]'); 0: one after another, no Ray")
    c.add_argument("--ray-address", default=None, metavar="auto|HOST:PORT", help="join this Ray cluster (default: local)")
    c.add_argument("--batch-across-videos", action=argparse.BooleanOptionalAction, default=None,
                   help="fill the model's batches with frames of several videos (equal to float rounding, not byte for "
                        "byte); default: on with --gpus-per-worker, off on CPU")
    c.add_argument("--gpus-per-worker", type=float, default=0.0, metavar="G", help="GPUs per Ray model worker")
    c.add_argument("--threads-per-worker", type=int, default=0, metavar="T",
                   help="torch threads per Ray model worker; 0 (default): as many as this process, so outputs match "
                        "the sequential path byte for byte (N workers then oversubscribe a small machine)")
    g = p.add_argument_group("model")
    g.add_argument("--model", default=None, help="checkpoint path, zoo name or training-free method (default: embedded default)")
    g.add_argument("--combine", choices=["none", "synchrony"], default="none",
                   help="multiply a per-frame model's map with the synchrony map")
    g.add_argument("--visual-only", action="store_true", help="no audio needed: the object prior alone")
    g.add_argument("--audio-tagger", default=None, metavar="PATH", help="YAMNet .tflite: zero-shot semantic mode")
    g.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    a = p.add_argument_group("analysis")
    a.add_argument("--fps", type=float, default=5.0, help="analysed frames per second (default 5)")
    a.add_argument("--window", type=float, default=None, metavar="S", help="audio window (s); default: the model's")
    a.add_argument("--smoothing", choices=["ema", "median", "none"], default="ema")
    o = p.add_argument_group("outputs")
    o.add_argument("--save-heatmaps", action="store_true", help="also write NAME.heatmaps.npz")
    o.add_argument("--no-overlay", action="store_true", help="skip the overlay video (faster)")
    o.add_argument("--force", action="store_true", help="overwrite existing outputs (collections: redo every input)")
    o.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(run=run)


def expand_inputs(inputs: list[str]) -> tuple[list[Path], list[str]]:
    """Files as given, folders expanded, lists read (:func:`avloc.inference.collection.collect_inputs`); (files,
    errors)."""
    from avloc.inference.collection import collect_inputs

    found = collect_inputs(inputs)
    return found.files, [e for _, e in found.errors]


def is_collection(args: argparse.Namespace) -> bool:
    """A list file, several videos or ``--workers``: the resumable collection runner (DIR/run.json)."""
    from avloc.inference.collection import is_input_list

    if args.workers is not None or len(args.inputs) > 1:
        return True
    p = Path(args.inputs[0])
    return is_input_list(p) or (p.is_dir() and len(expand_inputs([str(p)])[0]) > 1)


def batch_config(args: argparse.Namespace) -> Any:
    """The collection options as a checked :class:`avloc.applications.runner.RunnerConfig` (also for one video)."""
    from avloc.applications.runner import RunnerConfig

    return RunnerConfig(workers=args.workers or 0, ray_address=args.ray_address, gpus_per_worker=args.gpus_per_worker,
                        threads_per_worker=args.threads_per_worker, across_inputs=args.batch_across_videos,
                        force=args.force, progress=not args.quiet)


def run_collection(args: argparse.Namespace, cfg: Any) -> int:
    from avloc.applications.models import ModelSpec
    from avloc.applications.runner import exit_status
    from avloc.inference import DEFAULT_MODEL
    from avloc.inference.collection import run_collection as run_all

    batch = batch_config(args)
    spec = ModelSpec(None if args.visual_only else (args.model or DEFAULT_MODEL), args.audio_tagger, args.device)
    outcomes = run_all(args.inputs, args.out, cfg, spec, batch, command=["avloc", *getattr(args, "argv", sys.argv[1:])])
    return exit_status(outcomes)


def run(args: argparse.Namespace) -> int:
    import torch

    from avloc.inference import LocalizeConfig

    if args.device == "cuda" and not torch.cuda.is_available():
        raise ConfigError("--device cuda: no CUDA device is available here; use --device cpu")
    cfg = LocalizeConfig(
        fps=args.fps, window_seconds=args.window, smoothing=args.smoothing, visual_only=args.visual_only,
        combine=args.combine, overlay=not args.no_overlay, save_heatmaps=args.save_heatmaps, force=args.force,
        device=args.device,
    )
    if args.visual_only and (args.model is not None or args.audio_tagger is not None):
        raise ConfigError("--visual-only uses the object prior alone: do not combine it with --model or --audio-tagger")
    batch_config(args)  # --workers options are checked for one video too
    if is_collection(args):
        return run_collection(args, cfg)
    return run_one(args, cfg)


def run_one(args: argparse.Namespace, cfg: Any) -> int:
    """One video (a file, or a folder holding one): no run.json, an existing set needs --force."""
    from avloc.inference import DEFAULT_MODEL, localize_video
    from avloc.io.outputs import check_output_folder

    check_output_folder(args.out)
    files, errors = expand_inputs(args.inputs)
    if errors:
        raise ConfigError(errors[0])
    (video,) = files  # not a collection: one input that is one video
    model = tagger = None
    name = None if args.visual_only else (args.model or DEFAULT_MODEL)
    if name is not None:
        from avloc.methods.zoo import load_model

        model = load_model(name, device=args.device)
        if args.audio_tagger:
            from avloc.inference.semantic import SemanticMapper

            tagger = SemanticMapper(args.audio_tagger, device=args.device)
    try:
        res = localize_video(video, model, cfg, args.out, model_name=name, tagger=tagger, progress=not args.quiet)
    except (KeyboardInterrupt, SystemExit):
        raise
    except Exception as e:  # the line names the video unless the message does
        from avloc.cli.main import report_error

        return report_error("avloc localize", e, subject=video)
    on = "n/a" if res.onscreen_fraction is None else f"{res.onscreen_fraction:.0%}"
    print(f"{video}: {res.frames} frames, on-screen {on}, {res.realtime_factor:.2f}x real time -> "
          + ", ".join(str(p) for p in res.outputs.values()))
    return 0
