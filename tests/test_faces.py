"""Faces for human sounds (issue 16): YuNet detection, person geometry, tracks, active speaker."""

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
    FaceTrack,
    box_iou_xywh,
    choose_speaker,
    head_box,
    interpolate_tracks,
    log_energy_envelope,
    mouth_box,
    mouth_motion_series,
    person_box,
    person_map,
    score_motion,
    speaker_scores,
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


def test_box_iou_xywh_hand_worked() -> None:
    a = np.array([[0, 0, 10, 10]], np.float32)
    b = np.array([[5, 0, 10, 10], [20, 20, 5, 5], [0, 0, 10, 10]], np.float32)
    # overlap 5 x 10 = 50, union 100 + 100 - 50 = 150
    assert box_iou_xywh(a, b) == pytest.approx(np.array([[1 / 3, 0.0, 1.0]]))


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


def test_interpolate_tracks() -> None:
    tr = FaceTrack([face_row(0, 0, 10, 10), face_row(10, 0, 10, 10), None])
    out = interpolate_tracks([tr], np.array([0.0, 0.2, 0.4]), np.array([0.1, 0.25, 0.35]))[0]
    assert out.rows[0] is not None and out.rows[0][0] == pytest.approx(5.0)  # half-way
    assert out.rows[1] is not None and out.rows[1][0] == pytest.approx(10.0)  # nearest, within half an interval
    assert out.rows[2] is None  # nearest is 0.15 s away from the last seen frame


# ----------------------------------------------------------------------------- active speaker (generated clip)
FACE_WH = (32, 40)
MOUTH = (slice(34, 46), slice(16, 32))  # rows, cols inside the mouth box of the face at x = 8


