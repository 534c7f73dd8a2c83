"""No-shortcut check of DigitScenes ``single``: visual-only vs spoken-label probe (see avloc.data.digitscenes.probe).

Usage: python bench/paper/digitscenes/shortcut.py --raw ../shared/data [--train-count 4000]
Prints a markdown table row per model; the figures go in docs/RESULTS.md ("## DigitScenes").
"""

from __future__ import annotations

import argparse
import datetime
import os

import torch

from avloc.data.digitscenes.probe import ProbeConfig, run_probe


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--raw", default=os.environ.get("AVLOC_DATA", "../shared/data"))
    p.add_argument("--train-count", type=int, default=ProbeConfig.train_count)
    p.add_argument("--test-count", type=int, default=ProbeConfig.test_count)
    p.add_argument("--threads", type=int, default=2)
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    cfg = ProbeConfig(train_count=a.train_count, test_count=a.test_count)
    r = run_probe(a.raw, cfg)
    print(f"<!-- {datetime.date.today()} {cfg} seconds={r['info']['seconds']:.0f} -->")
    print("| model | test pointing acc. | chance | train draws | test draws |")
    print("|---|---|---|---|---|")
    for key, name in (("visual", "visual only (no audio)"), ("label", "visual + spoken label")):
        print(f"| {name} | {r[key]['accuracy']:.3f} | {r[key]['chance']:.3f} | {cfg.train_count} | {cfg.test_count} |")


if __name__ == "__main__":
    main()
