"""Active speaker (issue 26 item 3): per-pixel mouth synchrony over a window, the calibrated choice, the session
that keeps tracks across the pipeline's chunks, and the method's speaker on real footage."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from avloc.errors import ConfigError
from avloc.methods.avsemantic.faces import (
    FaceSession,
    FaceTrack,
    SpeakerConfig,
    choose_speaker,
    confidence_of,
    fit_confidence,
    speaker_scores,
    track_interval_energy,
    windowed_synchrony,
)
from avloc.methods.avsemantic.faces.speaker import excess_r2, interval_energy

RATE = 16000


def face_row(x: float, y: float, w: float, h: float, mouth_r: tuple[float, float], mouth_l: tuple[float, float]) -> np.ndarray:
    lm = [x + 0.3 * w, y + 0.35 * h, x + 0.7 * w, y + 0.35 * h, x + 0.5 * w, y + 0.55 * h, *mouth_r, *mouth_l]
    return np.array([x, y, w, h, *lm, 0.9], np.float32)


# ----------------------------------------------------------------------------- a generated two-face clip
FACE_WH = (32, 40)
MOUTH = (slice(34, 46), slice(16, 32))  # rows, cols of the mouth inside a 52-px wide face tile


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
) -> tuple[np.ndarray, np.ndarray, list[np.ndarray]]:
    """RGB uint8 frames (T, 64, 52 * faces, 3) with one textured face per entry of ``mouths`` (its opening at 1 kHz,
    None = still), their times and each face's detection row. Sensor noise of ~1 grey level and (``flicker``) a
    slow global exposure change are added."""
    rng = np.random.default_rng(seed)
    texture = rng.uniform(0.3, 0.7, (64, 52))
    times = np.arange(0, seconds, 1.0 / fps)
    frames = np.zeros((times.size, 64, 52 * len(mouths)), np.float32)
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
    frames += rng.normal(0, 0.004, frames.shape).astype(np.float32)
    if flicker:
        frames *= (1.0 + 0.05 * np.sin(2 * np.pi * 0.7 * times))[:, None, None].astype(np.float32)
    rgb = np.repeat((np.clip(frames, 0, 1) * 255).round().astype(np.uint8)[..., None], 3, axis=3)
    return rgb, times, rows


def voice(opening: np.ndarray, seconds: float, seed: int = 1) -> np.ndarray:
    """Noise bursts gated by ``opening`` (1 kHz) as a mono track at RATE (N,)."""
    rng = np.random.default_rng(seed)
    gate = np.repeat(opening, RATE // 1000)[: round(seconds * RATE)]
    return (rng.normal(0, 0.3, gate.size) * gate + rng.normal(0, 1e-3, gate.size)).astype(np.float32)


def windows_at(track: np.ndarray, times: np.ndarray, n: int = 15600) -> np.ndarray:
    """Centred windows (T, n) of a track, zero-padded at its ends (as the localize pipeline cuts them)."""
    pad = np.pad(track, (n, n))
    return np.stack([pad[n + round(t * RATE) - n // 2 : n + round(t * RATE) - n // 2 + n] for t in times])


class FixedFaces:
    """A stand-in for YuNet on generated frames (it finds no drawn face): the same rows on every frame."""

    def __init__(self, rows: list[np.ndarray]) -> None:
        self.rows = np.stack(rows)
        self.calls = 0

    def detect(self, rgb: np.ndarray) -> np.ndarray:
        self.calls += 1
        return self.rows.copy()


def chunks(n: int, chunk: int, context: int) -> list[tuple[int, int, int, int]]:
    """The localize pipeline's buffers: (buffer start, buffer end, kept start, kept end) frame indices."""
    out = []
    for a in range(0, n, chunk):
        b = min(n, a + chunk)
        out.append((max(0, a - context), min(n, b + context), a, b))
    return out


def run_session(session: FaceSession, rgb: np.ndarray, times: np.ndarray, track: np.ndarray, chunk: int = 20, context: int = 10) -> list:
    win = windows_at(track, times)
    out = []
    for lo, hi, a, b in chunks(len(times), chunk, context):
        out += session.analyse(rgb[lo:hi], win[lo:hi], RATE, times[lo:hi], range(a - lo, b - lo))
    return out


