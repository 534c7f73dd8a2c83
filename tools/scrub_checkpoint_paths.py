"""Remove the training machine's paths from checkpoint headers, keeping every tensor bit for bit.

Usage::

    python tools/scrub_checkpoint_paths.py src/avloc/zoo/*.safetensors

A run records where it ran (``meta.run``, ``meta.audio_init.from``: absolute paths such as
``/tmp/issue7/s5/...``); a checkpoint shipped in the zoo should not. Every header string that is an
absolute path under one of :data:`MACHINE_ROOTS` becomes its last component (the run's or file's
name), every other header field is kept as it is (versions included), and the tensors are written back
unchanged; the file is then read again and each tensor compared byte for byte with the original.
Files without such a path are left untouched.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path, PurePosixPath
from typing import Any

#: the roots of machine-local paths that must not ship in a header (temporary dirs, home dirs, workspaces)
MACHINE_ROOTS = ("/tmp", "/home", "/root", "/work")


def is_machine_path(s: str) -> bool:
    return any(s == r or s.startswith(r + "/") for r in MACHINE_ROOTS)


def scrub(obj: Any) -> tuple[Any, list[str]]:
    """``obj`` with machine paths replaced by their last component, and the paths replaced."""
    if isinstance(obj, str):
        return (PurePosixPath(obj).name, [obj]) if is_machine_path(obj) else (obj, [])
    if isinstance(obj, dict):
        out, found = {}, []
        for k, v in obj.items():
            out[k], f = scrub(v)
            found += f
        return out, found
    if isinstance(obj, list):
        pairs = [scrub(v) for v in obj]
        return [p[0] for p in pairs], [f for p in pairs for f in p[1]]
    return obj, []


def scrub_file(path: Path) -> list[str]:
    """Rewrite ``path`` without machine paths (atomically); returns the paths removed (none: file untouched)."""
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    from avloc.formats.atomic import atomic_path

    with safe_open(str(path), framework="pt") as f:
        meta = dict(f.metadata() or {})
    new_meta, found = {}, []
    for k, v in meta.items():
        try:
            doc = json.loads(v)
        except json.JSONDecodeError:
            new_meta[k], f = scrub(v)
        else:
            doc, f = scrub(doc)
            new_meta[k] = json.dumps(doc)
        found += f
    if not found:
        return []
    tensors = load_file(str(path))
    with atomic_path(path, suffix=".safetensors") as tmp:
        save_file(tensors, str(tmp), metadata=new_meta)
    back = load_file(str(path))
    same = back.keys() == tensors.keys() and all(
        back[k].dtype == tensors[k].dtype and back[k].shape == tensors[k].shape
        and back[k].contiguous().view(-1).view(dtype=_bytes()).equal(tensors[k].contiguous().view(-1).view(dtype=_bytes()))
        for k in tensors
    )
    if not same:
        raise SystemExit(f"{path}: tensors changed on re-save")
    return found


def _bytes() -> Any:
    import torch

    return torch.uint8


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    ap.add_argument("files", nargs="+", type=Path)
    args = ap.parse_args(argv)
    for p in args.files:
        found = scrub_file(p)
        print(f"{p}: " + (f"removed {len(found)} path(s): {', '.join(found)}" if found else "no machine path"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
