"""Benchmark of the evaluation harness: ``ezvsl-vggss`` on 5,158 random 14x14 maps.

Times, in one run, (1) the vectorised harness (``evaluate_predictions``),
(2) a per-sample reference loop written like EZ-VSL's ``test.py``
(``F.interpolate`` per map, ``np.sort`` median, float64 cIoU) and checks both
give identical results, and (3) the wall time of the whole command
``avloc eval --gt .../vggss.json --pred preds.npz --protocol ezvsl-vggss --json``.

    python bench/bench_eval.py [--data ../shared/data] [--write-md docs/BENCHMARKS.md]
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
SIZE = 224  # EZ-VSL evaluation grid
MAP = 14  # raw map size of the benchmark


def reference_loop(preds: dict[str, np.ndarray], entries: list[dict[str, object]]) -> dict[str, float]:
    import torch
    import torch.nn.functional as F

    cious = []
    for e in entries:
        h = F.interpolate(torch.from_numpy(preds[str(e["file"])])[None, None], size=(SIZE, SIZE), mode="bilinear", align_corners=True)
        pred = h.numpy()[0, 0]
        vmin, vmax = pred.min(), pred.max()
        if vmax - vmin != 0:
            pred = (pred - vmin) / (vmax - vmin)
        gt = np.zeros([SIZE, SIZE])
        for b in e["bbox"]:  # type: ignore[attr-defined]
            x1, y1, x2, y2 = (np.clip(np.array(b), 0, 1) * SIZE).astype(int)
            tmp = np.zeros([SIZE, SIZE])
            tmp[y1:y2, x1:x2] = 1
            gt += tmp
        gt[gt > 0] = 1
        thr = np.sort(pred.flatten())[SIZE * SIZE // 2]
        infer = np.zeros((SIZE, SIZE))
        infer[pred >= thr] = 1
        cious.append(np.sum(infer * gt) / (np.sum(gt) + np.sum(infer * (gt == 0))))
    c = np.array(cious)
    curve = [np.sum(c >= 0.05 * i) / len(c) for i in range(21)]
    return {"success": float(np.mean(c >= 0.5)), "auc": float(np.trapezoid(curve, [0.05 * i for i in range(21)])), "mean_ciou": float(c.mean())}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default=os.environ.get("AVLOC_DATA", str(REPO.parent / "shared" / "data")))
    ap.add_argument("--write-md", help="update the '## Evaluation harness' section of this markdown file")
    args = ap.parse_args()
    gt_path = Path(args.data) / "vggss" / "vggss.json"
    if not gt_path.is_file():
        print(f"VGG-SS annotations not found at {gt_path}; pass --data", file=sys.stderr)
        return 2
    entries = json.loads(gt_path.read_text())
    rng = np.random.default_rng(0)
    preds = {str(e["file"]): rng.standard_normal((MAP, MAP)).astype(np.float32) for e in entries}

    from avloc.engine.evaluate import evaluate_predictions

    gts = [{"id": e["file"], "boxes": e["bbox"]} for e in entries]
    t0 = time.perf_counter()
    ours = evaluate_predictions(preds, gts, "ezvsl-vggss")
    t_vec = time.perf_counter() - t0
    t0 = time.perf_counter()
    ref = reference_loop(preds, entries)
    t_ref = time.perf_counter() - t0
    same = all(ours[k] == ref[k] for k in ref)

    with tempfile.TemporaryDirectory() as tmp:
        npz = Path(tmp) / "preds.npz"
        np.savez(npz, **preds)
        cmd = [sys.executable, "-m", "avloc.cli.main", "eval", "--gt", str(gt_path), "--pred", str(npz), "--protocol", "ezvsl-vggss", "--json"]
        t0 = time.perf_counter()
        out = subprocess.run(cmd, capture_output=True, text=True, check=True)
        t_cli = time.perf_counter() - t0
        cli = json.loads(out.stdout)
    same = same and all(cli[k] == ref[k] for k in ref)
    load = os.getloadavg()[0]
    report = {
        "n": len(entries),
        "vectorised_s": round(t_vec, 3),
        "reference_loop_s": round(t_ref, 3),
        "speedup": round(t_ref / t_vec, 1),
        "cli_wall_s": round(t_cli, 3),
        "identical_results": same,
        "success": ours["success"],
        "auc": ours["auc"],
        "load_avg_1min": round(load, 2),
        "cpus": os.cpu_count(),
    }
    print(json.dumps(report, indent=2))
    if args.write_md:
        write_section(Path(args.write_md), report)
    return 0 if same else 1


def write_section(path: Path, r: dict[str, object]) -> None:
    day = dt.date.today().isoformat()
    body = f"""## Evaluation harness

`ezvsl-vggss` on the 5,158 VGG-SS test clips (real `vggss.json` boxes) with
random 14x14 maps (seed 0), measured {day} on {r['cpus']} CPU cores (1-min load
average during the run: {r['load_avg_1min']}; the machine was shared).

Command: `python bench/bench_eval.py --write-md docs/BENCHMARKS.md`

| what | time (s) |
|---|---|
| vectorised harness (`evaluate_predictions`, 2 threads) | {r['vectorised_s']} |
| per-sample reference loop (EZ-VSL `test.py` style) | {r['reference_loop_s']} |
| speed-up | {r['speedup']}x |
| whole `avloc eval --gt ../shared/data/vggss/vggss.json --pred preds.npz --protocol ezvsl-vggss --json` | {r['cli_wall_s']} |

Identical success / AUC / mean cIoU from all three: {r['identical_results']}
(success {r['success']:.6f}, AUC {r['auc']:.6f}).
"""
    text = path.read_text() if path.exists() else "# Benchmarks\n"
    pat = re.compile(r"^## Evaluation harness\n.*?(?=^## |\Z)", re.S | re.M)
    text = pat.sub(body + "\n", text) if pat.search(text) else text.rstrip("\n") + "\n\n" + body
    path.write_text(text)


if __name__ == "__main__":
    sys.exit(main())
