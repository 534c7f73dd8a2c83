"""``NAME.avloc.json``: the output of ``avloc localize``, as typed records (one writer, one reader).

One :class:`LocalizeDocument` per input video; its ``frames`` are one :class:`FrameRecord` per analysed frame,
in time order. Coordinates are source pixels of the displayed picture (x right, y down, display rotation
applied); times are seconds from the start of the video. The JSON form is ``schema.json`` beside this module
(JSON Schema 2020-12); :func:`read_document` checks it with a real validator and then builds the records, so
readers never see a document that breaks it, and never follow an output name outside the JSON's folder.

What a user reads per frame: ``onscreen`` (a heard source is visible), ``boxes`` (one per visible heard
source instance, best first, each with the heard ``label`` and the ``instance`` it was grounded on),
``speaker`` (the face chosen as the talker, its track and confidence) and, for methods that ground heard
sources, ``sources`` (every heard class with its own on-screen probability, peak and boxes).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Literal

from avloc.errors import DataError

SCHEMA_VERSION = "2.0"
SCHEMA_FILE = "localize_schema.json"
#: file-name suffixes of the outputs of one input ``STEM``; ``json`` is the marker written last
OUTPUT_SUFFIXES: Mapping[str, str] = {
    "json": ".avloc.json", "video": ".avloc.mp4", "heatmaps": ".heatmaps.npz", "sheet": ".sheet.png",
}
SourceKind = Literal["object", "human", "none"]
SOURCE_KINDS: tuple[str, ...] = ("object", "human", "none")


def output_paths(stem: str, folder: str | Path) -> dict[str, Path]:
    """Every output of the input ``STEM`` in ``folder``, by kind (:data:`OUTPUT_SUFFIXES`)."""
    return {k: Path(folder) / f"{stem}{s}" for k, s in OUTPUT_SUFFIXES.items()}


def stem_of(name: str) -> str | None:
    """``STEM`` of an output file name, or ``None`` when the name is no output of avloc localize."""
    for s in OUTPUT_SUFFIXES.values():
        if name.endswith(s) and len(name) > len(s):
            return name[: -len(s)]
    return None


# --------------------------------------------------------------------------- records
@dataclass(frozen=True, slots=True)
class Point:
    """A point in source pixels."""

    x: float
    y: float

    def to_dict(self) -> dict[str, float]:
        return {"x": self.x, "y": self.y}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Point:
        return cls(float(d["x"]), float(d["y"]))


@dataclass(frozen=True, slots=True)
class Box:
    """A box in source pixels with its score in [0, 1].

    ``label``: what is heard there (an AudioSet class, "Speech"); ``instance``: what it was grounded on
    ("coco:dog", "face 1", "person", "imagenet:drum", "segment"); ``source``: index of its heard source in the
    frame's ``sources`` (methods that ground heard sources).
    """

    x1: float
    y1: float
    x2: float
    y2: float
    score: float
    label: str | None = None
    instance: str | None = None
    source: int | None = None

    @property
    def area(self) -> float:
        return max(0.0, self.x2 - self.x1) * max(0.0, self.y2 - self.y1)

    def caption(self) -> str:
        """What the overlay writes on the box: ``"Dog 0.91"``, or the score alone."""
        return f"{self.label} {self.score:.2f}" if self.label else f"{self.score:.2f}"

    def to_dict(self) -> dict[str, Any]:
        return _drop_none({f.name: getattr(self, f.name) for f in fields(self)})

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Box:
        return cls(float(d["x1"]), float(d["y1"]), float(d["x2"]), float(d["y2"]), float(d["score"]),
                   d.get("label"), d.get("instance"), d.get("source"))


@dataclass(frozen=True, slots=True)
class Source:
    """One heard class of a frame and how it was grounded (methods declaring heard sources, e.g. avsemantic).

    ``kind``: ``object`` (something that can be seen makes it), ``human`` (a person: speech, singing, crying),
    ``none`` (no visual counterpart: wind, narration, a soundtrack). ``grounding``: where it was found
    ("coco:dog", "face 1", "not visible", "no face", "no visual counterpart"). ``onscreen``: P(this source is
    visible). ``detail``: the evidence behind it (visible mass, face score, synchrony ...), numbers and strings.
    """

    label: str
    score: float
    kind: SourceKind
    grounding: str
    onscreen: float | None = None
    peak: Point | None = None
    boxes: tuple[Box, ...] = ()
    detail: Mapping[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"label": self.label, "score": self.score, "kind": self.kind, "grounding": self.grounding}
        if self.onscreen is not None:
            d["onscreen"] = self.onscreen
        if self.peak is not None:
            d["peak"] = self.peak.to_dict()
        d["boxes"] = [b.to_dict() for b in self.boxes]
        if self.detail:
            d["detail"] = dict(self.detail)
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Source:
        return cls(str(d["label"]), float(d["score"]), d["kind"], str(d["grounding"]), d.get("onscreen"),
                   None if d.get("peak") is None else Point.from_dict(d["peak"]),
                   tuple(Box.from_dict(b) for b in d.get("boxes", [])), dict(d.get("detail", {})))


@dataclass(frozen=True, slots=True)
class Speaker:
    """The face chosen as the one speaking: its track (stable across frames), head box and confidence
    (audio-mouth synchrony over a window of seconds, mapped to [0, 1])."""

    track: int
    box: Box
    confidence: float

    def to_dict(self) -> dict[str, Any]:
        return {"track": self.track, "box": self.box.to_dict(), "confidence": self.confidence}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Speaker:
        return cls(int(d["track"]), Box.from_dict(d["box"]), float(d["confidence"]))


@dataclass(frozen=True, slots=True)
class DetectedClass:
    """Class-aware methods (e.g. twostage): one detected class, its probability and its own map's peak."""

    index: int
    probability: float
    peak: Point

    def to_dict(self) -> dict[str, Any]:
        return {"class": self.index, "probability": self.probability, "peak": self.peak.to_dict()}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> DetectedClass:
        return cls(int(d["class"]), float(d["probability"]), Point.from_dict(d["peak"]))


