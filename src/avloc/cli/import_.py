"""``avloc import --from FAMILY CHECKPOINT.pth --out model.safetensors``: a published checkpoint as an avloc one.

Families and their key layouts: :mod:`avloc.importers.families`. The file is
read with ``torch.load(weights_only=True)`` only; the written checkpoint's
config carries the published preprocessing, so ``avloc localize --model`` and
``avloc eval --model`` use it as it is.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

#: the families offered on the command line (kept here so building the parser imports no torch)
FAMILIES = ("lvs", "ezvsl", "slavc", "slavc-momentum", "sslalign", "fnac")


def add_parser(sub: Any, name: str) -> None:
    p = sub.add_parser(name, help="convert a published checkpoint (LVS, EZ-VSL, SLAVC, SSL-Alignment, FNAC) to avloc's format")
    p.add_argument("checkpoint", metavar="CHECKPOINT", help="the published .pth / .pth.tar file")
    p.add_argument("--from", dest="family", required=True, choices=FAMILIES, help="which published model it is")
    p.add_argument("--out", required=True, help="avloc checkpoint to write (.safetensors)")
    p.add_argument("--sample-rate", type=int, default=None,
                   help="audio rate the model was trained at (default: the family's, 16000)")
    p.add_argument("--force", action="store_true", help="overwrite an existing --out")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from avloc.importers import import_checkpoint

    report = import_checkpoint(args.family, args.checkpoint, args.out, sample_rate=args.sample_rate, force=args.force)
    print(report.summary(Path(args.out)))
    return 0
