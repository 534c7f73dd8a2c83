"""The demo scene: a ticking wall clock beside a silent bouncing ball, with its own ground truth (no data needed).

``make demo`` must show the *default* localizer working on something it honestly hears and sees: the
default (``avsemantic``) names sounds with YAMNet's AudioSet classes and objects with ImageNet and COCO
classes, so the sounding object is a drawn analog wall clock (ImageNet "analog clock" / "wall clock", COCO
"clock") and the sound is its ticking (AudioSet "Tick", "Tick-tock", "Clock"): short resonant clicks at
``tick_hz`` over faint room tone. The second hand jumps with every tick. The clock stops for
``pause_seconds`` in the middle (no ticks, the hand stands still: the room tone alone, which no visible
thing makes, so those frames are off-screen), while a ball bounces silently on the other side all along.

Ground truth per frame: the clock's box, whether it ticks, and the ball's box. The sound design (click
frequency, resonance, rate and room level) was chosen by scoring candidate designs with YAMNet
(docs/localize.md, "The demo").
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from avloc.config import check_range


@dataclass
class SceneConfig:
    """The demo scene's geometry, timing and sound (module doc)."""

    seconds: float = 10.0
    fps: float = 25.0
    width: int = 640
    height: int = 360
    sample_rate: int = 16000
    #: ticks per second, the click's resonance (Hz) and its quality factor (decay = q / f seconds)
    tick_hz: float = 2.0
    click_hz: float = 5376.0
    click_q: float = 30.0
    #: peak amplitude of a click and level of the room tone (dBFS)
    click_amplitude: float = 0.8
    room_db: float = -50.0
    #: the clock stops ticking for this long, starting at ``pause_start`` (s)
    pause_start: float = 4.5
    pause_seconds: float = 2.0
    #: clock face radius as a fraction of the frame height
    clock_radius: float = 0.25
    seed: int = 0

    def __post_init__(self) -> None:
        check_range("seconds", self.seconds, 1, 600)
        check_range("fps", self.fps, 1, 120)
        check_range("width", self.width, 64, 4096)
        check_range("height", self.height, 64, 4096)
        check_range("sample_rate", self.sample_rate, 8000, 192000)
        check_range("tick_hz", self.tick_hz, 0.5, 10)
        check_range("click_hz", self.click_hz, 100, self.sample_rate / 2)
        check_range("pause_seconds", self.pause_seconds, 0, self.seconds)
        check_range("clock_radius", self.clock_radius, 0.05, 0.45)


@dataclass
class Scene:
    """A generated scene: pictures, sound and per-frame ground truth."""

    frames: np.ndarray  # (T, H, W, 3) uint8
    audio: np.ndarray  # (N,) float32
    times: np.ndarray  # (T,) s
    clock_boxes: np.ndarray  # (T, 4) pixels x1 y1 x2 y2 (the clock never moves, but one row per frame)
    ball_boxes: np.ndarray  # (T, 4)
    ticking: np.ndarray  # (T,) bool: the clock ticks at this frame's time
    cfg: SceneConfig = field(default_factory=SceneConfig)

    def sounding(self, window: float, fps: float) -> np.ndarray:
        """Which analysis times ``k / fps`` hear ticks over their whole ``window`` (s): (K,) bool."""
        t = np.arange(round(self.cfg.seconds * fps)) / fps
        a, b = self.cfg.pause_start, self.cfg.pause_start + self.cfg.pause_seconds
        lo, hi = t - window / 2, t + window / 2
        return ((lo >= 0) & (hi <= a)) | ((lo >= b) & (hi <= self.cfg.seconds))

    def silent(self, window: float, fps: float) -> np.ndarray:
        """Which analysis times hear no tick in their whole window (the pause): (K,) bool."""
        t = np.arange(round(self.cfg.seconds * fps)) / fps
        a, b = self.cfg.pause_start, self.cfg.pause_start + self.cfg.pause_seconds
        return (t - window / 2 > a) & (t + window / 2 < b)


def tick_times(cfg: SceneConfig) -> np.ndarray:
    """Onsets of the ticks (s): every ``1 / tick_hz`` from a small offset, none during the pause."""
    t = np.arange(0.03, cfg.seconds, 1.0 / cfg.tick_hz)
    return t[(t < cfg.pause_start) | (t >= cfg.pause_start + cfg.pause_seconds)]


def scene_audio(cfg: SceneConfig) -> np.ndarray:
    """The ticks (decaying sines at ``click_hz`` with a short noise transient) over brown room tone: (N,)."""
    rng = np.random.default_rng(cfg.seed)
    sr, n = cfg.sample_rate, round(cfg.seconds * cfg.sample_rate)
    out = np.zeros(n)
    length = round(0.04 * sr)
    tt = np.arange(length) / sr
    for onset in tick_times(cfg):
        i = round(onset * sr)
        click = np.sin(2 * np.pi * cfg.click_hz * tt + rng.uniform(0, 2 * np.pi)) * np.exp(-tt * cfg.click_hz / cfg.click_q)
        click += 0.5 * rng.standard_normal(length) * np.exp(-tt * 900.0)
        m = min(length, n - i)
        out[i : i + m] += cfg.click_amplitude * click[:m]
    room = np.cumsum(rng.standard_normal(n))
    room -= np.convolve(room, np.ones(400) / 400, "same")  # brown noise without its drift
    out += 10 ** (cfg.room_db / 20) * room / max(float(np.abs(room).max()), 1e-9)
    return out.astype(np.float32)


