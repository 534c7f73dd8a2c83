"""Faces for human sounds (issue 16): YuNet detection, person geometry, tracks (the speaker: test_speaker.py)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from avloc.errors import ConfigError
from avloc.methods.avsemantic.faces import (
    DEFAULT_MODEL,
    FaceConfig,
    FaceDetector,
    FaceTracker,
    TrackConfig,
    head_box,
    mouth_box,
    person_box,
    person_map,
    track_faces,
)


def face_row(x: float, y: float, w: float, h: float, mouth_r=None, mouth_l=None, score: float = 0.9) -> np.ndarray:
    """A detection row with plausible landmarks (eyes at 0.35 h, nose 0.55 h, mouth 0.75 h)."""
    mr = mouth_r if mouth_r is not None else (x + 0.35 * w, y + 0.75 * h)
    ml = mouth_l if mouth_l is not None else (x + 0.65 * w, y + 0.75 * h)
    lm = [x + 0.3 * w, y + 0.35 * h, x + 0.7 * w, y + 0.35 * h, x + 0.5 * w, y + 0.55 * h, *mr, *ml]
    return np.array([x, y, w, h, *lm, score], np.float32)


# ----------------------------------------------------------------------------- geometry (hand-worked)
def test_person_box_hand_worked() -> None:
    # face 40 x 50 at (100, 50): centre x 120, width 2.0 * 40 = 80; top 50 - 0.5 * 50 = 25; bottom 50 + 2.5 * 50 = 175
    assert person_box(face_row(100, 50, 40, 50), (640, 360)) == pytest.approx((80, 25, 160, 175))
    # clipped: centre 20 -> x1 = -20 -> 0; y1 = 10 - 20 -> 0; y2 = 10 + 100 = 110 -> 100
    assert person_box(face_row(0, 10, 40, 40), (100, 100)) == pytest.approx((0, 0, 60, 100))
    # head: 1.3 * 40 = 52 wide around x = 120, from 25 to the face bottom 100
    assert head_box(face_row(100, 50, 40, 50), (640, 360)) == pytest.approx((94, 25, 146, 100))


def test_mouth_box_hand_worked() -> None:
    # corners (130, 190) and (170, 190): midpoint (150, 190), width 40 >= 0.35 * 100, so s = 40:
    # x 150 +- 0.8 * 40 = 118..182; y 190 - 0.5 * 40 = 170 .. 190 + 0.9 * 40 = 226
    row = face_row(100, 100, 100, 120, mouth_r=(130, 190), mouth_l=(170, 190))
    assert mouth_box(row) == pytest.approx((118, 170, 182, 226))
    # profile face: both corners at (150, 190) -> s = 0.35 * 100 = 35: x 122..178, y 172.5..221.5
    prof = face_row(100, 100, 100, 120, mouth_r=(150, 190), mouth_l=(150, 190))
    assert mouth_box(prof) == pytest.approx((122, 172.5, 178, 221.5))
    assert mouth_box(row, (160, 200)) == pytest.approx((118, 170, 160, 200))
    with pytest.raises(ConfigError, match="landmarks"):
        mouth_box(np.array([0, 0, 10, 10], np.float32))


def test_person_map_peaks_on_head_and_chest() -> None:
    # face 20 x 20 at (39.5, 19.5) on a 100 x 100 frame and map (cell centres at i + 0.5):
    # head centre (49.5, 19.5 + 0.4 * 20 = 27.5) -> cell (27, 49) = 1; chest (49.5, 19.5 + 1.9 * 20 = 57.5) -> cell (57, 49)
    row = face_row(39.5, 19.5, 20, 20)
    m = person_map(row[None], None, (100, 100), (100, 100))
    assert m.shape == (100, 100) and m.dtype == np.float32
    assert np.unravel_index(np.argmax(m), m.shape) == (27, 49)
    assert m[27, 49] == pytest.approx(1.0)
    # at the chest the head Gaussian is exp(-0.5 * (30 / 12) ** 2) = 0.044 < BODY_WEIGHT = 0.5
    assert m[57, 49] == pytest.approx(0.5, abs=1e-6)
    assert m[0, 0] < 1e-3
    # weights scale each face; two faces combine by max
    other = face_row(-0.5, 59.5, 10, 10)  # head centre (4.5, 63.5): a cell centre
    m2 = person_map(np.stack([row, other]), [0.5, 1.0], (100, 100), (100, 100))
    assert m2[27, 49] == pytest.approx(0.5) and m2.max() == pytest.approx(1.0, abs=1e-3)
    # no faces -> zeros; a coarse map still lights the cell of a face smaller than a cell
    assert not person_map(np.zeros((0, 15)), None, (7, 7), (224, 224)).any()
    small = person_map(face_row(100, 100, 6, 6)[None], None, (7, 7), (224, 224))
    assert np.unravel_index(np.argmax(small), small.shape) == (3, 3) and small.max() > 0.5
    with pytest.raises(ConfigError, match="weights"):
        person_map(row[None], [1.0, 2.0], (10, 10), (100, 100))


# ----------------------------------------------------------------------------- tracks
def test_track_faces_links_and_bridges_gaps() -> None:
    a = [face_row(10 + 2 * t, 10, 30, 30, score=0.9) for t in range(4)]
    b = [face_row(100 - 2 * t, 20, 30, 30, score=0.8) for t in range(4)]
    # detections come in any order; face b is missed at frame 2
    dets = [np.stack([a[0], b[0]]), np.stack([b[1], a[1]]), a[2][None], np.stack([b[3], a[3]])]
    tracks = track_faces(dets)
    assert len(tracks) == 2
    ta, tb = tracks  # same first frame -> by score
    assert all(r is not None and r[0] == pytest.approx(a[t][0]) for t, r in enumerate(ta.rows))
    assert tb.rows[2] is None and tb.rows[3] is not None and tb.rows[3][0] == pytest.approx(b[3][0])
    assert tb.seen.tolist() == [True, True, False, True] and (tb.first, tb.last) == (0, 3)
    # consecutive frames only: b's last detection starts a third track
    assert len(track_faces(dets, max_gap=0)) == 3
    # a jump with no overlap starts a new track
    assert len(track_faces([a[0][None], face_row(300, 300, 30, 30)[None]])) == 2
    assert track_faces([np.zeros((0, 15)), np.zeros((0, 15))]) == []


def test_tracker_ids_persist_across_calls_and_gaps() -> None:
    """Online linking: ids survive separate update calls, up to max_gap missed frames (skip counts as missed)."""
    tr = FaceTracker(TrackConfig(iou_threshold=0.3, max_gap=1))
    a, b = face_row(10, 10, 30, 30), face_row(100, 10, 30, 30)
    assert tr.update(np.stack([a, b])).tolist() == [0, 1]
    assert tr.update(np.stack([b, a])).tolist() == [1, 0]  # order of the detections does not matter
    tr.skip(1)  # one frame not looked at: still live (max_gap 1)
    assert tr.update(a[None]).tolist() == [0]
    tr.skip(2)  # beyond max_gap: a new track, the next unused id
    assert tr.update(a[None]).tolist() == [2]
    tr.reset()
    assert tr.update(b[None]).tolist() == [0]
    with pytest.raises(ConfigError, match="skip"):
        tr.skip(-1)
    with pytest.raises(ConfigError, match="iou_threshold"):
        TrackConfig(iou_threshold=1.5)


# ----------------------------------------------------------------------------- detector
def test_detector_shipped_model_and_errors(tmp_path: Path) -> None:
    assert DEFAULT_MODEL.is_file() and (DEFAULT_MODEL.parent / "LICENSE-yunet.txt").is_file()
    det = FaceDetector()
    out = det.detect(np.full((90, 160, 3), 128, np.uint8))
    assert out.shape == (0, 15) and out.dtype == np.float32
    assert det.working_size(320, 240) == (640, 480)  # small frames are enlarged
    assert FaceDetector(FaceConfig(upscale=False)).working_size(320, 240) == (320, 240)
    assert det.working_size(1280, 720) == (640, 360)
    with pytest.raises(ConfigError, match="not found"):
        FaceDetector(FaceConfig(model=str(tmp_path / "missing.onnx")))
    with pytest.raises(ConfigError, match="uint8"):
        det.detect(np.zeros((10, 10), np.uint8))
    with pytest.raises(ConfigError, match="score_threshold"):
        FaceConfig(score_threshold=1.5)


def test_detector_start_is_quiet(capfd: pytest.CaptureFixture[str]) -> None:
    """OpenCV 5's graph engine warns on FaceDetectorYN's setPreferableTarget at every start: silenced there only."""
    import cv2

    before = cv2.utils.logging.getLogLevel()
    FaceDetector().detect(np.zeros((64, 64, 3), np.uint8))
    assert "setPreferableTarget" not in capfd.readouterr().err
    assert cv2.utils.logging.getLogLevel() == before  # the global level is restored


# ----------------------------------------------------------------------------- real clips (shared data)
# (clip, decode size or None, annotated time or None): the face must be found, inside the annotated head box.
REAL = [
    ("realclips_dev/speech_tedx_talk.mp4", None, 3.92),
    ("realclips_dev/speech_webinar_inset.mp4", None, 5.005),  # a 26-px webcam inset
    ("realclips_dev/speech_makeup_vlog.mp4", None, 1.64),
    ("realclips_dev/singer_guitar_home.mp4", None, 2.5),
    ("realclips_dev/baby_crying.mp4", None, 2.502),
    ("videos/IronMan.mp4", (640, 360), None),  # decoded at 640x360 (the shared clip is 854x480)
]


@pytest.mark.parametrize(("rel", "size", "t_ann"), REAL, ids=[Path(r[0]).stem for r in REAL])
def test_faces_found_on_real_clips(shared_data: Path, rel: str, size: tuple[int, int] | None, t_ann: float | None) -> None:
    from avloc.io.media import iter_frames

    path = shared_data / rel
    if not path.exists():
        pytest.skip(f"{rel} not in the shared data")
    det = FaceDetector()
    t0 = t_ann if t_ann is not None else 1.0
    frames = list(iter_frames(path, fps=5.0, size=size, start=max(0.0, t0 - 0.2), end=t0 + 0.2))
    found = [det.detect(f.image) for f in frames]
    assert any(len(d) for d in found), f"no face in {rel} around t = {t0}"
    if t_ann is None:
        return
    ann = json.loads((shared_data / "realclips_dev" / "annotations.json").read_text())
    clip = next(c for c in ann["clips"] if c["file"] == Path(rel).name)
    box = next(f for f in clip["frames"] if abs(f["t"] - t_ann) < 1e-3)["boxes"][0]
    H, W = frames[0].image.shape[:2]
    best = next(d[0] for d in found if len(d))
    cx, cy = (best[0] + best[2] / 2) / W, (best[1] + best[3] / 2) / H
    assert box[0] <= cx <= box[2] and box[1] <= cy <= box[3], (best[:4], box)
    # the person box contains the annotated head's centre too
    x1, y1, x2, y2 = person_box(best, (W, H))
    assert x1 / W <= (box[0] + box[2]) / 2 <= x2 / W and y1 / H <= (box[1] + box[3]) / 2 <= y2 / H


@pytest.mark.slow
def test_detection_rate(shared_data: Path) -> None:
    """Whole clips at 5 fps: faces in >= 95 % of the TEDx / webinar frames, none on the waterfall."""
    from avloc.io.media import iter_frames

    det = FaceDetector()
    d = shared_data / "realclips_dev"
    for name, lo, hi in [("speech_tedx_talk", 0.95, 1.0), ("speech_webinar_inset", 0.95, 1.0), ("waterfall_stream", 0.0, 0.0)]:
        if not (d / f"{name}.mp4").exists():
            pytest.skip(f"{name}.mp4 not in the shared data")
        rate = np.mean([len(det.detect(f.image)) > 0 for f in iter_frames(d / f"{name}.mp4", fps=5.0)])
        assert lo <= rate <= hi, (name, rate)


@pytest.mark.parametrize("rotation", [90, 180, 270])
def test_unrotate_rows_against_a_rotated_mask(rotation: int) -> None:
    """A box drawn in an upright image, rotated with OpenCV, found there as the mask's bounding box, comes back."""
    import cv2

    from avloc.methods.avsemantic.faces.detect import unrotate_rows

    W, H = 160, 90
    mask = np.zeros((H, W), np.uint8)
    mask[20:50, 100:130] = 1  # x 100..130, y 20..50
    code = {90: cv2.ROTATE_90_CLOCKWISE, 180: cv2.ROTATE_180, 270: cv2.ROTATE_90_COUNTERCLOCKWISE}[rotation]
    ys, xs = np.nonzero(cv2.rotate(mask, code))
    row = face_row(xs.min(), ys.min(), xs.max() + 1 - xs.min(), ys.max() + 1 - ys.min())
    back = unrotate_rows(row[None], rotation, (W, H))[0]
    np.testing.assert_allclose(back[:4], [100, 20, 30, 30], atol=1e-4)
    assert back[14] == row[14]
    # landmarks: the mouth centre stays inside the box
    mx, my = (back[10] + back[12]) / 2, (back[11] + back[13]) / 2
    assert 100 <= mx <= 130 and 20 <= my <= 50
    with pytest.raises(ConfigError, match="rotations"):
        FaceConfig(rotations=(45,))


