"""``avloc probe FILE... [--json]``: what a user checks first about a media file."""

from __future__ import annotations

import argparse
import json
from typing import Any


def add_parser(sub: Any, name: str) -> None:
    p = sub.add_parser(name, help=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument("files", nargs="+", metavar="FILE")
    p.add_argument("--json", action="store_true", help="one JSON object per file (a list for several files)")
    p.set_defaults(run=run)


def _fmt(info: Any) -> str:
    turned = f" (coded {info.coded_width}x{info.coded_height}, rotation {info.rotation} deg)" if info.rotation else ""
    video = (
        f"video {info.width}x{info.height}{turned} {info.video_codec} {info.fps:.3f} fps ({info.fps_fraction}), "
        f"{info.frames} frames"
        if info.has_video
        else "video: none"
    )
    audio = (
        f"audio {info.audio_codec} {info.audio_sample_rate} Hz, {info.audio_channels} ch" if info.has_audio else "audio: none"
    )
    return f"{info.path}: {info.duration:.3f} s | {video} | {audio}"


def run(args: argparse.Namespace) -> int:
    from avloc.cli.main import batch_status, report_error
    from avloc.io.media import probe

    results: list[dict[str, Any]] = []
    statuses: list[int] = []
    for f in args.files:
        try:
            info = probe(f)
        except Exception as e:  # per-file isolation: the other files are still probed
            if len(args.files) == 1:
                raise
            statuses.append(report_error("avloc probe", e, subject=f))
            continue
        results.append(info.to_dict())
        if not args.json:
            print(_fmt(info))
    if args.json:
        print(json.dumps(results[0] if len(args.files) == 1 else results, indent=2))
    return batch_status(statuses)
