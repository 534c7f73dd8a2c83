"""Tiny generated audio-visual clips with known ground truth (no shared data needed).

Used by ``make demo``, the tests and the benchmarks. A clip shows two objects
on a textured background; one of them *sounds*: its size pulses with the
envelope of a tone burst sequence in the audio track, while the other moves
at the same average speed but silently. Ground truth per frame is the box of
the sounding object (and of the silent one).
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path

import numpy as np


@dataclass
class DemoClipConfig:
    seconds: float = 4.0
    fps: float = 10.0
    width: int = 320
    height: int = 240
    sample_rate: int = 16000
    tone_hz: float = 660.0
    burst_seconds: float = 0.25
    seed: int = 0


@dataclass
class DemoClip:
    frames: np.ndarray  # (T, H, W, 3) uint8
    audio: np.ndarray  # (N,) float32
    times: np.ndarray  # (T,) s
    sounding_boxes: np.ndarray  # (T, 4) pixel x1, y1, x2, y2
    silent_boxes: np.ndarray  # (T, 4)
    envelope: np.ndarray  # (T,) audio energy per frame in [0, 1]
    cfg: DemoClipConfig = field(default_factory=DemoClipConfig)


def _disc(h: int, w: int, cx: float, cy: float, r: float) -> np.ndarray:
    yy, xx = np.mgrid[0:h, 0:w]
    return (xx - cx) ** 2 + (yy - cy) ** 2 <= r * r


def make_demo_clip(cfg: DemoClipConfig | None = None) -> DemoClip:
    """Generate frames, audio and per-frame ground truth (deterministic per seed)."""
    cfg = cfg or DemoClipConfig()
    rng = np.random.default_rng(cfg.seed)
    n_frames = round(cfg.seconds * cfg.fps)
    times = np.arange(n_frames) / cfg.fps
    n = round(cfg.seconds * cfg.sample_rate)
    t = np.arange(n) / cfg.sample_rate
    # bursts at random onsets, at least one burst gap apart
    onsets = np.sort(rng.uniform(0, cfg.seconds - cfg.burst_seconds, size=max(2, round(cfg.seconds * 1.2))))
    env_audio = np.zeros(n, np.float32)
    for o in onsets:
        a, b = round(o * cfg.sample_rate), round((o + cfg.burst_seconds) * cfg.sample_rate)
        env_audio[a:b] = np.hanning(b - a)
    audio = (0.6 * env_audio * np.sin(2 * np.pi * cfg.tone_hz * t)).astype(np.float32)
    audio += rng.normal(0, 0.003, n).astype(np.float32)  # faint noise: not digital silence
    hop = cfg.sample_rate / cfg.fps
    env = np.array([env_audio[int(i * hop) : int((i + 1) * hop)].mean() if i * hop < n else 0 for i in range(n_frames)])
    env = env / max(env.max(), 1e-6)

    h, w = cfg.height, cfg.width
    yy, xx = np.mgrid[0:h, 0:w]
    bg = np.stack([60 + 40 * np.sin(xx / 23.0), 70 + 30 * np.cos(yy / 17.0), 90 + 0 * xx], -1)
    bg = (bg + rng.normal(0, 6, (h, w, 3))).clip(0, 255).astype(np.uint8)
    base_r = min(h, w) * 0.12
    frames = np.empty((n_frames, h, w, 3), np.uint8)
    sb = np.zeros((n_frames, 4), np.float32)
    qb = np.zeros((n_frames, 4), np.float32)
    for i, ti in enumerate(times):
        img = bg.copy()
        # sounding disc (left half), radius pulses with the audio envelope
        cx, cy = w * 0.28 + w * 0.05 * np.sin(ti * 1.3), h * 0.5 + h * 0.08 * np.cos(ti * 0.9)
        r = base_r * (1.0 + 0.6 * env[i])
        img[_disc(h, w, cx, cy, r)] = (235, 200, 40)
        sb[i] = [max(cx - r, 0), max(cy - r, 0), min(cx + r, w), min(cy + r, h)]
        # silent square (right half), drifting
        qx, qy = w * 0.72 + w * 0.06 * np.cos(ti * 1.1), h * 0.5 + h * 0.1 * np.sin(ti * 0.7)
        s = base_r * 1.2
        x1, y1, x2, y2 = int(qx - s), int(qy - s), int(qx + s), int(qy + s)
        img[max(y1, 0) : y2, max(x1, 0) : x2] = (60, 180, 230)
        qb[i] = [max(x1, 0), max(y1, 0), min(x2, w), min(y2, h)]
        frames[i] = img
    return DemoClip(frames, audio, times, sb, qb, env.astype(np.float32), cfg)


def write_demo_clip(path: str | Path, cfg: DemoClipConfig | None = None) -> DemoClip:
    """Generate a clip and write it as an H.264/AAC MP4 at ``path`` (atomically)."""
    from avloc.formats.atomic import atomic_path
    from avloc.io.media import write_video

    clip = make_demo_clip(cfg)
    with atomic_path(path, suffix=".mp4") as tmp:
        write_video(tmp, iter(clip.frames), clip.cfg.fps, clip.audio, clip.cfg.sample_rate)
    return clip


def write_test_clip(
    path: str | Path,
    frames: Iterable[np.ndarray],
    fps: float,
    audio: np.ndarray | None = None,
    sample_rate: int = 16000,
    *,
    pts_ms: Iterable[int] | None = None,
    rotation: int = 0,
    options: dict[str, str] | None = None,
) -> Path:
    """Encode H.264 ``frames`` ((h, w, 3) uint8) and optional AAC ``audio`` ((N,) mono or (2, N) stereo float32) to mp4.

    The generator behind the odd inputs of the tests and benchmarks: ``pts_ms`` gives each frame's time in ms
    (variable frame rate; default: constant ``fps``), ``rotation`` a display matrix turning the picture that many
    degrees counter-clockwise, ``options`` libx264 options (e.g. ``{"preset": "ultrafast"}``).
    """
    import av

    it = iter(frames)
    first = next(it)
    h, w = first.shape[:2]
    with av.open(str(path), "w", format="mp4") as c:
        vs = c.add_stream("libx264", rate=round(fps))
        vs.width, vs.height, vs.pix_fmt = w, h, "yuv420p"
        if options:
            vs.options = dict(options)
        if rotation:
            vs.set_display_rotation(rotation)
        if pts_ms is not None:
            vs.codec_context.time_base = Fraction(1, 1000)
        a = None
        layout = "stereo" if audio is not None and audio.ndim == 2 else "mono"
        if audio is not None:
            a = c.add_stream("aac", rate=sample_rate)
            a.layout = layout
        times = iter(pts_ms) if pts_ms is not None else None
        for i, img in enumerate(itertools.chain([first], it)):
            fr = av.VideoFrame.from_ndarray(img, format="rgb24")
            if times is not None:
                fr.pts, fr.time_base = next(times), Fraction(1, 1000)
            else:
                fr.pts = i
            for p in vs.encode(fr):
                c.mux(p)
        for p in vs.encode():
            c.mux(p)
        if a is not None and audio is not None:
            wav = np.ascontiguousarray(audio, dtype=np.float32).reshape(1, -1)  # packed: stereo interleaves channels
            fifo = av.AudioFifo()
            af = av.AudioFrame.from_ndarray(wav, format="flt", layout=layout)
            af.sample_rate, af.pts = sample_rate, 0
            fifo.write(af)
            while fifo.samples:
                for p in a.encode(fifo.read(min(1024, fifo.samples), partial=True)):
                    c.mux(p)
            for p in a.encode():
                c.mux(p)
    return Path(path)
