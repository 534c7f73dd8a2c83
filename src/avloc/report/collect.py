"""What the report shows, read from an ``avloc localize`` output folder (no HTML here).

:func:`collect` turns ``DIR`` into a :class:`Collection`: one
:class:`VideoEntry` per video, from ``DIR/run.json`` when present
(:mod:`avloc.formats.runfile`) and from the files otherwise:

* ``STEM.avloc.json`` present and valid (:func:`avloc.formats.localize.read_document`) -> ``done``
  (or the status run.json gives: ``done``/``skipped``);
* present but not JSON, or not matching the schema -> ``invalid``, with the
  first problem as its error (the index shows it; nothing crashes);
* other files of the set without their JSON (the marker a run writes last) ->
  ``incomplete``;
* run.json's ``failed`` and ``pending`` as they are.

:func:`heard_classes` and :func:`timeline` extract the per-video series the
pages draw: the on-screen confidence (or, in visual-only mode where there is
none, the top box score), silent frames, and the heard classes over time, from
the per-frame ``sources`` (methods that ground heard sources, e.g.
avsemantic) or, failing those, ``semantic.audioset`` (``--audio-tagger``).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from avloc.errors import AvlocError, DataError
from avloc.formats.localize import OUTPUT_SUFFIXES, Box, LocalizeDocument, read_document, stem_of

log = logging.getLogger(__name__)
#: every status an entry can have: run.json's (runfile.RUN_STATUSES) and the two only the files can tell
STATUSES = ("done", "skipped", "failed", "pending", "invalid", "incomplete")
#: heard classes kept per video on the index, and lanes of the timeline
TOP_CLASSES = 5


@dataclass
class HeardClass:
    """A class heard in a video: in how many analysed frames, how strongly."""

    label: str
    frames: int  # analysed frames in which it was heard
    fraction: float  # frames / analysed frames
    max_score: float  # its best score in a frame
    mean_score: float  # its score averaged over all analysed frames (0 where not heard): the ranking key


@dataclass
class VideoEntry:
    """One row of the index and, when its JSON is valid, one video page."""

    stem: str
    status: str
    input: str | None = None
    errors: list[str] = field(default_factory=list)
    json_path: Path | None = None
    video_path: Path | None = None
    sheet_path: Path | None = None
    duration: float | None = None
    frames: int | None = None
    fps: float | None = None
    onscreen_fraction: float | None = None
    model: str | None = None
    heard: list[HeardClass] = field(default_factory=list)
    doc: LocalizeDocument | None = field(default=None, repr=False)

    @property
    def has_page(self) -> bool:
        return self.doc is not None


@dataclass
class Collection:
    """Everything :func:`collect` found in ``folder``."""

    folder: Path
    entries: list[VideoEntry]
    run: Any = None  # runfile.RunRecord | None
    errors: list[str] = field(default_factory=list)  # about the run as a whole (a bad run.json)

    def counts(self) -> dict[str, int]:
        """Entries per status, in :data:`STATUSES` order, zero counts left out."""
        c = {s: sum(e.status == s for e in self.entries) for s in STATUSES}
        return {s: n for s, n in c.items() if n}


def heard_classes(doc: LocalizeDocument, top: int | None = TOP_CLASSES) -> list[HeardClass]:
    """Classes heard in a video, at most ``top``, by mean score over all analysed frames (how often x how
    strongly; so a class heard weakly in every frame does not outrank one heard clearly for half the video).
    Ties: more frames, then the label."""
    frames = doc.frames
    count: dict[str, int] = {}
    best: dict[str, float] = {}
    total: dict[str, float] = {}
    for f in frames:
        for label, score in f.heard().items():
            count[label] = count.get(label, 0) + 1
            best[label] = max(best.get(label, 0.0), score)
            total[label] = total.get(label, 0.0) + score
    n = max(1, len(frames))
    out = [HeardClass(k, count[k], count[k] / n, best[k], total[k] / n) for k in count]
    out.sort(key=lambda h: (-h.mean_score, -h.frames, h.label))
    return out if top is None else out[:top]


@dataclass
class Timeline:
    """Per analysed frame series of one video (module doc); all lists have one value per frame."""

    duration: float
    times: list[float]
    step: float  # analysed frame spacing (s)
    confidence: list[float | None]
    confidence_label: str  # "on-screen confidence" or "top box score" (visual-only)
    silent: list[bool]
    classes: dict[str, list[float]]  # top heard classes: label -> score per frame (0 when not heard)
    boxes: list[list[dict[str, Any]]]  # per frame: x1 y1 x2 y2 score and the caption the page shows


def timeline(doc: LocalizeDocument, top: int = TOP_CLASSES) -> Timeline:
    """The series a video page draws and lists (module doc)."""
    frames = doc.frames
    conf: list[float | None] = [f.onscreen_confidence for f in frames]
    label = "on-screen confidence"
    if all(c is None for c in conf):  # visual-only: no on-screen estimate, show how sure the top box is
        conf = [f.boxes[0].score if f.boxes else None for f in frames]
        label = "top box score"
    classes: dict[str, list[float]] = {}
    per_frame = [f.heard() for f in frames]
    for h in heard_classes(doc, top):
        classes[h.label] = [float(p.get(h.label, 0.0)) for p in per_frame]
    boxes = [[{"x1": b.x1, "y1": b.y1, "x2": b.x2, "y2": b.y2, "score": b.score, "label": _what(b)} for b in f.boxes]
             for f in frames]
    return Timeline(
        duration=doc.duration, times=[f.time for f in frames], step=1.0 / doc.fps,
        confidence=conf, confidence_label=label, silent=[f.silent for f in frames], classes=classes, boxes=boxes,
    )


def _what(b: Box) -> str:
    """A box's label column: the heard class and what it was grounded on (``"Dog (coco:dog)"``)."""
    if b.label and b.instance:
        return f"{b.label} ({b.instance})"
    return b.label or b.instance or ""


