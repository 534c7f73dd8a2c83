"""Face detection: YuNet through OpenCV, with a rotated search for faces that are not upright.

YuNet: Wu, Peng & Yu, "YuNet: A Tiny Millisecond-level Face Detector", Machine Intelligence Research 2023;
weights ``yunet_n_dynamic.onnx`` from ShiqiYu/libfacedetection.train, Apache-2.0, shipped in ``avloc/zoo``,
run by ``cv2.FaceDetectorYN``. :class:`FaceDetector` returns, per image, (K, 15) rows in that image's pixels
(layout in :mod:`.geometry`), best first.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from avloc.errors import ConfigError
from avloc.methods.avsemantic.faces.geometry import ROW_LEN, SCORE

ZOO_DIR = Path(__file__).resolve().parents[3] / "zoo"
#: The shipped YuNet weights. "n" over "s": at 640 px it finds faces in more of the frames of the band clip
#: (0.87 vs 0.71) and of the webinar inset at 320 px (0.83 vs 0.30), equal elsewhere, at the same speed
#: (docs/localize.md, "Faces").
DEFAULT_MODEL = ZOO_DIR / "yunet_n_dynamic.onnx"

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


@contextlib.contextmanager
def _opencv_log_level(level: int) -> Iterator[None]:
    """OpenCV's global log level set to ``level`` inside the block (restored after)."""
    before = cv2.utils.logging.getLogLevel()
    cv2.utils.logging.setLogLevel(level)
    try:
        yield
    finally:
        cv2.utils.logging.setLogLevel(before)


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
            # FaceDetectorYN sets the CPU target on its net, which OpenCV 5's graph engine answers with a
            # warning on every start ("setPreferableTarget ... not supported by the new graph engine"): the
            # CPU is the engine's only target, so nothing is lost. Errors still show.
            with _opencv_log_level(cv2.utils.logging.LOG_LEVEL_ERROR):
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
