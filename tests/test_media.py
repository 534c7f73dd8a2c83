"""Media I/O: probing, frame sampling, audio decoding/windows, writing, error paths."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from avloc.cli.main import main
from avloc.errors import MediaError
from avloc.io.audio import load_audio, resample, window_at, windows_at
from avloc.io.media import decode_audio, iter_frames, probe
from clips import RAMP_STEP, write_clip


def _write(path: Path, n: int = 20, fps: float = 10, size=(64, 48), audio: bool = True) -> Path:
    """Frame i is flat (i * RAMP_STEP) % 256; a tone as long as the frames."""
    return write_clip(path, seconds=n / fps, fps=fps, size=size, picture="ramp", audio="tone" if audio else None)


def test_probe_generated(tmp_path) -> None:
    info = probe(_write(tmp_path / "a.mp4"))
    assert info.width == 64 and info.height == 48 and info.fps == 10.0 and info.frames == 20
    assert info.audio_sample_rate == 16000 and info.audio_channels == 1
    assert abs(info.duration - 2.0) < 0.1


def test_probe_no_audio(tmp_path) -> None:
    info = probe(_write(tmp_path / "v.mp4", audio=False))
    assert info.audio_sample_rate is None and info.audio_channels is None and info.has_video
    with pytest.raises(MediaError, match="no audio stream"):
        decode_audio(tmp_path / "v.mp4")


def test_iter_frames_exact_times_and_order(tmp_path) -> None:
    p = _write(tmp_path / "a.mp4", n=30, fps=15)
    frames = list(iter_frames(p, fps=5))
    assert [f.index for f in frames] == list(range(10))
    assert np.allclose([f.time for f in frames], np.arange(10) / 5)
    for f in frames:  # the frame shown at time t: last source frame with time <= t
        assert f.source_time <= f.time + 1e-6 and f.time - f.source_time < 1 / 15 + 1e-6
        k = round(f.source_time * 15)
        assert abs(int(f.image[0, 0, 0]) - (k * RAMP_STEP) % 256) <= 3
    small = next(iter_frames(p, fps=5, size=(32, 24)))
    assert small.image.shape == (24, 32, 3)
    assert len(list(iter_frames(p))) == 30  # all frames


def test_iter_frames_variable_frame_rate(tmp_path) -> None:
    t_ms = [0, 100, 150, 400, 420, 900]
    pics = [np.full((32, 32, 3), i * 40, np.uint8) for i in range(len(t_ms))]
    p = write_clip(tmp_path / "vfr.mp4", fps=30, picture=pics, audio=None, pts_ms=t_ms)
    frames = list(iter_frames(p, fps=10, end=1.0))
    src = [f.source_time for f in frames]
    expected = [0.0, 0.1, 0.15, 0.15, 0.4, 0.42, 0.42, 0.42, 0.42, 0.9]
    assert np.allclose(src, expected, atol=2e-3), src


def test_decode_audio_sync_and_resample(tmp_path) -> None:
    sr = 16000
    a = np.zeros(sr * 2, np.float32)
    a[8000:8400] = 0.8 * np.sin(np.arange(400) * 0.3)
    p = tmp_path / "click.mp4"
    write_clip(p, fps=10, picture=[np.zeros((32, 32, 3), np.uint8)] * 20, audio=a, sample_rate=sr)
    wav, rate = decode_audio(p)
    assert rate == sr
    onset = int(np.argmax(np.abs(wav) > 0.05))
    assert abs(onset - 8000) <= 16  # audio stays in sync with video (AAC priming compensated)
    wav8, _ = decode_audio(p, 8000)
    assert abs(int(np.argmax(np.abs(wav8) > 0.05)) - 4000) <= 16


@pytest.mark.parametrize("ext,fmt", [(".wav", "WAV"), (".flac", "FLAC"), (".ogg", "OGG")])
def test_load_audio_soundfile_formats(tmp_path, ext: str, fmt: str) -> None:
    sr = 22050
    x = (0.5 * np.sin(2 * np.pi * 440 * np.arange(sr) / sr)).astype(np.float32)
    stereo = np.stack([x, x], 1)
    p = tmp_path / f"s{ext}"
    sf.write(p, stereo, sr, format=fmt)
    wav, rate = load_audio(p, 16000)
    assert rate == 16000 and abs(wav.size - 16000) <= 1
    assert 0.3 < np.abs(wav).max() < 0.6


def test_resample_exact_length_and_tone() -> None:
    sr = 8000
    x = np.sin(2 * np.pi * 500 * np.arange(sr) / sr).astype(np.float32)
    y = resample(x, 8000, 16000)
    assert y.size == 16000
    spec = np.abs(np.fft.rfft(y))
    assert abs(int(np.argmax(spec)) - 500) <= 1  # 1 Hz bins at 1 s


def test_windows_padding_policy() -> None:
    x = np.arange(10, dtype=np.float32) + 1
    w = window_at(x, 1, center=1, seconds=4)  # samples -1..2 -> zero, 1, 2, 3
    assert w.tolist() == [0, 1, 2, 3]
    w = window_at(x, 1, center=9, seconds=4)  # 7..10 -> 8, 9, 10, 0
    assert w.tolist() == [8, 9, 10, 0]
    assert window_at(x, 1, center=1, seconds=4, pad="wrap").tolist() == [10, 1, 2, 3]
    assert windows_at(x, 1, [2, 5], 2).shape == (2, 2)


def test_probe_errors(tmp_path, demo_clip_path: Path) -> None:
    with pytest.raises(MediaError, match="not found"):
        probe(tmp_path / "missing.mp4")
    (tmp_path / "empty.mp4").write_bytes(b"")
    with pytest.raises(MediaError, match="empty"):
        probe(tmp_path / "empty.mp4")
    (tmp_path / "garbage.mp4").write_bytes(np.random.default_rng(0).bytes(5000))
    with pytest.raises(MediaError, match=r"not a readable media file|truncated|corrupt"):
        probe(tmp_path / "garbage.mp4")
    data = demo_clip_path.read_bytes()
    (tmp_path / "trunc.mp4").write_bytes(data[: len(data) // 2])
    with pytest.raises(MediaError, match=r"truncated|not a readable|corrupt"):
        probe(tmp_path / "trunc.mp4")


def test_probe_cli_json_and_errors(tmp_path, demo_clip_path: Path, capsys) -> None:
    assert main(["probe", str(demo_clip_path), "--json"]) == 0
    obj = json.loads(capsys.readouterr().out)
    for k in ("path", "duration", "fps", "width", "height", "frames", "audio_sample_rate", "audio_channels"):
        assert k in obj
    assert obj["fps"] == 10.0 and obj["frames"] == 20 and obj["audio_sample_rate"] == 16000
    assert main(["probe", str(demo_clip_path), str(demo_clip_path), "--json"]) == 0
    assert len(json.loads(capsys.readouterr().out)) == 2
    (tmp_path / "g.mp4").write_bytes(b"not a video at all" * 100)
    assert main(["probe", str(tmp_path / "g.mp4")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err and "g.mp4" in err


def test_probe_shared_clips(shared_data: Path, tmp_path) -> None:
    """Every real clip: duration and rates as the container says; a truncated copy fails."""
    import av

    clips = sorted((shared_data / "videos").glob("*.mp4"))
    assert clips
    for c in clips:
        info = probe(c)
        with av.open(str(c)) as ct:
            vs, a = ct.streams.video[0], ct.streams.audio[0]
            assert abs(info.duration - ct.duration / 1e6) < 0.1
            assert info.fps == float(vs.average_rate)
            assert info.audio_sample_rate == a.codec_context.sample_rate
        assert info.frames and abs(info.frames - info.duration * info.fps) < info.fps * 0.5
    data = clips[0].read_bytes()
    (tmp_path / "cut.mp4").write_bytes(data[: len(data) // 3])
    with pytest.raises(MediaError):
        probe(tmp_path / "cut.mp4")


def test_real_clip_audio_and_frames(shared_data: Path) -> None:
    clip = shared_data / "videos" / "v_GGSY1Qvo990.mp4"
    wav, sr = decode_audio(clip, 16000)
    info = probe(clip)
    assert sr == 16000 and abs(wav.size / sr - info.duration) < 0.2
    n = sum(1 for _ in iter_frames(clip, fps=2, size=(112, 112)))
    assert n == math.ceil(info.duration * 2) or n == math.floor(info.duration * 2)
