"""Faces (issue 16): YuNet detection rate and speed on the shared real clips.

Usage: python bench/speed/faces.py [--data DIR] [--fps 5] [--models n,s] [--sides 320,640]

Each clip's frames at ``--fps``; the fraction of analysed frames with >= 1 face (FaceConfig defaults: score >=
0.6) and the milliseconds per frame (detect() only, decoding excluded; ``cv2.setNumThreads(1)``; per frame the
best of ``--repeats`` calls) per model and working long side. Prints markdown. The active speaker is measured by
``bench/paper/avsemantic/speaker_pairs.py``.
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import cv2
import numpy as np

from avloc.io.media import iter_frames
from avloc.methods.avsemantic.faces.detect import ZOO_DIR, FaceConfig, FaceDetector

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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default=os.environ.get("AVLOC_DATA", str(Path(__file__).resolve().parents[2] / "shared" / "data")))
    ap.add_argument("--fps", type=float, default=5.0)
    ap.add_argument("--models", default="n", help="comma list of YuNet variants: yunet_{m}_dynamic.onnx in avloc/zoo or DATA/yunet")
    ap.add_argument("--sides", default="320,640")
    ap.add_argument("--repeats", type=int, default=3, help="detect() calls per frame; the fastest is timed")
    args = ap.parse_args()
    cv2.setNumThreads(1)
    data = Path(args.data)
    if not data.is_dir():
        raise SystemExit(f"data directory not found: {data} (set AVLOC_DATA or --data)")
    detection(data, args.fps, args.models.split(","), [int(s) for s in args.sides.split(",")], args.repeats)


if __name__ == "__main__":
    main()
