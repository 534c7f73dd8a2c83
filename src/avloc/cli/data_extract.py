"""``avloc data extract --manifest M --out DIR [--size 224] [--sample-rate 16000]``: pre-extract frames and audio.

Writes ``DIR/manifest.jsonl`` pointing at ``DIR/frames/*.jpg`` (short side ``--size``)
and ``DIR/audio/*.wav`` (``--sample-rate``); see :mod:`avloc.data.prepare.extract`.
"""

from __future__ import annotations

import argparse
from typing import Any


def add_parser(sub: Any, name: str) -> None:
    p = sub.add_parser(name, help="pre-extract a clip manifest's frames (training size) and audio (model rate)")
    p.add_argument("--manifest", required=True, help="manifest of video entries (from `avloc data prepare`)")
    p.add_argument("--out", required=True, help="output folder (manifest.jsonl, frames/, audio/)")
    p.add_argument("--size", type=int, default=224, help="short side of the extracted frames (default 224)")
    p.add_argument("--sample-rate", type=int, default=16000, help="audio rate of the model (default 16000)")
    p.add_argument("--workers", type=int, default=1, help="decoding processes")
    p.add_argument("--force", action="store_true", help="overwrite an existing manifest and report")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from avloc.data.prepare.extract import extract

    res = extract(args.manifest, args.out, size=args.size, sample_rate=args.sample_rate, workers=args.workers,
                  force=args.force)
    print(res.summary())
    return 0
