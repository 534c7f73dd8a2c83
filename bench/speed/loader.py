"""Data-loader throughput (samples/s) on VGG-Sound-like clips vs pre-extracted frames + wav, with N workers.

Usage: python bench/speed/loader.py [--clips 12] [--seconds 10] [--width 640 --height 360] [--workers 0,1,2]
       [--batch-size 8] [--epochs 2] [--keep DIR]

Generates ``--clips`` mp4 clips named ``<youtube_id>_<start>.mp4`` (avloc.data.synthetic
demo clips, H.264 + AAC), runs ``avloc data prepare vggsound`` and ``avloc data extract``
on them, then times a ``torch.utils.data.DataLoader`` over each manifest (the
224 ``squash`` image front-end and a 3 s window at 16 kHz: EZ-VSL's inputs) for
every worker count. Prints a markdown table: samples/s, best of ``--epochs`` passes.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from torch.utils.data import DataLoader

from avloc.data.collate import collate_samples
from avloc.data.datasets import ManifestDataset
from avloc.data.prepare import prepare
from avloc.data.prepare.extract import extract
from avloc.data.synthetic import DemoClipConfig, write_demo_clip
from avloc.frontends.audio import AudioFrontendConfig
from avloc.frontends.image import ImageConfig

log = logging.getLogger("bench_loader")


def samples_per_second(manifest: Path, workers: int, batch_size: int, epochs: int) -> float:
    """Best-of-``epochs`` samples / s of a DataLoader over ``manifest`` (first batch included: worker start-up)."""
    ds = ManifestDataset(manifest, ImageConfig(size=224, mode="squash"), AudioFrontendConfig(window_seconds=3.0))
    best = 0.0
    for _ in range(epochs):
        loader = DataLoader(ds, batch_size=batch_size, num_workers=workers, collate_fn=collate_samples,
                            persistent_workers=False)
        t0 = time.perf_counter()
        n = sum(len(b["id"]) for b in loader)
        best = max(best, n / (time.perf_counter() - t0))
    return best


@contextlib.contextmanager
def _folder(keep: str | None) -> Iterator[Path]:
    if keep:
        Path(keep).mkdir(parents=True, exist_ok=True)
        yield Path(keep)
    else:
        with tempfile.TemporaryDirectory(prefix="avloc-bench-loader-") as d:
            yield Path(d)


def main(argv: list[str] | None = None) -> str:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--clips", type=int, default=12)
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--width", type=int, default=640)
    ap.add_argument("--height", type=int, default=360)
    ap.add_argument("--workers", default="0,1,2", help="comma-separated worker counts")
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--keep", default=None, help="write the clips and manifests here (default: a temporary folder)")
    args = ap.parse_args(argv)
    workers = [int(w) for w in args.workers.split(",") if w.strip()]
    with _folder(args.keep) as d:
        root = d / "vggsound"
        root.mkdir(exist_ok=True)
        for i in range(args.clips):
            p = root / f"bench{i:06d}_{10 * i:06d}.mp4"  # 11-character ids, VGG-Sound naming
            if not p.exists():
                write_demo_clip(p, DemoClipConfig(seconds=args.seconds, fps=25, width=args.width, height=args.height,
                                                  seed=i))
        clips = prepare("vggsound", root, d / "clips.jsonl", force=True)
        t0 = time.perf_counter()
        ext = extract(clips.manifest, d / "extracted", size=224, sample_rate=16000, workers=max(1, *workers), force=True)
        extract_s = time.perf_counter() - t0
        rows = []
        for name, man in (("mp4 clips", clips.manifest), ("pre-extracted jpg + wav", ext.manifest)):
            for w in workers:
                sps = samples_per_second(man, w, args.batch_size, args.epochs)
                log.info("%s, %d workers: %.1f samples/s", name, w, sps)
                rows.append(f"| {name} | {w} | {sps:,.1f} |")
    lines = [f"{args.clips} clips of {args.seconds:g} s at {args.width}x{args.height}, 25 fps; batch {args.batch_size}; "
             f"extraction took {extract_s:.1f} s with {max(1, *workers)} workers ({args.clips / extract_s:.1f} clips/s)", "",
             "| input | workers | samples/s |", "|---|---:|---:|", *rows]
    text = "\n".join(lines)
    print(text)
    return text


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    main()
