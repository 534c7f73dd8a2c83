"""Speed and memory of ``avloc localize`` (docs/BENCHMARKS.md, "avloc localize").

Real-time factor (seconds of video per second of processing, model load excluded)
per clip, analysis rate and overlay on/off, with the default model; peak RSS of a
child ``avloc localize`` process on generated long 720p videos.

    python bench/speed/localize.py [--data DIR] [--fps 5 10] [--long-minutes 1 5 10] [--skip-shared] [--set KEY=VALUE ...]

``--set``: method config overrides (``--set detector_size=320``), as ``avloc localize --set``.
"""

from __future__ import annotations

import argparse
import os
import resource
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[2]


def generated_720p(path: Path, seconds: float, fps: float = 30.0) -> Path:
    """A cheap-to-encode 1280x720 clip: a moving disc over a flat background, pulsing tone bursts."""
    from avloc.io.media import write_video

    sr = 16000
    n = round(seconds * fps)
    t = np.arange(round(seconds * sr)) / sr
    audio = (0.3 * np.sin(2 * np.pi * 440 * t) * (np.sin(2 * np.pi * 0.7 * t) > 0.3)).astype(np.float32)
    r = 90
    yy, xx = np.mgrid[-r:r, -r:r]
    disc = xx**2 + yy**2 < r**2  # pasted as a small patch: generation stays cheap for hour-long clips

    def frames() -> Iterator[np.ndarray]:
        img = np.full((720, 1280, 3), 70, np.uint8)
        for i in range(n):
            img[:] = 70
            cx = round(640 + 300 * np.sin(i / fps))
            img[360 - r:360 + r, cx - r:cx + r][disc] = (230, 200, 40)
            yield img

    write_video(path, frames(), fps, audio, sr, preset="ultrafast")
    return path


def repeated(src: Path, path: Path, times: int) -> Path:
    """``src`` played ``times`` times in a row, by remuxing its packets (no re-encode: hour-long clips in seconds)."""
    import av

    with av.open(str(src)) as inp, av.open(str(path), "w", format="mp4") as out:
        streams = {s.index: out.add_stream_from_template(s) for s in inp.streams if s.type in ("video", "audio")}
        durations = {s.index: s.duration for s in inp.streams if s.index in streams}
        if any(d is None for d in durations.values()):
            raise RuntimeError(f"{src}: stream durations unknown, cannot repeat")
        for k in range(times):
            inp.seek(0)
            for pkt in inp.demux(*[inp.streams[i] for i in streams]):
                if pkt.dts is None:
                    continue
                off = k * durations[pkt.stream.index]
                pkt.pts, pkt.dts = pkt.pts + off, pkt.dts + off
                pkt.stream = streams[pkt.stream.index]
                out.mux(pkt)
    return path


def run_rtf(clip: Path, fps: float, overlay: bool, out: Path, model) -> float:
    from avloc.inference import LocalizeConfig, localize_video

    cfg = LocalizeConfig(fps=fps, overlay=overlay, force=True)
    res = localize_video(clip, model, cfg, out, model_name=model.name, progress=False)
    return res.realtime_factor


def peak_rss_mb(clip: Path, out: Path) -> tuple[float, float]:
    """(peak RSS MB, wall s) of ``avloc localize CLIP --no-overlay`` in a child process."""
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-m", "avloc.cli.main", "localize", str(clip), "--out", str(out), "--force",
                    "--no-overlay", "--quiet"], check=True, stdout=subprocess.DEVNULL)
    wall = time.perf_counter() - t0
    return resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024, wall


def main() -> int:
    from avloc.inference import DEFAULT_MODEL
    from avloc.methods.zoo import load_model_spec

    ap = argparse.ArgumentParser()
    ap.add_argument("--data", default=os.environ.get("AVLOC_DATA", str(REPO.parent / "shared" / "data")))
    ap.add_argument("--fps", type=float, nargs="+", default=[5.0, 10.0])
    ap.add_argument("--long-minutes", type=float, nargs="*", default=[1.0, 5.0, 10.0])
    ap.add_argument("--skip-shared", action="store_true")
    ap.add_argument("--model", default=DEFAULT_MODEL, help="model name (default: the embedded default)")
    ap.add_argument("--gen-fps", type=float, default=30.0, help="frame rate of the generated 720p clip")
    ap.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="method config overrides")
    args = ap.parse_args()
    model = load_model_spec(args.model + ("@" + ",".join(args.set) if args.set else ""))
    print(f"# {time.strftime('%Y-%m-%d %H:%M')}, torch threads {__import__('torch').get_num_threads()}, load {os.getloadavg()}")
    with tempfile.TemporaryDirectory() as d:
        clips = [] if args.skip_shared else sorted(Path(args.data, "videos").glob("*.mp4"))
        clips.append(generated_720p(Path(d) / f"gen720p{args.gen_fps:g}.mp4", 10.0, fps=args.gen_fps))
        run_rtf(clips[-1], args.fps[0], False, Path(d) / "out", model)  # warm-up: lazily built parts, caches
        print("| clip | fps | RTF overlay | RTF no overlay |\n|---|---|---|---|")
        for c in clips:
            for fps in args.fps:
                on = run_rtf(c, fps, True, Path(d) / "out", model)
                off = run_rtf(c, fps, False, Path(d) / "out", model)
                print(f"| {c.name[:40]} | {fps:g} | {on:.2f} | {off:.2f} |", flush=True)
        print("\n| long 720p clip | peak RSS MB | wall s |\n|---|---|---|")
        for m in args.long_minutes:
            unit = generated_720p(Path(d) / "unit.mp4", 60.0) if m >= 1 and float(m).is_integer() else None
            c = (repeated(unit, Path(d) / f"long{m:g}.mp4", int(m)) if unit
                 else generated_720p(Path(d) / f"long{m:g}.mp4", 60 * m))
            rss, wall = peak_rss_mb(c, Path(d) / "out")
            print(f"| {m:g} min | {rss:.0f} | {wall:.0f} |", flush=True)
            c.unlink()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
