"""Real-footage annotations (``realclips_dev/annotations.json``): clips, annotated frames, protocol targets.

Format (``realclips_dev/README.md``): ``{"clips": [{"file", "category", "frames": [{"t", "boxes",
"onscreen", "scored", "what", "yamnet_top"}]}]}`` with boxes normalised ``[x1, y1, x2, y2]`` of the full frame.
Sets built by :mod:`avloc.data.constructions` add, per clip, ``construction`` (its kind) and, per frame,
``tiles`` (``rect``, ``sounding``, ``boxes``, ``labels``, and descriptive keys) and ``speaker_tile``. Every
field read is validated; errors name the clip, the frame and the field.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from avloc.errors import DataError
from avloc.metrics.targets import Target, Tile

ANNOTATIONS = "annotations.json"
#: one ``yamnet_top`` entry: ``"LABEL (SCORE)"``
_YAMNET_ENTRY = re.compile(r"^(?P<label>.+) \((?P<score>[0-9]+(?:\.[0-9]+)?)\)$")

BoxTuple = tuple[float, float, float, float]


@dataclass(frozen=True)
class AnnotatedFrame:
    t: float
    boxes: tuple[BoxTuple, ...]
    onscreen: bool | None
    scored: bool
    what: str = ""
    #: the top YAMNet classes around ``t``: (AudioSet label, score), best first (for reference)
    yamnet_top: tuple[tuple[str, float], ...] = ()
    #: constructed frames only (module doc)
    tiles: tuple[Tile, ...] = ()
    speaker_tile: int | None = None


@dataclass(frozen=True)
class AnnotatedClip:
    path: Path
    category: str
    frames: tuple[AnnotatedFrame, ...]
    #: the kind of a constructed clip (:data:`avloc.data.constructions.KINDS`); "" for a recorded clip
    construction: str = ""

    @property
    def name(self) -> str:
        return self.path.stem

    def frame_id(self, f: AnnotatedFrame) -> str:
        """Ground-truth id of a frame: ``STEM@T`` (T in seconds, 3 decimals)."""
        return f"{self.name}@{f.t:.3f}"

    def targets(self) -> list[Target]:
        """Protocol targets of the annotated frames (``image_id`` = the clip, for per-clip results)."""
        import numpy as np

        return [
            Target(id=self.frame_id(f), boxes=np.asarray(f.boxes, np.float64).reshape(-1, 4), onscreen=f.onscreen,
                   scored=f.scored, image_id=self.name, tiles=f.tiles, speaker_tile=f.speaker_tile)
            for f in self.frames
        ]


def _box(v: Any, where: str) -> BoxTuple:
    if not isinstance(v, list) or len(v) != 4 or not all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in v):
        raise DataError(f"{where}: a box must be a list of 4 numbers [x1, y1, x2, y2], got {v!r}")
    x1, y1, x2, y2 = (float(x) for x in v)
    if not all(math.isfinite(x) and -1e-6 <= x <= 1 + 1e-6 for x in (x1, y1, x2, y2)) or x2 <= x1 or y2 <= y1:
        raise DataError(f"{where}: box {v!r} is not a normalised [x1, y1, x2, y2] with x1 < x2, y1 < y2 in [0, 1]")
    return x1, y1, x2, y2


def _yamnet_top(v: Any, where: str) -> tuple[tuple[str, float], ...]:
    if not isinstance(v, list) or not all(isinstance(e, str) for e in v):
        raise DataError(f"{where}: 'yamnet_top' must be a list of \"LABEL (SCORE)\" strings, got {v!r}")
    out = []
    for e in v:
        m = _YAMNET_ENTRY.match(e)
        if m is None:
            raise DataError(f"{where}: yamnet_top entry {e!r} is not \"LABEL (SCORE)\"")
        out.append((m["label"], float(m["score"])))
    return tuple(out)


def _tiles(v: Any, speaker: Any, where: str) -> tuple[tuple[Tile, ...], int | None]:
    """The ``tiles`` and ``speaker_tile`` of a constructed frame (module doc)."""
    if not isinstance(v, list):
        raise DataError(f"{where}: 'tiles' must be a list of tile objects")
    tiles = []
    for k, t in enumerate(v):
        tw = f"{where} tiles[{k}]"
        if not isinstance(t, dict) or not isinstance(t.get("sounding"), bool):
            raise DataError(f"{tw}: needs 'rect' and 'sounding' (true or false)")
        boxes, labels = t.get("boxes", []), t.get("labels", [])
        if not isinstance(boxes, list) or not isinstance(labels, list) or not all(isinstance(x, str) for x in labels):
            raise DataError(f"{tw}: 'boxes' must be a list of boxes and 'labels' a list of strings")
        tiles.append(Tile(_box(t.get("rect"), f"{tw} rect"), t["sounding"],
                          tuple(_box(b, f"{tw} boxes[{j}]") for j, b in enumerate(boxes)), tuple(labels)))
    if speaker is not None and (not isinstance(speaker, int) or isinstance(speaker, bool)
                                or not 0 <= speaker < len(tiles) or not tiles[speaker].sounding):
        raise DataError(f"{where}: 'speaker_tile' must be the index of a sounding tile, got {speaker!r}")
    return tuple(tiles), speaker


def _frame(f: Any, fw: str) -> AnnotatedFrame:
    """One validated frame of ``annotations.json``."""
    if not isinstance(f, dict):
        raise DataError(f"{fw}: expected an object")
    t = f.get("t")
    if not isinstance(t, (int, float)) or isinstance(t, bool) or not math.isfinite(t) or t < 0:
        raise DataError(f"{fw}: 't' must be a non-negative number of seconds, got {t!r}")
    boxes = f.get("boxes", [])
    if not isinstance(boxes, list):
        raise DataError(f"{fw}: 'boxes' must be a list")
    on = f.get("onscreen")
    if on is not None and not isinstance(on, bool):
        raise DataError(f"{fw}: 'onscreen' must be true, false or null, got {on!r}")
    scored = f.get("scored", True)
    if not isinstance(scored, bool):
        raise DataError(f"{fw}: 'scored' must be true or false, got {scored!r}")
    if "speaker_tile" in f and "tiles" not in f:
        raise DataError(f"{fw}: 'speaker_tile' needs 'tiles'")
    tiles, speaker = _tiles(f["tiles"], f.get("speaker_tile"), fw) if "tiles" in f else ((), None)
    return AnnotatedFrame(float(t), tuple(_box(b, f"{fw} boxes[{k}]") for k, b in enumerate(boxes)), on, scored,
                          str(f.get("what", "")), _yamnet_top(f.get("yamnet_top", []), fw), tiles, speaker)


def load_realclips(root: str | Path) -> list[AnnotatedClip]:
    """Clips of a real-footage set folder (``annotations.json`` plus the media it names), validated."""
    root = Path(root)
    ann = root / ANNOTATIONS
    if not ann.is_file():
        raise DataError(f"{root}: no {ANNOTATIONS} (a real-footage set folder, e.g. ../shared/data/realclips_dev)")
    try:
        doc = json.loads(ann.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise DataError(f"{ann}: not valid JSON ({e})") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("clips"), list):
        raise DataError(f"{ann}: expected an object with a 'clips' list")
    clips: list[AnnotatedClip] = []
    for ci, c in enumerate(doc["clips"]):
        where = f"{ann}: clips[{ci}]"
        if not isinstance(c, dict) or not isinstance(c.get("file"), str) or not isinstance(c.get("frames"), list):
            raise DataError(f"{where}: needs 'file' (string) and 'frames' (list)")
        path = root / c["file"]
        if not path.is_file():
            raise DataError(f"{where}: media file {path} not found")
        frames = tuple(_frame(f, f"{where} ({c['file']}) frames[{fi}]") for fi, f in enumerate(c["frames"]))
        clips.append(AnnotatedClip(path, str(c.get("category", "")), frames, str(c.get("construction", ""))))
    if not clips:
        raise DataError(f"{ann}: no clips")
    return clips
