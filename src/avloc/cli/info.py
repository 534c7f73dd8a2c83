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
    from avloc import registry
    from avloc.data.datasets import load_datasets

    registry.load_all()
    load_datasets()  # avloc.data registers nothing on import (kept torch-free)
    return {
        "methods": registry.METHODS.names(),
        "encoders": registry.ENCODERS.names(),
        "datasets": registry.DATASETS.names(),
        "protocols": registry.PROTOCOLS.names(),
        "checkpoint_families": registry.IMPORTERS.names(),
    }


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