# ----------------------------------------------------------------------------- synchrony
def test_excess_r2_against_numpy() -> None:
    rng = np.random.default_rng(0)
    x, e = rng.normal(size=(25, 7)), rng.normal(size=25)
    x[:, 3] += 2 * e  # one pixel follows the sound
    x[:, 5] = 1.0  # a constant pixel correlates 0
    r = np.array([0.0 if np.std(x[:, p]) == 0 else np.corrcoef(x[:, p], e)[0, 1] for p in range(7)])
    assert excess_r2(x, e) == pytest.approx(np.mean(r**2) - 1 / 24)
    assert excess_r2(x, np.ones(25)) == pytest.approx(-1 / 24)  # silence: nothing correlates


def test_interval_energy_hand_worked() -> None:
    # 1-s windows at 100 Hz (centre 50): the 0.2 s before the centre (samples 30..49) at amplitude 0.5
    w = np.ones((2, 100))
    w[0, 30:50] = 0.5
    assert interval_energy(w, 100, 0.2) == pytest.approx([np.log(0.5), 0.0])
    # one track: [t_{k-1}, t_k] at 0.5, 1.0, 1.5 s; the first frame over the median interval before it
    track = np.r_[np.full(50, 0.1), np.full(50, 0.2), np.full(50, 0.4)]
    assert track_interval_energy(track, 100, np.array([0.5, 1.0, 1.5])) == pytest.approx(np.log([0.1, 0.2, 0.4]))
    with pytest.raises(ConfigError, match="increasing"):
        track_interval_energy(track, 100, np.array([1.0, 0.5]))


def test_windowed_synchrony_window_and_min_pairs() -> None:
    rng = np.random.default_rng(1)
    t = np.arange(30) / 5.0  # 5 fps
    x, e = rng.normal(size=(30, 4)), rng.normal(size=30)
    x[12] = np.nan  # a frame without the face
    cfg = SpeakerConfig(window_s=2.0, min_pairs=8, min_sync=0.0)  # window 2 s: 11 frames at 5 fps
    # centre 10 (t = 2 s): |t - 2| <= 1 -> frames 5..15, minus the missing 12: 10 pairs
    sel = [k for k in range(5, 16) if k != 12]
    assert windowed_synchrony(x, e, t, [10], cfg)[0] == pytest.approx(excess_r2(x[sel], e[sel]))
    assert np.isnan(windowed_synchrony(x, e, t, [10], SpeakerConfig(window_s=2.0, min_pairs=11, min_sync=0.0))[0])
    # at the clip's start the window is cut: frames 0..5
    assert np.isnan(windowed_synchrony(x, e, t, [0], cfg)[0])
    with pytest.raises(ConfigError, match="share T"):
        windowed_synchrony(x, e[:-1], t, [0], cfg)


@pytest.mark.parametrize("fps", [5.0, 25.0])
def test_speaker_scores_pick_the_mouth_that_moves_with_the_audio(fps: float) -> None:
    seconds = 12.0
    rng = np.random.default_rng(7)
    speech, chatter = bursts(seconds, rng), bursts(seconds, rng)  # the other mouth moves as much, to no sound here
    cfg = SpeakerConfig()
    rgb, times, rows = make_clip(fps, seconds, [chatter, speech])  # the speaker second: a bias to index 0 cannot pass
    tracks = [FaceTrack([r.copy() for _ in times]) for r in rows]
    energy = track_interval_energy(voice(speech, seconds), RATE, times)
    s = speaker_scores(rgb, times, tracks, energy, cfg)
    pick = choose_speaker(s, cfg)
    assert pick is not None and pick.index == 1 and s[1] > s[0] + 0.05, s
    # two still faces (sensor noise only): neither in sync
    rgb, times, rows = make_clip(fps, seconds, [None, None], flicker=False)
    s = speaker_scores(rgb, times, [FaceTrack([r.copy() for _ in times]) for r in rows], energy, cfg)
    assert choose_speaker(s, cfg) is None and np.all(s < cfg.min_sync), s


