"""Manifests: validated jsonl files, one sample per line.

Preparing data (``prepare`` steps, generators) writes manifests; datasets only
read them. Media paths are relative to the manifest's folder.

Core keys of an entry (others are allowed and kept):

============== ===============================================================
``id``         unique string
``image``      frame image path, or ``video`` (+ ``time`` in s for one frame), or
               ``shard`` (a sample stored in a shard set: :mod:`avloc.formats.shards`)
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
import reprlib
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from avloc.errors import DataError
from avloc.formats.annotation_checks import MAX_COORD, MAX_FPS, MAX_LABEL, MAX_SECONDS, MAX_SIDE
from avloc.formats.annotation_checks import show as _show
from avloc.formats.atomic import atomic_path

Entry = dict[str, Any]
#: entry fields that name media files (relative to the manifest's folder)
MEDIA_KEYS = ("image", "video", "audio")
#: entry fields holding times in seconds, and true/false fields
TIME_KEYS = ("time", "duration", "audio_time")
FLAG_KEYS = ("onscreen", "audible", "out_of_view")


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
        except RecursionError:
            raise DataError(f"{p}:{i}: nested too deeply to be a manifest entry") from None
        except ValueError as err:  # NaN / Infinity, an integer over Python's digit limit
            raise DataError(f"{p}:{i}: {str(err).splitlines()[0]}") from None
        if not isinstance(e, dict):
            raise DataError(f"{p}:{i}: each line must be a JSON object")
        entries.append(e)
    if not entries:
        raise DataError(f"manifest {p} is empty: no samples to use")
    if validate:
        problems = [f"{p}:{i + 1} (id {reprlib.repr(e.get('id'))}): {msg}" for i, e in enumerate(entries) for msg in entry_problems(e)]
        ids = [e["id"] for e in entries if isinstance(e.get("id"), str)]
        if len(set(ids)) != len(ids):
            problems.append(f"{p}: duplicate ids")
        if problems:
            more = f" (+{len(problems) - 5} more)" if len(problems) > 5 else ""
            raise DataError("invalid manifest: " + "; ".join(problems[:5]) + more)
    return entries


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON (a box coordinate must be a finite number)")


def _is_number(v: Any, high: float = MAX_COORD) -> bool:
    """A finite number (not a boolean) of magnitude at most ``high``."""
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return False
    try:
        return math.isfinite(float(v)) and abs(v) <= high
    except OverflowError:  # an integer beyond float range
        return False


def _box_problems(boxes: Any, size: Any, key: str) -> list[str]:
    out = []
    if not isinstance(boxes, list):
        return [f"{key} must be a list of [x1, y1, x2, y2]"]
    for b in boxes:
        if not (isinstance(b, list) and len(b) == 4 and all(_is_number(v) for v in b)):
            out.append(f"{key}: {_show(b)} is not [x1, y1, x2, y2] of finite coordinates")
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
    """Every problem with one entry (empty list = valid); the fields are those of the module's table."""
    out: list[str] = []
    if not isinstance(e.get("id"), str) or not e["id"]:
        out.append("missing string 'id'")
    if "image" not in e and "video" not in e and "shard" not in e:
        out.append("needs 'image', 'video' or 'shard'")
    for key in MEDIA_KEYS:  # paths: a wrong type would only fail deep inside a decoder
        if key in e and e[key] is not None and (not isinstance(e[key], str) or not e[key]):
            out.append(f"'{key}' must be a media path (a non-empty string), got {_show(e[key])}")
    size = e.get("size")
    if size is not None and not (isinstance(size, list) and len(size) == 2 and all(
            isinstance(v, int) and not isinstance(v, bool) and 0 < v <= MAX_SIDE for v in size)):
        out.append(f"'size' must be [W, H] integers in [1, {MAX_SIDE}], got {_show(size)}")
        size = None
    for key in ("boxes", "silent_boxes"):
        if key in e:
            out.extend(_box_problems(e[key], size, key))
    out.extend(_scalar_problems(e))
    frames = e.get("frames", []) or []
    if not isinstance(frames, list):
        return [*out, "'frames' must be a list of per-frame objects"]
    for j, fr in enumerate(frames):
        if not isinstance(fr, dict):
            out.append(f"frames[{j}] must be an object, got {_show(fr)}")
            continue
        if "time" in fr and not (_is_number(fr["time"], MAX_SECONDS) and fr["time"] >= 0):
            out.append(f"frames[{j}].time must be a number of seconds in [0, {MAX_SECONDS:g}], got {_show(fr['time'])}")
        for key in ("boxes", "silent_boxes"):
            if key in fr:
                out.extend(_box_problems(fr[key], size, f"frames[{j}].{key}"))
    return out


def _scalar_problems(e: Entry) -> list[str]:
    """Times, frame rate, flags and class lists of an entry."""
    out = []
    for key in TIME_KEYS:
        if key in e and not (_is_number(e[key], MAX_SECONDS) and e[key] >= 0):
            out.append(f"'{key}' must be a number of seconds in [0, {MAX_SECONDS:g}], got {_show(e[key])}")
    if e.get("fps") is not None and not (_is_number(e["fps"], MAX_FPS) and e["fps"] > 0):
        out.append(f"'fps' must be a frame rate in (0, {MAX_FPS:g}], got {_show(e['fps'])}")
    for key in FLAG_KEYS:
        if key in e and not isinstance(e[key], bool):
            out.append(f"'{key}' must be true or false, got {_show(e[key])}")
    for key in ("box_labels", "labels", "box_annotator"):
        if key in e and not (isinstance(e[key], list) and all(
                isinstance(v, int) and not isinstance(v, bool) and 0 <= v <= MAX_LABEL for v in e[key])):
            out.append(f"'{key}' must be a list of integers in [0, {MAX_LABEL}], got {_show(e[key])}")
    return out


def resolve_media(manifest_path: str | Path, rel: str) -> Path:
    """Absolute path of a media file named relative to the manifest's folder."""
    p = Path(rel)
    return p if p.is_absolute() else Path(manifest_path).resolve().parent / p
