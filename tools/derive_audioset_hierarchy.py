"""Derive the parent -> child facts among YAMNet's 521 AudioSet classes from the public AudioSet ontology.

Usage::

    python tools/derive_audioset_hierarchy.py --ontology PATH/ontology.json \\
        --out src/avloc/methods/avsemantic/audioset_hierarchy.json

``ontology.json`` is the AudioSet ontology (Gemmeke et al., ICASSP 2017; github.com/audioset/ontology, file
``ontology.json``, CC BY-SA 4.0). Every YAMNet class (``avloc/zoo/yamnet_class_map.csv``, by ``mid``) gets
its nearest YAMNet descendants as children: the ontology's ``child_ids`` followed through classes YAMNet does
not score (abstract containers) until a YAMNet class is met. The output keeps only names and these edges,
with the attribution the licence asks for; :mod:`avloc.methods.avsemantic.hierarchy` reads it.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import json
import logging
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CLASS_MAP = REPO / "src" / "avloc" / "zoo" / "yamnet_class_map.csv"
ATTRIBUTION = ("Derived from the AudioSet ontology (J. F. Gemmeke et al., 'Audio Set: An ontology and "
               "human-labeled dataset for audio events', ICASSP 2017), github.com/audioset/ontology, "
               "ontology.json, licensed CC BY-SA 4.0 (https://creativecommons.org/licenses/by-sa/4.0/). "
               "Changes: restricted to the 521 classes YAMNet scores; children are each class's nearest "
               "YAMNet descendants.")

log = logging.getLogger("derive_audioset_hierarchy")


def nearest_children(ontology: list[dict], keep: dict[str, str]) -> dict[str, list[str]]:
    """YAMNet name -> names of its nearest YAMNet descendants (through non-YAMNet classes), sorted."""
    by_id = {e["id"]: e for e in ontology}
    missing = sorted(set(keep) - set(by_id))
    if missing:
        raise SystemExit(f"{len(missing)} YAMNet classes are not in the ontology, e.g. {missing[:3]}")

    def walk(mid: str, seen: set[str]) -> set[str]:
        out: set[str] = set()
        for c in by_id[mid]["child_ids"]:
            if c in seen:
                continue
            seen.add(c)
            out |= {keep[c]} if c in keep else walk(c, seen)
        return out

    return {keep[m]: sorted(walk(m, {m})) for m in keep}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    ap.add_argument("--ontology", type=Path, required=True, help="AudioSet ontology.json")
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    raw = args.ontology.read_bytes()
    ontology = json.loads(raw)
    with open(CLASS_MAP, newline="") as f:
        keep = {r["mid"]: r["display_name"] for r in csv.DictReader(f)}
    children = nearest_children(ontology, keep)
    doc = {
        "description": "Parent -> nearest child facts among YAMNet's AudioSet classes (display names).",
        "attribution": ATTRIBUTION,
        "license": "CC BY-SA 4.0",
        "source_sha256": hashlib.sha256(raw).hexdigest(),
        "children": {k: v for k, v in children.items() if v},
    }
    args.out.write_text(json.dumps(doc, indent=1, ensure_ascii=False) + "\n")
    log.info("%s: %d parents, %d edges", args.out, len(doc["children"]), sum(map(len, children.values())))
    return 0


if __name__ == "__main__":
    sys.exit(main())