def test_lying_baby_found_by_rotation(shared_data: Path) -> None:
    """The crying baby lies sideways: upright YuNet misses the face at t = 5.0 s; a rotation finds it,
    inside the annotated head box."""
    from avloc.io.media import iter_frames

    path = shared_data / "realclips_dev" / "baby_crying.mp4"
    if not path.exists():
        pytest.skip("realclips_dev/baby_crying.mp4 not in the shared data")
    ann = json.loads((shared_data / "realclips_dev" / "annotations.json").read_text())
    clip = next(c for c in ann["clips"] if c["file"] == path.name)
    def hits(det: FaceDetector) -> int:
        n = 0
        for fa in clip["frames"]:
            fr = next(iter(iter_frames(path, fps=5.0, start=max(0.0, fa["t"] - 0.1), end=fa["t"] + 0.1)))
            rows = det.detect(fr.image)
            if not len(rows):
                continue
            H, W = fr.image.shape[:2]
            cx, cy = (rows[0, 0] + rows[0, 2] / 2) / W, (rows[0, 1] + rows[0, 3] / 2) / H
            b = fa["boxes"][0]
            n += b[0] - 0.03 <= cx <= b[2] + 0.03 and b[1] - 0.03 <= cy <= b[3] + 0.03
        return n

    upright, rotated = hits(FaceDetector(FaceConfig(rotations=()))), hits(FaceDetector())
    assert rotated >= 2 and rotated > upright, (upright, rotated)
