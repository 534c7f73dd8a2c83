"""Issue 18, memory: the streamed audio paths give the same samples as the whole-track ones."""

from __future__ import annotations

import numpy as np
import pytest

from avloc.io.audio import window_at
from avloc.io.media import AudioStream, decode_audio, iter_audio, write_video
from clips import write_clip


@pytest.fixture(scope="module")
def av_clip(tmp_path_factory: pytest.TempPathFactory):
    p = tmp_path_factory.mktemp("stream") / "c.mp4"
    sr = 22050
    t = np.arange(sr * 7) / sr
    audio = (0.3 * np.sin(2 * np.pi * 330 * t) * np.linspace(0.1, 1, t.size)).astype(np.float32)
    return write_clip(p, seconds=7.0, fps=10, size=(48, 32), picture="ramp", audio=audio, sample_rate=sr)


@pytest.mark.parametrize("rate", [16000, 22050, 48000])
def test_audio_stream_windows_equal_the_whole_track(av_clip, rate: int) -> None:
    wav, sr = decode_audio(av_clip, rate)
    with AudioStream(av_clip, rate) as a:
        for t in np.arange(-1.0, 9.0, 0.1):  # before the start, through the end, past it
            assert np.array_equal(a.window(float(t), 3.0), window_at(wav, sr, float(t), 3.0)), t
        assert a._buf.size <= 8 * rate  # a few windows held, not the track
        with pytest.raises(ValueError):
            a.window(1.0, 3.0)  # going back in time is refused, never silently wrong


def test_iter_audio_concatenates_to_decode_audio(av_clip) -> None:
    wav, _ = decode_audio(av_clip)
    assert np.array_equal(np.concatenate(list(iter_audio(av_clip))), wav)


def test_write_video_with_streamed_audio_equals_the_array_version(av_clip, tmp_path) -> None:
    wav, sr = decode_audio(av_clip)
    frames = [np.full((32, 48, 3), 100, np.uint8) for _ in range(70)]
    write_video(tmp_path / "a.mp4", frames, 10, wav, sr)
    write_video(tmp_path / "s.mp4", frames, 10, iter_audio(av_clip), sr)
    a, _ = decode_audio(tmp_path / "a.mp4")
    s, _ = decode_audio(tmp_path / "s.mp4")
    assert a.size == s.size and float(np.abs(a - s).max()) < 1e-4
