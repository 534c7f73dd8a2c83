"""``prepare`` steps for the training sets as people have them on disk: VGG-Sound, Flickr-SoundNet, MUSIC, AVE.

Each step accepts a folder of clips (``*.mp4`` etc. anywhere below ``root``,
hidden and temporary names skipped) or, for VGG-Sound and Flickr-SoundNet,
the extracted layout the public code trains on (``frames/<name>.jpg`` +
``audio/<name>.wav``, used when ``root/frames`` exists). When the dataset's own
index is in ``root`` it is read and every listed clip is accounted for.
Problems go to the report, each prefixed with its kind:

* ``missing``: listed in the index, no clip (or a frame without its audio);
* ``unreadable``: the file cannot be probed or lacks a video / audio stream;
* ``mismatched``: a name that does not follow the dataset's convention, a clip
  the index does not list, or an annotated segment beyond the clip's end.

=============== ============================== ============================================
format          clip names                     index (optional, in ``root``)
=============== ============================== ============================================
``vggsound``    ``<youtube_id>_<start>.mp4``    ``vggsound.csv``: ``ytid,start,label,split``
                (``start`` in s, any padding)
``flickr-train`` ``<flickr_id>.mp4`` (digits)   ``flickr_train.txt``: one id per line (e.g. EZ-VSL's
                                               ``flickr_10k.txt`` / ``flickr_144k.txt`` renamed)
``music-solo``  ``<instrument>/<youtube_id>.mp4`` ``MUSIC_solo_videos.json`` or ``MUSIC21_solo_videos.json``:
                                               ``{"videos": {instrument: [youtube_id, ...]}}``
``ave``         ``<video_id>.mp4``              ``Annotations.txt``: ``Category&VideoID&Quality&Start&End``;
                                               ``trainSet.txt`` / ``valSet.txt`` / ``testSet.txt`` give splits
=============== ============================== ============================================

Entries: ``video`` + ``audio`` (the clip), ``size``, ``duration``, ``time`` (the
middle of the clip, the frame the public code uses; AVE: the middle of the
annotated event), ``split`` and ``class`` where the index says; extracted
layouts give ``image`` + ``audio``.
"""

from __future__ import annotations

import csv
import json
import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from avloc.data.prepare.steps import (
    AUDIO_EXTS,
    IMAGE_EXTS,
    VIDEO_EXTS,
    Candidate,
    _find,
    _image_size,
    _rel,
    _video_info,
)
from avloc.errors import DataError, MediaError, describe_error
from avloc.formats.manifest import Entry

YOUTUBE_ID = r"[A-Za-z0-9_-]{11}"
VGGSOUND_NAME = re.compile(rf"^(?P<ytid>{YOUTUBE_ID})_(?P<start>\d+)(?:_\d+)?$")
FLICKR_NAME = re.compile(r"^\d+$")
MUSIC_NAME = re.compile(rf"^{YOUTUBE_ID}$")
AVE_NAME = re.compile(rf"^{YOUTUBE_ID}$")

Index = dict[str, dict[str, Any]]  # sample id -> fields the index gives (class, split, ...)


def _clips(root: Path, skip: tuple[str, ...] = ()) -> list[Path]:
    from avloc.io.outputs import is_temporary_name

    return sorted(
        p for p in root.rglob("*")
        if p.suffix.lower() in VIDEO_EXTS and p.is_file()
        and not any(is_temporary_name(part) or part.startswith(".") for part in p.relative_to(root).parts)
        and p.relative_to(root).parts[0] not in skip
    )


