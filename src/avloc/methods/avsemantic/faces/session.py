"""One video's faces across the localize pipeline's chunks: detections, tracks and synchrony, keyed by time.

The pipeline calls a clip method on consecutive chunks of analysed frames with context each side
(:meth:`avloc.methods.avsemantic.method.AVSemantic.analyse_clip`), so a face is seen again in the next call's
context, and the synchrony window of a frame (:mod:`.speaker`) reaches into frames of the previous call.
:class:`FaceSession` keeps, per analysed frame time, the frame's faces, their track ids
(:class:`.tracks.FaceTracker`, ids stable over the whole video), each face's mouth-patch change and the
audio energy; a frame already seen is not detected again. A new video is recognised when a time already
stored comes back with another picture or other sound, or time goes back to a frame never seen: the session
then starts afresh (ids from 0). One session serves one video at a time; frames older than the synchrony window before
the current chunk are forgotten, so memory does not grow with the video's length.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

from avloc.errors import ConfigError
from avloc.methods.avsemantic.faces.detect import FaceDetector
from avloc.methods.avsemantic.faces.geometry import ROW_LEN
from avloc.methods.avsemantic.faces.speaker import (
    SpeakerConfig,
    SpeakerPick,
    as_grey01,
    choose_speaker,
    interval_energy,
    mouth_patch,
    patch_change,
    windowed_synchrony,
)
from avloc.methods.avsemantic.faces.tracks import FaceTracker, TrackConfig

log = logging.getLogger(__name__)

#: frame times are compared at this many decimals (0.1 ms: well below any frame interval)
TIME_DECIMALS = 4
#: a frame's fingerprint is its picture subsampled by this stride (a new video with the same times differs there)
FINGERPRINT_STRIDE = 16


class Frames(Protocol):
    """The frames of one call, read lazily: the session converts only the frames it has not seen."""

    def __len__(self) -> int: ...

    def image(self, j: int) -> np.ndarray:
        """Frame ``j`` as an RGB uint8 image (H, W, 3)."""
        ...

    def fingerprint(self, j: int) -> int:
        """A hash of frame ``j``'s picture, equal for equal pictures (a subsample is enough)."""
        ...


class ArrayFrames:
    """:class:`Frames` over RGB uint8 frames (T, H, W, 3) in memory."""

    def __init__(self, images: np.ndarray) -> None:
        if images.ndim != 4 or images.shape[-1] != 3 or images.dtype != np.uint8:
            raise ConfigError(f"ArrayFrames wants RGB uint8 frames (T, H, W, 3), got {images.shape} {images.dtype}")
        self.images = images

    def __len__(self) -> int:
        return len(self.images)

    def image(self, j: int) -> np.ndarray:
        return np.ascontiguousarray(self.images[j])

    def fingerprint(self, j: int) -> int:
        return hash(self.images[j, ::FINGERPRINT_STRIDE, ::FINGERPRINT_STRIDE].tobytes())


@dataclass
class FrameFaces:
    """The faces of one analysed frame (model-input pixels), their track ids and synchrony, and the speaker."""

    rows: np.ndarray  # (K, 15) detections, best first
    tracks: np.ndarray  # (K,) int64 track ids, stable across the video
    sync: np.ndarray  # (K,) synchrony s of each face (NaN: too few frame pairs in its window)
    speaker: SpeakerPick | None = None  # index into rows

    @classmethod
    def empty(cls) -> FrameFaces:
        """A frame with no face (or one where faces were not looked for)."""
        return cls(np.zeros((0, ROW_LEN), np.float32), np.zeros(0, np.int64), np.zeros(0))


@dataclass
class _Frame:
    fingerprint: int
    rows: np.ndarray  # (K, 15)
    tracks: np.ndarray  # (K,)
    energy: float  # audio between the previous analysed frame and this one
    changes: dict[int, np.ndarray] = field(default_factory=dict)  # track id -> (2 D,) mouth-patch change