def test_speaker_scores_check_inputs() -> None:
    rgb, times, rows = make_clip(5.0, 2.0, [None])
    tracks = [FaceTrack([rows[0]] * len(times))]
    with pytest.raises(ConfigError, match="must match"):
        speaker_scores(rgb, times, tracks, np.zeros(3))
    with pytest.raises(ConfigError, match="increasing"):
        speaker_scores(rgb, times[::-1].copy(), tracks, np.zeros(times.size))
    with pytest.raises(ConfigError, match="rows"):
        speaker_scores(rgb, times, [FaceTrack([None])], np.zeros(times.size))
    with pytest.raises(ConfigError, match=r"\[0, 1\]"):
        speaker_scores(rgb.astype(np.float32), times, tracks, np.zeros(times.size))
    assert speaker_scores(rgb, times, [], np.zeros(times.size)).shape == (0,)
    # too few frame pairs (min_pairs 10): no synchrony rather than a chance one
    assert np.isnan(speaker_scores(rgb[:5], times[:5], [FaceTrack([rows[0]] * 5)], np.arange(5.0))[0])


# ----------------------------------------------------------------------------- the choice and its confidence
def test_choose_speaker_rule_hand_worked() -> None:
    cfg = SpeakerConfig(min_sync=0.02, confidence_slope=10.0, confidence_bias=0.0)
    pick = choose_speaker(np.array([0.05, 0.01]), cfg)
    assert pick is not None and pick.index == 0 and pick.margin == pytest.approx(0.04)
    assert pick.confidence == pytest.approx(1 / (1 + np.exp(-0.4)))
    assert choose_speaker(np.array([0.01, 0.015]), cfg) is None  # no face in sync: no speaker
    pick = choose_speaker(np.array([np.nan, 0.03]), cfg)  # a face without a window is no candidate
    assert pick is not None and pick.index == 1 and pick.margin == pytest.approx(0.03)
    pick = choose_speaker(np.array([0.05, -0.02]), cfg)  # a rival below chance counts as nobody
    assert pick is not None and pick.margin == pytest.approx(0.05)
    assert choose_speaker(np.array([np.nan]), cfg) is None and choose_speaker(np.zeros(0), cfg) is None


def test_confidence_is_monotone_in_the_margin() -> None:
    cfg = SpeakerConfig()
    margins = np.linspace(-0.2, 0.5, 200)
    assert np.all(np.diff(confidence_of(margins, cfg.confidence_slope, cfg.confidence_bias)) >= 0)
    # through the choice: the rival fixed, more synchrony of the best face never lowers its confidence
    conf = [choose_speaker(np.array([s, 0.03]), cfg) for s in np.linspace(max(cfg.min_sync, 0.03), 0.6, 50)]
    c = [p.confidence for p in conf if p is not None]
    assert len(c) == 50 and np.all(np.diff(c) >= 0)
    with pytest.raises(ConfigError, match="slope"):
        SpeakerConfig(confidence_slope=-1.0)
    with pytest.raises(ConfigError, match="window_s"):
        SpeakerConfig(window_s=0.0)


def test_fit_confidence_recovers_a_known_map() -> None:
    rng = np.random.default_rng(0)
    m = rng.uniform(-0.1, 0.3, 4000)
    y = rng.uniform(size=m.size) < confidence_of(m, 20.0, -1.0)
    slope, bias = fit_confidence(m, y)
    assert slope == pytest.approx(20.0, rel=0.2) and bias == pytest.approx(-1.0, abs=0.25)
    with pytest.raises(ConfigError, match="slope"):
        fit_confidence(m, ~y)  # the margin would predict the wrong face
    with pytest.raises(ConfigError, match="both"):
        fit_confidence(m, np.ones(m.size, bool))


# ----------------------------------------------------------------------------- the session across chunks
def test_session_keeps_track_ids_across_chunks_and_picks_the_speaker() -> None:
    seconds = 12.0
    rng = np.random.default_rng(7)
    speech, chatter = bursts(seconds, rng), bursts(seconds, rng)
    rgb, times, rows = make_clip(5.0, seconds, [chatter, speech])
    det = FixedFaces(rows)
    session = FaceSession(det, SpeakerConfig())  # type: ignore[arg-type]
    out = run_session(session, rgb, times, voice(speech, seconds))
    assert len(out) == len(times) and det.calls == len(times)  # each frame detected once, context frames included
    assert all(ff.tracks.tolist() == [0, 1] for ff in out)  # ids stable across the three chunks
    picked = [ff.speaker.index if ff.speaker is not None else None for ff in out]
    full = picked[10:-10]  # frames whose 4-s window is whole (the clip's first and last 2 s have cut windows)
    assert full.count(1) >= 0.9 * len(full) and full.count(0) == 0, picked
    assert picked.count(1) > 2 * picked.count(0), picked


