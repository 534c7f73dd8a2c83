"""The one builder of the synthetic clips the tests write: pictures and sound made here, encoded by avloc's writers.

``write_clip(path, seconds=..., fps=..., size=(w, h), picture=..., audio=...)``:

* ``picture``: ``"demo"`` -- avloc's demo clip (:mod:`avloc.data.synthetic`: a disc that pulses with the
  sound, the sounding object; with ``audio="demo"`` its own sound); ``"ramp"`` -- flat frames whose value
  steps by :data:`RAMP_STEP` per frame (frame ``i`` is ``(i * 12) % 256``, so a decoded frame says which
  it is); ``"noise"`` -- Gaussian noise around mid-grey; ``"grey"`` -- mid-grey with +-3 of noise (nothing
  to see); or the frames themselves, ``(h, w, 3)`` uint8 (then their count and ``fps`` set the length);
* ``audio``: ``"demo"`` (demo pictures only), ``"tone"`` (a 0.3-amplitude sine), ``"noise"`` (Gaussian,
  0.2), ``"silence"`` (zeros), ``None`` (no audio stream), or the samples, ``(N,)`` float32;
* ``pts_ms`` / ``rotation`` (variable frame rate, a display matrix) go to
  :func:`avloc.data.synthetic.write_test_clip`; other clips are written by :func:`avloc.io.media.write_video`.

Everything is seeded (``seed``): the same call writes the same pictures and sound.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Literal

import numpy as np

Picture = Literal["demo", "ramp", "noise", "grey"]
Audio = Literal["demo", "tone", "noise", "silence"]

#: grey-level step between consecutive "ramp" frames
RAMP_STEP = 12
#: angular step per sample of the "tone" sound (radians; ~127 Hz at 16 kHz)
TONE_STEP = 0.05


def clip_frames(n: int, size: tuple[int, int], picture: Picture, seed: int = 0) -> list[np.ndarray]:
    """``n`` generated frames ``(h, w, 3)`` uint8 of ``size`` = (w, h) (module doc; not ``"demo"``)."""
    w, h = size
    rng = np.random.default_rng(seed)
    if picture == "ramp":
        return [np.full((h, w, 3), (i * RAMP_STEP) % 256, np.uint8) for i in range(n)]
    if picture == "noise":
        return [np.clip(rng.normal(120, 40, (h, w, 3)), 0, 255).astype(np.uint8) for _ in range(n)]
    if picture == "grey":
        base = np.full((h, w, 3), 128, np.uint8)
        return [np.clip(base + rng.integers(-3, 4, base.shape), 0, 255).astype(np.uint8) for _ in range(n)]
    raise ValueError(f"unknown picture {picture!r}")


def clip_audio(n: int, audio: Audio, seed: int = 0) -> np.ndarray:
    """``n`` generated samples (float32, mono; module doc; not ``"demo"``)."""
    if audio == "tone":
        return (0.3 * np.sin(np.arange(n) * TONE_STEP)).astype(np.float32)
    if audio == "noise":
        return (0.2 * np.random.default_rng(seed).standard_normal(n)).astype(np.float32)
    if audio == "silence":
        return np.zeros(n, np.float32)
    raise ValueError(f"unknown audio {audio!r}")


def write_clip(
    path: str | Path,
    *,
    seconds: float = 2.0,
    fps: float = 10.0,
    size: tuple[int, int] = (160, 120),
    picture: Picture | Sequence[np.ndarray] = "demo",
    audio: Audio | np.ndarray | None = "demo",
    sample_rate: int = 16000,
    seed: int = 0,
    pts_ms: Sequence[int] | None = None,
    rotation: int = 0,
) -> Path:
    """Write a synthetic clip at ``path`` (module doc) and return ``path``."""
    from avloc.data.synthetic import DemoClipConfig, make_demo_clip, write_demo_clip, write_test_clip
    from avloc.io.media import write_video

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(picture, str) and picture == "demo":
        cfg = DemoClipConfig(seconds=seconds, fps=fps, width=size[0], height=size[1], seed=seed, sample_rate=sample_rate)
        if isinstance(audio, str) and audio == "demo":
            write_demo_clip(path, cfg)
            return path
        frames = make_demo_clip(cfg).frames
    elif isinstance(picture, str):
        frames = clip_frames(round(seconds * fps), size, picture, seed)  # type: ignore[arg-type]
    else:
        frames = list(picture)
        seconds = len(frames) / fps
    if isinstance(audio, str):
        if audio == "demo":
            raise ValueError('audio="demo" comes with picture="demo"')
        wav: np.ndarray | None = clip_audio(round(seconds * sample_rate), audio, seed)  # type: ignore[arg-type]
    else:
        wav = audio
    if pts_ms is not None or rotation:
        return write_test_clip(path, frames, fps, wav, sample_rate, pts_ms=pts_ms, rotation=rotation)
    write_video(path, iter(frames), fps, wav, sample_rate if wav is not None else None)
    return path