def _clip_entry(sid: str, path: Path, out_dir: Path, fields: dict[str, Any]) -> Candidate:
    """A clip (video + its audio track) as an entry; unreadable / stream-less clips are reported."""
    try:
        info = _video_info(path)
    except (MediaError, OSError) as e:
        return sid, None, [f"unreadable: {describe_error(e) or e}"]
    missing = [s for s, ok in (("video", info.has_video), ("audio", info.has_audio)) if not ok]
    if missing or not info.duration or not info.width:
        return sid, None, [f"unreadable: {path.name} has no {' or '.join(missing) or 'duration'} stream"]
    duration = float(info.duration)
    event = fields.pop("event", None)
    if event is not None and event[1] > duration + 1e-3:
        return sid, None, [f"mismatched: annotated event {event[0]:g}-{event[1]:g} s ends after the clip ({duration:.2f} s)"]
    entry: Entry = {
        "id": sid, "video": _rel(path, out_dir), "audio": _rel(path, out_dir), "size": [int(info.width), int(info.height)],
        "duration": round(duration, 3),
        "time": round((event[0] + event[1]) / 2 if event is not None else duration / 2, 3),
        "split": "train", **fields,
    }
    if event is not None:
        entry["event"] = [float(event[0]), float(event[1])]
    return sid, entry, []


def _pair_entry(sid: str, image: Path, audio: Path | None, out_dir: Path, fields: dict[str, Any]) -> Candidate:
    if audio is None:
        return sid, None, [f"missing: no audio/{sid}.wav for frames/{image.name}"]
    try:
        w, h = _image_size(image)
    except MediaError as e:
        return sid, None, [f"unreadable: {e}"]
    return sid, {"id": sid, "image": _rel(image, out_dir), "audio": _rel(audio, out_dir), "size": [w, h],
                 "split": "train", **fields}, []


def _walk(
    root: Path, out_dir: Path, name_re: re.Pattern[str], convention: str, index: Index | None,
    sid_of: Callable[[Path], str] = lambda p: p.stem, frames_ok: bool = False,
) -> Iterator[Candidate]:
    """Clips (or extracted frames + audio) below ``root``, checked against ``name_re`` and the ``index``."""
    seen: set[str] = set()
    if frames_ok and (root / "frames").is_dir():
        images = sorted(p for p in (root / "frames").iterdir() if p.suffix.lower() in IMAGE_EXTS and not p.name.startswith("."))
        items: list[tuple[str, Path]] = [(p.stem, p) for p in images]
        for p in sorted((root / "audio").iterdir()) if (root / "audio").is_dir() else []:
            if p.suffix.lower() in AUDIO_EXTS and _find(root / "frames", p.stem, IMAGE_EXTS) is None:
                yield p.stem, None, [f"missing: no frames/{p.stem}.jpg for audio/{p.name}"]
                seen.add(p.stem)
    else:
        items = [(sid_of(p), p) for p in _clips(root, skip=("frames", "audio"))]
        if not items and index is None:
            raise DataError(f"no clips ({', '.join(VIDEO_EXTS)}) or frames/ folder under {root}")
    for sid, path in items:
        seen.add(sid)
        if not name_re.match(sid.split("/")[-1]):
            yield sid, None, [f"mismatched: name {path.name!r} does not look like {convention}"]
            continue
        fields: dict[str, Any] = {}
        if index is not None:
            if sid not in index:
                yield sid, None, [f"mismatched: {path.name} is not listed in the dataset's index"]
                continue
            fields = dict(index[sid])
        if path.suffix.lower() in IMAGE_EXTS:
            yield _pair_entry(sid, path, _find(root / "audio", path.stem, AUDIO_EXTS), out_dir, fields)
        else:
            yield _clip_entry(sid, path, out_dir, fields)
    for sid in sorted(set(index or {}) - seen):
        yield sid, None, ["missing: listed in the dataset's index, no clip found"]


# ----------------------------------------------------------------------------- indexes


def _vggsound_index(root: Path) -> Index | None:
    p = root / "vggsound.csv"
    if not p.is_file():
        return None
    out: Index = {}
    with p.open(newline="", encoding="utf-8") as f:
        for i, row in enumerate(csv.reader(f), 1):
            if not row or (i == 1 and not row[1].strip().isdigit()):
                continue  # blank line or a header
            if len(row) < 4 or not row[1].strip().isdigit():
                raise DataError(f"{p}:{i}: expected 'youtube_id,start,label,split', got {','.join(row)!r}")
            ytid, start, label, split = (x.strip() for x in row[:4])
            out[f"{ytid}_{int(start):06d}"] = {"class": label, "split": split, "start": int(start)}
    return out