def test_session_no_face_in_sync_no_speaker() -> None:
    seconds = 10.0
    rng = np.random.default_rng(3)
    speech = bursts(seconds, rng)
    rgb, times, rows = make_clip(5.0, seconds, [None, None], flicker=False)  # two still faces while someone speaks
    out = run_session(FaceSession(FixedFaces(rows), SpeakerConfig()), rgb, times, voice(speech, seconds))  # type: ignore[arg-type]
    assert all(ff.speaker is None for ff in out)
    assert np.nanmax([ff.sync.max() for ff in out if np.isfinite(ff.sync).any()]) < SpeakerConfig().min_sync


def test_session_recognises_a_new_video() -> None:
    seconds = 6.0
    rng = np.random.default_rng(5)
    speech = bursts(seconds, rng)
    rgb, times, rows = make_clip(5.0, seconds, [speech, None], seed=0)
    det = FixedFaces(rows)
    session = FaceSession(det, SpeakerConfig())  # type: ignore[arg-type]
    run_session(session, rgb, times, voice(speech, seconds))
    # the same frames again (the same video re-analysed): nothing detected again, the same ids
    again = run_session(session, rgb, times, voice(speech, seconds))
    assert det.calls == len(times) and again[0].tracks.tolist() == [0, 1]
    # another video at the same times (other pictures): a fresh start, ids from 0, every frame detected
    det.rows = det.rows[::-1].copy()  # the faces swap sides: without a reset the ids would follow the boxes
    other, _, _ = make_clip(5.0, seconds, [None, speech], seed=1)
    out = run_session(session, other, times, voice(speech, seconds))
    assert det.calls == 2 * len(times) and out[0].tracks.tolist() == [0, 1]
    # the same pictures with other sound (a dubbed copy): a new video too, its synchrony from its own sound
    silent = run_session(session, other, times, np.zeros(round(seconds * RATE), np.float32))
    assert det.calls == 3 * len(times) and all(ff.speaker is None for ff in silent)
    with pytest.raises(ConfigError, match="uint8"):
        session.analyse(rgb.astype(np.float32), windows_at(voice(speech, seconds), times), RATE, times, range(1))


# ----------------------------------------------------------------------------- the method on real footage
def _model_inputs(path: Path, seconds: float) -> tuple[object, object, object]:
    """The first ``seconds`` of a clip at 5 fps as the localize pipeline feeds avsemantic: (T, 3, 288, 288) letterboxed
    frames in [0, 1], centred 0.975-s windows (T, 15600) at 16 kHz, times (T,)."""
    import torch

    from avloc.frontends.image import ImageConfig, preprocess_image
    from avloc.io.media import decode_audio, iter_frames

    image = ImageConfig(size=288, mode="pad")
    frames = list(iter_frames(path, fps=5.0, end=seconds))
    imgs = torch.stack([preprocess_image(torch.from_numpy(f.image).permute(2, 0, 1), image) for f in frames])
    times = np.array([f.time for f in frames])
    wav, _ = decode_audio(path, RATE)
    win = windows_at(wav, times)
    return imgs, torch.from_numpy(win), torch.tensor(times, dtype=torch.float32)


