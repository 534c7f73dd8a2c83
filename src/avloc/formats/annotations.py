"""Parsers for the published annotation formats -> ground-truth records (torch-free: NumPy is not even needed).

Each parser returns plain dicts with ``id``, ``boxes`` (list of
``[x1, y1, x2, y2]``) and format-specific keys, every field checked by
:mod:`avloc.formats.annotation_checks` (types, number ranges, depth: one
:class:`~avloc.errors.DataError` line naming the file, entry and field).
:mod:`avloc.metrics.groundtruth` turns the records into the normalised-box
targets the protocols score (``flickr_targets``, ``load_gt``).

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
* DSOL (Hu et al. 2020) ``music-exp/solotest.json`` / ``duettest.json``: an
  object ``{frame path: {"bbox": [{"box", "normbox": [x, y, w, h] in [0, 1],
  "category_id"}], "wdith", "height"}}``; boxes keep their ``[x, y, w, h]``
  form (``box_wh``) so the far edges are ``int(224 x + 224 w)`` as there.
* Qian et al. 2020 ``utils/normav.json``: COCO-style ``{"annotations":
  [{"image_id", "category_id", "bbox": [x, y, w, h] in [0, 1]}], ...}``; one
  record per ``image_id`` (kept as ``box_wh`` too).
* SLAVC non-sounding pairs (``metadata/*_test_plus_silent.csv``): header
  ``video,audio,label``; each ``non-sounding`` row is the frame of ``video``
  with the audio of ``audio``: a non-audible sample with id
  ``nonsounding/{video}/{audio}`` and ``image_id`` = ``video``.
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
from avloc.formats import annotation_checks as check

FLICKR_FRAME = 256  # Flickr-SoundNet boxes are drawn on 256 x 256 frames
AVSOL_FPS = 10.0  # AVSOL-E frames are annotated at 10 fps


def _read_json(path: str | Path) -> Any:
    return check.read_json(path)  # UTF-8, strict JSON (no NaN, bounded depth): avloc.formats.annotation_checks


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
            at = f"{p}: bbox {len(boxes)}"
            boxes.append([check.pixel(v, at, name) for v, name in zip(vals, ("xmin", "ymin", "xmax", "ymax"), strict=True)])
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
        boxes = check.boxes(boxes, at, "boxes" if "boxes" in e else "bbox", positive=True)
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


def _xywh_record(sid: str, items: list[tuple[Any, Any]], where: str) -> dict[str, Any]:
    """``[(normalised [x, y, w, h], class)]`` -> a target record with xyxy boxes plus ``box_wh``."""
    boxes, wh, labels = [], [], []
    for i, (b, c) in enumerate(items):
        at = f"{where}: {sid}: box {i}"
        x, y, w, h = check.xywh(b, at, "bbox")
        boxes.append([x, y, x + w, y + h])
        wh.append([w, h])
        labels.append(check.label(c, at, "category_id"))
    return {"id": sid, "boxes": boxes, "box_wh": wh, "box_labels": labels, "labels": sorted(set(labels))}


def load_dsol_json(path: str | Path, data: Any = None) -> list[dict[str, Any]]:
    """DSOL ``solotest.json`` / ``duettest.json`` -> targets (``normbox`` xywh, ``category_id`` = class map index)."""
    data = _read_json(path) if data is None else data
    if not isinstance(data, dict):
        raise DataError(f"{path}: DSOL json must map each frame path to {{'bbox': [...]}}")
    out = []
    for sid, e in data.items():
        bb = e.get("bbox") if isinstance(e, dict) else None
        if not isinstance(bb, list) or not all(isinstance(o, dict) and "normbox" in o and "category_id" in o for o in bb):
            raise DataError(f"{path}: {sid}: 'bbox' must be a list of {{box, normbox, category_id}} objects")
        out.append(_xywh_record(str(sid), [(o["normbox"], o["category_id"]) for o in bb], str(path)))
    return out


def load_qian_json(path: str | Path, data: Any = None) -> list[dict[str, Any]]:
    """Qian et al. ``normav.json`` (COCO-style annotations) -> one target per ``image_id``."""
    data = _read_json(path) if data is None else data
    anns = data.get("annotations") if isinstance(data, dict) else None
    if not isinstance(anns, list):
        raise DataError(f"{path}: Qian json needs an 'annotations' list")
    per: dict[str, list[tuple[Any, Any]]] = {}
    for i, a in enumerate(anns):
        if not isinstance(a, dict) or not {"image_id", "category_id", "bbox"} <= set(a):
            raise DataError(f"{path}: annotation {i} needs image_id, category_id and bbox")
        sid = check.identifier(a["image_id"], f"{path}: annotation {i}", "image_id")
        per.setdefault(sid, []).append((a["bbox"], a["category_id"]))
    return [_xywh_record(k, v, str(path)) for k, v in per.items()]


SLAVC_NONSOUNDING = "non-sounding"


def load_slavc_nonsounding_csv(path: str | Path) -> list[dict[str, Any]]:
    """SLAVC ``*_test_plus_silent.csv`` -> non-audible targets (rows labelled ``non-sounding``; header skipped)."""
    p = Path(path)
    if not p.is_file():
        raise DataError(f"annotation file not found: {p}")
    rows = check.read_csv_rows(p)
    if not rows or [c.strip() for c in rows[0][:3]] != ["video", "audio", "label"]:
        raise DataError(f"{p}: not a SLAVC non-sounding list (expected the header 'video,audio,label')")
    out = []
    for n, r in enumerate(rows[1:], start=2):
        if len(r) < 3:
            raise DataError(f"{p}: line {n}: expected video,audio,label, got {check.show(r)}")
        if r[2] != SLAVC_NONSOUNDING:  # SLAVC datasets.py keeps only these rows
            continue
        video, audio = (check.identifier(v, f"{p}: line {n}", k) for v, k in ((r[0], "video"), (r[1], "audio")))
        out.append({"id": f"nonsounding/{video}/{audio}", "image_id": video, "boxes": [], "audible": False})
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
        fps = check.fps(v.get("fps", AVSOL_FPS), at)
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
                index = round(check.seconds(fr["time"], fat, "time") * fps)
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
                b = check.box(ob.get("box"), f"{fat}.objects[{oi}]", "box", positive=True)
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


