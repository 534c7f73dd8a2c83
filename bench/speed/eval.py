"""Benchmark of the evaluation harness: ``ezvsl-vggss`` on 5,158 random 14x14 maps.

Times, in one run, (1) the vectorised harness (``evaluate_predictions``),
(2) a per-sample reference loop written like EZ-VSL's ``test.py``
(``F.interpolate`` per map, ``np.sort`` median, float64 cIoU) and checks both
give identical results, and (3) the wall time of the whole command
``avloc eval --gt .../vggss.json --pred preds.npz --protocol ezvsl-vggss --json``
(a fresh process: NumPy resize, no torch import). Wall and CPU times are both
reported: on a shared machine the CPU time is the steadier figure.

    python bench/speed/eval.py [--data ../shared/data] [--threads 1] [--repeats 3] [--write-md FILE]
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import re
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[2]
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


def timed(fn: Any) -> tuple[Any, float, float]:
    """(result, wall seconds, CPU seconds of this process)."""
    w0, c0 = time.perf_counter(), time.process_time()
    out = fn()
    return out, time.perf_counter() - w0, time.process_time() - c0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default=os.environ.get("AVLOC_DATA", str(REPO.parent / "shared" / "data")))
    ap.add_argument("--threads", type=int, default=1, help="torch threads, harness worker threads and `avloc eval --workers`")
    ap.add_argument("--repeats", type=int, default=3, help="timed runs of each part; the fastest is reported")
    ap.add_argument("--write-md", help="update the '## Evaluation harness' section of this markdown file")
    args = ap.parse_args()
    import torch

    torch.set_num_threads(args.threads)
    gt_path = Path(args.data) / "vggss" / "vggss.json"
    if not gt_path.is_file():
        print(f"VGG-SS annotations not found at {gt_path}; pass --data", file=sys.stderr)
        return 2
    entries = json.loads(gt_path.read_text())
    rng = np.random.default_rng(0)
    preds = {str(e["file"]): rng.standard_normal((MAP, MAP)).astype(np.float32) for e in entries}

    from avloc.engine.evaluate import evaluate_predictions

    gts = [{"id": e["file"], "boxes": e["bbox"]} for e in entries]
    load0 = os.getloadavg()[0]
    vec = [timed(lambda: evaluate_predictions(preds, gts, "ezvsl-vggss", workers=args.threads)) for _ in range(args.repeats)]
    refs = [timed(lambda: reference_loop(preds, entries)) for _ in range(args.repeats)]
    ours, ref = vec[0][0], refs[0][0]
    same = all(ours[k] == ref[k] for k in ref) and all(r[0] == ref for r in refs) and all(
        all(v[0][k] == ref[k] for k in ref) for v in vec
    )

    clis = []
    with tempfile.TemporaryDirectory() as tmp:
        npz = Path(tmp) / "preds.npz"
        np.savez(npz, **preds)
        cmd = [sys.executable, "-m", "avloc.cli.main", "eval", "--gt", str(gt_path), "--pred", str(npz),
               "--protocol", "ezvsl-vggss", "--json", "--workers", str(args.threads)]
        cli_cpu = []
        for _ in range(args.repeats):
            u0 = resource.getrusage(resource.RUSAGE_CHILDREN)
            w0 = time.perf_counter()
            out = subprocess.run(cmd, capture_output=True, text=True, check=True)
            clis.append(time.perf_counter() - w0)
            u1 = resource.getrusage(resource.RUSAGE_CHILDREN)
            cli_cpu.append(u1.ru_utime - u0.ru_utime + u1.ru_stime - u0.ru_stime)
            cli = json.loads(out.stdout)
            same = same and all(cli[k] == ref[k] for k in ref)
    load1 = os.getloadavg()[0]
    t_vec, c_vec = min(v[1] for v in vec), min(v[2] for v in vec)
    t_ref, c_ref = min(r[1] for r in refs), min(r[2] for r in refs)
    report = {
        "n": len(entries),
        "threads": args.threads,
        "repeats": args.repeats,
        "vectorised_s": round(t_vec, 3),
        "vectorised_cpu_s": round(c_vec, 3),
        "reference_loop_s": round(t_ref, 3),
        "reference_loop_cpu_s": round(c_ref, 3),
        "speedup": round(t_ref / t_vec, 2),
        "speedup_cpu": round(c_ref / c_vec, 2),
        "cli_wall_s": round(min(clis), 3),
        "cli_cpu_s": round(min(cli_cpu), 3),
        "identical_results": same,
        "success": ours["success"],
        "auc": ours["auc"],
        "load_avg_1min_before": round(load0, 2),
        "load_avg_1min_after": round(load1, 2),
        "cpus": os.cpu_count(),
        "commit": _git_head(),
        "torch": torch.__version__,
        "numpy": np.__version__,
    }
    print(json.dumps(report, indent=2))
    if args.write_md:
        write_section(Path(args.write_md), report)
    return 0 if same else 1


def _git_head() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True, check=True)
        dirty = subprocess.run(["git", "status", "--porcelain"], cwd=REPO, capture_output=True, text=True, check=True)
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return out.stdout.strip() + (" + uncommitted changes" if dirty.stdout.strip() else "")


def write_section(path: Path, r: dict[str, Any]) -> None:
    day = dt.date.today().isoformat()
    body = f"""## Evaluation harness

`ezvsl-vggss` on the 5,158 VGG-SS test clips (real `vggss.json` boxes) with
random 14x14 maps (seed 0), measured {day} at commit {r['commit']} (torch {r['torch']},
NumPy {r['numpy']}) on {r['cpus']} CPU cores, {r['threads']} thread(s) everywhere, fastest of
{r['repeats']} runs. 1-min load average {r['load_avg_1min_before']} before / {r['load_avg_1min_after']} after
(the machine is shared: CPU seconds of the process are the steadier figure).

Command: `python bench/speed/eval.py --threads {r['threads']} --repeats {r['repeats']} --write-md {path}`

| what | wall (s) | CPU (s) |
|---|---|---|
| vectorised harness (`evaluate_predictions`, {r['threads']} worker thread(s), torch resize) | {r['vectorised_s']} | {r['vectorised_cpu_s']} |
| per-sample reference loop (EZ-VSL `test.py` style) | {r['reference_loop_s']} | {r['reference_loop_cpu_s']} |
| speed-up | {r['speedup']}x | {r['speedup_cpu']}x |
| whole `avloc eval --gt ../shared/data/vggss/vggss.json --pred preds.npz --protocol ezvsl-vggss --json --workers {r['threads']}` (new process, NumPy resize) | {r['cli_wall_s']} | {r['cli_cpu_s']} |

Identical success / AUC / mean cIoU from all runs of all three: {r['identical_results']}
(success {r['success']:.6f}, AUC {r['auc']:.6f}).
"""
    text = path.read_text() if path.exists() else ""
    pat = re.compile(r"^## Evaluation harness\n.*?(?=^## |\Z)", re.S | re.M)
    text = pat.sub(body + "\n", text) if pat.search(text) else (text.rstrip("\n") + "\n\n" + body if text else body)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


if __name__ == "__main__":
    sys.exit(main())
