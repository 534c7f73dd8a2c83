"""Optional pre-extraction: a manifest of clips -> frames at the training size and audio at the model rate.

Decoding an mp4 per sample (seek, decode a frame, decode and resample the
whole audio track) is what limits a data loader on clips (measured in
docs/BENCHMARKS.md, ``bench/speed/loader.py``). :func:`extract` does it once:
for every video entry it writes the frame at the entry's ``time``, resized so
its short side is ``size`` (aspect kept, so ``crop`` / ``squash`` / ``pad`` still
apply at load time), as ``frames/<id>.jpg`` and the audio track at
``sample_rate`` as ``audio/<id>.wav`` (float32), and a new manifest whose
entries point at them (``audio_time`` keeps the window centred on the frame;
pixel boxes are scaled with the frame). Image entries are copied with their
paths re-based. Unreadable clips are reported, never skipped silently.

``format="shards"`` stores the model inputs themselves in tar shards instead,
for large sets (:mod:`avloc.data.prepare.shards`).
"""

from __future__ import annotations

import logging
import os
import re
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from avloc.errors import DataError, MediaError, describe_error
from avloc.formats.atomic import check_writable, write_text_atomic
from avloc.formats.manifest import Entry, read_manifest, resolve_media, write_manifest

if TYPE_CHECKING:
    from avloc.data.prepare.shards import ShardConfig

log = logging.getLogger(__name__)
#: JPEG quality of the extracted frames (visually lossless at 224)
JPEG_QUALITY = 95


def decode_pool(workers: int, **kwargs: Any) -> ProcessPoolExecutor:
    """Worker processes for decoding, started fresh (``spawn``), not forked: a process forked from one that has
    decoded video with PyAV can hang in its first ``to_ndarray`` (FFmpeg's scaler waits on the parent's threads)."""
    import multiprocessing

    return ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"), **kwargs)


@dataclass
class ExtractResult:
    manifest: Path
    report: Path
    n_written: int
    problems: dict[str, str] = field(default_factory=dict)

    def summary(self) -> str:
        return (f"extracted {self.n_written} entries to {self.manifest}; {len(self.problems)} unreadable "
                f"reported in {self.report}")


def _safe(sid: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]", "_", sid)


def _rel(p: Path, out_dir: Path) -> str:
    return os.path.relpath(p.resolve(), out_dir.resolve())


def _one(args: tuple[Entry, str, str, int, int]) -> tuple[str, Entry | None, str]:
    """Extract one entry (runs in a worker process): (id, new entry or None, problem)."""
    from PIL import Image

    from avloc.data.datasets import read_frame_at
    from avloc.formats.atomic import atomic_path
    from avloc.io.audio import load_audio, write_wav

    e, manifest, out_dir, size, rate = args
    man, out = Path(manifest), Path(out_dir)
    sid = str(e["id"])
    new = dict(e)
    try:
        if "video" in e:
            frame = read_frame_at(resolve_media(man, e["video"]), float(e["time"]))  # (H, W, 3) uint8
            h, w = frame.shape[:2]
            s = size / min(h, w)
            nw, nh = max(1, round(w * s)), max(1, round(h * s))
            img = Image.fromarray(frame).resize((nw, nh), Image.Resampling.BILINEAR, reducing_gap=None)
            fp = out / "frames" / f"{_safe(sid)}.jpg"
            with atomic_path(fp) as tmp:
                img.save(tmp, format="JPEG", quality=JPEG_QUALITY)
            wav, _ = load_audio(resolve_media(man, e.get("audio") or e["video"]), rate)
            ap = out / "audio" / f"{_safe(sid)}.wav"
            write_wav(ap, np.asarray(wav, dtype=np.float32), rate, subtype="FLOAT")
            del new["video"]
            new.update(image=_rel(fp, out), audio=_rel(ap, out), size=[nw, nh], audio_time=float(e["time"]))
            sx, sy = nw / w, nh / h
            for key in ("boxes", "silent_boxes"):
                if key in e:
                    new[key] = [[round(b[0] * sx, 3), round(b[1] * sy, 3), round(b[2] * sx, 3), round(b[3] * sy, 3)]
                                for b in e[key]]
        else:
            for key in ("image", "audio"):
                if key in e:
                    new[key] = _rel(resolve_media(man, e[key]), out)
    except (MediaError, DataError, OSError) as err:
        return sid, None, describe_error(err) or str(err)
    return sid, new, ""


def extract(
    manifest: str | Path, out_dir: str | Path, *, size: int = 224, sample_rate: int = 16000, workers: int = 1,
    force: bool = False, format: Literal["files", "shards"] = "files", shards: ShardConfig | None = None,
) -> ExtractResult:
    """Pre-extract ``manifest`` into ``out_dir``: ``format="files"`` writes ``manifest.jsonl``, ``frames/``,
    ``audio/`` (module doc); ``"shards"`` a shard set of model inputs (:mod:`avloc.data.prepare.shards`)."""
    if size < 1 or sample_rate < 1 or workers < 1:
        raise DataError(f"--size, --sample-rate and --workers must be positive, got {size}, {sample_rate}, {workers}")
    if format == "shards":
        from avloc.data.prepare.shards import ShardConfig, extract_shards

        return extract_shards(manifest, out_dir, size=size, sample_rate=sample_rate, workers=workers, force=force,
                              cfg=shards or ShardConfig())
    if format != "files":
        raise DataError(f"--format must be files or shards, got {format!r}")
    entries = read_manifest(manifest)
    out = Path(out_dir)
    out_man, report = out / "manifest.jsonl", out / "manifest.jsonl.report.txt"
    check_writable(out_man, force)
    check_writable(report, force)
    for sub in ("frames", "audio"):
        (out / sub).mkdir(parents=True, exist_ok=True)
    jobs = [(e, str(manifest), str(out), size, sample_rate) for e in entries]
    if workers > 1:
        with decode_pool(workers) as pool:
            results = list(pool.map(_one, jobs, chunksize=8))
    else:
        results = [_one(j) for j in jobs]
    good: list[Any] = [r[1] for r in results if r[1] is not None]
    problems = {sid: msg for sid, e, msg in results if e is None}
    if not good:
        raise DataError(f"no entry of {manifest} could be extracted; first problem: {next(iter(problems.values()), '-')}")
    n = write_manifest(out_man, good)
    lines = [f"{k}: unreadable: {v}" for k, v in problems.items()]
    write_text_atomic(report, f"{len(problems)} bad entries\n" + "".join(f"{x}\n" for x in lines))
    log.info("extracted %d entries (%d unreadable) to %s", n, len(problems), out)
    return ExtractResult(out_man, report, n, problems)
