"""Faces for human sounds: detection, person geometry, face tracks and who is speaking.

Building blocks of the training-free audio-event grounding (issue 16) for sounds
that people make (speech, singing, laughter, crying...):

1. **Detection**: YuNet (Wu, Peng & Yu, "YuNet: A Tiny Millisecond-level Face
   Detector", Machine Intelligence Research 2023; weights ``yunet_n_dynamic.onnx``
   from ShiqiYu/libfacedetection.train, Apache-2.0, shipped in ``avloc/zoo``) through
   OpenCV's ``cv2.FaceDetectorYN``. :class:`FaceDetector` returns, per image, rows
   ``[x, y, w, h, right eye x, y, left eye x, y, nose tip x, y, right mouth corner
   x, y, left mouth corner x, y, score]`` in that image's pixels (K, 15).
2. **Geometry** (pure NumPy, proportions in face-box units, see the constants):
   :func:`person_box` (head + upper body), :func:`person_map` (a soft heatmap:
   a Gaussian on the head plus a weaker one on the chest), :func:`mouth_box`.
3. **Tracks**: :func:`track_faces` links detections of consecutive analysed
   frames by greedy IoU.
4. **Active speaker**: the audio-visual synchrony idea of Hershey & Movellan
   ("Audio Vision: Using Audio-Visual Synchrony to Locate Sounds", NIPS 1999),
   restricted to each face's mouth region. For track ``i`` and frame difference
   ``k`` (frames ``k-1`` and ``k``, both with a box)::

       m_ik   = mean | P_k - mean P_k - (P_{k-1} - mean P_{k-1}) |
                (P_k: the grey mouth box of frame k resampled to MOUTH_PATCH_WH,
                 so the energy does not depend on the face size; each frame's own
                 box, so head translation is compensated; the patch mean removed,
                 so a global brightness change is not motion)
       e_k    = (env_{k-1} + env_k) / 2           (the audio over the same interval)
       rho_i  = Pearson(m_i., e.)                 over the valid k (>= min_pairs), both
                                                  box-averaged over ~smooth_s = 0.4 s first
                                                  when the rate is above ~4 fps
       gate_i = mean_k m_ik / (mean_k m_ik + motion_half)
       score_i = max(rho_i, 0) * gate_i           in [0, 1)

   ``rho`` says the mouth moves *when* the sound is loud; the gate keeps a still
   face (``m`` = sensor noise, any correlation by chance) low. :func:`choose_speaker`
   picks the best track only when it beats the runner-up by a margin.

Rates: the cue works at 5 analysed frames per second. There the 4-5 Hz syllable
rhythm is aliased and the synchrony rests on phrase-level structure (the mouth still
in pauses of >= 0.4 s, moving while there is sound), so it needs windows of >= 4 s
(20 differences) containing pauses. Measured on real speech (``bench/speed/faces.py``,
the face's own audio vs the same face 3 s apart, 4-s windows): the right one is
chosen in 83 % of the TEDx windows and 67 % of the singer's at 5 fps; all decoded
frames (25-30 fps, :func:`mouth_motion_series`, smoothed over 0.4 s) did not do
better (67 % / 67 %). It fails on a 26-px webcam inset (near chance, mostly None)
and when a hand moves over the mouth (make-up vlog). A still face is never chosen.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

from avloc.errors import ConfigError

ZOO_DIR = Path(__file__).resolve().parents[2] / "zoo"
#: The shipped YuNet weights. "n" over "s": at 640 px it finds faces in more of the
#: frames of the band clip (0.87 vs 0.71) and of the webinar inset at 320 px (0.83 vs
#: 0.30), equal elsewhere, at the same speed (docs/localize.md, "Faces").
DEFAULT_MODEL = ZOO_DIR / "yunet_n_dynamic.onnx"

#: Row layout of a detection.
BOX = slice(0, 4)
RIGHT_EYE, LEFT_EYE, NOSE, RIGHT_MOUTH, LEFT_MOUTH = (slice(4 + 2 * i, 6 + 2 * i) for i in range(5))
SCORE = 14
ROW_LEN = 15

#: clockwise rotation in degrees -> OpenCV's rotate code
_ROTATE = {90: cv2.ROTATE_90_CLOCKWISE, 180: cv2.ROTATE_180, 270: cv2.ROTATE_90_COUNTERCLOCKWISE}


def unrotate_rows(rows: np.ndarray, rotation: int, frame_wh: tuple[int, int]) -> np.ndarray:
    """Detections in a ``rotation``-degree clockwise rotated image -> the same faces in the upright
    ``frame_wh`` = (W, H) image: boxes stay axis-aligned (w and h swap at 90 and 270), landmarks follow.

    A point (x', y') of the image rotated by 90 degrees clockwise is (x, y) = (y', H - x') upright; by 270,
    (W - y', x'); by 180, (W - x', H - y').
    """
    W, H = frame_wh
    out = rows.copy()

    def point(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        if rotation == 90:
            return y, H - x
        if rotation == 270:
            return W - y, x
        if rotation == 180:
            return W - x, H - y
        raise ConfigError(f"unrotate_rows: rotation must be 90, 180 or 270, got {rotation}")

    x1, y1 = point(rows[:, 0], rows[:, 1])
    x2, y2 = point(rows[:, 0] + rows[:, 2], rows[:, 1] + rows[:, 3])
    out[:, 0], out[:, 1] = np.minimum(x1, x2), np.minimum(y1, y2)
    out[:, 2], out[:, 3] = np.abs(x2 - x1), np.abs(y2 - y1)
    for k in range(4, 14, 2):
        out[:, k], out[:, k + 1] = point(rows[:, k], rows[:, k + 1])
    return out


# ----------------------------------------------------------------------------- geometry constants
# In units of the YuNet face box (w = its width, h = its height; the box spans about
# eyebrows to chin and cheek to cheek). Anthropometry: the head with hair is about
# 1.3 face widths wide and reaches ~0.5 face heights above the box; shoulders are
# ~3 face widths wide and ~1.5 face heights below the box top... chest to ~2.5.
PERSON_WIDTH = 2.0  # person box width / face width: head, neck and the inner shoulders
HEAD_WIDTH = 1.3  # head box width / face width (hair and ears)
PERSON_ABOVE = 0.5  # person box top = face top - 0.5 h (hair, forehead)
PERSON_BELOW = 2.5  # person box bottom = face top + 2.5 h (chin at 1.0, chest below)
HEAD_CENTRE_Y = 0.4  # head Gaussian centre = face top + 0.4 h (between eyes and hairline)
HEAD_SIGMA = (0.5, 0.6)  # head Gaussian sigma (x in w, y in h): ~0.6 of the peak at the box sides
BODY_CENTRE_Y = 1.9  # chest Gaussian centre = face top + 1.9 h
BODY_SIGMA = (0.8, 0.6)  # chest Gaussian sigma (x in w, y in h)
BODY_WEIGHT = 0.5  # chest peak relative to the head peak: the sound comes from the head
# Mouth box, in units of s = max(mouth-corner distance, MOUTH_MIN_WIDTH * w) (the corners
# collapse on a profile face): corners +- 0.3 s each side, from the nose base
# (0.5 s above the corner line) to the chin (0.9 s below), so lips and jaw are inside.
MOUTH_MIN_WIDTH = 0.35
MOUTH_HALF_WIDTH = 0.8
MOUTH_ABOVE = 0.5
MOUTH_BELOW = 0.9
#: Floor of the audio RMS before the log (about -80 dBFS), as avloc.methods.avsync_prior: silence is flat, not -inf.
RMS_FLOOR = 1e-4
#: Mouth crops are resampled to this (w, h) before differencing (the mouth box's aspect 1.6 : 1.4).
MOUTH_PATCH_WH = (24, 21)


# ----------------------------------------------------------------------------- detection
@dataclass
class FaceConfig:
    """YuNet settings; every default measured on the shared real clips (docs/localize.md, "Faces")."""

    #: ONNX file; empty = the shipped ``avloc/zoo/yunet_n_dynamic.onnx``.
    model: str = ""
    #: 0.6: every face in the speech/singing clips kept (their median score is 0.90-0.94;
    #: band faces 0.6-0.88); 0.7 loses 17 % of the band frames. No box >= 0.6 on the
    #: waterfall / bird / siren / chainsaw clips; a cat body at 0.6 in 4/25 frames.
    #: (OpenCV's YuNet demo uses 0.9, which misses small and turned faces.)
    score_threshold: float = 0.6
    #: IoU above which the lower-scoring box is suppressed; 0.3 as in OpenCV's YuNet demo.
    nms_threshold: float = 0.3
    #: Candidates kept before NMS; 5000 as in OpenCV's YuNet demo (not a cap on faces).
    top_k: int = 5000
    #: Boxes narrower than this fraction of the frame's short side are dropped (too small
    #: for a mouth region). The smallest true face measured: 0.023 (band clip).
    min_face_fraction: float = 0.02
    #: The detector runs with the frame's long side at this size (aspect kept): 640 finds the
    #: 26-px webinar face in 100 % of frames (83 % at 320) at 16-26 ms per frame (2 CPU threads).
    long_side: int = 640
    #: Also enlarge frames smaller than ``long_side``: YuNet misses faces under ~10 px and
    #: low-resolution frames; the 298x224 baby clip goes from 22 % (as is) to 35 % of frames.
    upscale: bool = True
    #: Clockwise rotations (degrees) tried when no face is found upright: YuNet finds only roughly upright
    #: faces, and people lie down (a crying baby on a changing mat: 21 of 60 sampled frames upright, 52 with
    #: the rotations). The rotation whose best face scores highest wins; boxes come back in the frame's pixels.
    rotations: tuple[int, ...] = (90, 270, 180)

    def __post_init__(self) -> None:
        if not 0.0 < self.score_threshold < 1.0:
            raise ConfigError(f"FaceConfig.score_threshold must be in (0, 1), got {self.score_threshold}")
        if not 0.0 < self.nms_threshold < 1.0:
            raise ConfigError(f"FaceConfig.nms_threshold must be in (0, 1), got {self.nms_threshold}")
        if self.top_k < 1:
            raise ConfigError(f"FaceConfig.top_k must be >= 1, got {self.top_k}")
        if not 0.0 <= self.min_face_fraction < 1.0:
            raise ConfigError(f"FaceConfig.min_face_fraction must be in [0, 1), got {self.min_face_fraction}")
        bad = [r for r in self.rotations if r not in _ROTATE]
        if bad:
            raise ConfigError(f"FaceConfig.rotations must be among 90, 180, 270, got {bad}")
        if self.long_side < 32:
            raise ConfigError(f"FaceConfig.long_side must be >= 32 pixels, got {self.long_side}")

    @property
    def model_path(self) -> Path:
        return Path(self.model) if self.model else DEFAULT_MODEL


class FaceDetector:
    """YuNet through ``cv2.FaceDetectorYN``. One instance per thread (OpenCV's object is stateful)."""

    def __init__(self, config: FaceConfig | None = None) -> None:
        self.config = config or FaceConfig()
        path = self.config.model_path
        if not path.is_file():
            raise ConfigError(
                f"YuNet face model not found at {path}: it ships as avloc/zoo/yunet_n_dynamic.onnx "
                "(reinstall avloc) or pass FaceConfig(model='path/to/yunet.onnx')"
            )
        c = self.config
        self._size = (c.long_side, c.long_side)
        try:
            self._net = cv2.FaceDetectorYN.create(str(path), "", self._size, c.score_threshold, c.nms_threshold, c.top_k)
        except cv2.error as e:
            raise ConfigError(f"{path}: OpenCV could not load it as a YuNet ONNX model ({e.msg})") from None

    def working_size(self, width: int, height: int) -> tuple[int, int]:
        """The (w, h) the detector runs at for a ``width`` x ``height`` frame."""
        s = self.config.long_side / max(width, height)
        if s > 1.0 and not self.config.upscale:
            s = 1.0
        return max(1, round(width * s)), max(1, round(height * s))

    def detect(self, rgb: np.ndarray) -> np.ndarray:
        """Faces in an RGB uint8 image (H, W, 3) -> (K, 15) float32 rows in its pixels, best first.

        When none is found upright, the image is searched at each of ``config.rotations`` and the faces of
        the best-scoring rotation are returned, mapped back to the upright image (:func:`unrotate_rows`).
        """
        if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8:
            raise ConfigError(f"FaceDetector.detect wants an RGB uint8 image (H, W, 3), got {rgb.shape} {rgb.dtype}")
        out = self._detect_upright(rgb)
        if len(out) or not self.config.rotations:
            return out
        H, W = rgb.shape[:2]
        best = out
        for r in self.config.rotations:
            rows = self._detect_upright(np.ascontiguousarray(cv2.rotate(rgb, _ROTATE[r])))
            if len(rows) and (not len(best) or rows[0, SCORE] > best[0, SCORE]):
                best = unrotate_rows(rows, r, (W, H))
        return best

    def _detect_upright(self, rgb: np.ndarray) -> np.ndarray:
        H, W = rgb.shape[:2]
        w, h = self.working_size(W, H)
        if (w, h) != (W, H):
            interp = cv2.INTER_AREA if w < W else cv2.INTER_LINEAR
            img = cv2.resize(rgb, (w, h), interpolation=interp)
        else:
            img = rgb
        bgr = cv2.cvtColor(img, cv2.COLOR_RGB2BGR)  # YuNet was trained on BGR
        if (w, h) != self._size:
            self._net.setInputSize((w, h))
            self._size = (w, h)
        _, faces = self._net.detect(bgr)
        if faces is None or len(faces) == 0:
            return np.zeros((0, ROW_LEN), np.float32)
        out = np.asarray(faces, np.float32).reshape(-1, ROW_LEN).copy()  # (K, 15)
        out[:, 0:14:2] *= W / w  # x, w and landmark x back to the input's pixels
        out[:, 1:14:2] *= H / h  # y, h and landmark y
        out = out[out[:, 2] >= self.config.min_face_fraction * min(W, H)]
        return np.ascontiguousarray(out[np.argsort(-out[:, SCORE], kind="stable")])

    def detect_frames(self, frames: Iterable[np.ndarray]) -> list[np.ndarray]:
        """:meth:`detect` on each frame: one (K_t, 15) array per frame."""
        return [self.detect(f) for f in frames]


# ----------------------------------------------------------------------------- geometry
def _check_row(face_row: np.ndarray) -> np.ndarray:
    r = np.asarray(face_row, np.float64).reshape(-1)
    if r.size < 4:
        raise ConfigError(f"a face row needs at least [x, y, w, h], got {r.size} values")
    return r


def person_box(face_row: np.ndarray, frame_wh: tuple[int, int]) -> tuple[float, float, float, float]:
    """Head + upper body ``(x1, y1, x2, y2)`` from a face box, clipped to the (W, H) frame.

    ``PERSON_WIDTH`` (2.0) face widths wide centred on the face, from ``PERSON_ABOVE``
    (0.5) face heights above the face top to ``PERSON_BELOW`` (2.5) face heights below it.
    """
    x, y, w, h = _check_row(face_row)[:4]
    W, H = frame_wh
    cx = x + w / 2
    x1, x2 = cx - PERSON_WIDTH * w / 2, cx + PERSON_WIDTH * w / 2
    y1, y2 = y - PERSON_ABOVE * h, y + PERSON_BELOW * h
    return (float(np.clip(x1, 0, W)), float(np.clip(y1, 0, H)), float(np.clip(x2, 0, W)), float(np.clip(y2, 0, H)))


def head_box(face_row: np.ndarray, frame_wh: tuple[int, int]) -> tuple[float, float, float, float]:
    """The head with hair: the face box widened to ``HEAD_WIDTH`` (1.3) w and raised by 0.5 h above its top, clipped."""
    x, y, w, h = _check_row(face_row)[:4]
    W, H = frame_wh
    cx = x + w / 2
    return (
        float(np.clip(cx - HEAD_WIDTH * w / 2, 0, W)),
        float(np.clip(y - PERSON_ABOVE * h, 0, H)),
        float(np.clip(cx + HEAD_WIDTH * w / 2, 0, W)),
        float(np.clip(y + h, 0, H)),
    )


def person_map(
    face_rows: np.ndarray,
    weights: np.ndarray | Sequence[float] | None,
    map_wh: tuple[int, int],
    frame_wh: tuple[int, int],
    body_weight: float = BODY_WEIGHT,
) -> np.ndarray:
    """A soft person heatmap (h, w) float32 on a ``map_wh`` grid over a ``frame_wh`` frame.

    Per face ``i``: ``g_i = max(G_head, body_weight * G_body)`` with ``G`` axis-aligned
    Gaussians of peak 1: the head at (face centre x, top + 0.4 h) with sigma (0.5 w, 0.6 h),
    the chest at (centre x, top + 1.9 h) with sigma (0.8 w, 0.6 h). The map is
    ``max_i weights_i * g_i`` (peak = the largest weight; all zeros without faces).
    Values are sampled at cell centres; each sigma is at least half a cell so a face
    smaller than a cell still lights its cell. ``weights=None`` = 1 per face.
    """
    rows = np.asarray(face_rows, np.float64).reshape(-1, np.asarray(face_rows).shape[-1] if np.size(face_rows) else ROW_LEN)
    mw, mh = map_wh
    W, H = frame_wh
    if mw < 1 or mh < 1 or W <= 0 or H <= 0:
        raise ConfigError(f"person_map: map_wh {map_wh} and frame_wh {frame_wh} must be positive")
    wts = np.ones(len(rows)) if weights is None else np.asarray(weights, np.float64).reshape(-1)
    if wts.shape[0] != rows.shape[0]:
        raise ConfigError(f"person_map: {rows.shape[0]} faces but {wts.shape[0]} weights")
    out = np.zeros((mh, mw), np.float64)
    if rows.shape[0] == 0:
        return out.astype(np.float32)
    cw, ch = W / mw, H / mh
    xs = (np.arange(mw) + 0.5) * cw  # (w,) cell centres in frame pixels
    ys = (np.arange(mh) + 0.5) * ch  # (h,)

    def gauss(cx: float, cy: float, sx: float, sy: float) -> np.ndarray:
        sx, sy = max(sx, cw / 2), max(sy, ch / 2)
        gx = np.exp(-0.5 * ((xs - cx) / sx) ** 2)
        gy = np.exp(-0.5 * ((ys - cy) / sy) ** 2)
        return gy[:, None] * gx[None, :]  # (h, w)

    for r, wt in zip(rows, wts):
        x, y, w, h = r[:4]
        cx = x + w / 2
        head = gauss(cx, y + HEAD_CENTRE_Y * h, HEAD_SIGMA[0] * w, HEAD_SIGMA[1] * h)
        body = gauss(cx, y + BODY_CENTRE_Y * h, BODY_SIGMA[0] * w, BODY_SIGMA[1] * h)
        out = np.maximum(out, wt * np.maximum(head, body_weight * body))
    return out.astype(np.float32)


def mouth_box(face_row: np.ndarray, frame_wh: tuple[int, int] | None = None) -> tuple[float, float, float, float]:
    """Lips and jaw ``(x1, y1, x2, y2)`` from the mouth-corner landmarks (columns 10-13).

    With ``c`` the corners' midpoint and ``s = max(|L - R|, 0.35 w)``: x in ``c.x +- 0.8 s``,
    y from ``c.y - 0.5 s`` (nose base) to ``c.y + 0.9 s`` (chin). Clipped when ``frame_wh`` is given.
    """
    r = _check_row(face_row)
    if r.size < 14:
        raise ConfigError(f"mouth_box needs a detection row with landmarks (>= 14 values), got {r.size}")
    rm, lm = r[RIGHT_MOUTH], r[LEFT_MOUTH]
    c = (rm + lm) / 2
    s = max(float(np.hypot(*(lm - rm))), MOUTH_MIN_WIDTH * float(r[2]))
    x1, x2 = c[0] - MOUTH_HALF_WIDTH * s, c[0] + MOUTH_HALF_WIDTH * s
    y1, y2 = c[1] - MOUTH_ABOVE * s, c[1] + MOUTH_BELOW * s
    if frame_wh is not None:
        W, H = frame_wh
        x1, x2 = float(np.clip(x1, 0, W)), float(np.clip(x2, 0, W))
        y1, y2 = float(np.clip(y1, 0, H)), float(np.clip(y2, 0, H))
    return float(x1), float(y1), float(x2), float(y2)


def box_iou_xywh(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU of ``[x, y, w, h, ...]`` rows: (N, >=4) x (M, >=4) -> (N, M)."""
    a = np.asarray(a, np.float64).reshape(-1, np.asarray(a).shape[-1])[:, :4]
    b = np.asarray(b, np.float64).reshape(-1, np.asarray(b).shape[-1])[:, :4]
    ax1, ay1, ax2, ay2 = a[:, 0:1], a[:, 1:2], a[:, 0:1] + a[:, 2:3], a[:, 1:2] + a[:, 3:4]  # (N, 1)
    bx1, by1, bx2, by2 = b[:, 0], b[:, 1], b[:, 0] + b[:, 2], b[:, 1] + b[:, 3]  # (M,)
    iw = np.clip(np.minimum(ax2, bx2) - np.maximum(ax1, bx1), 0, None)
    ih = np.clip(np.minimum(ay2, by2) - np.maximum(ay1, by1), 0, None)
    inter = iw * ih
    union = a[:, 2:3] * a[:, 3:4] + b[:, 2] * b[:, 3] - inter
    return np.where(union > 0, inter / np.maximum(union, 1e-12), 0.0)


# ----------------------------------------------------------------------------- tracks
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
    """Link per-frame detections (each (K_t, 15)) into tracks by greedy IoU.

    At frame t every live track (last seen at t-1-max_gap or later) is compared with
    each detection by the IoU of the track's last box; pairs are taken in decreasing
    IoU while both are free and IoU >= ``iou_threshold``; a detection left over starts
    a track. ``max_gap`` = 2 lets a track survive two missed frames (a hand over the
    face: 0.4 s at 5 fps); 0 = consecutive frames only. Tracks are ordered by first
    frame, then by score; every track has ``len(detections)`` rows.
    """
    if not 0.0 <= iou_threshold <= 1.0:
        raise ConfigError(f"track_faces: iou_threshold must be in [0, 1], got {iou_threshold}")
    if max_gap < 0:
        raise ConfigError(f"track_faces: max_gap must be >= 0, got {max_gap}")
    T = len(detections)
    tracks: list[FaceTrack] = []
    last_seen: list[int] = []
    last_row: list[np.ndarray] = []
    for t, dets in enumerate(detections):
        d = np.asarray(dets, np.float32).reshape(-1, np.asarray(dets).shape[-1] if np.size(dets) else ROW_LEN)
        live = [i for i in range(len(tracks)) if last_seen[i] >= t - 1 - max_gap]
        taken_d: set[int] = set()
        if live and len(d):
            iou = box_iou_xywh(np.stack([last_row[i] for i in live]), d)  # (n_live, K)
            order = np.dstack(np.unravel_index(np.argsort(-iou, axis=None, kind="stable"), iou.shape))[0]
            taken_t: set[int] = set()
            for li, di in order:
                if iou[li, di] < iou_threshold or iou[li, di] <= 0:
                    break
                if li in taken_t or di in taken_d:
                    continue
                ti = live[li]
                tracks[ti].rows[t] = d[di].copy()
                last_seen[ti], last_row[ti] = t, d[di].copy()
                taken_t.add(int(li))
                taken_d.add(int(di))
        for di in range(len(d)):
            if di not in taken_d:
                rows: list[np.ndarray | None] = [None] * T
                rows[t] = d[di].copy()
                tracks.append(FaceTrack(rows))
                last_seen.append(t)
                last_row.append(d[di].copy())
    return sorted(tracks, key=lambda tr: (tr.first, -tr.mean_score()))


def interpolate_tracks(tracks: Sequence[FaceTrack], track_times: np.ndarray, times: np.ndarray) -> list[FaceTrack]:
    """Tracks at other times (e.g. every decoded frame): rows linearly interpolated between
    the analysed frames that bracket each time when both have the face; the nearest
    analysed row within half an analysed interval otherwise; None beyond that."""
    tt = np.asarray(track_times, np.float64)
    if tt.ndim != 1 or (tt.size > 1 and np.any(np.diff(tt) <= 0)):
        raise ConfigError("interpolate_tracks: track_times must be strictly increasing (T,)")
    half = 0.5 * float(np.median(np.diff(tt))) if tt.size > 1 else np.inf
    out = []
    for tr in tracks:
        if tr.n_frames != tt.size:
            raise ConfigError(f"interpolate_tracks: a track has {tr.n_frames} rows for {tt.size} track_times")
        rows: list[np.ndarray | None] = []
        for t in np.asarray(times, np.float64):
            j = int(np.searchsorted(tt, t, side="right")) - 1  # tt[j] <= t < tt[j + 1]
            a = tr.rows[j] if 0 <= j < tt.size else None
            b = tr.rows[j + 1] if 0 <= j + 1 < tt.size else None
            if a is not None and b is not None:
                u = (t - tt[j]) / (tt[j + 1] - tt[j])
                rows.append(((1 - u) * a + u * b).astype(np.float32))
            elif a is not None and t - tt[j] <= half:
                rows.append(a.copy())
            elif b is not None and tt[j + 1] - t <= half:
                rows.append(b.copy())
            else:
                rows.append(None)
        out.append(FaceTrack(rows))
    return out


# ----------------------------------------------------------------------------- active speaker
@dataclass
class SpeakerConfig:
    """The active-speaker rule (formula in the module docstring)."""

    #: Mean mouth motion (grey levels in [0, 1]) at which the motion gate is 1/2 (the mean, not the
    #: median: at 5 fps most differences of a talking mouth are 0, it moves between phrases): ~2.5 of 255,
    #: below a talking mouth (real clips: mean 0.047-0.061 at 5 fps, 0.016-0.026 at 25-30 fps) and
    #: above the generated clip's 1-grey-level noise (~0.004). A real still face's codec noise was
    #: not measured (no such clip in the shared data).
    motion_half: float = 0.01
    #: Fewest valid frame differences for a correlation; fewer -> score 0.
    min_pairs: int = 5
    #: Time scale of the synchrony at high frame rates: both series are box-averaged over an odd
    #: number of frames closest to smooth_s seconds (1 = none at 5 fps, 9 at 25 fps, 13 at 30 fps).
    #: Raw 40-ms differences are mostly landmark jitter: on the TEDx clip the 4-s window
    #: correlation at 25 fps is 0.12 raw, 0.33 at 0.2 s, 0.44 at 0.4 s (5 fps: 0.58).
    smooth_s: float = 0.4
    #: choose_speaker: the best score must reach this ...
    min_score: float = 0.1
    #: ... and beat the runner-up by this much, else "cannot tell" (None).
    margin: float = 0.1

    def __post_init__(self) -> None:
        if self.motion_half <= 0:
            raise ConfigError(f"SpeakerConfig.motion_half must be > 0, got {self.motion_half}")
        if self.min_pairs < 3:
            raise ConfigError(f"SpeakerConfig.min_pairs must be >= 3 (a correlation needs points), got {self.min_pairs}")
        if self.smooth_s < 0:
            raise ConfigError(f"SpeakerConfig.smooth_s must be >= 0, got {self.smooth_s}")
        if self.margin < 0 or self.min_score < 0:
            raise ConfigError("SpeakerConfig.min_score and margin must be >= 0")


@dataclass
class SpeakerScores:
    """Per-track evidence: ``score = max(correlation, 0) * level / (level + motion_half)``."""

    score: np.ndarray  # (n_tracks,)
    correlation: np.ndarray  # (n_tracks,) Pearson r; 0 where too few pairs
    level: np.ndarray  # (n_tracks,) mean mouth motion, grey levels in [0, 1]
    n_pairs: np.ndarray  # (n_tracks,) valid frame differences


def _as_grey01(frame: np.ndarray) -> np.ndarray:
    """(H, W) or (H, W, 3) uint8 / float in [0, 1] -> (H, W) float32 in [0, 1]."""
    f = np.asarray(frame)
    if f.ndim == 3 and f.shape[2] == 3:
        f = f.mean(axis=2) if f.dtype != np.uint8 else cv2.cvtColor(f, cv2.COLOR_RGB2GRAY)
    elif f.ndim != 2:
        raise ConfigError(f"a frame must be grey (H, W) or RGB (H, W, 3), got {f.shape}")
    f = f.astype(np.float32)
    return f / 255.0 if np.asarray(frame).dtype == np.uint8 else f


def mouth_patch(grey: np.ndarray, face_row: np.ndarray) -> np.ndarray | None:
    """The mouth box of ``face_row`` in a grey (H, W) frame, resampled to MOUTH_PATCH_WH, mean removed; None if empty."""
    H, W = grey.shape
    x1, y1, x2, y2 = mouth_box(face_row, (W, H))
    if x2 - x1 < 1 or y2 - y1 < 1:
        return None
    # sub-pixel crop: an affine map from the patch grid onto the box (bilinear)
    pw, ph = MOUTH_PATCH_WH
    sx, sy = (x2 - x1) / pw, (y2 - y1) / ph
    m = np.array([[sx, 0, x1 + 0.5 * sx - 0.5], [0, sy, y1 + 0.5 * sy - 0.5]], np.float32)
    p = cv2.warpAffine(grey, m, (pw, ph), flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP, borderMode=cv2.BORDER_REPLICATE)
    return p - p.mean()  # (ph, pw)


class MouthMotion:
    """Streaming mouth motion: feed frames one at a time with each track's row at that frame."""

    def __init__(self, n_tracks: int) -> None:
        self._prev: list[np.ndarray | None] = [None] * n_tracks
        self.values: list[list[float]] = []  # per difference: one value per track (NaN = no box)

    def update(self, frame: np.ndarray, rows: Sequence[np.ndarray | None], first: bool = False) -> None:
        g = _as_grey01(frame)
        cur = [None if r is None else mouth_patch(g, r) for r in rows]
        if not first:
            self.values.append(
                [float(np.mean(np.abs(c - p))) if c is not None and p is not None else np.nan for c, p in zip(cur, self._prev)]
            )
        self._prev = cur

    def motion(self) -> np.ndarray:
        """(n_tracks, T-1) float64."""
        return np.asarray(self.values, np.float64).T.reshape(len(self._prev), -1)


def mouth_motion(frames: np.ndarray | Sequence[np.ndarray], tracks: Sequence[FaceTrack]) -> np.ndarray:
    """Per track and frame difference k (frames k-1, k): mean |aligned mouth patch difference|,
    NaN where the face is missing in either frame -> (n_tracks, T-1)."""
    T = len(frames)
    for tr in tracks:
        if tr.n_frames != T:
            raise ConfigError(f"mouth_motion: a track has {tr.n_frames} rows for {T} frames")
    mm = MouthMotion(len(tracks))
    for t in range(T):
        mm.update(frames[t], [tr.rows[t] for tr in tracks], first=t == 0)
    return mm.motion()


def mouth_motion_series(
    frames: Iterable[tuple[float, np.ndarray]],
    tracks: Sequence[FaceTrack],
    track_times: np.ndarray,
) -> tuple[np.ndarray, np.ndarray]:
    """Mouth motion at the rate of ``frames`` (e.g. every decoded frame), with tracks from sparser analysed frames.

    ``frames``: ``(time, image)`` pairs in time order (RGB or grey; e.g.
    ``((f.time, f.image) for f in iter_frames(path))``), streamed in constant memory;
    ``tracks`` were built at ``track_times`` and are interpolated to each frame
    (:func:`interpolate_tracks`). Returns ``(times (M,), motion (n_tracks, M-1))``;
    pass ``motion`` with the audio envelope at ``times`` to :func:`score_motion`.
    """
    mm = MouthMotion(len(tracks))
    times: list[float] = []
    tt = np.asarray(track_times, np.float64)
    for t, img in frames:
        rows = [tr.rows[0] for tr in interpolate_tracks(tracks, tt, np.array([t]))]
        mm.update(img, rows, first=not times)
        times.append(float(t))
    if len(times) < 2:
        raise ConfigError("mouth_motion_series: need at least 2 frames")
    return np.asarray(times), mm.motion()


def _nan_boxcar(x: np.ndarray, n: int) -> np.ndarray:
    """Centred running mean over ``n`` samples ignoring NaN (NaN stays NaN)."""
    if n <= 1:
        return x
    ok = np.isfinite(x)
    k = np.ones(n)
    num = np.convolve(np.where(ok, x, 0.0), k, "same")
    den = np.convolve(ok.astype(np.float64), k, "same")
    return np.where(ok, num / np.maximum(den, 1.0), np.nan)


def score_motion(
    motion: np.ndarray,
    audio_envelope: np.ndarray,
    config: SpeakerConfig | None = None,
    times: np.ndarray | None = None,
) -> SpeakerScores:
    """Synchrony of mouth motion (n_tracks, T-1) with the audio envelope (T,) at the frame ``times`` (T,).

    With ``times`` at more than ~``1.5 / smooth_s`` frames per second, both series are
    box-averaged over ~``smooth_s`` first (:class:`SpeakerConfig`); the level is the raw mean.
    """
    cfg = config or SpeakerConfig()
    env = np.asarray(audio_envelope, np.float64).reshape(-1)
    m = np.asarray(motion, np.float64)
    if m.ndim != 2 or m.shape[1] != env.size - 1:
        raise ConfigError(f"score_motion: motion {m.shape} must be (n_tracks, T-1) for an envelope of T = {env.size}")
    e = 0.5 * (env[1:] + env[:-1])  # (T-1,) the audio over each frame interval
    n_smooth = 1
    if times is not None and env.size > 2 and cfg.smooth_s > 0:
        dt = float(np.median(np.diff(np.asarray(times, np.float64))))
        n_smooth = 2 * round((cfg.smooth_s / dt - 1) / 2) + 1 if dt > 0 else 1  # odd: centred
        n_smooth = max(1, n_smooth)
    e_s = _nan_boxcar(e, n_smooth)
    n = m.shape[0]
    score, corr, level, npairs = np.zeros(n), np.zeros(n), np.zeros(n), np.zeros(n, np.int64)
    for i in range(n):
        ok = np.isfinite(m[i]) & np.isfinite(e)
        npairs[i] = int(ok.sum())
        if npairs[i] == 0:
            continue
        level[i] = float(np.mean(m[i, ok]))
        if npairs[i] < cfg.min_pairs:
            continue
        ms = _nan_boxcar(m[i], n_smooth)[ok]
        a, b = ms - ms.mean(), e_s[ok] - e_s[ok].mean()
        den = float(np.sqrt((a * a).sum() * (b * b).sum()))
        corr[i] = float((a * b).sum() / den) if den > 1e-12 else 0.0
        score[i] = max(corr[i], 0.0) * level[i] / (level[i] + cfg.motion_half)
    return SpeakerScores(score, corr, level, npairs)


def speaker_scores(
    grey_frames: np.ndarray,
    times: np.ndarray,
    tracks: Sequence[FaceTrack],
    audio_envelope: np.ndarray,
    config: SpeakerConfig | None = None,
) -> np.ndarray:
    """Who is speaking: one score in [0, 1) per track (formula in the module docstring).

    ``grey_frames`` (T, H, W) uint8 (0-255) or float (0-1) at strictly increasing
    ``times`` (T,) seconds; ``tracks`` with T rows each (:func:`track_faces`);
    ``audio_envelope`` (T,): the audio at those times, e.g. log RMS energy over a
    window of one frame interval centred on each time (:func:`log_energy_envelope`),
    or onset strength. Any rate from 5 fps up works; reliable choices need >= 4 s
    of speech with pauses (>= 20 differences at 5 fps); a higher rate measured no
    better on real speech (module docstring).
    """
    g = np.asarray(grey_frames)
    t = np.asarray(times, np.float64).reshape(-1)
    if g.ndim != 3:
        raise ConfigError(f"speaker_scores: grey_frames must be (T, H, W), got {g.shape}")
    if t.size != g.shape[0] or np.asarray(audio_envelope).reshape(-1).size != g.shape[0]:
        raise ConfigError(
            f"speaker_scores: {g.shape[0]} frames, {t.size} times and {np.asarray(audio_envelope).size} envelope values must match"
        )
    if t.size > 1 and np.any(np.diff(t) <= 0):
        raise ConfigError("speaker_scores: times must be strictly increasing")
    if g.dtype != np.uint8 and g.size and float(np.nanmax(g)) > 1.0 + 1e-3:
        raise ConfigError("speaker_scores: float grey_frames must be in [0, 1] (or pass uint8 0-255)")
    if not tracks:
        return np.zeros(0)
    return score_motion(mouth_motion(g, tracks), audio_envelope, config, t).score


def choose_speaker(scores: np.ndarray, min_score: float | None = None, margin: float | None = None) -> int | None:
    """Index of the speaking track, or None = cannot tell (the caller may spread over all faces).

    The best score must be >= ``min_score`` and exceed the runner-up by >= ``margin``
    (defaults from :class:`SpeakerConfig`: 0.1 and 0.1).
    """
    d = SpeakerConfig()
    lo = d.min_score if min_score is None else min_score
    gap = d.margin if margin is None else margin
    s = np.asarray(scores, np.float64).reshape(-1)
    if s.size == 0 or not np.all(np.isfinite(s)):
        return None
    order = np.argsort(-s, kind="stable")
    best = float(s[order[0]])
    if best < lo:
        return None
    if s.size > 1 and best - float(s[order[1]]) < gap:
        return None
    return int(order[0])


def log_energy_envelope(audio: np.ndarray, sample_rate: int, times: np.ndarray, window_s: float | None = None) -> np.ndarray:
    """Log RMS of mono ``audio`` (N,) over a window centred on each time -> (T,).

    ``window_s`` defaults to the median spacing of ``times`` (one frame interval);
    the RMS is floored at 1e-4 (about -80 dBFS) so silence is flat, not -inf.
    """
    a = np.asarray(audio, np.float64).reshape(-1)
    t = np.asarray(times, np.float64).reshape(-1)
    if window_s is None:
        window_s = float(np.median(np.diff(t))) if t.size > 1 else 0.2
    half = max(1, round(window_s * sample_rate / 2))
    out = np.empty(t.size)
    for k, tk in enumerate(t):
        c = round(tk * sample_rate)
        seg = a[max(0, c - half) : max(0, min(a.size, c + half))]
        out[k] = np.log(max(float(np.sqrt(np.mean(seg**2))) if seg.size else 0.0, RMS_FLOOR))
    return out