def _fill_from_doc(e: VideoEntry, doc: LocalizeDocument, folder: Path) -> None:
    e.doc = doc
    e.input = e.input or doc.input["path"]
    e.duration = doc.duration
    e.frames = int(doc.summary["analysed_frames"])
    e.fps = doc.fps
    e.onscreen_fraction = doc.summary["onscreen_fraction"]
    e.model = doc.model["name"]
    e.heard = heard_classes(doc)
    for kind, attr in (("video", "video_path"), ("sheet", "sheet_path")):
        name = doc.outputs.get(kind)
        if name is None:
            continue
        p = folder / name  # read_document refuses names that leave the folder
        if p.is_file():
            setattr(e, attr, p)
        else:
            e.errors.append(f"{name}: listed in {e.stem}.avloc.json but missing")


def _entry(stem: str, folder: Path, status: str | None, json_name: str | None = None) -> VideoEntry:
    """An entry from the files of ``stem`` (module doc); ``status``: what run.json says, if anything."""
    js = folder / (json_name or f"{stem}{OUTPUT_SUFFIXES['json']}")
    e = VideoEntry(stem=stem, status=status or "done")
    if status in ("failed", "pending"):
        if js.is_file():
            e.json_path = js  # outputs of an earlier run may still be there: shown, status unchanged
            try:
                _fill_from_doc(e, read_document(js), folder)
            except AvlocError as err:
                e.errors.append(str(err))
        return e
    if not js.is_file():
        present = [stem + s for k, s in OUTPUT_SUFFIXES.items() if k != "json" and (folder / (stem + s)).exists()]
        e.status = "incomplete"
        e.errors.append(f"{js.name} missing ({', '.join(present) or 'no output'} present): the run did not finish this input")
        return e
    e.json_path = js
    try:
        doc = read_document(js)
    except AvlocError as err:
        e.status = "invalid"
        e.errors.append(str(err))
        return e
    _fill_from_doc(e, doc, folder)
    return e


def collect(folder: str | Path) -> Collection:
    """Read ``folder`` (module doc); raises :class:`DataError` when it holds no avloc localize output at all."""
    from avloc.formats.runfile import RUN_FILE, read_run
    from avloc.io.outputs import is_temporary_name

    d = Path(folder)
    if not d.is_dir():
        raise DataError(f"{d}: not a folder: give the --out folder of an avloc localize run")
    coll = Collection(folder=d, entries=[])
    try:
        coll.run = read_run(d)
    except AvlocError as err:
        coll.errors.append(f"{err}; statuses inferred from the files instead")
        log.warning("%s", coll.errors[-1])
    seen: set[str] = set()
    if coll.run is not None:
        for r in coll.run.inputs:
            if r.output_stem in seen:
                continue  # the same output name twice: the CLI already refused the second input
            seen.add(r.output_stem)
            js = r.outputs.get("json")
            if js is not None and Path(js).name != js:  # file names in DIR only: never read outside it
                e = VideoEntry(stem=r.output_stem, status="invalid",
                               errors=[f"{RUN_FILE}: outputs.json {js!r} of {r.input} is not a file name in {d}"])
            else:
                e = _entry(r.output_stem, d, r.status, js)
            e.input = r.input
            if r.error:
                e.errors.insert(0, r.error)
            coll.entries.append(e)
    stems: set[str] = set()
    for p in d.iterdir():
        stem = None if is_temporary_name(p.name) or not p.is_file() else stem_of(p.name)
        if stem is not None:
            stems.add(stem)
    for stem in sorted(stems - seen):
        coll.entries.append(_entry(stem, d, None))
    if not coll.entries:
        raise DataError(f"{d}: no avloc localize outputs (STEM.avloc.json) and no run.json: "
                        "give the --out folder of an avloc localize run")
    return coll