def _vggsound_sid(p: Path) -> str:
    m = VGGSOUND_NAME.match(p.stem)
    return f"{m['ytid']}_{int(m['start']):06d}" if m else p.stem  # `abc_30` and `abc_000030` are one clip


def _vggsound(root: Path, out_dir: Path) -> Iterator[Candidate]:
    yield from _walk(root, out_dir, VGGSOUND_NAME, "<youtube_id>_<start>", _vggsound_index(root), _vggsound_sid,
                     frames_ok=True)


def _flickr_train(root: Path, out_dir: Path) -> Iterator[Candidate]:
    p = root / "flickr_train.txt"
    index: Index | None = None
    if p.is_file():
        index = {line.strip(): {} for line in p.read_text(encoding="utf-8").splitlines() if line.strip()}
    yield from _walk(root, out_dir, FLICKR_NAME, "<flickr_id> (digits)", index, frames_ok=True)


def _music_solo(root: Path, out_dir: Path) -> Iterator[Candidate]:
    index: Index | None = None
    for name in ("MUSIC_solo_videos.json", "MUSIC21_solo_videos.json"):
        p = root / name
        if p.is_file():
            try:
                videos = json.loads(p.read_text(encoding="utf-8"))["videos"]
                index = {f"{inst}/{v}": {"class": inst} for inst, ids in videos.items() for v in ids}
            except (json.JSONDecodeError, KeyError, TypeError, AttributeError) as e:
                raise DataError(f"{p}: expected {{\"videos\": {{instrument: [youtube_id, ...]}}}} ({e})") from None
            break
    clips = _clips(root)
    flat = [c for c in clips if len(c.relative_to(root).parts) < 2]
    if flat and index is None:
        raise DataError(f"{root}: MUSIC clips must be in one folder per instrument (<instrument>/<youtube_id>.mp4); "
                        f"{flat[0].name} is not")

    def sid(p: Path) -> str:
        return f"{p.parent.name}/{p.stem}"

    for cand in _walk(root, out_dir, MUSIC_NAME, "<instrument>/<youtube_id>", index, sid):
        s, entry, _ = cand
        if entry is not None and index is None:
            entry["class"] = s.split("/")[0]
        yield cand


def _ave(root: Path, out_dir: Path) -> Iterator[Candidate]:
    ann = root / "Annotations.txt"
    if not ann.is_file():
        raise DataError(f"{root} has no Annotations.txt (AVE: Category&VideoID&Quality&StartTime&EndTime per line)")
    index: Index = {}
    for i, line in enumerate(ann.read_text(encoding="utf-8").splitlines(), 1):
        parts = line.strip().split("&")
        if not line.strip() or parts[0] == "Category":
            continue
        if len(parts) != 5:
            raise DataError(f"{ann}:{i}: expected Category&VideoID&Quality&StartTime&EndTime, got {line.strip()!r}")
        cat, vid, _quality, start, end = parts
        try:
            event = (float(start), float(end))
        except ValueError:
            raise DataError(f"{ann}:{i}: start/end must be seconds, got {start!r}, {end!r}") from None
        index[vid] = {"class": cat, "event": event, "split": "train"}
    for split, name in (("train", "trainSet.txt"), ("val", "valSet.txt"), ("test", "testSet.txt")):
        p = root / name
        if p.is_file():
            for line in p.read_text(encoding="utf-8").splitlines():
                parts = line.strip().split("&")
                if len(parts) == 5 and parts[1] in index:
                    index[parts[1]]["split"] = split
    yield from _walk(root, out_dir, AVE_NAME, "<video_id> (11 characters)", index)


TRAINING_STEPS: dict[str, Callable[[Path, Path], Iterator[Candidate]]] = {
    "vggsound": _vggsound,
    "flickr-train": _flickr_train,
    "music-solo": _music_solo,
    "ave": _ave,
}
