"""Training input speed: the per-core floor and the loader, from mp4 clips, pre-extracted files and a shard set.

Usage: python bench/speed/loader.py [--clips 12] [--seconds 10] [--width 640 --height 360] [--real DIR]
       [--times 16] [--workers 0,1,2] [--batch-size 64] [--samples 4096] [--repeats 5] [--epochs 2] [--skip-clips]
       [--keep DIR]

Writes ``--clips`` mp4 clips named ``<youtube_id>_<start>.mp4`` (avloc.data.synthetic demo clips, H.264 + AAC;
``--real DIR``: links to the videos of DIR instead, e.g. ``$AVLOC_DATA/videos``), runs ``avloc data prepare
vggsound``, makes ``--times`` samples of each clip (frames and windows spread over the clip: enough distinct
samples that they do not all sit in the CPU's cache) and runs ``avloc data extract`` on them in both formats
(EZ-VSL's inputs: 224 ``squash``, 3 s at 16 kHz), then:

* **floor**, per core: CPU time (``time.process_time``, median of ``--repeats`` passes over the stored samples)
  of decoding one stored 224 px picture -- Pillow, OpenCV, PyAV (FFmpeg's mjpeg) -- or copying it from a
  memory-mapped uint8 array, and of reading its audio window -- soundfile from the extracted WAV, the shard's
  ``.npy`` member, a memory-mapped int16 array. The floor is the fastest JPEG decoder + the ``.npy`` member
  (the loader decodes with OpenCV);
* **loader**: a ``avloc.data.loader.Loader`` (batch ``--batch-size``) over ``--samples`` samples of the shard
  set (its samples repeated), for every worker count, median of ``--epochs`` passes: wall samples/s; a
  worker's steady CPU time per sample (its own clock, stamped on every batch, from its first batch to its
  last: start-up left out) and, measured inside the same worker at the same time, the CPU time of the
  floor's operations there (the shard reader's JPEG decode and window copy): their ratio, the **in-worker
  floor share**, is the loader's efficiency with the machine's state the same for both, which a contended
  machine does not give a floor measured separately (that ratio is printed too); the main process's CPU
  per sample (``RUSAGE_SELF``) and the workers' including start-up (``RUSAGE_CHILDREN``). With 0 workers
  everything runs in the main process;
* the mp4 clips and the files format through the same loader (``--skip-clips`` leaves them out: slow).

Prints markdown tables and the derived worker count for 2,000 samples/s.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import io
import logging
import math
import mmap
import resource
import statistics
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from avloc.benchmarking import cpu_us_per_item
from avloc.data.collate import collate_samples
from avloc.data.datasets import ManifestDataset, dataset_from_spec
from avloc.data.loader import Loader
from avloc.data.prepare import prepare
from avloc.data.prepare.extract import extract
from avloc.data.prepare.shards import ShardConfig
from avloc.data.synthetic import DemoClipConfig, write_demo_clip
from avloc.formats.manifest import read_manifest, resolve_media, write_manifest
from avloc.formats.shards import read_shard_index
from avloc.frontends.audio import AudioFrontendConfig
from avloc.frontends.image import ImageConfig
from avloc.io.shards import npy_header

log = logging.getLogger("bench_loader")
#: EZ-VSL's training inputs (its train.py): 224 px squashed pictures, 3 s of audio at 16 kHz
IMAGE, AUDIO = ImageConfig(size=224, mode="squash"), AudioFrontendConfig(sample_rate=16000, window_seconds=3.0)
#: the rate a 16-core GPU machine's loader must sustain (issue 29)
TARGET_SAMPLES_PER_S = 2000


@contextlib.contextmanager
def _folder(keep: str | None) -> Iterator[Path]:
    if keep:
        Path(keep).mkdir(parents=True, exist_ok=True)
        yield Path(keep)
    else:
        with tempfile.TemporaryDirectory(prefix="avloc-bench-loader-") as d:
            yield Path(d)


def make_clips(root: Path, args: argparse.Namespace) -> None:
    """``root/<11-char id>_<start>.mp4``: generated demo clips, or links to the videos of ``--real``."""
    root.mkdir(exist_ok=True)
    if args.real:
        for i, src in enumerate(sorted(Path(args.real).glob("*.mp4"))):
            p = root / f"real{i:07d}_{i:06d}.mp4"
            if not p.exists():
                p.symlink_to(src.resolve())
        return
    for i in range(args.clips):
        p = root / f"bench{i:06d}_{10 * i:06d}.mp4"  # 11-character ids, VGG-Sound naming
        if not p.exists():
            write_demo_clip(p, DemoClipConfig(seconds=args.seconds, fps=25, width=args.width, height=args.height, seed=i))


def spread(clips: Path, out: Path, times: int) -> Path:
    """``times`` entries per clip entry of ``clips``, at times spread evenly over the clip."""
    entries = []
    for e in read_manifest(clips):
        for k in range(times):
            entries.append({**e, "id": f"{e['id']}-{k:03d}", "time": round((k + 0.5) / times * float(e["duration"]), 3)})
    write_manifest(out, entries)
    return out


# -- floor -------------------------------------------------------------------------------------------------------


def _members(shards: Path) -> tuple[list[np.ndarray], list[np.ndarray], list[int]]:
    """The stored JPEG bytes and audio members (views of the mapped shards) and each member's header length."""
    jpgs, npys, heads = [], [], []
    head = len(npy_header(read_shard_index(shards).window_samples))
    for e in read_manifest(shards / "manifest.jsonl"):
        ref = e["shard"]
        with (shards / ref["path"]).open("rb") as f:
            m = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
        jpgs.append(np.frombuffer(m, np.uint8, ref["jpg"][1], ref["jpg"][0]))
        npy = np.frombuffer(m, np.uint8, ref["npy"][1], ref["npy"][0])
        npys.append(npy)
        heads.append(head)
    return jpgs, npys, heads