@dataclass(frozen=True, slots=True)
class FrameRecord:
    """What ``avloc localize`` found in one analysed frame (module doc).

    ``peak``: the combined map's arg-max; ``onscreen`` / ``onscreen_confidence``: a heard source is visible and
    P(it is) (``None`` in visual-only mode; ``False`` / 0 when silent); ``boxes``: best first, empty when
    silent or off-screen. The optional fields are present only for methods that give them.
    """

    index: int
    time: float
    source_time: float
    audio_rms_db: float | None
    silent: bool
    peak: Point
    onscreen: bool | None
    onscreen_confidence: float | None
    boxes: tuple[Box, ...] = ()
    sources: tuple[Source, ...] | None = None
    speaker: Speaker | None = None
    faces: int | None = None
    grounded: bool | None = None
    onscreen_features: Mapping[str, float] | None = None
    classes: tuple[DetectedClass, ...] | None = None
    semantic: Mapping[str, Any] | None = None  # the old --audio-tagger mode's tags (schema: "semantic")

    @property
    def top_box(self) -> Box | None:
        return self.boxes[0] if self.boxes else None

    def heard(self) -> dict[str, float]:
        """Label -> score of the classes heard in this frame (sources, else the tagger's tags); best score kept."""
        if self.sources is not None:
            pairs = [(s.label, s.score) for s in self.sources]
        elif self.semantic is not None:
            pairs = [(str(a["label"]), float(a["score"])) for a in self.semantic.get("audioset", [])]
        else:
            pairs = []
        out: dict[str, float] = {}
        for label, score in pairs:
            out[label] = max(out.get(label, 0.0), score)
        return out

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {
            "index": self.index, "time": self.time, "source_time": self.source_time,
            "audio_rms_db": self.audio_rms_db, "silent": self.silent, "peak": self.peak.to_dict(),
            "onscreen": self.onscreen, "onscreen_confidence": self.onscreen_confidence,
            "boxes": [b.to_dict() for b in self.boxes],
        }
        if self.sources is not None:
            d["sources"] = [s.to_dict() for s in self.sources]
        if self.speaker is not None or self.sources is not None:
            d["speaker"] = None if self.speaker is None else self.speaker.to_dict()
        for k in ("faces", "grounded"):
            if getattr(self, k) is not None:
                d[k] = getattr(self, k)
        if self.onscreen_features is not None:
            d["onscreen_features"] = dict(self.onscreen_features)
        if self.classes is not None:
            d["classes"] = [c.to_dict() for c in self.classes]
        if self.semantic is not None:
            d["semantic"] = dict(self.semantic)
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> FrameRecord:
        sp = d.get("speaker")
        return cls(
            index=int(d["index"]), time=float(d["time"]), source_time=float(d["source_time"]),
            audio_rms_db=d["audio_rms_db"], silent=bool(d["silent"]), peak=Point.from_dict(d["peak"]),
            onscreen=d["onscreen"], onscreen_confidence=d["onscreen_confidence"],
            boxes=tuple(Box.from_dict(b) for b in d["boxes"]),
            sources=None if "sources" not in d else tuple(Source.from_dict(s) for s in d["sources"]),
            speaker=None if sp is None else Speaker.from_dict(sp),
            faces=d.get("faces"), grounded=d.get("grounded"), onscreen_features=d.get("onscreen_features"),
            classes=None if "classes" not in d else tuple(DetectedClass.from_dict(c) for c in d["classes"]),
            semantic=d.get("semantic"),
        )


