"""``avloc train --method NAME --train SPEC --val SPEC --out RUN_DIR [key=value ...]``: train a method.

SPEC is a manifest (``.jsonl`` or ``manifest:PATH``) or a generated data spec
such as ``digitscenes:single:train`` (needs ``--raw DIR`` or ``$AVLOC_DATA``).
Overrides go to the method config, the train config (``steps=3000``,
``optim.lr=1e-4``) or the data config (``data.train_kwargs={"pool":2000}``);
prefix with ``method.``/``train.``/``data.`` when a key is ambiguous. Run
under ``torchrun --nproc_per_node N`` for data-parallel training.
"""

from __future__ import annotations

import argparse
from typing import Any

from avloc.config import list_configs


def add_parser(sub: Any, name: str) -> None:
    p = sub.add_parser(name, help="train a method", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    g = p.add_argument_group("what to train")
    g.add_argument("--method", help="registered method name (taken from RUN_DIR/config.json with --resume, or from the config file's method_name)")
    g.add_argument("--config", metavar="FILE|NAME", help="JSON/TOML file with sections method, train, data, or the name of a shipped config (src/avloc/configs/NAME.json: " + ", ".join(list_configs()) + ")")
    g.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="config overrides")
    d = p.add_argument_group("data")
    d.add_argument("--train", dest="train_spec", metavar="SPEC", help="training data spec")
    d.add_argument("--val", dest="val_spec", metavar="SPEC", help="validation data spec (evaluated with train.val_protocol)")
    d.add_argument("--raw", metavar="DIR", help="raw sources for generated data specs (default: $AVLOC_DATA)")
    o = p.add_argument_group("output")
    o.add_argument("--out", required=True, metavar="RUN_DIR", help="run directory (config, metrics, curves, checkpoints)")
    o.add_argument("--resume", action="store_true", help="continue the run in RUN_DIR exactly where it stopped")
    o.add_argument("--force", action="store_true", help="overwrite an existing RUN_DIR")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from avloc.engine.train import train_from_specs

    res = train_from_specs(
        args.method,
        args.out,
        train_spec=args.train_spec,
        val_spec=args.val_spec,
        raw=args.raw,
        config_file=args.config,
        overrides=args.overrides,
        resume=args.resume,
        force=args.force,
    )
    best = f", best {res.best:.4f}" if res.best is not None else ""
    print(f"trained {res.step} steps{best}: {res.out_dir}")
    return 0
