"""Write DigitScenes to disk: media files, a jsonl manifest, an optional contact sheet.

Layout under ``out``::

    {variant}_{split}.jsonl              the manifest (written atomically)
    {variant}_{split}.config.json        the resolved config and arguments
    {variant}_{split}_preview.png        contact sheet (``preview=True``)
    {variant}_{split}/images/{id}.png    frames (still variants)
    {variant}_{split}/audio/{id}.wav     16-bit PCM sound tracks
    {variant}_{split}/videos/{id}.mp4    H.264 + AAC clips (video variant)

Media paths in the manifest are relative to ``out``, so the manifest does not
depend on where it is written. Generation is deterministic per (variant,
split, count, seed, config); ``workers`` > 1 splits the indices over processes
without changing the output.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from avloc.config import config_to_dict
from avloc.data.digitscenes.config import VariantConfig, VideoConfig
from avloc.data.digitscenes.sampler import Clip, DigitScenesSampler, Sample
from avloc.data.sources import RawSources
from avloc.errors import ConfigError
from avloc.formats.atomic import atomic_path, check_writable, write_text_atomic
from avloc.formats.manifest import Entry, write_manifest
from avloc.io.audio import write_wav

GREEN = (0, 200, 0)
RED = (230, 30, 30)


def manifest_path(out: str | Path, variant: str, split: str) -> Path:
    return Path(out) / f"{variant}_{split}.jsonl"


def sample_id(variant: str, split: str, seed: int, i: int) -> str:
    return f"digitscenes-{variant}-{split}-s{seed}-{i:06d}"


def _write_wav(path: Path, audio: np.ndarray, sr: int) -> None:
    write_wav(path, audio, sr, subtype="PCM_16")


def _write_png(path: Path, image: np.ndarray) -> None:
    if not cv2.imwrite(str(path), cv2.cvtColor(image, cv2.COLOR_RGB2BGR)):
        raise OSError(f"cannot write {path}")


def still_entry(s: Sample, sid: str, folder: str, variant: str, split: str, seed: int) -> Entry:
    """Manifest entry of a still sample (media paths relative to the manifest folder)."""
    h, w = s.image.shape[:2]
    m = s.meta
    e: Entry = {
        "id": sid,
        "image": f"{folder}/images/{sid}.png",
        "audio": f"{folder}/audio/{sid}.wav",
        "size": [w, h],
        "boxes": s.boxes,
        "box_labels": s.box_labels,
        "silent_boxes": s.silent_boxes,
        "silent_labels": s.silent_labels,
        "labels": s.labels,
        "onscreen": s.onscreen,
        "audible": s.audible,
        "split": split,
        "speaker": s.speakers,
        "variant": variant,
        "seed": seed,
        "scene_index": s.scene_index,
        "sample_rate": s.sample_rate,
        "audio_seconds": round(s.audio.size / s.sample_rate, 6),
        "mode": m["mode"],
        "snr_db": m["snr_db"],
        "speech_spans": m["speech_spans"],
        "sources": {"fsdd": m["fsdd"], "mnist": m["mnist"], "cifar": m["cifar"], "esc10": m["esc10"]},
    }
    if "ambient_category" in m:
        e["ambient_category"] = m["ambient_category"]
    if "heard" in m:
        e["heard"] = m["heard"]
    return e


def clip_entry(c: Clip, sid: str, folder: str, split: str, seed: int, cfg: VideoConfig) -> Entry:
    """Manifest entry of a video clip with per-frame annotations (AVSOL-E style)."""
    h, w = c.scene.hw
    frames = [c.annotation(j) for j in cfg.annotated_frames()]
    return {
        "id": sid,
        "video": f"{folder}/videos/{sid}.mp4",
        "audio": f"{folder}/audio/{sid}.wav",
        "size": [w, h],
        "fps": c.fps,
        "duration": round(c.n_frames / c.fps, 6),
        "boxes": [],
        "silent_boxes": [],
        "labels": sorted({u["label"] for u in c.utterances}),
        "onscreen": any(f["onscreen"] for f in frames),
        "audible": True,
        "split": split,
        "speaker": c.speakers,
        "variant": "video",
        "seed": seed,
        "scene_index": c.index,
        "sample_rate": c.sample_rate,
        "snr_db": c.meta["snr_db"],
        "utterances": c.utterances,
        "frames": frames,
        "sources": {
            "fsdd": [u["fsdd"] for u in c.utterances],
            "mnist": c.meta["mnist"],
            "cifar": c.meta["cifar"],
            "esc10": c.meta["esc10"],
        },
        **({"ambient_category": c.meta["ambient_category"]} if "ambient_category" in c.meta else {}),
    }


class _Writer:
    """Draws and writes samples ``i`` (one per process when parallel)."""

    def __init__(self, raw: str, out: str, variant: str, split: str, seed: int, cfg: VariantConfig) -> None:
        self.sampler = DigitScenesSampler(RawSources(raw), variant, split, cfg, seed)
        self.out, self.variant, self.split, self.seed, self.cfg = Path(out), variant, split, seed, cfg
        self.folder = f"{variant}_{split}"

    def __call__(self, i: int) -> Entry:
        sid = sample_id(self.variant, self.split, self.seed, i)
        base = self.out / self.folder
        if isinstance(self.cfg, VideoConfig):
            from avloc.io.media import write_video

            c = self.sampler.clip(i)
            _write_wav(base / "audio" / f"{sid}.wav", c.audio, c.sample_rate)
            with atomic_path(base / "videos" / f"{sid}.mp4") as tmp:
                write_video(tmp, (c.frame(j) for j in range(c.n_frames)), c.fps, c.audio, c.sample_rate)
            return clip_entry(c, sid, self.folder, self.split, self.seed, self.cfg)
        s = self.sampler.sample(i)
        _write_png(base / "images" / f"{sid}.png", s.image)
        _write_wav(base / "audio" / f"{sid}.wav", s.audio, s.sample_rate)
        return still_entry(s, sid, self.folder, self.variant, self.split, self.seed)


_WORKER: _Writer | None = None


def _init_worker(*args: Any) -> None:
    global _WORKER
    _WORKER = _Writer(*args)


def _work(i: int) -> Entry:
    assert _WORKER is not None
    return _WORKER(i)


def _entries(writer_args: tuple[Any, ...], count: int, workers: int) -> Iterator[Entry]:
    if workers <= 1:
        w = _Writer(*writer_args)
        yield from (w(i) for i in range(count))
        return
    with ProcessPoolExecutor(workers, initializer=_init_worker, initargs=writer_args) as ex:
        yield from ex.map(_work, range(count), chunksize=16)


def generate(
    raw: str | Path,
    out: str | Path,
    variant: str,
    split: str,
    count: int,
    seed: int,
    cfg: VariantConfig,
    force: bool = False,
    preview: bool = False,
    workers: int = 1,
    progress: bool = False,
) -> Path:
    """Write ``count`` samples (clips for ``video``) and their manifest; return the manifest path.

    Raises :class:`OutputExistsError` if the manifest exists and ``force`` is
    false (checked before any work), :class:`DataError` for missing sources.
    """
    if count <= 0:
        raise ConfigError(f"count must be positive, got {count}")
    man = check_writable(manifest_path(out, variant, split), force)
    sources = RawSources(raw)
    sources.check()
    DigitScenesSampler(sources, variant, split, cfg, seed)  # validates config and split pools early
    folder = Path(out) / f"{variant}_{split}"
    sub = ["videos", "audio"] if isinstance(cfg, VideoConfig) else ["images", "audio"]
    for d in sub:
        (folder / d).mkdir(parents=True, exist_ok=True)
    args = (str(Path(raw)), str(Path(out)), variant, split, seed, cfg)
    it: Iterator[Entry] = _entries(args, count, workers)
    if progress:
        from tqdm import tqdm

        unit = "clip" if isinstance(cfg, VideoConfig) else "scene"
        it = iter(tqdm(it, total=count, unit=unit, desc=f"digitscenes {variant}/{split}", dynamic_ncols=True))
    write_manifest(man, it)
    resolved = {"variant": variant, "split": split, "count": count, "seed": seed, "config": config_to_dict(cfg)}
    write_text_atomic(man.with_suffix(".config.json"), json.dumps(resolved, indent=2, sort_keys=True) + "\n")
    if preview:
        write_preview(man.with_name(f"{variant}_{split}_preview.png"), DigitScenesSampler(sources, variant, split, cfg, seed), count)
    return man


def draw_annotations(
    image: np.ndarray, boxes: list[list[int]], labels: list[int], silent: list[list[int]], silent_labels: list[int]
) -> np.ndarray:
    """Copy of ``image`` with sounding boxes in green and silent boxes in red, labelled."""
    img = np.ascontiguousarray(image.copy())
    for bs, ls, col in ((silent, silent_labels, RED), (boxes, labels, GREEN)):
        for b, lab in zip(bs, ls):
            cv2.rectangle(img, (b[0], b[1]), (b[2] - 1, b[3] - 1), col, 2)
            cv2.putText(img, str(lab), (b[0] + 2, b[1] + 14), cv2.FONT_HERSHEY_SIMPLEX, 0.5, col, 1, cv2.LINE_AA)
    return img


def _caption(img: np.ndarray, text: str) -> None:
    cv2.putText(img, text, (3, img.shape[0] - 5), cv2.FONT_HERSHEY_SIMPLEX, 0.4, (0, 0, 0), 3, cv2.LINE_AA)
    cv2.putText(img, text, (3, img.shape[0] - 5), cv2.FONT_HERSHEY_SIMPLEX, 0.4, (255, 255, 255), 1, cv2.LINE_AA)


def contact_sheet(sampler: DigitScenesSampler, count: int, cells: int = 16, cols: int = 4) -> np.ndarray:
    """Grid of the first scenes (video: annotated frames of the first clips), annotated, (H, W, 3) uint8."""
    tiles: list[np.ndarray] = []
    cfg = sampler.cfg
    if isinstance(cfg, VideoConfig):
        for c_i in range(count):
            c = sampler.clip(c_i)
            for j in cfg.annotated_frames():
                a = c.annotation(j)
                t = draw_annotations(c.frame(j), a["boxes"], a["box_labels"], a["silent_boxes"], a["silent_labels"])
                _caption(t, f"#{c_i} t={a['time']:.2f} say={a['labels']}{' OOV' if a['out_of_view'] else ''}")
                tiles.append(t)
                if len(tiles) >= cells:
                    break
            if len(tiles) >= cells:
                break
    else:
        for i in range(min(count, cells)):
            smp = sampler.sample(i)
            t = draw_annotations(smp.image, smp.boxes, smp.box_labels, smp.silent_boxes, smp.silent_labels)
            extra = "" if smp.onscreen else f" OFF:{smp.meta['mode']}"
            _caption(t, f"#{i} say={smp.labels}{extra}")
            tiles.append(t)
    h, w = tiles[0].shape[:2]
    rows = -(-len(tiles) // cols)
    sheet = np.full((rows * (h + 4) + 4, min(cols, len(tiles)) * (w + 4) + 4, 3), 255, np.uint8)
    for k, t in enumerate(tiles):
        r, col = divmod(k, cols)
        sheet[4 + r * (h + 4) : 4 + r * (h + 4) + h, 4 + col * (w + 4) : 4 + col * (w + 4) + w] = t
    return sheet


def write_preview(path: Path, sampler: DigitScenesSampler, count: int) -> Path:
    """Write the contact sheet PNG atomically."""
    with atomic_path(path) as tmp:
        _write_png(tmp, contact_sheet(sampler, count))
    return path
