"""Manifests: validated jsonl files, one sample per line.

Preparing data (``prepare`` steps, generators) writes manifests; datasets only
read them. Media paths are relative to the manifest's folder.

Core keys of an entry (others are allowed and kept):

============== ===============================================================
``id``         unique string
``image``      frame image path, or ``video`` (+ ``time`` in s for one frame)
``audio``      audio path (may be the video itself)
``size``       ``[W, H]`` of the frame in pixels
``boxes``      sounding-object boxes, pixel ``[x1, y1, x2, y2]`` in that frame
``box_annotator`` optional, annotator index per box (Flickr consensus GT)
``box_labels`` optional, class label per sounding box (class-aware metrics)
``silent_boxes`` visible but silent objects
``labels``     class labels of the sounding objects
``onscreen``   whether the sound's source is visible
``split``      train / val / test
``frames``     video entries: per-frame annotations (``time``, ``boxes``,
               ``silent_boxes``, ``out_of_view``)
============== ===============================================================
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from avloc.errors import DataError
from avloc.io.atomic import atomic_path

Entry = dict[str, Any]


def manifest_line(e: Entry) -> str:
    """One entry as a manifest line (sorted keys, compact, so output is byte-stable)."""
    return json.dumps(e, sort_keys=True, separators=(",", ":")) + "\n"


def write_manifest(path: str | Path, entries: Iterable[Entry]) -> int:
    """Write entries as jsonl atomically (:func:`manifest_line`)."""
    n = 0
    with atomic_path(path) as tmp, tmp.open("w") as f:
        for e in entries:
            f.write(manifest_line(e))
            n += 1
    return n


def read_manifest(path: str | Path, validate: bool = True) -> list[Entry]:
    """Read a jsonl manifest; raises :class:`DataError` naming the bad line."""
    p = Path(path)
    if not p.is_file():
        raise DataError(f"manifest not found: {p}")
    entries: list[Entry] = []
    try:
        text = p.read_bytes().decode("utf-8")
    except UnicodeDecodeError:
        raise DataError(f"{p}: not a text (UTF-8 jsonl) manifest; is it a binary file given by mistake?") from None
    for i, line in enumerate(text.split("\n"), 1):
        if not line.strip():
            continue
        try:
            e = json.loads(line, parse_constant=_refuse_constant)
        except json.JSONDecodeError as err:
            raise DataError(f"{p}:{i}: not valid JSON ({err})") from None
        except ValueError as err:
            raise DataError(f"{p}:{i}: {err}") from None
        if not isinstance(e, dict):
            raise DataError(f"{p}:{i}: each line must be a JSON object")
        entries.append(e)
    if not entries:
        raise DataError(f"manifest {p} is empty: no samples to use")
    if validate:
        problems = [f"{p}:{i + 1} (id {e.get('id')!r}): {msg}" for i, e in enumerate(entries) for msg in entry_problems(e)]
        ids = [e["id"] for e in entries if isinstance(e.get("id"), str)]
        if len(set(ids)) != len(ids):
            problems.append(f"{p}: duplicate ids")
        if problems:
            more = f" (+{len(problems) - 5} more)" if len(problems) > 5 else ""
            raise DataError("invalid manifest: " + "; ".join(problems[:5]) + more)
    return entries


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON (a box coordinate must be a finite number)")


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _box_problems(boxes: Any, size: Any, key: str) -> list[str]:
    out = []
    if not isinstance(boxes, list):
        return [f"{key} must be a list of [x1, y1, x2, y2]"]
    for b in boxes:
        if not (isinstance(b, list) and len(b) == 4 and all(_is_number(v) for v in b)):
            out.append(f"{key}: {b!r} is not [x1, y1, x2, y2] of finite numbers")
            continue
        x1, y1, x2, y2 = b
        if x2 <= x1 or y2 <= y1:
            out.append(f"{key}: empty box {b}")
        if size is not None:
            w, h = size
            if x1 < 0 or y1 < 0 or x2 > w or y2 > h:
                out.append(f"{key}: box {b} outside the {w}x{h} frame")
    return out


def entry_problems(e: Entry) -> list[str]:
    """Every problem with one entry (empty list = valid)."""
    out: list[str] = []
    if not isinstance(e.get("id"), str) or not e["id"]:
        out.append("missing string 'id'")
    if "image" not in e and "video" not in e:
        out.append("needs 'image' or 'video'")
    size = e.get("size")
    if size is not None and not (
        isinstance(size, list) and len(size) == 2 and all(isinstance(v, int) and v > 0 for v in size)
    ):
        out.append(f"'size' must be [W, H] positive integers, got {size!r}")
        size = None
    for key in ("boxes", "silent_boxes"):
        if key in e:
            out.extend(_box_problems(e[key], size, key))
    frames = e.get("frames", []) or []
    if not isinstance(frames, list):
        return [*out, "'frames' must be a list of per-frame objects"]
    for j, fr in enumerate(frames):
        if not isinstance(fr, dict):
            out.append(f"frames[{j}] must be an object, got {fr!r}")
            continue
        if "time" in fr and not (_is_number(fr["time"]) and fr["time"] >= 0):
            out.append(f"frames[{j}].time must be a non-negative number, got {fr['time']!r}")
        for key in ("boxes", "silent_boxes"):
            if key in fr:
                out.extend(_box_problems(fr[key], size, f"frames[{j}].{key}"))
    for key in ("time", "duration"):
        if key in e and not (_is_number(e[key]) and e[key] >= 0):
            out.append(f"'{key}' must be a non-negative number, got {e[key]!r}")
    for key in ("box_labels", "labels"):
        if key in e and not (isinstance(e[key], list) and all(isinstance(v, int) and not isinstance(v, bool) for v in e[key])):
            out.append(f"'{key}' must be a list of integers, got {e[key]!r}")
    return out


def resolve_media(manifest_path: str | Path, rel: str) -> Path:
    """Absolute path of a media file named relative to the manifest's folder."""
    p = Path(rel)
    return p if p.is_absolute() else Path(manifest_path).resolve().parent / p
