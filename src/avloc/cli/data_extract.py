"""``avloc data extract --manifest M --out DIR [--format files|shards] [--size 224] [--sample-rate 16000]``.

``--format files`` (default) writes ``DIR/manifest.jsonl`` pointing at ``DIR/frames/*.jpg`` (short side
``--size``) and ``DIR/audio/*.wav`` (``--sample-rate``); see :mod:`avloc.data.prepare.extract`.
``--format shards`` writes the model inputs (``--size`` px pictures in the ``--mode`` geometry, a
``--window-seconds`` audio window) into tar shards, ``DIR/shards.json`` and ``DIR/manifest.jsonl``; see
:mod:`avloc.data.prepare.shards` and docs/data.md.
"""

from __future__ import annotations

import argparse
from typing import Any


def add_parser(sub: Any, name: str) -> None:
    from avloc.data.prepare.shards import ShardConfig

    d = ShardConfig()
    p = sub.add_parser(name, help="pre-extract a clip manifest's frames (training size) and audio (model rate)")
    p.add_argument("--manifest", required=True, help="manifest of video entries (from `avloc data prepare`)")
    p.add_argument("--out", required=True, help="output folder (manifest.jsonl, frames/, audio/ or shards/)")
    p.add_argument("--format", choices=("files", "shards"), default="files",
                   help="files: a JPEG and a WAV per sample; shards: model inputs in tar shards (large sets)")
    p.add_argument("--size", type=int, default=224,
                   help="files: short side of the frames; shards: side of the model input pictures (default 224)")
    p.add_argument("--sample-rate", type=int, default=16000, help="audio rate of the model (default 16000)")
    p.add_argument("--workers", type=int, default=1, help="decoding processes")
    p.add_argument("--force", action="store_true", help="overwrite an existing manifest and report")
    g = p.add_argument_group("shards", "--format shards only: what the model is fed")
    g.add_argument("--mode", choices=("squash", "crop", "pad"), default=None,
                   help=f"the pictures' geometry (the model's image mode; default {d.mode})")
    g.add_argument("--resize", type=int, default=None, help="crop mode: short side before the centre crop (default --size)")
    g.add_argument("--window-seconds", type=float, default=None,
                   help=f"audio window stored per sample (default {d.window_seconds:g})")
    g.add_argument("--shard-samples", type=int, default=None,
                   help=f"samples per shard (default {d.samples_per_shard})")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from avloc.data.prepare.extract import extract
    from avloc.data.prepare.shards import ShardConfig
    from avloc.errors import ConfigError

    options = (("--mode", "mode", args.mode), ("--resize", "resize", args.resize),
               ("--window-seconds", "window_seconds", args.window_seconds),
               ("--shard-samples", "samples_per_shard", args.shard_samples))
    given = {field: v for _, field, v in options if v is not None}
    if args.format != "shards" and given:
        flags = ", ".join(flag for flag, _, v in options if v is not None)
        raise ConfigError(f"{flags}: options of --format shards (the files format keeps whole frames and tracks)")
    shards = ShardConfig(**given) if args.format == "shards" else None
    res = extract(args.manifest, args.out, size=args.size, sample_rate=args.sample_rate, workers=args.workers,
                  force=args.force, format=args.format, shards=shards)
    print(res.summary())
    return 0
