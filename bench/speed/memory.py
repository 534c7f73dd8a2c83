"""Peak RSS of ``avloc localize`` on generated 1, 10 and 30 minute clips: is memory flat in the video's length?

Usage: python bench/speed/memory.py [--minutes 1 10 30] [--size 640x360] [--video-fps 5] [--audio-rate 48000]
       [--model centre] [--fps 5] [--overlay] [--workers N] [--src DIR] [--work DIR]

A 1-minute clip is encoded once (a moving block, a tone with bursts: H.264 + AAC at ``--audio-rate``, stereo,
as a phone writes it; low frame rate and small frames keep it cheap) and remuxed ``N`` times in a row for an
``N``-minute clip (no re-encode). Each clip is localized by a child ``avloc localize --no-overlay`` (``--overlay``:
with the overlay video), and the child's own peak RSS is read with ``os.wait4`` (``RUSAGE_CHILDREN`` would give the
maximum over all children so far). The model defaults to ``centre`` (training-free, no weights): what grows with
length is the pipeline's buffers, not the model, and a cheap model keeps the 30-minute run to minutes. ``--src DIR``
runs the children on another checkout's ``src`` (e.g. the commit before a change) for a before/after table.

``--workers N`` runs the Ray path (``avloc localize CLIP --workers N``): the child then starts Ray, whose
processes (raylet, GCS, the N model workers, the decode tasks) are its descendants. Each process's own peak
(``VmHWM``) is polled from /proc; the table gives the driver's peak, the largest Ray worker's (``ray::`` model
worker or decode task), the Ray system processes' and the largest sum of all of them at one moment.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from avloc.data.synthetic import write_test_clip

sys.path.insert(0, str(Path(__file__).resolve().parent))
from batch import _tree  # bench/speed/ is not a package
from localize import repeated

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


def _status_kb(pid: int, key: str) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(key):
                return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        pass
    return 0


def _name(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[0].decode(errors="replace")
    except OSError:
        return ""


def poll_tree(pid: int, stop: threading.Event, peaks: dict[int, tuple[str, int]], total: list[int]) -> None:
    """Until ``stop``: every process of ``pid``'s tree -> (name, its peak RSS kB); ``total[0]``: the largest sum of
    their current RSS at one moment."""
    while not stop.is_set():
        now = 0
        for p in _tree(pid):
            hwm, name = _status_kb(p, "VmHWM:"), _name(p) or peaks.get(p, ("", 0))[0]  # Ray renames its workers
            peaks[p] = (name, max(hwm, peaks.get(p, ("", 0))[1]))
            now += _status_kb(p, "VmRSS:")
        total[0] = max(total[0], now)
        time.sleep(0.2)


def peak_rss(clip: Path, out: Path, args: argparse.Namespace) -> dict[str, float]:
    """Peak RSS (MB) of one child ``avloc localize`` run: the driver, its largest Ray worker, Ray's system
    processes, the sum at one moment; and its wall time (s)."""
    cmd = [sys.executable, "-m", "avloc.cli.main", "localize", str(clip), "--out", str(out), "--force", "--quiet",
           "--model", args.model, "--fps", str(args.fps)]
    if not args.overlay:
        cmd.append("--no-overlay")
    if args.workers:
        cmd += ["--workers", str(args.workers)]
    env = dict(os.environ)
    if args.src:
        env["PYTHONPATH"] = str(Path(args.src).resolve())
    t0 = time.perf_counter()
    p = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL)
    stop, peaks, total = threading.Event(), dict[int, tuple[str, int]](), [0]
    th = threading.Thread(target=poll_tree, args=(p.pid, stop, peaks, total), daemon=True)
    th.start()
    _, status, usage = os.wait4(p.pid, 0)
    stop.set()
    th.join()
    p.returncode = os.waitstatus_to_exitcode(status)
    wall = time.perf_counter() - t0
    if p.returncode:
        raise SystemExit(f"{' '.join(cmd)} failed with status {p.returncode}")
    others = [(n, kb) for q, (n, kb) in peaks.items() if q != p.pid]
    workers = [kb for n, kb in others if n.startswith("ray::")]
    system = [kb for n, kb in others if not n.startswith("ray::")]
    return {"driver": usage.ru_maxrss / 1024, "worker": max(workers, default=0) / 1024,
            "system": sum(system) / 1024, "total": total[0] / 1024, "wall": wall}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    ap.add_argument("--minutes", type=int, nargs="+", default=[1, 10, 30])
    ap.add_argument("--size", default="640x360", help="frame size WxH of the generated clips")
    ap.add_argument("--video-fps", type=float, default=5.0, help="frame rate of the generated clips")
    ap.add_argument("--audio-rate", type=int, default=48000)
    ap.add_argument("--model", default="centre")
    ap.add_argument("--fps", type=float, default=5.0, help="analysis rate (avloc localize --fps)")
    ap.add_argument("--overlay", action="store_true", help="also write the overlay video")
    ap.add_argument("--workers", type=int, default=0, help="the Ray path with N workers (0: sequential)")
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
            r = peak_rss(clip, d / "out", args)
            rows.append((m, r))
            print(f"{m} min: {r}", file=sys.stderr, flush=True)
    base = rows[0][1]
    print(f"{w}x{h} {args.video_fps:g} fps, AAC {args.audio_rate} Hz stereo; avloc localize --model {args.model} "
          f"--fps {args.fps:g}{'' if args.overlay else ' --no-overlay'}"
          f"{f' --workers {args.workers}' if args.workers else ''}{'' if not args.src else f' (src {args.src})'}")
    print()
    print("| clip | driver MB | vs first | largest Ray worker MB | vs first | Ray system MB | all at once MB | vs first "
          "| wall s |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")

    def vs(k: str, r: dict[str, float]) -> str:
        return f"{100 * (r[k] / base[k] - 1):+.1f} %" if base[k] else ""

    for m, r in rows:
        print(f"| {m} min | {r['driver']:.0f} | {vs('driver', r)} | {r['worker']:.0f} | {vs('worker', r)} "
              f"| {r['system']:.0f} | {r['total']:.0f} | {vs('total', r)} | {r['wall']:.0f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
