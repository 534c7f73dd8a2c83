"""DigitScenes generation speed: samples/s of ``single`` composed in memory and written to disk.

Usage: python bench/paper/digitscenes/run.py --raw ../shared/data [--count 10000] [--workers 2]

* memory: the on-the-fly ``DigitScenes`` dataset through a DataLoader
  (``workers`` processes, batch 64), i.e. what training consumes;
* disk: ``generate`` (PNG + 16-bit WAV + manifest) with ``workers`` processes.

Source loading (first decode of the audio files) is included. Wall-clock
rates depend on what else runs on the machine, so the CPU time per sample of
a serial in-process pass (``--cpu-count`` warm samples, memory and disk) is
printed too: ``2000 / cpu_ms`` is the rate two uncontended cores reach.
Prints a markdown row for docs/BENCHMARKS.md ("## DigitScenes generation").
"""

from __future__ import annotations

import argparse
import datetime
import os
import tempfile
import time

import torch
from torch.utils.data import DataLoader

from avloc.data.digitscenes import DigitScenes, variant_config
from avloc.data.digitscenes.generate import _Writer, generate


def _collate(items: list[dict]) -> list[dict]:
    return items


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--raw", default=os.environ.get("AVLOC_DATA", "../shared/data"))
    p.add_argument("--count", type=int, default=10_000)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--size", type=int, default=224)
    p.add_argument("--cpu-count", type=int, default=300)
    a = p.parse_args()
    torch.set_num_threads(1)
    cfg = variant_config("single")
    cfg.scene.size = a.size

    t = time.time()
    ds = DigitScenes(a.raw, "single", "train", a.count, seed=0, config=cfg)
    loader = DataLoader(ds, batch_size=64, num_workers=a.workers, collate_fn=_collate)
    n = sum(len(b) for b in loader)
    mem = n / (time.time() - t)

    with tempfile.TemporaryDirectory() as out:
        t = time.time()
        generate(a.raw, out, "single", "train", a.count, 0, cfg, workers=a.workers)
        disk = a.count / (time.time() - t)

    # CPU time per sample, serial and warm (sources already decoded)
    k = min(a.cpu_count, a.count)
    c = time.process_time()
    for i in range(k):
        ds[i]
    cpu_mem = (time.process_time() - c) / k * 1000
    with tempfile.TemporaryDirectory() as out:
        for d in ("images", "audio"):
            os.makedirs(os.path.join(out, "single_train", d))
        writer = _Writer(a.raw, out, "single", "train", 0, cfg)
        writer.sampler.raw = ds.sampler.raw  # reuse decoded sources
        c = time.process_time()
        for i in range(k):
            writer(i)
        cpu_disk = (time.process_time() - c) / k * 1000

    load = os.getloadavg()[0]
    print("| date | samples | size | workers | memory (samples/s) | disk (samples/s) | CPU ms/sample memory / disk | load avg |")
    print("|---|---|---|---|---|---|---|---|")
    print(
        f"| {datetime.date.today()} | {a.count} | {a.size} | {a.workers} | {mem:.0f} | {disk:.0f} "
        f"| {cpu_mem:.1f} / {cpu_disk:.1f} | {load:.1f} |"
    )


if __name__ == "__main__":
    main()
