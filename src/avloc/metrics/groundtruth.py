"""Ground truth for evaluation: parsed annotation records -> the normalised-box targets the protocols score.

The parsers of the published formats live in :mod:`avloc.formats.annotations` (torch-free, every field
checked); here: which parser a ``--gt`` file needs (:func:`load_gt`) and the records as targets
(:class:`avloc.metrics.targets.Target` inputs, boxes normalised to the frame) that
:func:`avloc.engine.evaluate.evaluate_predictions` consumes.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from avloc.errors import DataError
from avloc.formats.annotation_checks import read_json
from avloc.formats.annotations import (
    FLICKR_FRAME,
    load_avsol_json,
    load_dsol_json,
    load_flickr_dir,
    load_music_json,
    load_qian_json,
    load_slavc_nonsounding_csv,
    load_vggss_json,
)


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
    data = read_json(p)
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
    from avloc.formats.manifest import read_manifest

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
