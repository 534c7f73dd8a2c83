"""``avloc pseudo-boxes --model M --manifest IN.jsonl --out OUT.jsonl [--workers N]``: automatic boxes for sounding objects.

"Less can be more" (Senocak et al., WACV 2022) Sec. 5.2: for every clip of IN
(video entries, or still images as fixed-frame clips) a classification model
(method ``classif``) picks the top-k informative moments (Sec. 5.1), binarises the
attention map there, and boxes the largest connected segment. OUT is a manifest of
pseudo-labelled frames (``boxes``, ``time`` of the moment, ``pseudo_box: true``)
that any dataset reads, e.g. as the supervised part of semi-supervised LVS
(``box_weight > 0``, :func:`avloc.applications.pseudo_boxes.semi_supervised`).

One bad entry never stops the others: the run ends with a summary (done / skipped /
failed with the reason) and exits 2 if any failed. Finished entries are kept in
OUT.parts/ until OUT is complete, so re-running the same command redoes only what
did not finish (a killed run, the failed entries); OUT.run.json records every
entry's status. OUT is written atomically, in IN's order, and an OUT from anything
but this unfinished run is never overwritten without --force (which redoes every
entry). --workers N runs the entries on Ray: decoding in CPU tasks, the model in N
actors (pip install 'avloc[ray]'); OUT is the same, byte for byte.
"""

from __future__ import annotations

import argparse
import sys
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
    how.add_argument("--threads", type=int, default=1,
                     help="torch CPU threads of this process (with --workers: of each worker, unless --threads-per-worker)")
    c = p.add_argument_group("collection (resumable; OUT.parts/ holds finished entries until OUT is complete)")
    c.add_argument("--workers", type=int, default=0, metavar="N",
                   help="N model workers on Ray (pip install 'avloc[ray]'); 0: one entry after another, no Ray")
    c.add_argument("--ray-address", default=None, metavar="auto|HOST:PORT", help="join this Ray cluster (default: local)")
    c.add_argument("--gpus-per-worker", type=float, default=0.0, metavar="G",
                   help="GPUs per Ray model worker (the model then runs on CUDA)")
    c.add_argument("--threads-per-worker", type=int, default=0, metavar="T",
                   help="torch threads per Ray model worker; 0 (default): --threads, so OUT matches the sequential "
                        "path byte for byte")
    out = p.add_argument_group("output")
    out.add_argument("--out", required=True, help="output manifest (jsonl)")
    out.add_argument("--force", action="store_true", help="overwrite OUT and redo every entry")
    out.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from avloc.applications.pseudo_boxes import PseudoBoxConfig
    from avloc.applications.runner import RunnerConfig, exit_status
    from avloc.errors import ConfigError

    cfg = PseudoBoxConfig(top_k=args.top_k, threshold=args.threshold, connectivity=args.connectivity)
    if args.threads < 1:
        raise ConfigError(f"--threads must be >= 1, got {args.threads}")
    batch = RunnerConfig(workers=args.workers, ray_address=args.ray_address, gpus_per_worker=args.gpus_per_worker,
                         threads_per_worker=args.threads_per_worker, force=args.force, progress=not args.quiet)
    import torch

    from avloc.applications.pseudo_box_run import run_pseudo_boxes

    torch.set_num_threads(args.threads)
    res = run_pseudo_boxes(args.model, args.manifest, args.out, cfg, batch, limit=args.limit,
                           command=["avloc", *getattr(args, "argv", sys.argv[1:])])
    if res.written:
        done = sum(o.status == "done" for o in res.outcomes)
        rate = f", {done} clip(s) run at {res.clips_per_second:.2f} clips/s" if done else ", every clip kept from before"
        print(f"wrote {res.boxes} pseudo boxes to {args.out}{rate}")
    return exit_status(res.outcomes)
