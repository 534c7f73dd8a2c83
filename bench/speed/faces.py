"""Faces (issue 16): YuNet detection rate and speed on the shared real clips, and the active-speaker check.

Usage: python bench/speed/faces.py [--data DIR] [--fps 5] [--models n,s] [--sides 320,640]

1. Detection: each clip's frames at ``--fps``; the fraction of analysed frames with
   >= 1 face (FaceConfig defaults: score >= 0.6) and the milliseconds per frame
   (detect() only, decoding excluded; ``cv2.setNumThreads(1)``; per frame the best
   of ``--repeats`` calls) per model and working long side.
2. Speaker: on each single-speaker clip, the main face track's mouth motion against
   the clip's own audio envelope ("sync") and the same face's motion shifted by
   ``--shift`` seconds (a face that talks, but not to this audio: "other"), over
   windows of 2 / 4 / 8 s at 5 fps and at the native rate; counts how often
   choose_speaker([sync, other]) picks sync, picks other, or says None. A still
   copy (the first frame repeated) must never be chosen over either.
Prints markdown.
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import cv2
import numpy as np

from avloc.io.media import decode_audio, iter_frames
from avloc.methods.avsemantic.faces import (
    ZOO_DIR,
    FaceConfig,
    FaceDetector,
    FaceTrack,
    choose_speaker,
    interpolate_tracks,
    log_energy_envelope,
    mouth_motion,
    score_motion,
    track_faces,
)

FACE_CLIPS = [
    "videos/IronMan.mp4",
    "realclips_dev/speech_tedx_talk.mp4",
    "realclips_dev/speech_makeup_vlog.mp4",
    "realclips_dev/speech_webinar_inset.mp4",
    "realclips_dev/baby_crying.mp4",
    "realclips_dev/singer_guitar_home.mp4",
    "realclips_dev/band_tv_studio.mp4",
]
NO_FACE_CLIPS = [
    "realclips_dev/waterfall_stream.mp4",
    "realclips_dev/bird_canary_cage.mp4",
    "realclips_dev/dog_pomeranian_bark.mp4",
    "videos/demo__single__ambulance_siren_8Zo30kV5aiI.mp4",
    "videos/demo__single__chainsawing_trees_0IStDugr5uA.mp4",
]
SPEAKER_CLIPS = [
    "realclips_dev/speech_tedx_talk.mp4",
    "realclips_dev/speech_webinar_inset.mp4",
    "realclips_dev/speech_makeup_vlog.mp4",
    "realclips_dev/singer_guitar_home.mp4",
]


def detection(data: Path, fps: float, models: list[str], sides: list[int], repeats: int) -> None:
    print(f"### Detection ({fps:g} fps, score >= {FaceConfig().score_threshold}; ms per frame: best of {repeats} calls, 1 thread)\n")
    head = " | ".join(f"{m} @{s}: rate, ms" for m in models for s in sides)
    print(f"| clip | size | frames | {head} |")
    print("|---|---|---:|" + "---:|" * (len(models) * len(sides)))
    for rel in FACE_CLIPS + NO_FACE_CLIPS:
        p = data / rel
        if not p.exists():
            continue
        frames = [f.image for f in iter_frames(p, fps=fps)]
        cells = []
        for m in models:
            for s in sides:
                model = ZOO_DIR / f"yunet_{m}_dynamic.onnx"
                if not model.exists():  # the variants not shipped are read from the shared data
                    model = data / "yunet" / f"yunet_{m}_dynamic.onnx"
                det = FaceDetector(FaceConfig(model=str(model), long_side=s))
                det.detect(frames[0])  # warm-up
                dets, best = [], []
                for f in frames:  # per frame the best of `repeats` calls (as timeit): robust to other load
                    ts = []
                    for _ in range(repeats):
                        t0 = time.perf_counter()
                        d = det.detect(f)
                        ts.append(time.perf_counter() - t0)
                    dets.append(d)
                    best.append(min(ts))
                ms = 1000 * float(np.mean(best))
                cells.append(f"{np.mean([len(d) > 0 for d in dets]):.2f}, {ms:.1f}")
        h, w = frames[0].shape[:2]
        print(f"| {Path(rel).name} | {w}x{h} | {len(frames)} | " + " | ".join(cells) + " |")
    print()


def _main_track_motion(path: Path, fps: float | None, track_fps: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(times (T,), motion of the longest track (T-1,), grey frames' first frame repeated motion (T-1,))."""
    det = FaceDetector()
    sparse = list(iter_frames(path, fps=track_fps))
    tt = np.array([f.time for f in sparse])
    tracks = track_faces(det.detect_frames([f.image for f in sparse]))
    main = max(tracks, key=lambda tr: int(tr.seen.sum()))
    frames = sparse if fps == track_fps else list(iter_frames(path, fps=fps))
    times = np.array([f.time for f in frames])
    tr = [main] if fps == track_fps else interpolate_tracks([main], tt, times)
    grey = [cv2.cvtColor(f.image, cv2.COLOR_RGB2GRAY) for f in frames]
    m = mouth_motion(grey, tr)[0]
    first = next(r for r in tr[0].rows if r is not None)
    still = mouth_motion([grey[0]] * len(grey), [FaceTrack([first] * len(grey))])[0]  # a face that never moves
    return times, m, still


