"""``avloc data make NAME``: generate a benchmark (media + jsonl manifest) from raw sources.

Example::

    avloc data make digitscenes --raw ../shared/data --out data/ds --variant single \\
        --split test --count 1000 --seed 0 --preview

Writes ``OUT/{variant}_{split}.jsonl`` (never over an existing one without
``--force``), the media beside it and, with ``--preview``, a contact sheet
``OUT/{variant}_{split}_preview.png``.
"""

from __future__ import annotations

import argparse
import os
from typing import Any

GENERATORS = ("digitscenes",)


def add_parser(sub: Any, name: str) -> None:
    p = sub.add_parser(name, help="generate a benchmark from raw sources (DigitScenes)", description=__doc__)
    p.add_argument("generator", choices=GENERATORS, help="what to generate")
    io = p.add_argument_group("input / output")
    io.add_argument("--raw", default=os.environ.get("AVLOC_DATA"), help="raw data dir (default: $AVLOC_DATA)")
    io.add_argument("--out", required=True, help="output dir (manifest + media)")
    io.add_argument("--force", action="store_true", help="overwrite an existing manifest")
    io.add_argument("--preview", action="store_true", help="also write a contact-sheet PNG")
    g = p.add_argument_group("what to generate")
    g.add_argument("--variant", default="single", help="single, multi, offscreen, video or openset")
    g.add_argument("--split", default="train", choices=("train", "val", "test"))
    g.add_argument("--count", type=int, default=100, help="samples (video: clips)")
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--size", type=int, default=None, help="frame side in px (default 224)")
    g.add_argument("--workers", type=int, default=1, help="processes (output is identical for any value)")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    import dataclasses

    from avloc.data.digitscenes import variant_config
    from avloc.data.digitscenes.generate import generate
    from avloc.errors import DataError

    if not args.raw:
        raise DataError("no raw data dir: pass --raw DIR (shared/data) or set AVLOC_DATA")
    cfg = variant_config(args.variant)
    if args.size is not None:  # rebuilt, so the variant's checks see the new size with every other setting
        cfg = dataclasses.replace(cfg, scene=dataclasses.replace(cfg.scene, size=args.size))
    man = generate(
        args.raw, args.out, args.variant, args.split, args.count, args.seed, cfg,
        force=args.force, preview=args.preview, workers=args.workers, progress=True,
    )
    print(f"wrote {man} ({args.count} {'clips' if args.variant == 'video' else 'samples'})")
    if args.preview:
        print(f"preview: {man.with_name(f'{args.variant}_{args.split}_preview.png')}")
    return 0
