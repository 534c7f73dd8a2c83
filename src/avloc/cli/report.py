"""``avloc report DIR``: a static HTML site over the outputs of ``avloc localize`` (docs/report.md)."""

from __future__ import annotations

import argparse
from typing import Any


def add_parser(sub: Any, name: str) -> None:
    p = sub.add_parser(name, help=__doc__.splitlines()[0] if __doc__ else None,
                       description="Write a browsable report (index of every video, a page per video with its "
                                   "overlay, timeline, boxes and contact sheet) of an avloc localize output folder.")
    p.add_argument("folder", metavar="DIR", help="the --out folder of avloc localize (may hold a run.json)")
    o = p.add_argument_group("outputs")
    o.add_argument("--out", default=None, metavar="SITE", help="folder of the site (default: DIR/report)")
    o.add_argument("--force", action="store_true", help="replace an existing report")
    o.add_argument("--no-thumbnails", action="store_true", help="skip decoding a thumbnail per video (faster)")
    s = p.add_argument_group("serving (optional: the site also opens from file://)")
    s.add_argument("--serve", action="store_true", help="serve the report over HTTP after writing it (Ctrl-C stops)")
    s.add_argument("--host", default="127.0.0.1", help="address to listen on with --serve (default 127.0.0.1)")
    s.add_argument("--port", type=int, default=8000, help="port with --serve (default 8000; 0: any free port)")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from avloc.errors import ConfigError
    from avloc.report import build_report, serve

    if not 0 <= args.port <= 65535:
        raise ConfigError(f"--port {args.port}: must be between 0 and 65535")
    res = build_report(args.folder, args.out, force=args.force, thumbnails=not args.no_thumbnails)
    counts = ", ".join(f"{n} {s}" for s, n in res.collection.counts().items())
    print(f"{res.index}: {len(res.collection.entries)} video(s) ({counts}); open it in a browser")
    if args.serve:
        serve(res, args.host, args.port,
              announce=lambda address: print(f"serving {address} (Ctrl-C to stop)", flush=True))
    return 0
