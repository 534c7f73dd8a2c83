"""Face tracks: detections of consecutive analysed frames linked by greedy IoU, with ids that persist.

:class:`FaceTracker` links online, one frame at a time, so a track keeps its id however the frames arrive
(the localize pipeline analyses a video in chunks, :class:`.session.FaceSession`); :func:`track_faces` runs it
over a list of frames and returns each track's rows (:class:`FaceTrack`).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from avloc.errors import ConfigError
from avloc.methods.avsemantic.faces.geometry import SCORE, as_rows, face_xyxy
from avloc.metrics.ops import box_iou


@dataclass
class TrackConfig:
    """Greedy IoU linking."""

    #: a detection continues a track when the IoU with the track's last box reaches this (0.3: a face moves
    #: less than about half its width between frames 0.2 s apart, measured on the dev clips' talking heads)
    iou_threshold: float = 0.3
    #: analysed frames a track survives without a detection: 2 = a hand over the face for 0.4 s at 5 fps
    max_gap: int = 2

    def __post_init__(self) -> None:
        if not 0.0 <= self.iou_threshold <= 1.0:
            raise ConfigError(f"TrackConfig.iou_threshold must be in [0, 1], got {self.iou_threshold}")
        if self.max_gap < 0:
            raise ConfigError(f"TrackConfig.max_gap must be >= 0, got {self.max_gap}")


class FaceTracker:
    """Online linking: :meth:`update` with each frame's detections, in time order, returns their track ids.

    At frame t every live track (last seen at most ``max_gap`` frames before t-1) is compared with each
    detection by the IoU of the track's last box; pairs are taken in decreasing IoU while both are free and
    IoU >= ``iou_threshold`` (and > 0); a detection left over starts a track with the next unused id.
    """

    def __init__(self, config: TrackConfig | None = None) -> None:
        self.config = config or TrackConfig()
        self.reset()

    def reset(self) -> None:
        """Forget every track (a new video); ids start again at 0."""
        self._frame = -1
        self._next = 0
        self._last: dict[int, tuple[int, np.ndarray]] = {}  # id -> (frame last seen, its row)

    def skip(self, frames: int) -> None:
        """``frames`` analysed frames passed without detections (a stretch the caller did not look at)."""
        if frames < 0:
            raise ConfigError(f"FaceTracker.skip: frames must be >= 0, got {frames}")
        self._frame += frames

    def update(self, rows: np.ndarray) -> np.ndarray:
        """One frame's detections (K, 15) -> their track ids (K,) int64."""
        self._frame += 1
        t, d = self._frame, as_rows(rows)
        ids = np.full(len(d), -1, np.int64)
        live = [i for i, (seen, _) in self._last.items() if seen >= t - 1 - self.config.max_gap]
        if live and len(d):
            iou = np.array([[box_iou(face_xyxy(self._last[i][1]), face_xyxy(r)) for r in d] for i in live])  # (n_live, K)
            order = np.dstack(np.unravel_index(np.argsort(-iou, axis=None, kind="stable"), iou.shape))[0]
            taken: set[int] = set()
            for li, di in order:
                if iou[li, di] < self.config.iou_threshold or iou[li, di] <= 0:
                    break
                if live[li] in taken or ids[di] >= 0:
                    continue
                ids[di] = live[li]
                taken.add(live[li])
        for di in np.flatnonzero(ids < 0):
            ids[di] = self._next
            self._next += 1
        for di, i in enumerate(ids):
            self._last[int(i)] = (t, d[di].copy())
        self._last = {i: v for i, v in self._last.items() if v[0] >= t - 1 - self.config.max_gap}  # drop dead tracks
        return ids


@dataclass
class FaceTrack:
    """One face over the analysed frames: ``rows[t]`` is its (15,) detection at frame t, or None."""

    rows: list[np.ndarray | None] = field(default_factory=list)

    @property
    def n_frames(self) -> int:
        return len(self.rows)

    @property
    def seen(self) -> np.ndarray:
        """(T,) bool: frames with a detection."""
        return np.array([r is not None for r in self.rows], bool)

    @property
    def first(self) -> int:
        return int(np.argmax(self.seen))

    @property
    def last(self) -> int:
        return int(len(self.rows) - 1 - np.argmax(self.seen[::-1]))

    def mean_score(self) -> float:
        s = [float(r[SCORE]) for r in self.rows if r is not None and r.size > SCORE]
        return float(np.mean(s)) if s else 0.0


def track_faces(detections: list[np.ndarray], iou_threshold: float = 0.3, max_gap: int = 2) -> list[FaceTrack]:
    """Per-frame detections (each (K_t, 15)) -> tracks (:class:`FaceTracker`), ordered by first frame, then by
    mean score; every track has ``len(detections)`` rows. ``max_gap`` 0 = consecutive frames only."""
    tracker = FaceTracker(TrackConfig(iou_threshold, max_gap))
    T = len(detections)
    by_id: dict[int, FaceTrack] = {}
    for t, dets in enumerate(detections):
        d = np.asarray(as_rows(dets), np.float32)
        for row, i in zip(d, tracker.update(d)):
            by_id.setdefault(int(i), FaceTrack([None] * T)).rows[t] = row.copy()
    return sorted(by_id.values(), key=lambda tr: (tr.first, -tr.mean_score()))