def test_method_track_ids_stable_across_chunks(shared_data: Path) -> None:
    """analyse_clip on two consecutive chunks of the TEDx talk (context each side, as the pipeline calls it): the
    speaker's face keeps its track id across the boundary, every human source reports its synchrony evidence, and
    the frame's speaker record is the session's pick (track, head box, confidence = the ``sync`` evidence)."""
    from avloc.methods import create_method
    from avloc.methods.avsemantic.method import AVSemanticConfig

    path = shared_data / "realclips_dev" / "speech_tedx_talk.mp4"
    if not path.exists():
        pytest.skip("realclips_dev/speech_tedx_talk.mp4 not in the shared data")
    imgs, win, times = _model_inputs(path, 5.0)  # 25 frames: chunks [0, 12) and [12, 25) with 10 frames of context
    model = create_method("avsemantic", AVSemanticConfig()).eval()
    chunks = [(slice(0, 22), slice(0, 12)), (slice(2, 25), slice(10, 23))]
    results = [model.analyse_clip(imgs[c], win[c], times[c], keep=k) for c, k in chunks]
    faces = [ff for c, k in chunks for ff in model._faces_and_speaker(imgs[c], win[c], times[c], k).values()]
    assert len(faces) == 25 and {int(i) for ff in faces for i in ff.tracks} == {0}  # one face, one track, both chunks
    for res in results:
        for frame, det in zip(res.sources, res.details):
            human = [h for h in frame if h.kind == "human" and h.grounding.startswith("face")]
            assert human, "speech is heard and the face is found"
            detail = human[0].detail
            assert set(detail) >= {"face", "sync", "person", "synchrony"}
            assert all(v is None or isinstance(v, bool | int | float | str) for v in detail.values()), detail  # the JSON schema
            assert 0.0 <= detail["sync"] <= 1.0
            if det.speaker is not None:
                assert det.speaker.track == 0 and human[0].grounding == "face 0"
                assert detail["sync"] == pytest.approx(det.speaker.confidence, abs=1e-4) and detail["sync"] >= 0.5  # one face: margin = s >= min_sync
                x1, y1, x2, y2 = det.speaker.box
                assert 0 <= x1 < x2 <= imgs.shape[-1] and 0 <= y1 < y2 <= imgs.shape[-1]
            else:
                assert detail["sync"] == 0.0 and human[0].grounding == "face"


@pytest.mark.slow
def test_real_face_pasted_twice(shared_data: Path) -> None:
    """The TEDx speaker's face crop pasted twice side by side over the whole 15.7-s clip at 5 fps: left in sync with
    the audio, right the same face 3 s apart (it talks, but not to this audio): the left one has the higher
    synchrony; with the right copy frozen, the right one is never in sync."""
    import cv2

    from avloc.io.media import decode_audio, iter_frames
    from avloc.methods.avsemantic.faces import FaceDetector, track_faces

    path = shared_data / "realclips_dev" / "speech_tedx_talk.mp4"
    if not path.exists():
        pytest.skip("speech_tedx_talk.mp4 not in the shared data")
    frames = list(iter_frames(path, fps=5.0))
    times = np.array([f.time for f in frames])
    main = max(track_faces(FaceDetector().detect_frames([f.image for f in frames])), key=lambda tr: int(tr.seen.sum()))
    rows = list(main.rows)
    first = next(r for r in rows if r is not None)
    for k in range(len(rows)):  # bridge missed frames with the last row
        rows[k] = rows[k] if rows[k] is not None else (rows[k - 1] if k else first)
    side = int(3 * np.median([r[2] for r in rows]))
    xs, ys = [0, 4, 6, 8, 10, 12], [1, 5, 7, 9, 11, 13]  # x and y columns of a detection row
    crops, local = [], []
    for f, r in zip(frames, rows):
        cx, cy = float(r[0] + r[2] / 2), float(r[1] + r[3] / 2)
        crops.append(cv2.getRectSubPix(cv2.cvtColor(f.image, cv2.COLOR_RGB2GRAY), (side, side), (cx, cy)))
        shifted = r.copy()
        shifted[xs] -= cx - side / 2
        shifted[ys] -= cy - side / 2
        local.append(shifted)
    T, lag = len(frames), 15  # 3 s at 5 fps
    right = [local[(k + lag) % T].copy() for k in range(T)]
    for r in right:
        r[xs] += side
    energy = track_interval_energy(decode_audio(path, RATE)[0], RATE, times)
    pasted = np.stack([np.concatenate([crops[k], crops[(k + lag) % T]], axis=1) for k in range(T)])
    s = speaker_scores(pasted, times, [FaceTrack(list(local)), FaceTrack(right)], energy)
    assert s[0] > s[1], s
    frozen = np.stack([np.concatenate([crops[k], crops[0]], axis=1) for k in range(T)])
    s2 = speaker_scores(frozen, times, [FaceTrack(list(local)), FaceTrack([right[0]] * T)], energy)
    assert s2[1] < SpeakerConfig().min_sync and s2[0] > s2[1], s2
