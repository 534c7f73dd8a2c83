"""``avloc demo``: generate a demo clip with known ground truth and run the main job on it.

The clip (:mod:`avloc.data.synthetic`) shows two objects of which one makes
the sound; ``avloc localize`` runs on it with the embedded default model, and
the result is scored against the ground truth (:mod:`avloc.inference.check`).
Exit status 1 when the sounding object was not found.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

#: demo clip length (s): long enough for the synchrony window (2 x 2 s) to see several bursts
DEMO_SECONDS = 8.0


def add_parser(sub: Any, name: str) -> None:
    p = sub.add_parser(name, help=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument("--out", default="demo_out", help="output folder (default: demo_out)")
    p.add_argument("--force", action="store_true", help="overwrite existing outputs")
    p.add_argument("--model", default=None, help="model to run (default: the embedded default)")
    p.add_argument("--seed", type=int, default=0, help="seed of the generated clip")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from avloc.data.synthetic import DemoClipConfig, write_demo_clip
    from avloc.formats.atomic import check_writable
    from avloc.inference import DEFAULT_MODEL, LocalizeConfig, localize_video
    from avloc.inference.check import score_records
    from avloc.methods.zoo import load_model

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    clip_path = check_writable(out / "demo_clip.mp4", args.force)
    clip = write_demo_clip(clip_path, DemoClipConfig(seconds=DEMO_SECONDS, seed=args.seed))
    print(f"demo clip: {clip_path.resolve()} ({clip.cfg.seconds:.0f} s, {clip.cfg.width}x{clip.cfg.height}; "
          "the yellow disc makes the sound, the blue square is silent)")
    name = args.model or DEFAULT_MODEL
    res = localize_video(clip_path, load_model(name), LocalizeConfig(force=args.force, save_heatmaps=True), out, model_name=name)
    s = score_records(res.records, clip.cfg.fps, clip.sounding_boxes, clip.silent_boxes)
    print(f"model {name}: {s.frames} frames analysed in {res.seconds:.1f} s ({res.realtime_factor:.2f}x real time)")
    print(f"  heatmap peak on the sounding object: {s.peak_in_sounding:.0%} of frames (on the silent one: {s.peak_in_silent:.0%})")
    print(f"  mean IoU of the top box with the sounding object: {s.mean_iou:.2f}; on-screen: {s.onscreen_fraction:.0%} of frames")
    for k, p in res.outputs.items():
        print(f"  {k:9s} {p.resolve()}")
    if not s.passed():
        print("demo FAILED: the sounding object was not found (peak on it in < 50% of frames or not more often than on the silent one)")
        return 1
    print("demo passed: the sounding object was found")
    return 0
