"""Tiny generated datasets in the layouts people download (what ``avloc train --dry-run`` prepares).

:func:`write_layout_fixture` writes ``n`` short mp4 clips (H.264 + AAC, through
:func:`avloc.data.synthetic.write_test_clip`) named and indexed as the real
training sets are (see :mod:`avloc.data.prepare.training`), so the recipe's own
``prepare`` step, manifest reader and decoders run on them exactly as they would
on VGG-Sound, Flickr-SoundNet, MUSIC or AVE:

=============== ===============================================================
``vggsound``    ``video/<youtube_id>_<start>.mp4`` + ``vggsound.csv``
``flickr-train`` ``videos/<digits>.mp4`` + ``flickr_train.txt``
``music-solo``  ``<instrument>/<youtube_id>.mp4`` + ``MUSIC_solo_videos.json``
``ave``         ``AVE/<youtube_id>.mp4`` + ``Annotations.txt`` + ``trainSet.txt``
=============== ===============================================================

The picture is a moving bright square on a dark background and the audio a
tone whose pitch follows the class, so the clips decode to non-trivial inputs.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from avloc.errors import ConfigError

#: the layouts a fixture can be written in (the training ``prepare`` formats)
FIXTURE_FORMATS = ("vggsound", "flickr-train", "music-solo", "ave")
_CLASSES = ("dog barking", "playing violin", "church bell", "car engine")
_INSTRUMENTS = ("violin", "flute", "cello", "trumpet")


def _youtube_id(i: int) -> str:
    return f"fixture{i:04d}"  # 11 characters of [A-Za-z0-9_-]


def _clip(path: Path, i: int, seconds: float, fps: float, size: tuple[int, int], sample_rate: int) -> None:
    from avloc.data.synthetic import write_test_clip

    w, h = size
    n = max(1, round(seconds * fps))
    frames = []
    for t in range(n):
        fr = np.full((h, w, 3), 30, dtype=np.uint8)
        x = int((w - w // 4) * ((t + i) % n) / max(1, n - 1))
        fr[h // 3 : h // 3 + h // 4, x : x + w // 4] = (230, 200, 40)
        frames.append(fr)
    tt = np.arange(int(seconds * sample_rate), dtype=np.float32) / sample_rate
    audio = (0.3 * np.sin(2 * np.pi * (300 + 150 * (i % len(_CLASSES))) * tt)).astype(np.float32)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_test_clip(path, frames, fps, audio, sample_rate, options={"preset": "ultrafast"})


def write_layout_fixture(
    fmt: str,
    root: str | Path,
    n: int = 6,
    *,
    seconds: float = 2.0,
    fps: float = 8.0,
    size: tuple[int, int] = (96, 72),
    sample_rate: int = 16000,
) -> Path:
    """Write ``n`` clips of ``seconds`` in layout ``fmt`` (:data:`FIXTURE_FORMATS`) under ``root``; returns ``root``."""
    if fmt not in FIXTURE_FORMATS:
        raise ConfigError(f"no fixture layout {fmt!r}; layouts: {list(FIXTURE_FORMATS)}")
    if n < 1:
        raise ConfigError(f"a fixture needs at least one clip, got n={n}")
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    ids = [_youtube_id(i) for i in range(n)]
    if fmt == "vggsound":
        for i, y in enumerate(ids):
            _clip(root / "video" / f"{y}_{10 * i:06d}.mp4", i, seconds, fps, size, sample_rate)
        (root / "vggsound.csv").write_text("".join(f"{y},{10 * i:06d},{_CLASSES[i % 4]},train\n" for i, y in enumerate(ids)))
    elif fmt == "flickr-train":
        names = [str(10_000_000 + i) for i in range(n)]
        for i, name in enumerate(names):
            _clip(root / "videos" / f"{name}.mp4", i, seconds, fps, size, sample_rate)
        (root / "flickr_train.txt").write_text("".join(f"{name}\n" for name in names))
    elif fmt == "music-solo":
        videos: dict[str, list[str]] = {}
        for i, y in enumerate(ids):
            inst = _INSTRUMENTS[i % len(_INSTRUMENTS)]
            _clip(root / inst / f"{y}.mp4", i, seconds, fps, size, sample_rate)
            videos.setdefault(inst, []).append(y)
        (root / "MUSIC_solo_videos.json").write_text(json.dumps({"videos": videos}))
    else:  # ave
        lines = []
        for i, y in enumerate(ids):
            _clip(root / "AVE" / f"{y}.mp4", i, seconds, fps, size, sample_rate)
            lines.append(f"{_CLASSES[i % 4]}&{y}&good&0&{int(seconds)}\n")
        (root / "Annotations.txt").write_text("Category&VideoID&Quality&StartTime&EndTime\n" + "".join(lines))
        (root / "trainSet.txt").write_text("".join(lines))
    return root
