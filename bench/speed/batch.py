"""Throughput of collection runs: sequential ``avloc localize`` vs Ray with 1 and 2 workers (docs/BENCHMARKS.md).

Takes the first ``--clips`` short real clips of ``$AVLOC_DATA`` (``videos/`` and ``realclips_dev/``, cut to
``--seconds`` each into a scratch folder: the data is never copied into the repository), runs each mode as a
child ``avloc localize ... --out DIR`` in one session (so the ratio is between runs on the same machine at the
same time) and prints videos/s, frames/s, the ratio to sequential and the peak RSS of the run's processes.
Ray's start-up cost is timed apart (``ray.init`` + an empty task). Other workloads on the machine distort the
absolute numbers; the ratio is what to read.

    python bench/speed/batch.py [--clips 20] [--seconds 4] [--model avsync-objectness] [--workers 0 1 2]
        [--threads-per-worker T] [--overlay]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def cut_clips(data: Path, n: int, seconds: float, into: Path) -> list[Path]:
    """The first ``n`` clips of videos/ and realclips_dev/, each cut to its first ``seconds`` (re-encoded)."""
    from avloc.io.audio import load_audio
    from avloc.io.media import iter_frames, probe, write_video

    src = sorted((data / "videos").glob("*.mp4")) + sorted((data / "realclips_dev").glob("*.mp4"))
    out = []
    for p in src:
        if len(out) == n:
            break
        info = probe(p)
        if not info.has_audio or not info.has_video:
            continue
        fps = float(info.fps or 25.0)
        frames = []
        for fr in iter_frames(p, fps=fps, size=(320, round(320 * (info.height or 180) / (info.width or 320) / 2) * 2)):
            if fr.time >= seconds:
                break
            frames.append(fr.image)
        wav, sr = load_audio(p, 16000)
        dst = into / p.name
        write_video(dst, iter(frames), fps, wav[: round(seconds * sr)], sr)
        out.append(dst)
    return out


def _tree(pid: int) -> list[int]:
    """``pid`` and its descendants, from /proc (Ray's raylet and workers are children of the CLI)."""
    kids: dict[int, list[int]] = {}
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                ppid = int((d / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            kids.setdefault(ppid, []).append(int(d.name))
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(kids.get(p, []))
    return out


def _rss_mb(pid: int) -> float:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def peak_rss_mb(pid: int, stop: threading.Event, peak: dict[str, float]) -> None:
    """Poll the RSS of ``pid`` and its descendants (Ray workers included) until ``stop``."""
    while not stop.is_set():
        per = [_rss_mb(p) for p in _tree(pid)]
        if per:
            peak["total"] = max(peak.get("total", 0.0), sum(per))
            peak["max_process"] = max(peak.get("max_process", 0.0), max(per))
        time.sleep(0.5)


def run_mode(clips: list[Path], workers: int, model: str, out: Path, threads_per_worker: int = 0,
             overlay: bool = False) -> dict[str, float]:
    cmd = [sys.executable, "-m", "avloc.cli.main", "localize", *map(str, clips), "--out", str(out),
           "--model", model, "--quiet", "--workers", str(workers)]
    if not overlay:
        cmd.append("--no-overlay")
    if workers and threads_per_worker:
        cmd += ["--threads-per-worker", str(threads_per_worker)]
    t0 = time.perf_counter()
    p = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    stop, peak = threading.Event(), dict[str, float]()
    th = threading.Thread(target=peak_rss_mb, args=(p.pid, stop, peak), daemon=True)
    th.start()
    _, err = p.communicate()
    stop.set()
    secs = time.perf_counter() - t0
    if p.returncode:
        raise SystemExit(f"workers={workers}: exit {p.returncode}\n{err[-2000:]}")
    run = json.loads((out / "run.json").read_text())
    frames = sum(len(json.loads((out / s["outputs"]["json"]).read_text())["frames"]) for s in run["inputs"])
    return {"seconds": secs, "videos_per_s": len(clips) / secs, "frames_per_s": frames / secs,
            "peak_rss_mb": peak.get("total", 0.0), "max_process_mb": peak.get("max_process", 0.0)}


def ray_startup() -> float:
    import ray

    t0 = time.perf_counter()
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    ray.get(ray.remote(lambda: 0).remote())
    dt = time.perf_counter() - t0
    ray.shutdown()
    return dt


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default=os.environ.get("AVLOC_DATA", str(REPO.parent / "shared" / "data")))
    ap.add_argument("--clips", type=int, default=20)
    ap.add_argument("--seconds", type=float, default=4.0)
    ap.add_argument("--model", default="avsync-objectness")
    ap.add_argument("--workers", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--threads-per-worker", type=int, default=0,
                    help="torch threads per Ray actor (0: as many as the sequential run, byte-identical outputs)")
    ap.add_argument("--overlay", action="store_true", help="also encode the overlay videos (default: off)")
    a = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="avloc-bench-batch-") as tmp:
        clips = cut_clips(Path(a.data), a.clips, a.seconds, Path(tmp))
        print(f"{len(clips)} clips of {a.seconds:g} s, model {a.model}, {os.cpu_count()} cores, "
              f"overlay {'on' if a.overlay else 'off'}, threads per Ray worker {a.threads_per_worker or 'default'}")
        print(f"Ray start-up (init + first task): {ray_startup():.1f} s")
        base = None
        for w in a.workers:
            r = run_mode(clips, w, a.model, Path(tmp) / f"out{w}", a.threads_per_worker, a.overlay)
            base = base or r["seconds"]
            label = "sequential" if w == 0 else f"Ray, {w} worker(s)"
            print(f"{label:18s} {r['seconds']:7.1f} s  {r['videos_per_s']:.2f} videos/s  {r['frames_per_s']:.1f} frames/s  "
                  f"x{base / r['seconds']:.2f}  peak RSS {r['peak_rss_mb']:.0f} MB (largest process {r['max_process_mb']:.0f} MB)")


if __name__ == "__main__":
    main()
