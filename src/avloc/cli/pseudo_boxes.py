"""``avloc pseudo-boxes --model M --manifest IN.jsonl --out OUT.jsonl``: automatic boxes for sounding objects.

"Less can be more" (Senocak et al., WACV 2022) Sec. 5.2: for every clip of IN
(video entries, or still images as fixed-frame clips) a classification model
(method ``classif``) picks the top-k informative moments (Sec. 5.1), binarises the
attention map there, and boxes the largest connected segment. OUT is a manifest of
pseudo-labelled frames (``boxes``, ``time`` of the moment, ``pseudo_box: true``)
that any dataset reads, e.g. as the supervised part of semi-supervised LVS
(``box_weight > 0``, :func:`avloc.data.pseudo_boxes.semi_supervised`). OUT is
written atomically and never overwritten without ``--force``.
"""

from __future__ import annotations

import argparse
from typing import Any


def add_parser(sub: Any, name: str) -> None:
    p = sub.add_parser(name, help="automatic pseudo boxes from a classification model", description=__doc__,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    src = p.add_argument_group("input")
    src.add_argument("--model", required=True, help="classif checkpoint path or zoo name (e.g. classif-digitscenes)")
    src.add_argument("--manifest", required=True, help="jsonl manifest of video (or image + audio) entries")
    src.add_argument("--limit", type=int, help="only the first N entries")
    how = p.add_argument_group("procedure (Sec. 5.2)")
    how.add_argument("--top-k", type=int, default=1, help="moments per clip (default 1, as the paper)")
    how.add_argument("--threshold", type=float, default=0.5, help="binarisation threshold on the min-max normalised map")
    how.add_argument("--connectivity", type=int, choices=(4, 8), default=8)
    how.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    out = p.add_argument_group("output")
    out.add_argument("--out", required=True, help="output manifest (jsonl)")
    out.add_argument("--force", action="store_true", help="overwrite OUT")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from avloc.data.pseudo_boxes import PseudoBoxConfig
    from avloc.errors import ConfigError
    from avloc.io.atomic import check_writable

    cfg = PseudoBoxConfig(top_k=args.top_k, threshold=args.threshold, connectivity=args.connectivity)
    cfg.validate()
    check_writable(args.out, args.force)  # before loading anything
    import torch

    from avloc.data.pseudo_boxes import pseudo_box_manifest
    from avloc.methods.classif import Classif
    from avloc.methods.zoo import load_model

    torch.set_num_threads(args.threads)
    model = load_model(args.model)
    if not isinstance(model, Classif):
        raise ConfigError(f"{args.model}: pseudo boxes need a classification model (method 'classif'), got {model.name!r}")
    n, rate = pseudo_box_manifest(model, args.manifest, args.out, cfg, force=args.force, limit=args.limit)
    print(f"wrote {n} pseudo boxes to {args.out} ({rate:.2f} clips/s)")
    return 0