@dataclass
class LocalizeDocument:
    """One ``NAME.avloc.json`` (module doc): the probe of the input, the model and configuration, the output
    file names (in the JSON's folder), the frames and a summary."""

    tool: dict[str, Any]
    created: str
    input: dict[str, Any]
    model: dict[str, Any]
    config: dict[str, Any]
    heatmap_size: dict[str, int]
    outputs: dict[str, str]
    frames: list[FrameRecord]
    summary: dict[str, Any]
    schema_version: str = SCHEMA_VERSION

    @property
    def times(self) -> list[float]:
        return [f.time for f in self.frames]

    @property
    def fps(self) -> float:
        return float(self.config["fps"])

    @property
    def duration(self) -> float:
        """Length of the video (s): the probed duration, else the last analysed frame's end."""
        d = float(self.input.get("duration") or 0.0)
        if d > 0:
            return d
        return self.frames[-1].time + 1.0 / self.fps if self.frames else 0.0

    def to_dict(self) -> dict[str, Any]:
        return {
            "schema_version": self.schema_version, "tool": self.tool, "created": self.created, "input": self.input,
            "model": self.model, "config": self.config, "heatmap_size": self.heatmap_size, "outputs": self.outputs,
            "frames": [f.to_dict() for f in self.frames], "summary": self.summary,
        }

    def to_json(self, indent: int | None = 1) -> str:
        return json.dumps(self.to_dict(), indent=indent, allow_nan=False)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], where: str = "document") -> LocalizeDocument:
        """Build the records of a document; raises :class:`DataError` when it breaks the schema."""
        errs = validate_document(d)
        if errs:
            more = f" (and {len(errs) - 1} more problem(s))" if len(errs) > 1 else ""
            raise DataError(f"{where}: does not match the avloc localize schema {SCHEMA_VERSION}: {errs[0]}{more}")
        return cls(
            tool=dict(d["tool"]), created=str(d["created"]), input=dict(d["input"]), model=dict(d["model"]),
            config=dict(d["config"]), heatmap_size=dict(d["heatmap_size"]), outputs=dict(d["outputs"]),
            frames=[FrameRecord.from_dict(f) for f in d["frames"]], summary=dict(d["summary"]),
            schema_version=str(d["schema_version"]),
        )


# --------------------------------------------------------------------------- the one reader and writer
def schema() -> dict[str, Any]:
    """The JSON Schema of ``NAME.avloc.json``."""
    from avloc.formats.jsonschema import load_schema

    return load_schema("avloc.formats", SCHEMA_FILE)


def validate_document(doc: Any) -> list[str]:
    """Every way ``doc`` breaks the schema (empty when it conforms), plus output names that leave the folder."""
    from avloc.formats.jsonschema import validate

    errs = validate(doc, schema())
    if not errs:
        errs = [f"$.outputs.{k}: {v!r} is not a file name in the output folder"
                for k, v in doc["outputs"].items() if Path(v).name != v or v in ("", ".", "..")]
    return errs


def read_document(path: str | Path) -> LocalizeDocument:
    """Read ``NAME.avloc.json``: strict JSON (no NaN, no infinities such as ``1e999``), schema-checked, typed.

    Raises :class:`DataError` naming the file and its first problem.
    """
    from avloc.formats.jsonschema import load_json_strict

    p = Path(path)
    try:
        doc = load_json_strict(p)
    except OSError as e:
        raise DataError(f"{p}: cannot read ({e.strerror or e})") from None
    except (ValueError, UnicodeDecodeError, RecursionError) as e:
        raise DataError(f"{p.name}: not valid JSON ({str(e)[:200]})") from None
    return LocalizeDocument.from_dict(doc, where=p.name)


def output_file(doc: LocalizeDocument, json_path: str | Path, kind: str) -> Path | None:
    """The ``kind`` output listed by the document at ``json_path`` (in its folder), or ``None`` if not listed."""
    name = doc.outputs.get(kind)
    return None if name is None else Path(json_path).parent / name


def write_document(doc: LocalizeDocument, path: str | Path) -> None:
    """Write ``doc`` to ``path`` (the caller makes it atomic: the output transaction's temporary file)."""
    Path(path).write_text(doc.to_json() + "\n", encoding="utf-8")


def _drop_none(d: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in d.items() if v is not None}