def _draw_clock(img: np.ndarray, cx: int, cy: int, r: int, second: int) -> None:
    """An analog wall clock: rim, face, minute marks, numerals, hour and minute hands, a red second hand."""
    import cv2

    cv2.circle(img, (cx, cy), r + max(3, r // 15), (60, 40, 20), -1, cv2.LINE_AA)
    cv2.circle(img, (cx, cy), r, (245, 245, 240), -1, cv2.LINE_AA)
    for k in range(60):
        a = 2 * np.pi * k / 60
        inner = r * (0.82 if k % 5 == 0 else 0.92)
        p1 = (round(cx + 0.96 * r * np.sin(a)), round(cy - 0.96 * r * np.cos(a)))
        p2 = (round(cx + inner * np.sin(a)), round(cy - inner * np.cos(a)))
        cv2.line(img, p1, p2, (20, 20, 20), max(1, r // 30) if k % 5 == 0 else 1, cv2.LINE_AA)
    scale = r / 130
    for k in range(1, 13):
        a = 2 * np.pi * k / 12
        x, y = round(cx + 0.68 * r * np.sin(a)), round(cy - 0.68 * r * np.cos(a))
        cv2.putText(img, str(k), (x - round(10 * scale), y + round(8 * scale)), cv2.FONT_HERSHEY_SIMPLEX, 0.8 * scale,
                    (20, 20, 20), max(1, round(2 * scale)), cv2.LINE_AA)
    for frac, length, width, colour in ((10.1 / 12, 0.45, 0.06, (10, 10, 10)), (0.2, 0.75, 0.04, (10, 10, 10)),
                                        (second / 60, 0.85, 0.015, (200, 30, 30))):
        a = 2 * np.pi * frac
        tip = (round(cx + length * r * np.sin(a)), round(cy - length * r * np.cos(a)))
        cv2.line(img, (cx, cy), tip, colour, max(1, round(width * r)), cv2.LINE_AA)
    cv2.circle(img, (cx, cy), max(2, r // 25), (10, 10, 10), -1, cv2.LINE_AA)


def make_scene(cfg: SceneConfig | None = None) -> Scene:
    """Generate the demo scene (module doc); deterministic per seed."""
    import cv2

    cfg = cfg or SceneConfig()
    w, h = cfg.width, cfg.height
    n = round(cfg.seconds * cfg.fps)
    times = np.arange(n) / cfg.fps
    ticks = tick_times(cfg)
    wall = np.zeros((h, w, 3), np.uint8)
    wall[:] = (196, 205, 214)
    wall[int(0.8 * h) :] = (128, 100, 76)  # a shelf / floor
    rng = np.random.default_rng(cfg.seed)
    wall = np.clip(wall.astype(np.int16) + rng.integers(-4, 5, wall.shape), 0, 255).astype(np.uint8)
    r = round(cfg.clock_radius * h)
    cx, cy = round(0.3 * w), round(0.42 * h)
    rim = r + max(3, r // 15)
    clock_box = np.array([cx - rim, cy - rim, cx + rim + 1, cy + rim + 1], np.float32)
    ball_r = round(0.07 * h)
    frames = np.empty((n, h, w, 3), np.uint8)
    balls = np.zeros((n, 4), np.float32)
    for i, t in enumerate(times):
        img = wall.copy()
        _draw_clock(img, cx, cy, r, int(np.searchsorted(ticks, t, side="right")))  # the hand jumps at each tick
        phase = (t * 0.9) % 1.0  # bouncing: a parabola per bounce, drifting sideways
        bx = round(0.72 * w + 0.12 * w * np.sin(t * 0.7))
        by = round(0.8 * h - ball_r - 4 * phase * (1 - phase) * 0.45 * h)
        cv2.circle(img, (bx, by), ball_r, (40, 110, 220), -1, cv2.LINE_AA)
        cv2.circle(img, (bx - ball_r // 3, by - ball_r // 3), ball_r // 4, (150, 190, 250), -1, cv2.LINE_AA)
        frames[i] = img
        balls[i] = [bx - ball_r, by - ball_r, bx + ball_r + 1, by + ball_r + 1]
    ticking = (times < cfg.pause_start) | (times >= cfg.pause_start + cfg.pause_seconds)
    return Scene(frames, scene_audio(cfg), times, np.repeat(clock_box[None], n, 0), balls, ticking, cfg)


def write_scene(path: str | Path, cfg: SceneConfig | None = None) -> Scene:
    """Generate the scene and write it as an H.264/AAC mp4 at ``path`` (atomically)."""
    from avloc.formats.atomic import atomic_path
    from avloc.io.media import write_video

    scene = make_scene(cfg)
    with atomic_path(path, suffix=".mp4") as tmp:
        write_video(tmp, iter(scene.frames), scene.cfg.fps, scene.audio, scene.cfg.sample_rate)
    return scene
