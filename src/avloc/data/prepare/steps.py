"""The prepare steps (see :mod:`avloc.data.prepare` for the layouts)."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from avloc.errors import DataError, MediaError, describe_error
from avloc.formats import annotations as ann
from avloc.formats.atomic import check_writable, write_text_atomic
from avloc.formats.manifest import Entry, entry_problems, write_manifest
from avloc.metrics.groundtruth import flickr_targets

AUDIO_EXTS = (".wav", ".flac", ".mp3", ".ogg")
VIDEO_EXTS = (".mp4", ".mov", ".mkv", ".webm", ".avi")
IMAGE_EXTS = (".jpg", ".jpeg", ".png")

Candidate = tuple[str, Entry | None, list[str]]  # (id, entry, problems)


@dataclass
class PrepareResult:
    manifest: Path
    report: Path
    n_written: int
    problems: dict[str, list[str]] = field(default_factory=dict)

    def kinds(self) -> dict[str, int]:
        """Bad entries by kind (the ``missing:`` / ``unreadable:`` / ``mismatched:`` prefix of their first problem)."""
        out: dict[str, int] = {}
        for probs in self.problems.values():
            head = probs[0].split(":", 1)[0] if probs else ""
            kind = head if head in ("missing", "unreadable", "mismatched") else "invalid"
            out[kind] = out.get(kind, 0) + 1
        return out

    def summary(self) -> str:
        bad = len(self.problems)
        kinds = ", ".join(f"{k} {v}" for k, v in sorted(self.kinds().items()))
        return (f"wrote {self.n_written} entries to {self.manifest}; {bad} bad entries"
                f"{f' ({kinds})' if kinds else ''} reported in {self.report}")


def _image_size(path: Path) -> list[int]:
    from PIL import Image

    try:
        with Image.open(path) as im:
            return [int(im.width), int(im.height)]
    except OSError as e:
        raise MediaError(f"{path}: unreadable image ({e})") from None


def _video_info(path: Path) -> Any:
    from avloc.io.media import probe

    return probe(path)


def _find(folder: Path, stem: str, exts: tuple[str, ...]) -> Path | None:
    for e in exts:
        p = folder / f"{stem}{e}"
        if p.is_file():
            return p
    return None


def _rel(p: Path, out_dir: Path) -> str:
    return os.path.relpath(p.resolve(), out_dir.resolve())


def _scale(boxes: list[list[float]], sx: float, sy: float) -> list[list[float]]:
    return [[round(b[0] * sx, 3), round(b[1] * sy, 3), round(b[2] * sx, 3), round(b[3] * sy, 3)] for b in boxes]


def _frame_sample(
    sid: str, root: Path, out_dir: Path, boxes_norm: list[list[float]], need_boxes: bool, extra: dict[str, Any]
) -> Candidate:
    """An image + audio sample: boxes given normalised to [0, 1], written in pixels of the frame."""
    problems: list[str] = []
    img = _find(root / "frames", sid, IMAGE_EXTS)
    aud = _find(root / "audio", sid, AUDIO_EXTS)
    vid = _find(root / "video", sid, VIDEO_EXTS)
    if img is None and vid is None:
        problems.append(f"no frame frames/{sid}.jpg (or video/{sid}.mp4)")
    if aud is None and vid is None:
        problems.append(f"no audio audio/{sid}.wav (or video/{sid}.mp4)")
    if need_boxes and not boxes_norm:
        problems.append("empty box list")
    if problems:
        return sid, None, problems
    entry: Entry = {"id": sid, **extra}
    try:
        if img is not None:
            w, h = _image_size(img)
            entry["image"] = _rel(img, out_dir)
        else:
            assert vid is not None
            info = _video_info(vid)
            if not info.has_video or info.duration is None:
                return sid, None, [f"{vid.name} has no video stream"]
            w, h = int(info.width), int(info.height)
            entry["video"] = _rel(vid, out_dir)
            entry["time"] = round(info.duration / 2, 3)  # the annotated (middle) frame
        entry["audio"] = _rel(aud if aud is not None else vid, out_dir)  # type: ignore[arg-type]
    except (MediaError, OSError) as e:  # per-entry isolation: an unreadable file is one bad entry
        return sid, None, [describe_error(e) or str(e)]
    entry["size"] = [w, h]
    entry["boxes"] = _scale(boxes_norm, w, h)
    return sid, entry, []


def _flickr(root: Path, out_dir: Path) -> Iterator[Candidate]:
    adir = root / "Annotations"
    if not adir.is_dir():
        raise DataError(f"{root} has no Annotations/ folder of Flickr-SoundNet XMLs")
    from avloc.io.outputs import is_temporary_name

    for xml in sorted(x for x in adir.glob("*.xml") if not is_temporary_name(x.name)):
        try:
            rec = ann.parse_flickr_xml(xml)
        except DataError as e:
            yield xml.stem, None, [str(e)]
            continue
        (t,) = flickr_targets([rec])
        yield _frame_sample(rec["id"], root, out_dir, t["boxes"], True, {"box_annotator": rec["box_annotator"], "split": "test"})


def _vggss(root: Path, out_dir: Path) -> Iterator[Candidate]:
    js = root / "vggss.json"
    for rec in ann.load_vggss_json(js):
        extra = {"class": rec["class"], "split": "test"}
        sid, entry, problems = _frame_sample(rec["id"], root, out_dir, rec["boxes"], True, extra)
        if entry is not None:
            problems = [p for p in ann.vggss_problems([rec])]
        yield sid, entry if not problems else None, problems


def _music(root: Path, out_dir: Path) -> Iterator[Candidate]:
    for rec in ann.load_music_json(root / "music.json"):
        extra: dict[str, Any] = {k: rec[k] for k in ("box_labels", "labels", "silent_labels") if k in rec}
        sid, entry, problems = _frame_sample(rec["id"], root, out_dir, rec["boxes"], True, extra)
        if entry is not None and rec.get("silent_boxes"):
            w, h = entry["size"]
            entry["silent_boxes"] = _scale(rec["silent_boxes"], w, h)
        yield sid, entry, problems


def _avsol(root: Path, out_dir: Path) -> Iterator[Candidate]:
    frames = ann.load_avsol_json(root / "avsol.json")
    by_video: dict[str, list[dict[str, Any]]] = {}
    for f in frames:
        by_video.setdefault(f["video"], []).append(f)
    for vid, frs in by_video.items():
        path = _find(root / "videos", vid, VIDEO_EXTS)
        if path is None:
            yield vid, None, [f"no video videos/{vid}.mp4"]
            continue
        try:
            info = _video_info(path)
        except (MediaError, OSError) as e:
            yield vid, None, [describe_error(e) or str(e)]
            continue
        w, h = int(info.width or 0), int(info.height or 0)
        if not (w and h and info.has_audio):
            yield vid, None, [f"{path.name} needs a video and an audio stream"]
            continue
        late = [f["time"] for f in frs if info.duration is not None and f["time"] > info.duration]
        if late:
            yield vid, None, [f"annotated frames after the end of the video ({info.duration:.2f} s): {late[:3]}"]
            continue
        entry = {
            "id": vid,
            "video": _rel(path, out_dir),
            "audio": _rel(path, out_dir),
            "size": [w, h],
            "split": "test",
            "frames": [
                {
                    "time": f["time"],
                    "boxes": _scale(f["boxes"], w, h),
                    "silent_boxes": _scale(f["silent_boxes"], w, h),
                    "out_of_view": f["out_of_view"],
                }
                for f in frs
            ],
        }
        yield vid, entry, []


def _folder(root: Path, out_dir: Path) -> Iterator[Candidate]:
    from avloc.io.outputs import is_temporary_name

    # hidden and temporary names (a killed run's `.NAME.avloc-tmp-*/`, editors' `~`, downloads' `.part`) are not samples
    files = sorted(
        p for p in root.rglob("*")
        if p.suffix.lower() in VIDEO_EXTS
        and not any(is_temporary_name(part) for part in p.relative_to(root).parts)
        and p.is_file()
    )
    if not files:
        raise DataError(f"no videos ({', '.join(VIDEO_EXTS)}) under {root}")
    for p in files:
        sid = p.relative_to(root).with_suffix("").as_posix().replace("/", "__")
        try:
            info = _video_info(p)
        except (MediaError, OSError) as e:
            yield sid, None, [describe_error(e) or str(e)]
            continue
        missing = [s for s, ok in (("video", info.has_video), ("audio", info.has_audio)) if not ok]
        if missing or not info.duration:
            yield sid, None, [f"{p.name}: no {' or '.join(missing) or 'duration'}"]
            continue
        yield sid, {
            "id": sid,
            "video": _rel(p, out_dir),
            "audio": _rel(p, out_dir),
            "size": [int(info.width), int(info.height)],
            "duration": round(float(info.duration), 3),
            "split": "train",
        }, []


STEPS: dict[str, Callable[[Path, Path], Iterator[Candidate]]] = {
    "flickr": _flickr,
    "vggss": _vggss,
    "music": _music,
    "avsol": _avsol,
    "folder": _folder,
}


def prepare(fmt: str, root: str | Path, out: str | Path, force: bool = False) -> PrepareResult:
    """Run the ``fmt`` step on ``root``; write ``out`` (jsonl) and ``<out>.report.txt``."""
    if fmt not in STEPS:
        raise DataError(f"unknown prepare format {fmt!r}; valid: {', '.join(sorted(STEPS))}")
    root_p, out_p = Path(root), Path(out)
    if not root_p.is_dir():
        raise DataError(f"dataset folder not found: {root_p}")
    if out_p.is_dir():
        raise DataError(f"--out {out_p} is a folder: give the manifest's file path, e.g. {out_p / 'manifest.jsonl'}")
    report = out_p.with_name(out_p.name + ".report.txt")
    if report.is_dir():
        raise DataError(f"{report} (the report of --out {out_p}) is a folder: remove it or choose another --out")
    check_writable(out_p, force)
    check_writable(report, force)
    entries: list[Entry] = []
    problems: dict[str, list[str]] = {}
    seen: set[str] = set()
    for sid, entry, probs in STEPS[fmt](root_p, out_p.parent):
        if entry is not None and not probs:
            probs = entry_problems(entry)
        if sid in seen:
            probs = [*probs, "duplicate id"]
        seen.add(sid)
        if probs or entry is None:
            problems[sid] = probs or ["invalid entry"]
        else:
            entries.append(entry)
    if not entries:
        lines = [f"{k}: {'; '.join(v)}" for k, v in problems.items()]
        write_text_atomic(report, "\n".join(lines) + "\n")
        raise DataError(f"no valid entries in {root_p} for format {fmt}; see {report}")
    n = write_manifest(out_p, entries)
    res = PrepareResult(out_p, report, n, problems)
    lines = [f"{k}: {'; '.join(v)}" for k, v in problems.items()]
    kinds = ", ".join(f"{k} {v}" for k, v in sorted(res.kinds().items()))
    head = f"{len(problems)} bad entries" + (f" ({kinds})" if kinds else "")
    write_text_atomic(report, (head + "\n" + "\n".join(lines) + "\n") if lines else "0 bad entries\n")
    return res
