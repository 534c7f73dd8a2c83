"""Stage 1 of ``avloc localize``: probe, check and decode a video at the analysis rate (frames + audio windows).

Frames are decoded at ``cfg.fps`` and downscaled early by FFmpeg to the model's working size (short side = the
model's input size), each paired with the audio window centred on it; memory is independent of the video's
length (:func:`iter_raw_frames` and :func:`decode_video` stream).
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from avloc.errors import ConfigError, MediaError
from avloc.frontends.image import ImageConfig
from avloc.inference.config import LocalizeConfig
from avloc.io.audio import resample, rms_db, window_at
from avloc.io.media import Frame, MediaInfo, fit_size, iter_frames, probe
from avloc.methods.base import LocalizationMethod

#: the smallest picture side analysed: below it a frame holds too few pixels to say where a sound comes from
#: (a 1x1 video would otherwise be "on-screen" at every frame); 16x16 and above are analysed
MIN_VIDEO_SIDE = 8


#: the largest in-memory video ``avloc.localize`` takes as an array (pixels over all frames): beyond it, a file
MAX_ARRAY_PIXELS = 2**33


@dataclass
class ArrayVideo:
    """A video given as arrays (the Python API, :func:`avloc.localize`): RGB frames ``(T, H, W, 3)`` uint8 at
    ``fps``, and optionally mono audio ``(N,)`` at ``sample_rate``. Read by the same stages as a file (frames
    at the analysis rate with the audio window centred on each, the overlay's frames and sound), with the
    timing of :func:`avloc.io.media.iter_frames`: the frame shown at ``t`` is the last one starting at or
    before ``t``; the video lasts ``T / fps``.
    """

    frames: np.ndarray
    fps: float
    audio: np.ndarray | None = None
    sample_rate: int | None = None
    name: str = "array"

    def __post_init__(self) -> None:
        f, a = self.frames, self.audio
        if not isinstance(f, np.ndarray) or f.ndim != 4 or f.shape[-1] != 3 or f.dtype != np.uint8:
            raise ConfigError(f"frames must be a (T, H, W, 3) uint8 array, got {getattr(f, 'shape', type(f))} "
                              f"{getattr(f, 'dtype', '')}")
        if min(f.shape[:3]) < 1:
            raise ConfigError(f"frames must hold at least one frame of at least 1x1 pixel, got shape {f.shape}")
        if f.size > MAX_ARRAY_PIXELS:
            raise ConfigError(f"frames of shape {f.shape} are too large to analyse in memory: write them to a file")
        if not (isinstance(self.fps, int | float) and math.isfinite(self.fps) and self.fps > 0):
            raise ConfigError(f"video_fps must be a positive finite number, got {self.fps!r}")
        if a is None:
            return
        if not isinstance(a, np.ndarray) or a.ndim != 1 or a.dtype.kind != "f":
            raise ConfigError(f"audio must be a mono (N,) float array, got {getattr(a, 'shape', type(a))} "
                              f"{getattr(a, 'dtype', '')}")
        if not np.all(np.isfinite(a)):
            raise ConfigError("audio holds NaN or infinite samples")
        sr = self.sample_rate
        if not (isinstance(sr, int) and not isinstance(sr, bool) and 1 <= sr <= MAX_SAMPLE_RATE):
            raise ConfigError(f"sample_rate must be an integer in [1, {MAX_SAMPLE_RATE}], got {sr!r}")

    @property
    def duration(self) -> float:
        return self.frames.shape[0] / float(self.fps)

    def info(self) -> MediaInfo:
        """What a probe of the same video as a file would say."""
        t, h, w = self.frames.shape[:3]
        return MediaInfo(path=f"<{self.name}>", duration=self.duration, fps=float(self.fps), fps_fraction=None,
                         width=w, height=h, frames=t, video_codec=None,
                         audio_sample_rate=None if self.audio is None else self.sample_rate,
                         audio_channels=None if self.audio is None else 1, audio_codec=None, format="array",
                         coded_width=w, coded_height=h)

    def iter_frames(self, fps: float, size: tuple[int, int] | None = None, start: float = 0.0) -> Iterator[Frame]:
        """Frames at ``start + k / fps`` until the end, resized to ``size`` (w, h) (bilinear)."""
        import cv2

        n = self.frames.shape[0]
        k = 0
        while (t := start + k / fps) < self.duration:
            i = min(math.floor(t * self.fps + 1e-9), n - 1)
            img = self.frames[i]
            if size is not None and (img.shape[1], img.shape[0]) != tuple(size):
                img = cv2.resize(img, tuple(size), interpolation=cv2.INTER_LINEAR)
            yield Frame(k, t, i / float(self.fps), np.ascontiguousarray(img))
            k += 1

    def track(self, rate: int) -> np.ndarray:
        """The whole audio track at ``rate`` (zeros of the video's length without audio)."""
        if self.audio is None or self.sample_rate is None:
            return np.zeros(round(self.duration * rate), np.float32)
        return resample(self.audio.astype(np.float32), self.sample_rate, rate)


#: the highest audio sample rate taken (arrays, imports): 768 kHz, the highest rate of common audio hardware
MAX_SAMPLE_RATE = 768_000


class _ArrayAudio:
    """:class:`avloc.io.media.AudioStream`'s ``window`` over an :class:`ArrayVideo`'s track."""

    def __init__(self, video: ArrayVideo, rate: int) -> None:
        self.rate = rate
        self.wav = video.track(rate)

    def window(self, center: float, seconds: float) -> np.ndarray:
        return window_at(self.wav, self.rate, center, seconds)


Media = Path | ArrayVideo


def working_size(width: int, height: int, image: ImageConfig) -> tuple[int, int]:
    """Decode size (w, h): aspect kept, short side = what the model's preprocessing starts from
    (``pad``: long side = the model's size, never upscaled)."""
    if image.mode == "pad":
        return fit_size(width, height, max_side=image.size)
    short = max(image.size, image.resize) if image.mode == "crop" else image.size
    return fit_size(width, height, short_side=short)


def frames_of(media: Media, fps: float, size: tuple[int, int] | None = None, start: float = 0.0) -> Iterator[Frame]:
    """Frames of a file (decoded, :func:`avloc.io.media.iter_frames`) or an :class:`ArrayVideo` at ``fps``."""
    if isinstance(media, ArrayVideo):
        return media.iter_frames(fps, size, start)
    return iter_frames(media, fps=fps, size=size, start=start)


def track_of(media: Media, rate: int) -> np.ndarray:
    """The whole audio track of a file or an :class:`ArrayVideo`, mono at ``rate``."""
    if isinstance(media, ArrayVideo):
        return media.track(rate)
    from avloc.io.media import decode_audio

    return decode_audio(media, sample_rate=rate)[0]


def audio_chunks(media: Media) -> Iterator[np.ndarray]:
    """The audio track at its own rate, streamed in chunks (for the overlay's encoder)."""
    if isinstance(media, ArrayVideo):
        assert media.audio is not None
        return iter([media.audio.astype(np.float32)])
    from avloc.io.media import iter_audio

    return iter_audio(media)


def check_video(path: Media, model: LocalizationMethod | None, cfg: LocalizeConfig, tagger: Any,
                info: MediaInfo | None = None) -> MediaInfo:
    """Probe ``path`` (unless ``info`` is given) and refuse what cannot be analysed (no pictures, too small, no
    audio, bad combination)."""
    if info is None:
        info = path.info() if isinstance(path, ArrayVideo) else probe(path)
    if not info.has_video or not info.width or not info.height:
        raise MediaError(f"{path}: no video stream (avloc localize needs pictures)")
    if min(info.width, info.height) < MIN_VIDEO_SIDE:
        raise MediaError(f"{path}: {info.width}x{info.height} pixels is too small to analyse "
                         f"(at least {MIN_VIDEO_SIDE}x{MIN_VIDEO_SIDE} needed)")
    if not info.has_audio and not cfg.visual_only:
        raise MediaError(f"{path}: no audio track; pass --visual-only to localize with the object prior alone")
    if cfg.visual_only and (model is not None or tagger is not None):
        raise ConfigError("--visual-only uses the object prior alone: do not combine it with --model or --audio-tagger")
    return info


@dataclass
class RawFrame:
    """One analysed frame as decoded: working-size picture and the audio window centred on it."""

    index: int
    time: float
    source_time: float
    image: np.ndarray  # (h, w, 3) uint8, working size
    audio: np.ndarray  # (N,) float32 window at the model's rate (zeros without audio)
    rms_db: float | None


@dataclass
class DecodedVideo:
    """What :func:`decode_video` reads from one video: its probe and its analysed frames (:class:`RawFrame`),
    streamed (an iterable consumed once)."""

    input: Path
    info: MediaInfo
    frames: Iterable[RawFrame]


def iter_raw_frames(path: Media, info: MediaInfo, cfg: LocalizeConfig, sample_rate: int, window: float,
                    work_wh: tuple[int, int]) -> Iterator[RawFrame]:
    """Decode ``path`` at ``cfg.fps`` and working size, each frame with its audio window (streamed)."""
    from avloc.io.media import AudioStream

    n_win = max(1, round(window * sample_rate))
    with contextlib.ExitStack() as stack:
        audio: AudioStream | _ArrayAudio | None = None
        if info.has_audio and not cfg.visual_only:
            audio = (_ArrayAudio(path, sample_rate) if isinstance(path, ArrayVideo)
                     else stack.enter_context(AudioStream(path, sample_rate)))
        for fr in frames_of(path, cfg.fps, work_wh):
            if audio is not None:
                aw = audio.window(fr.time, window)
                db: float | None = rms_db(aw)
            else:
                aw, db = np.zeros(n_win, np.float32), None
            yield RawFrame(fr.index, fr.time, fr.source_time, fr.image, aw, db)


def decode_video(path: str | Path, model_cfg: Any, cfg: LocalizeConfig) -> DecodedVideo:
    """Probe and check one video, and its frames for :func:`analyse_video` (``decoded=``), streamed: the CPU half
    of the analysis (a collection's decode step, :mod:`avloc.inference.collection`).

    ``model_cfg``: the map source's model config (its ``image`` and ``audio`` preprocessing).
    """
    path = Path(path)
    info = check_video(path, None, cfg, None)  # the model/tagger combination is checked where they are loaded
    window = cfg.window_seconds if cfg.window_seconds is not None else model_cfg.audio.window_seconds
    assert info.width and info.height  # check_video
    work_wh = working_size(info.width, info.height, model_cfg.image)
    return DecodedVideo(path, info, iter_raw_frames(path, info, cfg, model_cfg.audio.sample_rate, window, work_wh))