def frame_decoders(jpgs: list[np.ndarray], scratch: Path) -> dict[str, Callable[[int], object]]:
    """One way each of getting sample ``i``'s stored picture as (S, S, 3) uint8."""
    import av
    import cv2
    from PIL import Image

    n = len(jpgs)
    ctx = av.CodecContext.create("mjpeg", "r")
    pics = np.stack([cv2.imdecode(j, cv2.IMREAD_COLOR_RGB) for j in jpgs])  # (n, S, S, 3)
    np.save(scratch / "pictures.npy", pics)
    raw = np.load(scratch / "pictures.npy", mmap_mode="r")
    return {
        "Pillow (decode + RGB array)": lambda i: np.asarray(Image.open(io.BytesIO(jpgs[i % n])).convert("RGB")),
        "OpenCV (imdecode, RGB)": lambda i: cv2.imdecode(jpgs[i % n], cv2.IMREAD_COLOR_RGB),
        "PyAV (FFmpeg mjpeg + rgb24)": lambda i: ctx.decode(av.Packet(jpgs[i % n].tobytes()))[0].to_ndarray(format="rgb24"),
        "raw uint8, memory-mapped array (copy)": lambda i: np.array(raw[i % n]),
    }


def audio_readers(npys: list[np.ndarray], heads: list[int], files: Path, scratch: Path) -> dict[str, Callable[[int], object]]:
    """One way each of getting sample ``i``'s 3 s window."""
    import soundfile as sf

    n, w = len(npys), AUDIO.sample_rate * 3
    wavs = [(resolve_media(files / "manifest.jsonl", e["audio"]), float(e["audio_time"]))
            for e in read_manifest(files / "manifest.jsonl")]
    np.save(scratch / "windows.npy", np.stack([a[h:].view("<i2") for a, h in zip(npys, heads)]))
    raw = np.load(scratch / "windows.npy", mmap_mode="r")

    def wav_window(i: int) -> object:
        p, t = wavs[i % len(wavs)]
        start = max(0, round(t * AUDIO.sample_rate) - w // 2)
        return sf.read(p, start=start, stop=start + w, dtype="float32")[0]

    return {
        "soundfile: window of the extracted float WAV": wav_window,
        "shard .npy member (int16 copy)": lambda i: npys[i % n][heads[i % n]:].view("<i2").copy(),
        "raw int16, memory-mapped array (copy)": lambda i: np.array(raw[i % n]),
    }


#: the rows of :func:`frame_decoders` that decode the stored JPEG (the floor takes the fastest)
JPEG_DECODERS = ("Pillow (decode + RGB array)", "OpenCV (imdecode, RGB)", "PyAV (FFmpeg mjpeg + rgb24)")


def floor_table(shards: Path, files: Path, scratch: Path, items: int, repeats: int) -> tuple[str, float]:
    """The floor rows and the floor itself (the fastest JPEG decoder + the .npy member), us of CPU per sample."""
    import cv2

    cv2.setNumThreads(1)
    jpgs, npys, heads = _members(shards)
    rows, got = [], {}
    for kind, fns in (("picture", frame_decoders(jpgs, scratch)), ("audio window", audio_readers(npys, heads, files, scratch))):
        for name, fn in fns.items():
            got[name] = cpu_us_per_item(fn, items, repeats)
            rows.append(f"| {kind} | {name} | {got[name]:,.0f} | {1e6 / got[name]:,.0f} |")
    decoder = min(JPEG_DECODERS, key=got.__getitem__)
    floor = got[decoder] + got["shard .npy member (int16 copy)"]
    raw = got["raw uint8, memory-mapped array (copy)"] + got["raw int16, memory-mapped array (copy)"]
    rows.append(f"| **floor** | fastest JPEG decoder ({decoder.split(' ')[0]}) + .npy member | **{floor:,.0f}** | "
                f"**{1e6 / floor:,.0f}** |")
    rows.append(f"| (raw floor) | uint8 + int16 memory-mapped arrays | {raw:,.0f} | {1e6 / raw:,.0f} |")
    head = ["| step | how | CPU us / sample (median) | samples/s per core |", "|---|---|---:|---:|"]
    return "\n".join(head + rows), floor


# -- loader ------------------------------------------------------------------------------------------------------


class Probe:
    """The floor's own operations (:meth:`ShardReader.sample`) timed in the process that runs them, and a collate
    function that stamps every batch with that process's CPU clock: the steady per-sample cost of a worker, its
    start-up left out, measured where the work runs (module doc)."""

    def __init__(self, ds: Any) -> None:
        self.floor_s, self.n = 0.0, 0
        self.ds = ds
        reader = getattr(ds, "reader", None)
        if reader is not None:  # a shard set: time its reader's sample() on copies (``ds`` stays as it is)
            self.ds, reader = copy.copy(ds), copy.copy(reader)
            self.ds.reader = reader
            sample = reader.sample

            def timed(i: int) -> Any:
                t0 = time.process_time()
                out = sample(i)
                self.floor_s += time.process_time() - t0
                return out

            reader.sample = timed  # this instance only
        self.timed = reader is not None

    def collate(self, items: list[Any]) -> dict[str, Any]:
        from torch.utils.data import get_worker_info

        batch = collate_samples(items)
        self.n += len(items)
        info = get_worker_info()
        batch[PROBE_KEY] = (info.id if info else -1, time.process_time(), self.floor_s, self.n)
        return batch


#: the batch key of a :class:`Probe` stamp: (worker, its CPU clock s, its floor operations' CPU s, its samples)
PROBE_KEY = "_probe"


def steady(stamps: list[tuple[int, float, float, int]]) -> tuple[float, float]:
    """Per worker from its first batch to its last: (CPU us / sample, floor operations' CPU us / sample), summed
    over workers weighted by samples; NaN when no worker made two batches."""
    by: dict[int, list[tuple[int, float, float, int]]] = {}
    for s in stamps:
        by.setdefault(s[0], []).append(s)
    cpu = floor = 0.0
    n = 0
    for runs in by.values():
        if len(runs) > 1:
            a, b = runs[0], runs[-1]
            cpu, floor, n = cpu + b[1] - a[1], floor + b[2] - a[2], n + b[3] - a[3]
    return (cpu / n * 1e6, floor / n * 1e6) if n else (math.nan, math.nan)


def loader_pass(ds: Any, workers: int, batch_size: int, samples: int,
                context: str | None = None) -> tuple[float, float, float, float, float]:
    """One pass of ``samples`` samples (``ds`` repeated): samples/s (wall), the workers' steady CPU us / sample and
    that of the floor operations inside them (:class:`Probe`), the main process's CPU us / sample, and the workers'
    CPU us / sample including their start-up (``RUSAGE_CHILDREN``: workers are joined at the end of a pass)."""
    from torch.utils.data import Subset

    probe = Probe(ds)
    data = Subset(probe.ds, [i % len(ds) for i in range(samples)])
    s0, c0 = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    loader = Loader(data, batch_size=batch_size, num_workers=workers, collate_fn=probe.collate,
                    multiprocessing_context=context if workers else None)
    stamps = [b[PROBE_KEY] for b in loader]
    wall = time.perf_counter() - t0
    s1, c1 = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    main = s1.ru_utime + s1.ru_stime - s0.ru_utime - s0.ru_stime
    kids = c1.ru_utime + c1.ru_stime - c0.ru_utime - c0.ru_stime
    cpu, floor = steady(stamps)
    if not probe.timed:
        floor = math.nan
    return samples / wall, cpu, floor, main / samples * 1e6, kids / samples * 1e6


#: one loader row: input, workers, samples/s (wall), worker CPU / sample (steady), of it the floor operations,
#: main-process CPU / sample, worker CPU / sample with start-up (us)
Row = tuple[str, int, float, float, float, float, float]


def loader_rows(name: str, ds: Any, workers: list[int], args: argparse.Namespace, samples: int,
                context: str | None = None) -> list[Row]:
    rows = []
    for w in workers:
        runs = [loader_pass(ds, w, args.batch_size, samples, context) for _ in range(args.epochs)]
        sps, cpu, floor, main, kids = (statistics.median(r[k] for r in runs) for k in range(5))
        log.info("%s, %d workers: %.0f samples/s, %.0f us CPU per sample in a worker (%.0f of it the floor's "
                 "operations), %.0f in main", name, w, sps, cpu, floor, main)
        rows.append((name, w, sps, cpu, floor, main, kids))
    return rows


def _us(v: float) -> str:
    return "-" if math.isnan(v) else f"{v:,.0f}"


def loader_table(rows: list[Row], floor: float) -> str:
    """The loader rows. With 0 workers the "worker" is the main process (its clock runs the loop too)."""
    out = ["| input | workers | samples/s (wall) | worker CPU us / sample (steady) | of it the floor's operations | "
           "in-worker floor share | floor (serial) / worker CPU | main CPU us / sample | worker CPU incl. start-up |",
           "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for name, w, sps, cpu, fl, main, kids in rows:
        share = "-" if math.isnan(fl) else f"{100 * fl / cpu:.0f} %"
        out.append(f"| {name} | {w} | {sps:,.0f} | {_us(cpu)} | {_us(fl)} | {share} | {100 * floor / cpu:.0f} % | "
                   f"{main:,.0f} | {_us(kids) if w else '-'} |")
    return "\n".join(out)


def main(argv: list[str] | None = None) -> str:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--clips", type=int, default=12)
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--width", type=int, default=640)
    ap.add_argument("--height", type=int, default=360)
    ap.add_argument("--real", default=None, help="link the .mp4 videos of this folder instead of generating clips")
    ap.add_argument("--times", type=int, default=16, help="samples per clip (frames spread over the clip)")
    ap.add_argument("--workers", default="0,1,2", help="comma-separated worker counts")
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--samples", type=int, default=4096, help="samples per loader pass over the shard set")
    ap.add_argument("--repeats", type=int, default=5, help="passes of each floor measurement (the median is kept)")
    ap.add_argument("--epochs", type=int, default=2, help="loader passes per row (the median is kept)")
    ap.add_argument("--skip-clips", action="store_true", help="leave out the mp4 and files rows (slow)")
    ap.add_argument("--keep", default=None, help="write the clips and sets here (default: a temporary folder)")
    args = ap.parse_args(argv)
    workers = [int(w) for w in args.workers.split(",") if w.strip()]
    import cv2
    import torch

    # one thread, as in every DataLoader worker: CPU time then counts work, not OpenMP threads spinning idle
    torch.set_num_threads(1)
    cv2.setNumThreads(1)
    with _folder(args.keep) as d:
        make_clips(d / "vggsound", args)
        clips = prepare("vggsound", d / "vggsound", d / "clips.jsonl", force=True)
        samples = spread(clips.manifest, d / "samples.jsonl", args.times)
        t0 = time.perf_counter()
        files = extract(samples, d / "files", size=224, sample_rate=16000, workers=max(1, *workers), force=True)
        extract_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        extract(samples, d / "shards", size=224, sample_rate=16000, workers=max(1, *workers), force=True,
                format="shards", shards=ShardConfig(mode="squash", window_seconds=3.0))
        shards_s = time.perf_counter() - t0
        items = max(200, files.n_written)
        ftable, floor0 = floor_table(d / "shards", d / "files", d, items, args.repeats)
        log.info("%s", ftable)
        compact = dataset_from_spec(f"shards:{d / 'shards'}", image_cfg=IMAGE, audio_cfg=AUDIO, compact=True)
        plain = dataset_from_spec(f"shards:{d / 'shards'}", image_cfg=IMAGE, audio_cfg=AUDIO)
        rows = loader_rows("shards, compact (uint8 + int16)", compact, workers, args, args.samples)
        rows += loader_rows("shards, float", plain, workers, args, args.samples)
        floor1 = floor_table(d / "shards", d / "files", d, items, args.repeats)[1]  # the load may have changed
        if not args.skip_clips:
            # spawned workers: this process has decoded with PyAV (the floor's PyAV row, the mp4 rows), and a
            # process forked after that hangs in its first PyAV decode (avloc.data.prepare.extract.decode_pool)
            for name, man in (("pre-extracted jpg + wav", files.manifest), ("mp4 clips", samples)):
                rows += loader_rows(name, ManifestDataset(man, IMAGE, AUDIO), workers, args, 4 * args.batch_size, "spawn")
    floor = (floor0 + floor1) / 2
    best = {w: (cpu, main) for name, w, _, cpu, _, main, _ in rows if name.startswith("shards, compact") and w}
    one, main_us = best.get(1, min(best.values(), default=(math.nan, math.nan)))
    source = f"linked from {args.real}" if args.real else f"generated, {args.seconds:g} s at {args.width}x{args.height}"
    lines = [f"{clips.n_written} clips ({source}) x {args.times} times = {files.n_written} samples; batch {args.batch_size}; "
             f"extraction {extract_s:.1f} s (files), {shards_s:.1f} s (shards) with {max(1, *workers)} workers", "",
             ftable, "", f"Floor measured before the loader rows {floor0:,.0f} us, after them {floor1:,.0f} us; "
             f"the ratios use the mean, {floor:,.0f} us.", "", loader_table(rows, floor), ""]
    if best:
        lines.append(f"Derived: {TARGET_SAMPLES_PER_S:,} samples/s at {one:,.0f} us of worker CPU per sample (1 worker, "
                     f"compact, steady) need {TARGET_SAMPLES_PER_S * one / 1e6:.2f} cores of loader workers: "
                     f"{math.ceil(TARGET_SAMPLES_PER_S * one / 1e6)} worker(s), each with a core of its own, and "
                     f"{TARGET_SAMPLES_PER_S * main_us / 1e6:.2f} of a core in the main process ({main_us:,.0f} us "
                     "per sample: the copy out of the batch slot, which pinning for the GPU does anyway).")
    text = "\n".join(lines)
    print(text)
    return text


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    main()
