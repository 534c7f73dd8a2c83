"""The Python API (``avloc.localize``, ``avloc.load_results``): arrays read without an encoding round trip,
bad arrays refused in one line, loaders that never crash or leave their folder."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

import avloc
from avloc.errors import ConfigError, DataError
from avloc.inference.decode import ArrayVideo
from avloc.io.media import write_video

FAST = {"model": "avsync-objectness", "overlay": False}


def _arrays(seconds: float = 2.0, fps: float = 10.0, rate: int = 16000) -> tuple[np.ndarray, np.ndarray]:
    """A white square moving right over grey, and a tone whose loudness follows it."""
    n = round(seconds * fps)
    frames = np.full((n, 72, 96, 3), 90, np.uint8)
    for i in range(n):
        x = 8 + 3 * i
        frames[i, 24:48, x : x + 24] = 250
    t = np.arange(round(seconds * rate)) / rate
    audio = (0.3 * np.sin(2 * np.pi * 440 * t) * (0.5 + 0.5 * np.sin(2 * np.pi * 2 * t))).astype(np.float32)
    return frames, audio


def test_array_timing_matches_the_file_decoder(tmp_path: Path) -> None:
    """The frame shown at ``t`` is the last one starting at or before ``t``, as io.media.iter_frames decodes a file."""
    from avloc.io.media import iter_frames

    frames, audio = _arrays(seconds=1.3, fps=7.0)
    path = write_video(tmp_path / "a.mp4", iter(frames), 7.0, audio, 16000, crf=0)
    from_file = [(f.time, f.source_time) for f in iter_frames(path, fps=3.0)]
    from_array = [(f.time, f.source_time) for f in ArrayVideo(frames, 7.0, audio, 16000).iter_frames(3.0)]
    assert [a for a, _ in from_array] == pytest.approx([a for a, _ in from_file])
    assert [b for _, b in from_array] == pytest.approx([b for _, b in from_file], abs=1e-3)


def test_array_and_file_give_the_same_answer(tmp_path: Path) -> None:
    frames, audio = _arrays()
    path = write_video(tmp_path / "a.mp4", iter(frames), 10.0, audio, 16000, crf=0)
    a = avloc.localize(frames, video_fps=10.0, audio=audio, sample_rate=16000, **FAST)
    f = avloc.localize(path, **FAST)
    assert len(a.frames) == len(f.frames) == 10 and a.input == "<array>"
    assert a.maps is not None and f.maps is not None
    for ra, rf, ma, mf in zip(a.frames, f.frames, a.maps.astype(np.float64), f.maps.astype(np.float64), strict=True):
        assert ra.time == rf.time and ra.source_time == pytest.approx(rf.source_time, abs=1e-3)
        # the picture differs by the codec's rounding (<= 1 grey level) and the sound by AAC: the same map
        assert np.corrcoef(ma.ravel(), mf.ravel())[0, 1] > 0.99
        ya, xa = np.unravel_index(int(np.argmax(ma)), ma.shape)
        lo = mf.min()
        assert mf[ya, xa] - lo >= 0.95 * (mf.max() - lo)  # the array's peak is a peak of the file's map too


@pytest.mark.parametrize(("frames", "fps", "audio", "rate", "message"), [
    (np.zeros((4, 0, 8, 3), np.uint8), 10.0, None, 16000, "at least one frame"),
    (np.zeros((0, 8, 8, 3), np.uint8), 10.0, None, 16000, "at least one frame"),
    (np.zeros((4, 8, 8), np.uint8), 10.0, None, 16000, r"\(T, H, W, 3\) uint8"),
    (np.zeros((4, 8, 8, 3), np.float32), 10.0, None, 16000, r"\(T, H, W, 3\) uint8"),
    (np.zeros((4, 8, 8, 3), np.uint8), 0.0, None, 16000, "video_fps"),
    (np.zeros((4, 8, 8, 3), np.uint8), math.nan, None, 16000, "video_fps"),
    (np.zeros((4, 8, 8, 3), np.uint8), math.inf, None, 16000, "video_fps"),
    (np.zeros((4, 8, 8, 3), np.uint8), 10.0, np.array([0.0, math.nan], np.float32), 16000, "NaN"),
    (np.zeros((4, 8, 8, 3), np.uint8), 10.0, np.zeros((2, 100), np.float32), 16000, "mono"),
    (np.zeros((4, 8, 8, 3), np.uint8), 10.0, np.zeros(100, np.float32), 0, "sample_rate"),
    (np.zeros((4, 8, 8, 3), np.uint8), 10.0, np.zeros(100, np.float32), 2_000_000_000, "sample_rate"),
])
def test_bad_arrays_are_one_clean_error(frames, fps, audio, rate, message) -> None:
    with pytest.raises(ConfigError, match=message):
        avloc.localize(frames, video_fps=fps, audio=audio, sample_rate=rate, **FAST)


def test_load_results_never_crashes_or_leaves_the_folder(tmp_path: Path) -> None:
    frames, audio = _arrays(seconds=1.0)
    res = avloc.localize(frames, video_fps=10.0, audio=audio, sample_rate=16000, save_heatmaps=True, **FAST)
    out = tmp_path / "o"
    res.save(out)
    [back] = avloc.load_results(out)
    assert back.frames == res.frames and np.array_equal(back.maps, res.maps) and back.sheet is not None
    js = out / "array.avloc.json"
    doc = json.loads(js.read_text())
    for bad in ("../secret.npz", "/etc/passwd", ".."):
        doc["outputs"]["heatmaps"] = bad
        js.write_text(json.dumps(doc))
        with pytest.raises(DataError, match="not a file name"):
            avloc.load_results(out)
    for garbage in (b"", b"\x00\xff" * 10, b"[1, 2]", b'{"frames": 1e999}', b"nan"):
        js.write_bytes(garbage)
        with pytest.raises(DataError):
            avloc.load_results(js)
    (out / "run.json").write_text('{"schema_version": "1.0"}')
    with pytest.raises(DataError, match=r"run\.json"):
        avloc.load_results(out)
