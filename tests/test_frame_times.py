"""The frames of a segment come from the video's own timestamps: any frame rate, a variable one, and an audio
track that outlasts the video (the loader's last frame used to assume 25 fps)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from avloc.data.datasets import ManifestDataset
from avloc.frontends.audio import AudioFrontendConfig
from avloc.frontends.image import ImageConfig
from avloc.io.media import frames_at, probe
from clips import RAMP_STEP, clip_audio, write_clip

RATE = 16000
#: a decoded flat "ramp" frame is within this of its grey level (H.264 rounding)
GREY_TOLERANCE = 2.5


def _index(picture_mean: float, n: int) -> int:
    """Which frame of an ``n``-frame ramp clip a decoded picture is (its grey level, module ``clips``)."""
    found = [i for i in range(n) if abs((i * RAMP_STEP) % 256 - picture_mean) <= GREY_TOLERANCE]
    assert len(found) == 1, (picture_mean, found)
    return found[0]


@pytest.mark.parametrize("fps", [15, 30, 60])
def test_segment_frames_at_other_rates_with_longer_audio(tmp_path: Path, fps: int) -> None:
    """1 s of video, 1.5 s of audio: the container lasts 1.5 s. The segment's late times fall after the video's
    last frame: they get that frame (the old rule, duration - 0.5 / 25 s, asked for a frame at 1.48 s: none, an error)."""
    clip = write_clip(tmp_path / "c.mp4", seconds=1.0, fps=fps, size=(32, 32), picture="ramp",
                      audio=clip_audio(round(1.5 * RATE), "tone"), sample_rate=RATE)
    info = probe(clip)
    assert info.frames == fps and info.duration == pytest.approx(1.5, abs=0.05)
    entry = {"id": "c", "video": clip.name, "time": 0.95, "duration": info.duration, "boxes": []}
    (tmp_path / "m.jsonl").write_text(json.dumps(entry) + "\n")
    audio = AudioFrontendConfig(sample_rate=RATE, window_seconds=1.0)
    x = ManifestDataset(tmp_path / "m.jsonl", ImageConfig(size=32, resize=32, frames=4), audio)[0]["image"]
    # segment times 0.575, 0.825, 1.075, 1.325 s: frames floor(t * fps), then the last frame (fps - 1)
    want = [int(0.575 * fps), int(0.825 * fps), fps - 1, fps - 1]
    assert [_index(float(f.mean()) * 255, fps) for f in x] == want


def test_frames_at_a_variable_frame_rate(tmp_path: Path) -> None:
    """Frames at 0, 0.1, ..., 0.8 s and one at 1.5 s (held to the end of a 2 s sound track)."""
    pts = [0, 100, 200, 300, 400, 500, 600, 700, 800, 1500]
    clip = write_clip(tmp_path / "vfr.mp4", fps=10, size=(32, 32), picture="ramp", seconds=1.0,
                      audio=clip_audio(2 * RATE, "tone"), sample_rate=RATE, pts_ms=pts)
    times = [1.9, -0.5, 0.0, 0.45, 0.8, 1.2, 1.4999, 1.5, 1.6]
    want = [9, 0, 0, 4, 8, 8, 8, 9, 9]  # the frame shown at each time: the last one whose timestamp is <= t
    assert [_index(float(f.mean()), 10) for f in frames_at(clip, times)] == want
    entry = {"id": "v", "video": clip.name, "time": 1.5, "duration": probe(clip).duration, "boxes": []}
    (tmp_path / "m.jsonl").write_text(json.dumps(entry) + "\n")
    audio = AudioFrontendConfig(sample_rate=RATE, window_seconds=1.0)
    x = ManifestDataset(tmp_path / "m.jsonl", ImageConfig(size=32, resize=32, frames=4), audio)[0]["image"]
    assert [_index(float(f.mean()) * 255, 10) for f in x] == [8, 8, 9, 9]  # 1.125, 1.375, 1.625, 1.875 s


def test_frames_at_refuses_times_that_are_not_numbers(tmp_path: Path) -> None:
    from avloc.errors import MediaError

    clip = write_clip(tmp_path / "c.mp4", seconds=0.5, fps=10, size=(32, 32), picture="ramp", audio=None)
    assert frames_at(clip, []) == []
    with pytest.raises(MediaError, match="finite"):
        frames_at(clip, [float("nan")])