def speaker(data: Path, shift: float, windows: list[float]) -> None:
    print(f"### Speaker check (own audio vs the same face shifted {shift:g} s; choose_speaker)\n")
    print("| clip | rate | window s | windows | sync chosen | other chosen | None | still chosen | median score sync / other |")
    print("|---|---|---:|---:|---:|---:|---:|---:|---|")
    for rel in SPEAKER_CLIPS:
        p = data / rel
        if not p.exists():
            continue
        wav, sr = decode_audio(p, 16000)
        for label, fps in (("5 fps", 5.0), ("native", None)):
            times, m, still = _main_track_motion(p, fps, 5.0)
            env = log_energy_envelope(wav, sr, times)
            rate = 1.0 / float(np.median(np.diff(times)))
            k = round(shift * rate)
            other = np.roll(m, k)
            for win in windows:
                n = round(win * rate)
                counts = {"sync": 0, "other": 0, "none": 0, "still": 0}
                s_sync, s_other = [], []
                starts = range(0, len(m) - n + 1, max(1, n // 2))
                for a in starts:
                    mot = np.stack([m[a : a + n], other[a : a + n], still[a : a + n]])  # (3, n)
                    sc = score_motion(mot, env[a : a + n + 1], times=times[a : a + n + 1]).score
                    s_sync.append(sc[0])
                    s_other.append(sc[1])
                    pick = choose_speaker(sc[:2])
                    counts["sync" if pick == 0 else "other" if pick == 1 else "none"] += 1
                    counts["still"] += int(choose_speaker(sc) == 2)
                nw = len(starts)
                if nw == 0:
                    continue
                print(
                    f"| {p.name} | {label} ({rate:.0f}/s) | {win:g} | {nw} | {counts['sync'] / nw:.2f} | "
                    f"{counts['other'] / nw:.2f} | {counts['none'] / nw:.2f} | {counts['still'] / nw:.2f} | "
                    f"{np.median(s_sync):.2f} / {np.median(s_other):.2f} |"
                )
    print()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default=os.environ.get("AVLOC_DATA", str(Path(__file__).resolve().parents[2] / "shared" / "data")))
    ap.add_argument("--fps", type=float, default=5.0)
    ap.add_argument("--models", default="n", help="comma list of YuNet variants: yunet_{m}_dynamic.onnx in avloc/zoo or DATA/yunet")
    ap.add_argument("--sides", default="320,640")
    ap.add_argument("--shift", type=float, default=3.0)
    ap.add_argument("--windows", default="2,4,8")
    ap.add_argument("--repeats", type=int, default=3, help="detect() calls per frame; the fastest is timed")
    ap.add_argument("--skip-detection", action="store_true")
    ap.add_argument("--skip-speaker", action="store_true")
    args = ap.parse_args()
    cv2.setNumThreads(1)
    data = Path(args.data)
    if not data.is_dir():
        raise SystemExit(f"data directory not found: {data} (set AVLOC_DATA or --data)")
    if not args.skip_detection:
        detection(data, args.fps, args.models.split(","), [int(s) for s in args.sides.split(",")], args.repeats)
    if not args.skip_speaker:
        speaker(data, args.shift, [float(w) for w in args.windows.split(",")])


if __name__ == "__main__":
    main()
