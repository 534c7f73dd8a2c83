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


def _xywh_record(sid: str, items: list[tuple[list[Any], Any]], where: str) -> dict[str, Any]:
    """``[(normalised [x, y, w, h], class)]`` -> a target record with xyxy boxes plus ``box_wh``."""
    boxes, wh, labels = [], [], []
    for b, c in items:
        if not (isinstance(b, list) and len(b) == 4 and all(isinstance(v, (int, float)) for v in b)):
            raise DataError(f"{where}: {sid}: a box must be [x, y, w, h] numbers, got {b!r}")
        if not isinstance(c, int) or isinstance(c, bool):
            raise DataError(f"{where}: {sid}: category_id must be an integer, got {c!r}")
        x, y, w, h = (float(v) for v in b)
        boxes.append([x, y, x + w, y + h])
        wh.append([w, h])
        labels.append(c)
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
    per: dict[str, list[tuple[list[Any], Any]]] = {}
    for i, a in enumerate(anns):
        if not isinstance(a, dict) or not {"image_id", "category_id", "bbox"} <= set(a):
            raise DataError(f"{path}: annotation {i} needs image_id, category_id and bbox")
        per.setdefault(str(a["image_id"]), []).append((a["bbox"], a["category_id"]))
    return [_xywh_record(k, v, str(path)) for k, v in per.items()]


SLAVC_NONSOUNDING = "non-sounding"


def load_slavc_nonsounding_csv(path: str | Path) -> list[dict[str, Any]]:
    """SLAVC ``*_test_plus_silent.csv`` -> non-audible targets (rows labelled ``non-sounding``; header skipped)."""
    import csv

    p = Path(path)
    if not p.is_file():
        raise DataError(f"annotation file not found: {p}")
    with p.open(newline="") as f:
        rows = list(csv.reader(f))
    if not rows or [c.strip() for c in rows[0][:3]] != ["video", "audio", "label"]:
        raise DataError(f"{p}: not a SLAVC non-sounding list (expected the header 'video,audio,label')")
    out = []
    for n, r in enumerate(rows[1:], start=2):
        if len(r) < 3:
            raise DataError(f"{p}: line {n}: expected video,audio,label, got {r}")
        if r[2] != SLAVC_NONSOUNDING:  # SLAVC datasets.py keeps only these rows
            continue
        out.append({"id": f"nonsounding/{r[0]}/{r[1]}", "image_id": r[0], "boxes": [], "audible": False})
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


GT_FORMATS = (
    "a Flickr-SoundNet XML folder, a VGG-SS json (list of {file, bbox}), a DSOL solotest/duettest json, "
    "a Qian normav json ({annotations}), a SLAVC non-sounding csv (video,audio,label), an AVSOL json ({videos}), "
    "a MUSIC-style box json (records with id and boxes) or an avloc jsonl manifest"
)


def load_gt(path: str | Path) -> list[dict[str, Any]]:
    """Ground truth for ``avloc eval --gt``: the format is recognised from the file; anything else is a DataError."""
    p = Path(path)
    if p.is_dir():
        return flickr_targets(load_flickr_dir(p))
    if not p.exists():
        raise DataError(f"ground truth not found: {p}")
    if p.suffix == ".jsonl":
        return manifest_targets(p)
    if p.suffix == ".csv":
        return load_slavc_nonsounding_csv(p)
    data = _read_json(p)
    try:
        return _dispatch_json(p, data)
    except (TypeError, KeyError, ValueError, AttributeError, IndexError) as e:  # a shape no parser expected
        raise DataError(f"{p}: malformed ground truth ({type(e).__name__}: {e}); expected {GT_FORMATS}") from None


def _is_music_record(e: Any) -> bool:
    return isinstance(e, dict) and ("id" in e or "file" in e) and isinstance(e.get("boxes", e.get("bbox")), list)


def _dispatch_json(p: Path, data: Any) -> list[dict[str, Any]]:
    if isinstance(data, dict):
        if "videos" in data:
            return load_avsol_json(p)
        if "annotations" in data:
            return load_qian_json(p, data)
        values = list(data.values())
        if values and all(isinstance(v, dict) and isinstance(v.get("bbox"), list) for v in values):
            if all(isinstance(o, dict) for v in values for o in v["bbox"]):
                return load_dsol_json(p, data)
        if values and all(_is_music_record({"id": k, **v}) for k, v in data.items() if isinstance(v, dict)) and all(
            isinstance(v, dict) for v in values
        ):
            return load_music_json(p)
    if isinstance(data, list) and not data:
        raise DataError(f"{p}: no entries (an empty list): nothing to evaluate")
    if isinstance(data, list) and data:
        if all(isinstance(e, dict) and "file" in e and "bbox" in e and "class" in e for e in data):
            return load_vggss_json(p)
        if all(_is_music_record(e) for e in data):
            return load_music_json(p)
        if not all(isinstance(e, dict) for e in data):
            return load_music_json(p)  # its validation names the first entry that is not an object
    if isinstance(data, dict) and not all(isinstance(v, dict) for v in data.values()):
        raise DataError(f"{p}: a JSON object that is neither AVSOL ({{\"videos\": [...]}}) nor a MUSIC id -> entry "
                        f"mapping; VGG-SS and MUSIC ground truth is a JSON list of entries (expected {GT_FORMATS})")
    raise DataError(f"{p}: unrecognised ground-truth json; expected {GT_FORMATS}")


def manifest_targets(path: str | Path) -> list[dict[str, Any]]:
    """Targets of an avloc jsonl manifest: pixel boxes normalised by the entry's ``size``."""
    from avloc.data.manifest import read_manifest

    out = []
    for e in read_manifest(path):
        size = e.get("size")
        keys = ("id", "image_id", "box_annotator", "box_labels", "labels", "onscreen", "audible", "out_of_view")
        rec: dict[str, Any] = {k: e[k] for k in keys if k in e}
        for key in ("boxes", "silent_boxes"):
            if key in e:
                if size is None:
                    raise DataError(f"{path}: entry {e['id']} has {key} but no 'size' to normalise them")
                w, h = size
                rec[key] = [[b[0] / w, b[1] / h, b[2] / w, b[3] / h] for b in e[key]]
        out.append(rec)
    return out
