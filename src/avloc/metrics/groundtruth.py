"""Parsers for the published annotation formats -> ground-truth records.

Public path: :mod:`avloc.data.annotations` (re-exports this module). The code
lives here, next to the metrics, because ``avloc eval`` needs it without
importing the ``avloc.data`` package (whose ``__init__`` registers datasets
and imports torch).

Each parser returns plain dicts with ``id``, ``boxes`` (list of
``[x1, y1, x2, y2]``) and format-specific keys; ``*_targets`` helpers give the
normalised-box records (:class:`avloc.metrics.targets.Target` inputs) that
:func:`avloc.engine.evaluate.evaluate_predictions` consumes.

* Flickr-SoundNet (Senocak et al. 2018): one XML per image, boxes of 3
  annotators in a 256 x 256 frame. Layout read as the public code reads it:
  every ``bbox`` grandchild of the root holds one leading non-coordinate
  child, then ``xmin ymin xmax ymax``; each child of the root that holds
  boxes is one annotator.
* VGG-SS (Chen et al. 2021): a json list of ``{"file", "class", "bbox": [[x1,
  y1, x2, y2], ...]}`` with coordinates normalised to [0, 1]. Kept verbatim
  (the public file has 18 degenerate boxes, e.g. ``x2 = -2.9e16``; the public
  evaluation keeps them, so do we; :func:`vggss_problems` lists them).
* MUSIC-style box json: a list of ``{"file"|"id", "bbox"|"boxes", "labels"|
  "box_labels", optional "size": [W, H] when boxes are in pixels,
  optional "sounding": [bool per box]}``.
* AVSOL-style per-frame video annotation: ``{"videos": [{"id", "fps",
  optional "size", "frames": [{"index"|"time", "objects": [{"box", "tag":
  "sounding"|"silent"|"out-of-view"}]}]}]}``; one record per frame.
"""

from __future__ import annotations

import math
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

from avloc.errors import DataError
from avloc.metrics import gtcheck as check

FLICKR_FRAME = 256  # Flickr-SoundNet boxes are drawn on 256 x 256 frames
AVSOL_FPS = 10.0  # AVSOL-E frames are annotated at 10 fps


def _read_json(path: str | Path) -> Any:
    return check.read_json(path)  # UTF-8, strict JSON (no NaN): the validating layer, avloc.metrics.gtcheck


def parse_flickr_xml(path: str | Path) -> dict[str, Any]:
    """One Flickr-SoundNet XML -> ``{"id", "boxes" (256-frame pixels), "box_annotator", "size"}``."""
    p = Path(path)
    try:
        root = ET.parse(p).getroot()
    except (ET.ParseError, OSError) as e:
        raise DataError(f"{p}: cannot parse Flickr XML ({e})") from None
    boxes: list[list[int]] = []
    annot: list[int] = []
    group = 0
    for child in root:
        found = False
        for el in child:
            if el.tag != "bbox":
                continue
            vals = [c.text for c in list(el)[1:5]]
            if len(vals) != 4 or any(v is None for v in vals):
                raise DataError(f"{p}: a bbox needs a leading child then xmin ymin xmax ymax")
            try:
                boxes.append([int(str(v).strip()) for v in vals])
            except ValueError:
                raise DataError(f"{p}: non-integer box coordinates {vals}") from None
            annot.append(group)
            found = True
        group += int(found)
    return {"id": p.stem, "boxes": boxes, "box_annotator": annot, "size": [FLICKR_FRAME, FLICKR_FRAME]}


def load_flickr_dir(annotation_dir: str | Path, ids: list[str] | None = None) -> list[dict[str, Any]]:
    """All XMLs of a Flickr-SoundNet annotation folder (or those of ``ids``), sorted by id."""
    d = Path(annotation_dir)
    if not d.is_dir():
        raise DataError(f"Flickr annotation folder not found: {d}")
    files = {f.stem: f for f in d.glob("*.xml")}
    if not files:
        raise DataError(f"{d} holds no .xml annotation files")
    if ids is not None:
        missing = [i for i in ids if i not in files]
        if missing:
            raise DataError(f"{len(missing)} ids have no XML in {d}, e.g. {missing[:3]}")
        files = {i: files[i] for i in ids}
    return [parse_flickr_xml(files[k]) for k in sorted(files)]


