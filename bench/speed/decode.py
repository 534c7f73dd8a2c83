"""Decoding throughput: 224x224 frames at 10 fps from each shared clip, and audio decode+resample.

Usage: python bench/speed/decode.py [--data DIR] [--fps 10] [--size 224]
Prints a markdown table (frames/s of sampled output frames; audio seconds per second).
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

from avloc.io.audio import load_audio
from avloc.io.media import iter_frames, probe


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default=os.environ.get("AVLOC_DATA", str(Path(__file__).resolve().parents[2] / "shared" / "data")))
    ap.add_argument("--fps", type=float, default=10.0)
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--sample-rate", type=int, default=16000)
    args = ap.parse_args()
    clips = sorted((Path(args.data) / "videos").glob("*.mp4"))
    if not clips:
        raise SystemExit(f"no clips in {args.data}/videos")
    load_audio(clips[0], args.sample_rate)  # warm-up: first-call library initialisation
    next(iter(iter_frames(clips[0], fps=args.fps, size=(args.size, args.size))))
    print("| clip | resolution | src fps | duration s | frames out | frames/s | audio s/s |")
    print("|---|---|---|---|---|---|---|")
    tot_f = tot_t = tot_a = tot_at = 0.0
    for c in clips:
        info = probe(c)
        t0 = time.perf_counter()
        n = sum(1 for _ in iter_frames(c, fps=args.fps, size=(args.size, args.size)))
        dt = time.perf_counter() - t0
        t0 = time.perf_counter()
        wav, sr = load_audio(c, args.sample_rate)
        at = time.perf_counter() - t0
        tot_f, tot_t, tot_a, tot_at = tot_f + n, tot_t + dt, tot_a + wav.size / sr, tot_at + at
        print(
            f"| {c.name[:40]} | {info.width}x{info.height} | {info.fps:.2f} | {info.duration:.1f} | {n} | "
            f"{n / dt:.0f} | {wav.size / sr / at:.0f} |"
        )
    print(f"| **all** | | | | {int(tot_f)} | {tot_f / tot_t:.0f} | {tot_a / tot_at:.0f} |")


if __name__ == "__main__":
    main()
