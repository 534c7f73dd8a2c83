"""``avloc data make NAME``: generate a benchmark from raw sources.

Examples::

    avloc data make digitscenes --raw ../shared/data --out data/ds --variant single \\
        --split test --count 1000 --seed 0 --preview
    avloc data make realclips-constructions --clips ../shared/data/realclips_dev \\
        --videos ../shared/data/videos --out data/constructions --seed 0 --per-kind 24

``digitscenes`` writes ``OUT/{variant}_{split}.jsonl`` (never over an existing one without ``--force``), the
media beside it and, with ``--preview``, a contact sheet ``OUT/{variant}_{split}_preview.png``.
``realclips-constructions`` writes mosaics, swapped-audio and two-speaker clips built from an annotated
real-footage set, with their ``annotations.json`` in the same format (``avloc.data.constructions``).
"""

from __future__ import annotations

import argparse
import os
from typing import Any

GENERATORS = ("digitscenes", "realclips-constructions")


def add_parser(sub: Any, name: str) -> None:
    p = sub.add_parser(name, help="generate a benchmark from raw sources (DigitScenes, real-clip constructions)",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("generator", choices=GENERATORS, help="what to generate")
    io = p.add_argument_group("input / output")
    io.add_argument("--raw", default=os.environ.get("AVLOC_DATA"), help="digitscenes: raw data dir (default: $AVLOC_DATA)")
    io.add_argument("--out", required=True, help="output dir (manifest + media)")
    io.add_argument("--force", action="store_true", help="overwrite an existing manifest / set")
    io.add_argument("--preview", action="store_true", help="digitscenes: also write a contact-sheet PNG")
    g = p.add_argument_group("digitscenes")
    g.add_argument("--variant", default="single", help="single, multi, offscreen, video or openset")
    g.add_argument("--split", default="train", choices=("train", "val", "test"))
    g.add_argument("--count", type=int, default=100, help="samples (video: clips)")
    g.add_argument("--size", type=int, default=None, help="frame side in px (default 224)")
    g.add_argument("--workers", type=int, default=1, help="processes (output is identical for any value)")
    c = p.add_argument_group("realclips-constructions")
    c.add_argument("--clips", default=None, help="folder with annotations.json in the real-footage format (realclips_dev)")
    c.add_argument("--videos", default=None, help="folder of unannotated clips, used only as silent distractor tiles")
    c.add_argument("--per-kind", type=int, default=24, help="clips per construction kind")
    c.add_argument("--kinds", nargs="+", default=None, metavar="KIND", help="only these kinds (default: all)")
    p.add_argument("--seed", type=int, default=0, help="random seed (the same inputs and seed give the same output)")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    return _constructions(args) if args.generator == "realclips-constructions" else _digitscenes(args)


def _digitscenes(args: argparse.Namespace) -> int:
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


def _constructions(args: argparse.Namespace) -> int:
    import json

    from avloc.data.constructions import KINDS, build_constructions
    from avloc.errors import DataError

    if not args.clips:
        raise DataError("realclips-constructions needs --clips DIR (a folder with annotations.json, e.g. realclips_dev)")
    path = build_constructions(args.clips, args.out, args.videos, seed=args.seed, per_kind=args.per_kind,
                               kinds=args.kinds or KINDS, force=args.force)
    doc = json.loads(path.read_text(encoding="utf-8"))
    n_frames = sum(len(c["frames"]) for c in doc["clips"])
    print(f"wrote {path} ({len(doc['clips'])} clips, {n_frames} labelled frames; kinds: {', '.join(doc['kinds'])})")
    return 0
