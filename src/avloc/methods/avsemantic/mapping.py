"""The sound -> visible-thing map of the zero-shot semantic localizer (``sound_map.json``, version 2).

Every AudioSet class that YAMNet scores (Plakal & Ellis, 2020; ontology of
Gemmeke et al., ICASSP 2017) gets exactly one ``kind``:

* ``object``: ImageNet-1k classes whose class activation map (Zhou et al.,
  CVPR 2016) finds the sounding thing, and/or COCO-80 categories (Lin et al.,
  ECCV 2014) an object detector finds it as; a score vector over the AudioSet
  classes times :meth:`SoundMap.object_matrix` gives per-ImageNet-class weights;
* ``human``: a person, grounded by a face detector on ``region`` ``"face"``
  (vocal sounds) or ``"body"`` (hands, feet), and by the detector's ``person``;
* ``none``: nothing visible that ImageNet-1k names (music genres, weather,
  acoustic scenes, generic impacts); ``why`` says so, and the method falls back
  to a class-agnostic cue.

``offscreen_prior`` marks classes whose source is often not on screen
(narration, synthesised voices, broadcast audio). A parent entry with
``union_of`` must cover at least the ImageNet classes of the children it names.
How the file was built and how to review it: docs/localize.md, "Sound map".

:meth:`SoundMap.from_legacy_groups` rebuilds the old 42-group mapping
(:data:`LEGACY_MAPPING_FILE`) on top of the new human/none
entries, for the "old 42 groups" ablation.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

import avloc
from avloc.errors import ConfigError
from avloc.vision.detector import COCO_CLASSES as COCO_NAMES  # the detectors' label order

#: The shipped map, and the ImageNet-1k class names it is checked against.
DEFAULT_SOUND_MAP = Path(__file__).with_name("sound_map.json")
DEFAULT_IMAGENET_NAMES = Path(__file__).with_name("imagenet_classes.txt")
#: The old 42-group AudioSet -> ImageNet mapping (the "old 42 groups" ablation, ``mapping="legacy"``).
LEGACY_MAPPING_FILE = Path(__file__).with_name("audioset_to_imagenet.json")
#: YAMNet's class map (index, mid, display_name), shipped with avloc (Apache-2.0).
DEFAULT_CLASS_MAP = Path(avloc.__file__).parent / "zoo" / "yamnet_class_map.csv"

SOUND_MAP_VERSION = 2
#: ImageNet-1k, the classifier head the object CAMs use (EfficientNet-Lite0).
NUM_IMAGENET_CLASSES = 1000
#: ``SoundMap.kind`` holds indices into this tuple.
KINDS: tuple[str, ...] = ("object", "human", "none")
OBJECT, HUMAN, NONE = 0, 1, 2
REGIONS: tuple[str, ...] = ("face", "body")
_KEYS = {"audioset", "kind", "imagenet", "coco", "union_of", "region", "offscreen_prior", "why"}

ClassNames = Sequence[str] | str | Path | None


def read_class_map(path: str | Path = DEFAULT_CLASS_MAP) -> list[str]:
    """YAMNet's ``display_name`` column, in YAMNet's output order."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"YAMNet class map {p} not found (a CSV with a display_name column, e.g. yamnet_class_map.csv); "
                          "pass class_names= explicitly")
    with open(p, newline="") as f:
        reader = csv.DictReader(f)
        if reader.fieldnames is None or "display_name" not in reader.fieldnames:
            raise ConfigError(f"{p}: no display_name column (columns: {reader.fieldnames})")
        return [row["display_name"] for row in reader]


