"""Peak RSS of ``avloc localize`` on generated 1, 10 and 30 minute clips: is memory flat in the video's length?

Usage: python bench/speed/memory.py [--minutes 1 10 30] [--size 640x360] [--video-fps 5] [--audio-rate 48000]
       [--model centre] [--fps 5] [--overlay] [--src DIR] [--work DIR]

A 1-minute clip is encoded once (a moving block, a tone with bursts: H.264 + AAC at ``--audio-rate``, stereo,
as a phone writes it; low frame rate and small frames keep it cheap) and remuxed ``N`` times in a row for an
``N``-minute clip (no re-encode). Each clip is localized by a child ``avloc localize --no-overlay`` (``--overlay``:
with the overlay video), and the child's own peak RSS is read with ``os.wait4`` (``RUSAGE_CHILDREN`` would give the
maximum over all children so far). The model defaults to ``centre`` (training-free, no weights): what grows with
length is the pipeline's buffers, not the model, and a cheap model keeps the 30-minute run to minutes. ``--src DIR``
runs the children on another checkout's ``src`` (e.g. the commit before a change) for a before/after table.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from avloc.data.synthetic import write_test_clip

sys.path.insert(0, str(Path(__file__).resolve().parent))
from localize import repeated  # bench/speed/ is not a package

REPO = Path(__file__).resolve().parents[2]


def base_clip(path: Path, seconds: float, size: tuple[int, int], fps: float, audio_rate: int) -> Path:
    """A cheap generated clip: a bright block moving over grey, stereo AAC (a tone with 4 Hz bursts)."""
    w, h = size

    def frames() -> Iterator[np.ndarray]:
        for i in range(round(seconds * fps)):
            img = np.full((h, w, 3), 90, np.uint8)
            x = int((w - w // 5) * (0.5 + 0.5 * np.sin(i / fps)))
            img[h // 3 : h // 3 + h // 5, x : x + w // 5] = 230
            yield img

    t = np.arange(round(seconds * audio_rate)) / audio_rate
    mono = (0.3 * np.sin(2 * np.pi * 440 * t) * (np.sin(2 * np.pi * 4 * t) > 0)).astype(np.float32)
    return write_test_clip(path, frames(), fps, np.stack([mono, mono]), audio_rate,
                           options={"preset": "ultrafast", "crf": "28"})


def peak_rss(clip: Path, out: Path, args: argparse.Namespace) -> tuple[float, float]:
    """(peak RSS MB, wall s) of one child ``avloc localize`` run."""
    cmd = [sys.executable, "-m", "avloc.cli.main", "localize", str(clip), "--out", str(out), "--force", "--quiet",
           "--model", args.model, "--fps", str(args.fps)]
    if not args.overlay:
        cmd.append("--no-overlay")
    env = dict(os.environ)
    if args.src:
        env["PYTHONPATH"] = str(Path(args.src).resolve())
    t0 = time.perf_counter()
    p = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL)
    _, status, usage = os.wait4(p.pid, 0)
    p.returncode = os.waitstatus_to_exitcode(status)
    wall = time.perf_counter() - t0
    if p.returncode:
        raise SystemExit(f"{' '.join(cmd)} failed with status {p.returncode}")
    return usage.ru_maxrss / 1024, wall


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    ap.add_argument("--minutes", type=int, nargs="+", default=[1, 10, 30])
    ap.add_argument("--size", default="640x360", help="frame size WxH of the generated clips")
    ap.add_argument("--video-fps", type=float, default=5.0, help="frame rate of the generated clips")
    ap.add_argument("--audio-rate", type=int, default=48000)
    ap.add_argument("--model", default="centre")
    ap.add_argument("--fps", type=float, default=5.0, help="analysis rate (avloc localize --fps)")
    ap.add_argument("--overlay", action="store_true", help="also write the overlay video")
    ap.add_argument("--src", default=None, help="run the children on this src folder (another checkout)")
    ap.add_argument("--work", default=None, help="folder for the clips (default: a temporary folder)")
    args = ap.parse_args()
    w, h = (int(v) for v in args.size.lower().split("x"))
    with tempfile.TemporaryDirectory(dir=args.work) as tmp:
        d = Path(tmp)
        one = base_clip(d / "m1.mp4", 60.0, (w, h), args.video_fps, args.audio_rate)
        rows = []
        for m in args.minutes:
            clip = one if m == 1 else repeated(one, d / f"m{m}.mp4", m)
            rss, wall = peak_rss(clip, d / "out", args)
            rows.append((m, rss, wall))
            print(f"{m} min: peak RSS {rss:.0f} MB, {wall:.0f} s", file=sys.stderr, flush=True)
    base = rows[0][1]
    print(f"{w}x{h} {args.video_fps:g} fps, AAC {args.audio_rate} Hz stereo; avloc localize --model {args.model} "
          f"--fps {args.fps:g}{'' if args.overlay else ' --no-overlay'}{'' if not args.src else f' (src {args.src})'}")
    print()
    print("| clip | peak RSS MB | vs first | wall s |")
    print("|---|---:|---:|---:|")
    for m, rss, wall in rows:
        print(f"| {m} min | {rss:.0f} | {100 * (rss / base - 1):+.1f} % | {wall:.0f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