class FaceSession:
    """Faces, tracks and speaker of one video across calls (module doc)."""

    def __init__(self, detector: FaceDetector, speaker: SpeakerConfig | None = None, tracks: TrackConfig | None = None) -> None:
        self.detector = detector
        self.speaker_config = speaker or SpeakerConfig()
        self._tracker = FaceTracker(tracks)
        self.reset()

    def reset(self) -> None:
        """Forget the video (the next call starts a new one)."""
        self._frames: dict[float, _Frame] = {}  # by rounded time, in insertion (= time) order
        self._patches: dict[int, tuple[float, np.ndarray]] = {}  # track id -> (time, its last mouth patch)
        self._tracker.reset()

    def analyse(
        self, frames: Frames | np.ndarray, windows: np.ndarray, sample_rate: int, times: np.ndarray, keep: range,
        choose: bool = True,
    ) -> list[FrameFaces]:
        """Consecutive frames (:class:`Frames`, or RGB uint8 (T, H, W, 3)), their centred audio windows (T, N) at
        ``sample_rate``, times (T,) s -> the faces of ``frames[keep]`` with their tracks and synchrony, and the
        speaker when ``choose``."""
        frames = ArrayFrames(frames) if isinstance(frames, np.ndarray) else frames
        t = np.round(np.asarray(times, np.float64).reshape(-1), TIME_DECIMALS)
        if not (len(frames) == len(windows) == t.size) or (t.size > 1 and np.any(np.diff(t) <= 0)):
            raise ConfigError(f"FaceSession.analyse: {len(frames)} frames, {len(windows)} windows and {t.size} strictly "
                              "increasing times must match")
        # a frame is the same frame when its picture and its sound are (the same pictures may come with other audio)
        prints = [hash((frames.fingerprint(j), np.ascontiguousarray(windows[j]).tobytes())) for j in range(t.size)]
        if self._is_new_video(t, prints):
            self.reset()
        dt = float(np.median(np.diff(t))) if t.size > 1 else 0.0
        energy = interval_energy(windows, sample_rate, dt) if dt > 0 else np.full(t.size, np.nan)
        for j in range(t.size):
            if float(t[j]) not in self._frames:
                self._add(float(t[j]), prints[j], frames.image(j), float(energy[j]), dt)
        self._forget_before(float(t[0]) - self.speaker_config.window_s)
        return [self._frame_faces(float(t[j]), choose) for j in keep]

    # -- state --------------------------------------------------------------------------------
    def _is_new_video(self, t: np.ndarray, prints: list[int]) -> bool:
        if not self._frames:
            return False
        last = next(reversed(self._frames))
        for tj, fp in zip(t, prints):
            seen = self._frames.get(float(tj))
            if (seen is not None and seen.fingerprint != fp) or (seen is None and tj <= last):
                log.debug("faces: a new video at t = %.3f s (a time seen before with another picture or sound, or time "
                          "went back)", tj)
                return True
        return False

    def _add(self, t: float, fingerprint: int, image: np.ndarray, energy: float, dt: float) -> None:
        """Detect, track and measure the mouths of one new frame (later than every stored one)."""
        if self._frames and dt > 0:
            missed = round((t - next(reversed(self._frames))) / dt) - 1
            if missed > 0:  # a stretch the caller did not analyse (no human sound heard there)
                self._tracker.skip(missed)
        rows = self.detector.detect(image)
        ids = self._tracker.update(rows)
        frame = _Frame(fingerprint, rows, ids, energy)
        grey = as_grey01(image)
        prev_t = next(reversed(self._frames)) if self._frames else None
        for row, i in zip(rows, ids):
            patch = mouth_patch(grey, row, self.speaker_config.patch_wh)
            last = self._patches.get(int(i))
            if last is not None and last[0] == prev_t:  # the same face in the frame just before
                change = patch_change(patch, last[1])
                if change is not None:
                    frame.changes[int(i)] = change
            if patch is not None:
                self._patches[int(i)] = (t, patch)
        self._frames[t] = frame

    def _forget_before(self, t0: float) -> None:
        for t in [t for t in self._frames if t < t0]:
            del self._frames[t]
        self._patches = {i: v for i, v in self._patches.items() if v[0] >= t0}

    # -- per frame ------------------------------------------------------------------------------
    def _frame_faces(self, t: float, choose: bool) -> FrameFaces:
        f = self._frames[t]
        sync = np.full(len(f.rows), np.nan)
        if choose and len(f.rows):
            half = self.speaker_config.window_s / 2
            near = [u for u in self._frames if abs(u - t) <= half + 10.0 ** -TIME_DECIMALS]
            times = np.asarray(near)
            energy = np.array([self._frames[u].energy for u in near])
            centre = [near.index(t)]
            dim = 2 * self.speaker_config.patch_wh[0] * self.speaker_config.patch_wh[1]
            for k, i in enumerate(f.tracks):
                x = np.full((len(near), dim), np.nan)  # (n, 2 D) the track's changes in the window
                for n, u in enumerate(near):
                    ch = self._frames[u].changes.get(int(i))
                    if ch is not None:
                        x[n] = ch
                sync[k] = windowed_synchrony(x, energy, times, centre, self.speaker_config)[0]
        pick = choose_speaker(sync, self.speaker_config) if choose else None
        return FrameFaces(np.asarray(f.rows, np.float32).reshape(-1, ROW_LEN), f.tracks, sync, pick)