def bursts(seconds: float, rng: np.random.Generator, rate: int = 1000) -> np.ndarray:
    """Syllable-like on/off at 4 Hz (0.125 s on, 0.125 s off) in phrases of 2-5, with 0.4-1.2 s gaps; (seconds * rate,)."""
    out = np.zeros(round(seconds * rate))
    t = rng.uniform(0, 0.5)
    while t < seconds:
        for _ in range(int(rng.integers(2, 6))):
            a = round(t * rate)
            out[a : a + rate // 8] = 1.0
            t += 0.25
        t += rng.uniform(0.4, 1.2)
    return out


def make_clip(
    fps: float, seconds: float, mouths: list[np.ndarray | None], seed: int = 0, flicker: bool = True
) -> tuple[np.ndarray, np.ndarray, list[FaceTrack]]:
    """Grey frames (T, 64, 104) with one textured face per entry of ``mouths`` (its opening at 1 kHz,
    None = still), their tracks, and the frame times."""
    rng = np.random.default_rng(seed)
    texture = rng.uniform(0.3, 0.7, (64, 52))
    times = np.arange(0, seconds, 1.0 / fps)
    frames = np.zeros((times.size, 64, 104), np.float32)
    rows = []
    for i, op in enumerate(mouths):
        x0 = 52 * i
        for k, t in enumerate(times):
            face = texture.copy()
            o = 0.0 if op is None else op[min(int(t * 1000), op.size - 1)]
            face[MOUTH] *= 1.0 - 0.7 * o  # the mouth opens: a dark cavity
            frames[k, :, x0 : x0 + 52] = face
        # mouth corners (x0 + 18, 38), (x0 + 30, 38) -> mouth box x0 + 14.4 .. x0 + 33.6, y 32 .. 48.8
        rows.append(face_row(x0 + 8, 8, *FACE_WH, mouth_r=(x0 + 18, 38), mouth_l=(x0 + 30, 38)))
    frames += rng.normal(0, 0.004, frames.shape).astype(np.float32)  # sensor noise, ~1 grey level
    if flicker:  # global exposure changes must not count as motion
        frames *= (1.0 + 0.05 * np.sin(2 * np.pi * 0.7 * times))[:, None, None].astype(np.float32)
    tracks = [FaceTrack([r.copy() for _ in times]) for r in rows]
    return np.clip(frames, 0, 1), times, tracks


def envelope(opening: np.ndarray, times: np.ndarray, seed: int = 1) -> np.ndarray:
    """The log-energy envelope at ``times`` of noise bursts gated by ``opening`` (8 kHz audio)."""
    rng = np.random.default_rng(seed)
    gate = np.repeat(opening, 8)  # 1 kHz -> 8 kHz
    audio = rng.normal(0, 0.3, gate.size) * gate + rng.normal(0, 1e-3, gate.size)
    return log_energy_envelope(audio, 8000, times)


@pytest.mark.parametrize("fps", [5.0, 25.0])
def test_choose_speaker_picks_the_mouth_that_moves_with_the_audio(fps: float) -> None:
    seconds = 12.0
    rng = np.random.default_rng(7)
    speech = bursts(seconds, rng)
    chatter = bursts(seconds, rng)  # a mouth that moves as much, but to no sound here
    # the speaker is the second face, so a bias to index 0 cannot pass
    frames, times, tracks = make_clip(fps, seconds, [chatter, speech])
    env = envelope(speech, times)
    s = speaker_scores(frames, times, tracks, env)
    assert s.shape == (2,) and s[1] > s[0]
    assert choose_speaker(s) == 1, s
    # against a still face
    frames, times, tracks = make_clip(fps, seconds, [speech, None])
    s = speaker_scores((frames * 255).astype(np.uint8), times, tracks, env)  # uint8 input too
    assert choose_speaker(s) == 0, s
    assert s[1] < 0.05
    # both still: cannot tell
    frames, times, tracks = make_clip(fps, seconds, [None, None])
    s = speaker_scores(frames, times, tracks, env)
    assert choose_speaker(s) is None, s
    assert np.all(s < 0.05)


def test_mouth_motion_series_at_a_higher_rate() -> None:
    seconds = 8.0
    rng = np.random.default_rng(3)
    speech, chatter = bursts(seconds, rng), bursts(seconds, rng)
    frames, times, tracks = make_clip(25.0, seconds, [speech, chatter])
    # tracks from 5-fps analysed frames, motion from all 25-fps frames
    sparse_t = times[::5]
    sparse = [FaceTrack([tr.rows[k] for k in range(0, times.size, 5)]) for tr in tracks]
    t_out, motion = mouth_motion_series(zip(times, frames), sparse, sparse_t)
    assert t_out.shape == times.shape and motion.shape == (2, times.size - 1)
    sc = score_motion(motion, envelope(speech, t_out), times=t_out)
    assert choose_speaker(sc.score) == 0, sc
    # frames more than half an analysed interval after the last analysed frame have no box
    assert np.all(sc.n_pairs >= times.size - 5) and np.all(sc.level > 0)


def test_choose_speaker_margin_rule() -> None:
    assert choose_speaker(np.array([0.5, 0.1])) == 0
    assert choose_speaker(np.array([0.1, 0.5, 0.3])) == 1
    assert choose_speaker(np.array([0.5, 0.45])) is None  # within the margin
    assert choose_speaker(np.array([0.05])) is None  # too weak
    assert choose_speaker(np.array([0.3])) == 0
    assert choose_speaker(np.zeros(0)) is None
    assert choose_speaker(np.array([0.5, 0.45]), margin=0.01) == 0


def test_speaker_scores_checks_inputs() -> None:
    frames, times, tracks = make_clip(5.0, 2.0, [None])
    with pytest.raises(ConfigError, match="must match"):
        speaker_scores(frames, times, tracks, np.zeros(3))
    with pytest.raises(ConfigError, match="increasing"):
        speaker_scores(frames, times[::-1].copy(), tracks, np.zeros(times.size))
    with pytest.raises(ConfigError, match="rows"):
        speaker_scores(frames, times, [FaceTrack([None])], np.zeros(times.size))
    assert speaker_scores(frames, times, [], np.zeros(times.size)).shape == (0,)
    with pytest.raises(ConfigError, match=r"\[0, 1\]"):
        speaker_scores(frames * 255, times, tracks, np.zeros(times.size))
    # too few differences -> 0, not a chance correlation
    f3, t3, tr3 = make_clip(5.0, 0.6, [bursts(0.6, np.random.default_rng(0))])
    assert speaker_scores(f3, t3, tr3, np.arange(t3.size, dtype=float))[0] == 0.0


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
def test_detection_rate_and_real_speaker(shared_data: Path) -> None:
    """Whole clips at 5 fps: faces in >= 95 % of the TEDx / webinar / singer frames, none on the
    waterfall; the TEDx speaker's own mouth motion beats the same face shifted by 3 s."""
    from avloc.io.media import decode_audio, iter_frames

    det = FaceDetector()
    d = shared_data / "realclips_dev"
    for name, lo, hi in [("speech_tedx_talk", 0.95, 1.0), ("speech_webinar_inset", 0.95, 1.0), ("waterfall_stream", 0.0, 0.0)]:
        if not (d / f"{name}.mp4").exists():
            pytest.skip(f"{name}.mp4 not in the shared data")
        rate = np.mean([len(det.detect(f.image)) > 0 for f in iter_frames(d / f"{name}.mp4", fps=5.0)])
        assert lo <= rate <= hi, (name, rate)
    path = d / "speech_tedx_talk.mp4"
    frames = list(iter_frames(path, fps=5.0))
    times = np.array([f.time for f in frames])
    tracks = track_faces(det.detect_frames([f.image for f in frames]))
    main = max(tracks, key=lambda tr: int(tr.seen.sum()))
    grey = np.stack([f.image.mean(axis=2) for f in frames]).astype(np.uint8)
    wav, sr = decode_audio(path, 16000)
    env = log_energy_envelope(wav, sr, times)
    shifted = np.roll(env, 15)  # the audio 3 s later: the same face no longer in sync
    s_sync = speaker_scores(grey, times, [main], env)[0]
    s_shift = speaker_scores(grey, times, [main], shifted)[0]
    assert s_sync > s_shift + 0.1, (s_sync, s_shift)


@pytest.mark.slow
def test_real_face_pasted_twice_speaker(shared_data: Path) -> None:
    """The TEDx speaker's face crop pasted twice side by side: left in sync with the audio, right the
    same face 3 s apart (it talks, but not to this audio). choose_speaker picks the left one; the
    right one with a frozen face loses too."""
    import cv2

    from avloc.io.media import decode_audio, iter_frames

    path = shared_data / "realclips_dev" / "speech_tedx_talk.mp4"
    if not path.exists():
        pytest.skip("speech_tedx_talk.mp4 not in the shared data")
    det = FaceDetector()
    frames = list(iter_frames(path, fps=5.0))
    times = np.array([f.time for f in frames])
    tracks = track_faces(det.detect_frames([f.image for f in frames]))
    main = max(tracks, key=lambda tr: int(tr.seen.sum()))
    rows = [r for r in main.rows]
    for k in range(1, len(rows)):  # bridge missed frames with the last row
        rows[k] = rows[k] if rows[k] is not None else rows[k - 1]
    first = next(r for r in rows if r is not None)
    rows = [r if r is not None else first for r in rows]
    side = int(3 * np.median([r[2] for r in rows]))
    XS, YS = [0, 4, 6, 8, 10, 12], [1, 5, 7, 9, 11, 13]  # x and y columns of a detection row
    crops, local = [], []
    for f, r in zip(frames, rows):
        cx, cy = float(r[0] + r[2] / 2), float(r[1] + r[3] / 2)
        grey = cv2.cvtColor(f.image, cv2.COLOR_RGB2GRAY)
        crops.append(cv2.getRectSubPix(grey, (side, side), (cx, cy)))  # the face centred in a side x side crop
        shifted = r.copy()
        shifted[XS] -= cx - side / 2  # into crop coordinates (w, h unchanged)
        shifted[YS] -= cy - side / 2
        local.append(shifted)
    T, lag = len(frames), 15  # 3 s at 5 fps
    composite = np.stack([np.concatenate([crops[k], crops[(k + lag) % T]], axis=1) for k in range(T)])  # (T, S, 2S)
    right_rows = []
    for k in range(T):
        r = local[(k + lag) % T].copy()
        r[XS] += side  # the right copy
        right_rows.append(r)
    pasted = [FaceTrack(list(local)), FaceTrack(right_rows)]
    wav, sr = decode_audio(path, 16000)
    env = log_energy_envelope(wav, sr, times)
    s = speaker_scores(composite, times, pasted, env)
    assert choose_speaker(s) == 0, s
    frozen = np.stack([np.concatenate([crops[k], crops[0]], axis=1) for k in range(T)])
    still = [FaceTrack(list(local)), FaceTrack([right_rows[0]] * T)]
    s2 = speaker_scores(frozen, times, still, env)
    assert choose_speaker(s2) == 0 and s2[1] < 0.05, s2


@pytest.mark.parametrize("rotation", [90, 180, 270])
def test_unrotate_rows_against_a_rotated_mask(rotation: int) -> None:
    """A box drawn in an upright image, rotated with OpenCV, found there as the mask's bounding box, comes back."""
    import cv2

    from avloc.methods.avsemantic.faces import unrotate_rows

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
