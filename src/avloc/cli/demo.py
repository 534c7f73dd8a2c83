"""``avloc demo``: generate a demo clip with known ground truth and run the main job on it."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any


def add_parser(sub: Any, name: str) -> None:
    p = sub.add_parser(name, help=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument("--out", default="demo_out", help="output folder (default: demo_out)")
    p.add_argument("--force", action="store_true", help="overwrite existing outputs")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from avloc.data.synthetic import write_demo_clip
    from avloc.io.atomic import check_writable
    from avloc.io.media import probe

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    clip_path = check_writable(out / "demo_clip.mp4", args.force)
    write_demo_clip(clip_path)
    info = probe(clip_path)
    print(json.dumps(info.to_dict(), indent=2))
    print(f"demo clip: {clip_path.resolve()}")
    return 0
