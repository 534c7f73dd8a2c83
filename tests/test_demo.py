"""The demo scene (issue 26): its ground truth, its sound as YAMNet hears it, and the default passing its own check."""

from __future__ import annotations

import numpy as np
import pytest

from avloc.data.scene import SceneConfig, make_scene, scene_audio, tick_times
from avloc.formats.localize import Box, FrameRecord, Point
from avloc.inference.check import score_scene


def test_scene_ground_truth_is_where_the_clock_is_drawn() -> None:
    s = make_scene(SceneConfig(seconds=3.0, fps=10.0, pause_start=1.0, pause_seconds=1.0))
    assert s.frames.shape == (30, 360, 640, 3) and s.audio.shape == (48000,)
    x1, y1, x2, y2 = s.clock_boxes[0].astype(int)
    cx, cy, r = (x1 + x2) / 2, (y1 + y2) / 2, (x2 - x1) / 2
    lower_left = s.frames[0, round(cy + 0.3 * r), round(cx - 0.3 * r)].astype(float)  # no hand, no numeral there
    assert lower_left.min() > 235 and s.frames[0, 5, 5].max() < 225  # the white face, the blue-grey wall
    assert s.frames[0, round(cy), x1 + 1].max() < 90  # the dark rim sits at the box's edge
    bx1, by1, bx2, by2 = s.ball_boxes[5].astype(int)
    assert s.frames[5, (by1 + by2) // 2, (bx1 + bx2) // 2, 2] > 150  # the blue ball's centre
    # the ticks: none in the pause, the second hand still; the sound holds them
    t = tick_times(s.cfg)
    assert not ((t >= 1.0) & (t < 2.0)).any() and np.allclose(np.diff(t[t < 1.0]), 0.5)
    assert list(s.ticking[:10]) == [True] * 10 and not s.ticking[10:20].any()
    a = scene_audio(s.cfg)
    assert np.abs(a[16000:32000]).max() < 0.01 < np.abs(a[:16000]).max()
    assert list(s.sounding(0.5, 2.0)) == [False, True, False, False, False, True]  # windows [t-.25, t+.25]
    assert list(s.silent(0.5, 2.0)) == [False, False, False, True, False, False]


def test_scene_is_deterministic() -> None:
    a, b = make_scene(SceneConfig(seconds=2.0, fps=5.0)), make_scene(SceneConfig(seconds=2.0, fps=5.0))
    assert np.array_equal(a.frames, b.frames) and np.array_equal(a.audio, b.audio)


def test_yamnet_hears_the_ticks_as_a_clock() -> None:
    """The sound design: YAMNet's clock classes are heard in most windows of the ticking."""
    import torch

    from avloc.methods.avsemantic.yamnet import load_yamnet, yamnet_class_names

    cfg = SceneConfig(seconds=4.0, pause_seconds=0.0)
    a = scene_audio(cfg)
    names = yamnet_class_names()
    clock = [names.index(n) for n in ("Tick", "Tick-tock", "Clock", "Alarm clock")]
    net = load_yamnet(torch.device("cpu"), match_tflite=False)
    wins = torch.from_numpy(np.stack([a[s : s + 15600] for s in range(0, len(a) - 15600, 4000)]))
    s = net(wins).detach().numpy()
    top10 = np.argsort(-s, axis=1)[:, :10]
    heard = [any(c in row and s[i, c] >= 0.05 for c in clock) for i, row in enumerate(top10)]
    assert np.mean(heard) >= 0.75, np.mean(heard)


def _record(t: float, onscreen: bool, box: tuple[float, float, float, float] | None, peak: tuple[float, float]) -> FrameRecord:
    boxes = () if box is None else (Box(*box, score=0.9),)
    return FrameRecord(int(t * 5), t, t, -20.0, False, Point(*peak), onscreen, 0.9 if onscreen else 0.1, boxes)


def test_score_scene_by_hand() -> None:
    s = make_scene(SceneConfig(seconds=4.0, fps=5.0, pause_start=1.5, pause_seconds=1.0))
    cb = tuple(float(v) for v in s.clock_boxes[0])
    cx, cy = (cb[0] + cb[2]) / 2, (cb[1] + cb[3]) / 2
    recs = [_record(k / 5, True, cb, (cx, cy)) for k in range(20)]
    recs[16] = _record(16 / 5, False, None, (1.0, 1.0))  # one sounding frame missed
    sc = score_scene(recs, s, window=1.0, fps=5.0)
    sounding = s.sounding(1.0, 5.0)
    assert sc.sounding_frames == int(sounding.sum()) and sounding[16]
    assert sc.onscreen == pytest.approx(1 - 1 / sc.sounding_frames) == sc.box_hits == sc.peak_on_clock
    assert sc.peak_on_ball == 0.0 and sc.quiet_frames == int(s.silent(1.0, 5.0).sum())
    assert sc.quiet_offscreen == 0.0  # every record said on-screen, also in the pause


@pytest.mark.slow
def test_make_demo_passes_its_own_check(tmp_path) -> None:
    from avloc.cli.main import main

    assert main(["demo", "--out", str(tmp_path / "demo")]) == 0