def read_imagenet_names(path: str | Path = DEFAULT_IMAGENET_NAMES) -> list[str]:
    """ImageNet-1k class names, one a line in index order; ``#`` lines are comments."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"ImageNet class names {p} not found (one name a line, standard index order)")
    return [line.strip() for line in p.read_text().splitlines() if line.strip() and not line.startswith("#")]


def _resolve_names(names: ClassNames, default: Path, reader: Any, what: str) -> list[str]:
    out = list(reader(default if names is None else names)) if names is None or isinstance(names, str | Path) else list(names)
    if not out:
        raise ConfigError(f"{what}: no class names")
    seen: set[str] = set()
    for n in out:
        if n in seen:
            raise ConfigError(f"{what}: class name {n!r} appears twice")
        seen.add(n)
    return out


@dataclass(frozen=True)
class SoundMap:
    """One entry per AudioSet class, in YAMNet order (module doc). Arrays are read-only."""

    audioset_names: list[str]
    kind: np.ndarray  # (A,) int8, indices into KINDS
    imagenet: list[tuple[int, ...]]  # per AudioSet class, sorted ImageNet indices (empty unless object)
    region: list[str | None]  # "face" / "body" for human classes, else None
    offscreen_prior: np.ndarray  # (A,) bool
    why: list[str | None]
    imagenet_names: list[str]  # (1000,)
    source: str = ""
    #: per AudioSet class, sorted COCO-80 label indices into :data:`COCO_NAMES` (object and human classes)
    coco: list[tuple[int, ...]] = field(default_factory=list)

    def __post_init__(self) -> None:
        a = len(self.audioset_names)
        if self.kind.shape != (a,) or self.offscreen_prior.shape != (a,) or not (len(self.imagenet) == len(self.region) == len(self.why) == a):
            raise ValueError(f"SoundMap: per-class fields must all have {a} entries")
        for arr in (self.kind, self.offscreen_prior):
            arr.flags.writeable = False
        if not self.coco:
            object.__setattr__(self, "coco", [()] * a)
        if len(self.coco) != a:
            raise ValueError(f"SoundMap: coco must have {a} entries")
        for i, idx in enumerate(self.imagenet):
            if bool(idx) and self.kind[i] != OBJECT:
                raise ValueError(f"SoundMap: {self.audioset_names[i]!r}: only object classes list ImageNet classes")
            if self.kind[i] == OBJECT and not (idx or self.coco[i]):
                raise ValueError(f"SoundMap: {self.audioset_names[i]!r}: an object class lists ImageNet or COCO classes")
            if any(not 0 <= j < len(self.imagenet_names) for j in idx):
                raise ValueError(f"SoundMap: {self.audioset_names[i]!r}: ImageNet index out of range")

    @property
    def is_object(self) -> np.ndarray:
        return np.asarray(self.kind == OBJECT)  # (A,) bool

    @property
    def is_human(self) -> np.ndarray:
        return np.asarray(self.kind == HUMAN)  # (A,) bool

    @property
    def is_none(self) -> np.ndarray:
        return np.asarray(self.kind == NONE)  # (A,) bool

    @property
    def kind_names(self) -> list[str]:
        return [KINDS[int(k)] for k in self.kind]

    def index(self, name: str) -> int:
        """YAMNet index of AudioSet class ``name``."""
        try:
            return self.audioset_names.index(name)
        except ValueError:
            raise ConfigError(f"unknown AudioSet class {name!r} (not in the YAMNet class map)") from None

    def counts(self) -> dict[str, int]:
        return {k: int((self.kind == i).sum()) for i, k in enumerate(KINDS)}

    def object_matrix(self, dtype: Any = np.float32) -> np.ndarray:
        """(A, 1000): row i is 1/len over class i's ImageNet indices (all zero unless object).

        ``scores (A,) @ object_matrix()`` -> (1000,) ImageNet class weights: each
        AudioSet class's score shared evenly over its ImageNet classes.
        """
        m = np.zeros((len(self.audioset_names), len(self.imagenet_names)), dtype=dtype)
        for i, idx in enumerate(self.imagenet):
            if idx:
                m[i, list(idx)] = 1.0 / len(idx)
        return m

    @classmethod
    def from_legacy_groups(cls, legacy_path: str | Path, sound_map_path: str | Path = DEFAULT_SOUND_MAP,
                           class_names: ClassNames = None, imagenet_names: ClassNames = None) -> SoundMap:
        """The "old 42 groups" ablation: the legacy file's groups as the only object classes.

        Classes named in the legacy groups (:data:`LEGACY_MAPPING_FILE`,
        read by its own loader) become ``object`` with the legacy ImageNet classes,
        whatever the new map says; every other class the new map calls ``object``
        becomes ``none``; the new map's ``human`` and ``none`` entries are kept.
        """
        new = load_sound_map(sound_map_path, class_names=class_names, imagenet_names=imagenet_names)
        legacy, _unmapped = load_legacy_mapping(Path(legacy_path), new.audioset_names)
        kind = new.kind.copy()
        imagenet = list(new.imagenet)
        region = list(new.region)
        off = new.offscreen_prior.copy()
        why = list(new.why)
        for i, name in enumerate(new.audioset_names):
            if name in legacy:
                idx = tuple(sorted({j for j, _label in legacy[name]}))
                bad = [j for j in idx if not 0 <= j < len(new.imagenet_names)]
                if bad:
                    raise ConfigError(f"{legacy_path}: AudioSet class {name!r}: ImageNet index {bad[0]} is not in 0..{len(new.imagenet_names) - 1}")
                kind[i], imagenet[i], region[i], off[i] = OBJECT, idx, None, False
                why[i] = "old 42-group mapping"
            elif kind[i] == OBJECT:
                kind[i], imagenet[i], why[i] = NONE, (), "not in the old 42 groups"
        coco = [c if kind[i] != NONE else () for i, c in enumerate(new.coco)]
        return cls(new.audioset_names, kind, imagenet, region, off, why, new.imagenet_names,
                   source=f"{legacy_path} (legacy groups) + {new.source}", coco=coco)


def _ranges(path: Path, where: str, value: Any, names: list[str]) -> tuple[int, ...]:
    """``[[first, last(, label)], ...]`` -> sorted ImageNet indices; labels checked against ``names``."""
    if not isinstance(value, list) or not value:
        raise ConfigError(f"{path}: {where}: 'imagenet' must be a non-empty list of [first, last, label] ranges")
    out: set[int] = set()
    for r in value:
        if not (isinstance(r, list) and len(r) in (2, 3) and all(isinstance(x, int) and not isinstance(x, bool) for x in r[:2])):
            raise ConfigError(f"{path}: {where}: ImageNet range {r!r} is not [first, last] or [first, last, label]")
        first, last = r[0], r[1]
        if not 0 <= first <= last < len(names):
            raise ConfigError(f"{path}: {where}: ImageNet range {r!r}: index not in 0..{len(names) - 1} or first > last")
        if len(r) == 3:
            label = r[2]
            if not isinstance(label, str):
                raise ConfigError(f"{path}: {where}: ImageNet range {r!r}: the label must be a string")
            ok = label == names[first] if first == last else (names[first] in label and names[last] in label)
            if not ok:
                want = repr(names[first]) if first == last else f"both {names[first]!r} and {names[last]!r}"
                raise ConfigError(f"{path}: {where}: ImageNet range {r!r}: label {label!r} should name {want} "
                                  "(wrong index or wrong label?)")
        span = set(range(first, last + 1))
        if out & span:
            raise ConfigError(f"{path}: {where}: ImageNet index {min(out & span)} is listed twice")
        out |= span
    return tuple(sorted(out))


def load_sound_map(path: str | Path = DEFAULT_SOUND_MAP, class_names: ClassNames = None,
                   imagenet_names: ClassNames = None) -> SoundMap:
    """Read and validate ``sound_map.json`` (module doc).

    ``class_names``: YAMNet's class names in output order, or a class-map CSV
    (default :data:`DEFAULT_CLASS_MAP`); every one must be covered exactly once.
    ``imagenet_names``: the 1000 ImageNet-1k names, or a file of them (default
    :data:`DEFAULT_IMAGENET_NAMES`). Any problem is a :class:`ConfigError` naming the entry.
    """
    p = Path(path)
    audioset = _resolve_names(class_names, DEFAULT_CLASS_MAP, read_class_map, "YAMNet class names")
    inet = _resolve_names(imagenet_names, DEFAULT_IMAGENET_NAMES, read_imagenet_names, "ImageNet class names")
    if len(inet) != NUM_IMAGENET_CLASSES:
        raise ConfigError(f"ImageNet class names: {len(inet)} names, ImageNet-1k has {NUM_IMAGENET_CLASSES}")
    if not p.is_file():
        raise ConfigError(f"sound map {p} not found")
    try:
        doc = json.loads(p.read_text())
    except json.JSONDecodeError as err:
        raise ConfigError(f"{p}: not valid JSON ({err})") from None
    if not isinstance(doc, dict) or doc.get("version") != SOUND_MAP_VERSION or not isinstance(doc.get("classes"), list):
        raise ConfigError(f"{p}: expected {{'version': {SOUND_MAP_VERSION}, 'classes': [...]}} "
                          "(the old 42-group file loads with SoundMap.from_legacy_groups)")
    position = {n: i for i, n in enumerate(audioset)}
    entries: dict[int, _Entry] = {}
    for k, e in enumerate(doc["classes"]):
        where = f"classes[{k}] ({e.get('audioset')!r})" if isinstance(e, dict) else f"classes[{k}]"
        entry = _entry(p, where, e, position, inet)
        if entry.index in entries:
            raise ConfigError(f"{p}: {where}: AudioSet class {audioset[entry.index]!r} appears twice")
        entries[entry.index] = entry
    missing = [n for n in audioset if position[n] not in entries]
    if missing:
        raise ConfigError(f"{p}: {len(missing)} YAMNet classes are not covered, e.g. {missing[:5]} "
                          "(every class needs an entry: object, human or none)")
    rows = [entries[i] for i in range(len(audioset))]
    _check_unions(p, rows, position, inet)
    return SoundMap(audioset, np.array([r.kind for r in rows], np.int8), [r.imagenet for r in rows],
                    [r.region for r in rows], np.array([r.offscreen for r in rows], bool), [r.why for r in rows],
                    inet, source=str(p), coco=[r.coco for r in rows])


@dataclass
class _Entry:
    """One checked entry of ``sound_map.json``."""

    index: int
    where: str
    kind: int
    imagenet: tuple[int, ...]
    coco: tuple[int, ...]
    region: str | None
    offscreen: bool
    why: str | None
    union_of: list[Any] | None


def _entry(p: Path, where: str, e: Any, position: dict[str, int], inet: list[str]) -> _Entry:
    """Check one entry of the map (module doc) -> :class:`_Entry`."""
    if not isinstance(e, dict) or not isinstance(e.get("audioset"), str):
        raise ConfigError(f"{p}: {where}: an entry needs an 'audioset' class name")
    name = e["audioset"]
    if name not in position:
        raise ConfigError(f"{p}: {where}: AudioSet class {name!r} is not in the YAMNet class map")
    extra = set(e) - _KEYS
    if extra:
        raise ConfigError(f"{p}: {where}: unknown keys {sorted(extra)} (allowed: {sorted(_KEYS)})")
    kname = e.get("kind")
    if kname not in KINDS:
        raise ConfigError(f"{p}: {where}: kind {kname!r} is not one of {list(KINDS)}")
    coco = _coco(p, where, e["coco"], kname) if "coco" in e else ()
    imagenet: tuple[int, ...] = ()
    union = None
    if kname == "object":
        if "imagenet" in e or not coco:
            imagenet = _ranges(p, where, e.get("imagenet"), inet)
        if "union_of" in e:
            if not isinstance(e["union_of"], list) or not e["union_of"]:
                raise ConfigError(f"{p}: {where}: 'union_of' must be a non-empty list of AudioSet class names")
            union = e["union_of"]
    for key in ("imagenet", "union_of"):
        if kname != "object" and key in e:
            raise ConfigError(f"{p}: {where}: {key!r} is only for kind 'object', not {kname!r}")
    if kname == "human" and e.get("region") not in REGIONS:
        raise ConfigError(f"{p}: {where}: a human class needs region one of {list(REGIONS)}, not {e.get('region')!r}")
    if kname != "human" and "region" in e:
        raise ConfigError(f"{p}: {where}: 'region' is only for kind 'human'")
    if kname == "none" and not (isinstance(e.get("why"), str) and e["why"].strip()):
        raise ConfigError(f"{p}: {where}: a 'none' class needs a short 'why' (why nothing visible makes it)")
    if "why" in e and not isinstance(e["why"], str):
        raise ConfigError(f"{p}: {where}: 'why' must be a string")
    off = e.get("offscreen_prior", False)
    if not isinstance(off, bool):
        raise ConfigError(f"{p}: {where}: 'offscreen_prior' must be true or false")
    return _Entry(position[name], where, KINDS.index(kname), imagenet, coco, e.get("region"), off, e.get("why"), union)


def _check_unions(p: Path, rows: list[_Entry], position: dict[str, int], inet: list[str]) -> None:
    """A parent with ``union_of`` covers at least the ImageNet classes of every child it names (object ones)."""
    for r in rows:
        mine = set(r.imagenet)
        for c in r.union_of or ():
            if not isinstance(c, str) or c not in position:
                raise ConfigError(f"{p}: {r.where}: union_of names {c!r}, which is not in the YAMNet class map")
            child = rows[position[c]]
            if child.kind != OBJECT:
                raise ConfigError(f"{p}: {r.where}: union_of names {c!r}, which is {KINDS[child.kind]!r}, not 'object'")
            lost = sorted(set(child.imagenet) - mine)
            if lost:
                raise ConfigError(f"{p}: {r.where}: does not cover its child {c!r}: ImageNet {lost[:5]} "
                                  f"({', '.join(inet[x] for x in lost[:5])}) missing")


def _coco(path: Path, where: str, value: Any, kind: str) -> tuple[int, ...]:
    """``["dog", ...]`` -> sorted indices into :data:`COCO_NAMES` (object and human classes only)."""
    if kind == "none":
        raise ConfigError(f"{path}: {where}: 'coco' is only for kinds 'object' and 'human'")
    if not isinstance(value, list) or not value or not all(isinstance(v, str) for v in value):
        raise ConfigError(f"{path}: {where}: 'coco' must be a non-empty list of COCO category names")
    bad = [v for v in value if v not in COCO_NAMES]
    if bad:
        raise ConfigError(f"{path}: {where}: {bad[0]!r} is not a COCO-80 category name")
    if len(set(value)) != len(value):
        raise ConfigError(f"{path}: {where}: a COCO category is listed twice")
    return tuple(sorted(COCO_NAMES.index(v) for v in value))


def load_legacy_mapping(path: Path, class_names: list[str]) -> tuple[dict[str, list[tuple[int, str]]], dict[str, str]]:
    """The old 42-group file: AudioSet display name -> [(ImageNet index, label)], and its unmapped notes; every
    name must exist in YAMNet's class map."""
    doc = json.loads(Path(path).read_text())
    known = set(class_names)
    out: dict[str, list[tuple[int, str]]] = {}
    for g in doc["groups"]:
        classes = [(i, label) for first, last, label in g["imagenet"] for i in range(int(first), int(last) + 1)]
        for name in g["audioset"]:
            if name not in known:
                raise ConfigError(f"{path}: AudioSet class {name!r} (group {g['name']!r}) is not in YAMNet's class map")
            out.setdefault(name, []).extend(classes)
    return out, dict(doc.get("unmapped", {}))
