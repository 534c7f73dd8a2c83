"""``avloc info``: list registered methods, encoders, datasets, protocols and checkpoint families (``avloc import``)."""

from __future__ import annotations

import argparse
import json
from typing import Any


def add_parser(sub: Any, name: str) -> None:
    p = sub.add_parser(name, help=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(run=run)


def registry_listing() -> dict[str, list[str]]:
    """Every registry's names, read from the registries' tables: no plugin (and not torch) is imported."""
    from avloc.registry import REGISTRIES

    return {kind: reg.names() for kind, reg in REGISTRIES.items()}


def run(args: argparse.Namespace) -> int:
    listing = registry_listing()
    if args.json:
        print(json.dumps(listing, indent=2))
    else:
        for kind, names in listing.items():
            print(f"{kind} ({len(names)}):")
            for n in names:
                print(f"  {n}")
    return 0