def flickr_targets(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Flickr records -> targets with boxes normalised by the 256 frame (so ``int(224 * b)`` = public pixels)."""
    return [
        {
            "id": r["id"],
            "boxes": [[v / FLICKR_FRAME for v in b] for b in r["boxes"]],
            "box_annotator": r["box_annotator"],
        }
        for r in records
    ]


def load_vggss_json(path: str | Path) -> list[dict[str, Any]]:
    """VGG-SS json -> ``[{"id", "class", "boxes"}]`` (boxes verbatim, normalised)."""
    data = check.entries(_read_json(path), path, "VGG-SS json")
    out = []
    for i, e in enumerate(data):
        at = check.where(path, i, e, "file")
        e = check.entry(e, at)
        if "file" not in e or "bbox" not in e:
            raise DataError(f"{at}: lacks field 'file' or 'bbox'")
        sid = check.identifier(e["file"], at, "file")
        out.append({"id": sid, "class": e.get("class"), "boxes": check.boxes(e["bbox"], at, "bbox")})
    return out


def vggss_problems(records: list[dict[str, Any]], size: int = 224) -> list[str]:
    """Boxes that cover no pixel on a ``size`` grid (the public evaluation scores them as empty)."""
    out = []
    for r in records:
        for b in r["boxes"]:
            px = [int(size * min(max(v, 0.0), 1.0)) if math.isfinite(v) else 0 for v in b]
            if px[2] <= px[0] or px[3] <= px[1]:
                out.append(f"{r['id']}: box {b} is empty on a {size}x{size} grid")
    return out


def load_music_json(path: str | Path) -> list[dict[str, Any]]:
    """MUSIC-style box json -> targets ``{"id", "boxes" (normalised), "box_labels", "labels"}``."""
    data = _read_json(path)
    if isinstance(data, dict):
        data = [{"id": k, **check.entry(v, check.where(path, repr(k)))} for k, v in data.items()]
    data = check.entries(data, path, "MUSIC json (or an id -> record object)")
    out = []
    for i, e in enumerate(data):
        at = check.where(path, i, e)
        e = check.entry(e, at)
        sid = e.get("id", e.get("file"))
        boxes = e.get("boxes", e.get("bbox"))
        if sid is None or boxes is None:
            raise DataError(f"{at}: needs fields 'id'/'file' and 'boxes'/'bbox'")
        sid = check.identifier(sid, at, "id" if "id" in e else "file")
        boxes = check.boxes(boxes, at, "boxes" if "boxes" in e else "bbox")
        labels = e.get("box_labels", e.get("labels"))
        if labels is not None:
            labels = check.integers(labels, at, "box_labels" if "box_labels" in e else "labels")
        size = e.get("size")
        if size is not None:
            w, h = check.size(size, at)
            boxes = [[b[0] / w, b[1] / h, b[2] / w, b[3] / h] for b in boxes]
        sounding = e.get("sounding")
        if sounding is not None:
            sounding = check.flags(sounding, at, "sounding", len(boxes))
        rec: dict[str, Any] = {"id": str(sid), "boxes": boxes}
        if labels is not None:
            if len(labels) != len(boxes):
                raise DataError(f"{path}: entry {sid}: {len(labels)} labels for {len(boxes)} boxes")
            rec["box_labels"] = [int(c) for c in labels]
        if sounding is not None:
            keep = [bool(s) for s in sounding]
            rec["silent_boxes"] = [b for b, k in zip(boxes, keep, strict=True) if not k]
            if "box_labels" in rec:
                rec["silent_labels"] = sorted({c for c, k in zip(rec["box_labels"], keep, strict=True) if not k})
                rec["box_labels"] = [c for c, k in zip(rec["box_labels"], keep, strict=True) if k]
            rec["boxes"] = [b for b, k in zip(boxes, keep, strict=True) if k]
        if "box_labels" in rec:
            rec["labels"] = sorted(set(rec["box_labels"]))
        out.append(rec)
    return out


def load_avsol_json(path: str | Path) -> list[dict[str, Any]]:
    """AVSOL-style per-frame annotation -> one target per frame (``id`` = ``video@index``)."""
    data = _read_json(path)
    videos = data.get("videos") if isinstance(data, dict) else None
    if not isinstance(videos, list):
        raise DataError(f"{path}: AVSOL json needs a 'videos' list")
    out = []
    for vi, v in enumerate(videos):
        at = check.where(path, vi, v)
        v = check.entry(v, at)
        if not v.get("id"):
            raise DataError(f"{at}: a video lacks field 'id'")
        vid = check.identifier(v["id"], at, "id")
        fps = check.number(v.get("fps", AVSOL_FPS), at, "fps", positive=True)
        size = None if v.get("size") is None else check.size(v["size"], at)
        frames = v.get("frames", [])
        if not isinstance(frames, list):
            raise DataError(f"{at}: field 'frames' must be a list of frames")
        for fi, fr in enumerate(frames):
            fat = f"{at}: frames[{fi}]"
            fr = check.entry(fr, fat)
            if "index" in fr:
                index = check.index(fr["index"], fat, "index")
            elif "time" in fr:
                index = round(check.number(fr["time"], fat, "time", nonnegative=True) * fps)
            else:
                raise DataError(f"{fat}: needs field 'index' (frame number) or 'time' (seconds)")
            sounding, silent, oov = [], [], False
            objects = fr.get("objects", [])
            if not isinstance(objects, list):
                raise DataError(f"{fat}: field 'objects' must be a list")
            for oi, ob in enumerate(objects):
                ob = check.entry(ob, f"{fat}.objects[{oi}]")
                tag = ob.get("tag")
                if tag == "out-of-view":
                    oov = True
                    continue
                b = check.box(ob.get("box"), f"{fat}.objects[{oi}]", "box")
                if size is not None:
                    b = [b[0] / size[0], b[1] / size[1], b[2] / size[0], b[3] / size[1]]
                if tag == "sounding":
                    sounding.append(b)
                elif tag == "silent":
                    silent.append(b)
                else:
                    raise DataError(f"{fat}.objects[{oi}]: unknown tag {tag!r} (sounding, silent, out-of-view)")
            out.append(
                {
                    "id": f"{vid}@{index:04d}",
                    "video": vid,
                    "time": index / fps,
                    "boxes": sounding,
                    "silent_boxes": silent,
                    "out_of_view": oov,
                    "audible": bool(sounding) or oov,
                    "onscreen": bool(sounding),
                }
            )
    return out


def load_gt(path: str | Path) -> list[dict[str, Any]]:
    """Ground truth for ``avloc eval --gt``: a VGG-SS json, a Flickr XML folder, an AVSOL json or an avloc manifest."""
    p = Path(path)
    if p.is_dir():
        return flickr_targets(load_flickr_dir(p))
    if p.suffix == ".jsonl":
        return manifest_targets(p)
    data = _read_json(p)
    if isinstance(data, dict) and "videos" in data:
        return load_avsol_json(p)
    if isinstance(data, list) and data and isinstance(data[0], dict) and "file" in data[0] and "class" in data[0]:
        return load_vggss_json(p)
    if isinstance(data, dict) and not all(isinstance(v, dict) for v in data.values()):
        raise DataError(f"{p}: a JSON object that is neither AVSOL ({{\"videos\": [...]}}) nor a MUSIC id -> entry "
                        "mapping; VGG-SS and MUSIC ground truth is a JSON list of entries")
    if isinstance(data, list) and not data:
        raise DataError(f"{p}: no entries (an empty list): nothing to evaluate")
    return load_music_json(p)


def manifest_targets(path: str | Path) -> list[dict[str, Any]]:
    """Targets of an avloc jsonl manifest: pixel boxes normalised by the entry's ``size``."""
    from avloc.data.manifest import read_manifest

    out = []
    for e in read_manifest(path):
        size = e.get("size")
        rec: dict[str, Any] = {k: e[k] for k in ("id", "box_annotator", "box_labels", "labels", "onscreen", "audible", "out_of_view") if k in e}
        for key in ("boxes", "silent_boxes"):
            if key in e:
                if size is None:
                    raise DataError(f"{path}: entry {e['id']} has {key} but no 'size' to normalise them")
                w, h = size
                rec[key] = [[b[0] / w, b[1] / h, b[2] / w, b[3] / h] for b in e[key]]
        out.append(rec)
    return out
