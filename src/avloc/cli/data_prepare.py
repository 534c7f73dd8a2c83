"""``avloc data prepare FORMAT --root DIR --out manifest.jsonl``: write a validated manifest.

Formats: flickr, vggss, music, avsol, folder (evaluation sets and plain folders, :mod:`avloc.data.prepare`);
vggsound, flickr-train, music-solo, ave (training sets as downloaded, :mod:`avloc.data.prepare.training`).
Bad entries go to ``<out>.report.txt``; the summary line says how many.
"""

from __future__ import annotations

import argparse
from typing import Any

FORMATS = ("flickr", "vggss", "music", "avsol", "folder", "vggsound", "flickr-train", "music-solo", "ave")


def add_parser(sub: Any, name: str) -> None:
    p = sub.add_parser(name, help="write a validated jsonl manifest from a dataset folder")
    p.add_argument("format", choices=FORMATS, help="dataset layout")
    p.add_argument("--root", required=True, help="dataset folder")
    p.add_argument("--out", required=True, help="manifest path (.jsonl)")
    p.add_argument("--force", action="store_true", help="overwrite an existing manifest and report")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from avloc.data.prepare import prepare

    res = prepare(args.format, args.root, args.out, force=args.force)
    print(res.summary())
    return 0
