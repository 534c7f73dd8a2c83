"""Reproduce the two-stage (Qian et al. 2020) DigitScenes results of docs/RESULTS.md.

Three steps, each reading the previous step's files in ``--work``:

1. ``prepare``: draw the training set once (DigitScenes ``multi`` with 1, 2 and 3
   sounding digits, ``pool`` scenes per level, re-drawn sounds) and the test sets
   (``single``; ``multi`` with 1, 2, 3 sounding digits), and compute the frozen
   EfficientNet-Lite0 features of every image once. Composing a scene costs
   about 0.1-0.3 s on the shared 2-core machine, so the set is drawn once and
   reused by the three trainings.
2. ``train``: stage 1 (= the "multi-task" baseline), stage 2 initialised from
   stage 1, and the AVC-only baseline, each with :func:`avloc.engine.train.train`
   on the in-memory set (batches carry the cached features as ``vfeat``).
3. ``eval``: per-class maps and class probabilities from the cached features,
   scored with :func:`avloc.engine.evaluate.evaluate_predictions` (the harness's
   one scoring path): field protocols on ``single``; ``qian-classaware`` (Eq. 9)
   and ``dsol-classaware`` at levels 1-3. Prints a markdown table.

Nothing derived from the data is written outside ``--work``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from avloc.config import config_from_dict
from avloc.data.collate import collate_samples
from avloc.data.datasets import dataset_from_spec
from avloc.engine.evaluate import evaluate_predictions
from avloc.engine.train import OptimConfig, TrainConfig, train
from avloc.methods.twostage import PRESETS, TwoStage, TwoStageConfig
from avloc.methods.zoo import load_model
from avloc.metrics.protocols import create_protocol

LEVELS = (1, 2, 3)
GT_KEYS = ("id", "boxes", "box_labels", "labels", "silent_boxes", "onscreen", "audible")


class Materialised(Dataset):
    """Samples held in memory: ``vfeat`` instead of ``image`` (features of a frozen encoder)."""

    def __init__(self, items: list[dict[str, Any]]) -> None:
        self.items = items

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> dict[str, Any]:
        it = self.items[i]
        return {"id": it["id"], "vfeat": it["vfeat"].float(), "audio": it["audio"], "labels": list(it["labels"])}


def _draw(spec: str, raw: str, cfg: TwoStageConfig, count: int, workers: int, enc: torch.nn.Module, **kw: Any) -> list[dict[str, Any]]:
    ds = dataset_from_spec(spec, raw=raw, image_cfg=cfg.image, audio_cfg=cfg.audio, count=count, **kw)
    out: list[dict[str, Any]] = []
    loader = DataLoader(ds, batch_size=32, num_workers=workers, collate_fn=collate_samples)
    for b in loader:
        with torch.no_grad():
            feats = enc(b["image"]).half()  # (B, C, h, w)
        for i in range(len(b["id"])):
            out.append({k: b[k][i] for k in GT_KEYS if k in b} | {"vfeat": feats[i], "audio": b["audio"][i]})
        print(f"  {spec} {kw}: {len(out)}/{count}", file=sys.stderr, flush=True)
    return out


def prepare(a: argparse.Namespace) -> None:
    cfg = config_from_dict(TwoStageConfig, PRESETS["digitscenes-stage1"])
    enc = TwoStage(cfg).visual_encoder.eval()
    work = Path(a.work)
    work.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    if a.only in (None, "train"):
        tr: list[dict[str, Any]] = []
        for lv in LEVELS:
            tr += _draw("digitscenes:multi:train", a.raw, cfg, a.train_per_level, a.workers, enc, pool=a.pool, n_sounding=lv)
        torch.save(tr, work / "train.pt")
    if a.only in (None, "test"):
        test = {"single": _draw("digitscenes:single:test", a.raw, cfg, a.test_count, a.workers, enc)}
        for lv in LEVELS:
            test[f"multi-{lv}"] = _draw("digitscenes:multi:test", a.raw, cfg, a.test_count, a.workers, enc, n_sounding=lv)
        torch.save(test, work / "test.pt")
    print(f"prepared {a.only or 'train and test'} in {time.time() - t0:.0f} s", file=sys.stderr)


RUNS = {  # run name -> (preset, init from run)
    "stage1": ("digitscenes-stage1", None),
    "stage2": ("digitscenes-stage2", "stage1"),
    "avc": ("digitscenes-avc", None),
}


def run_train(a: argparse.Namespace) -> None:
    work = Path(a.work)
    data = Materialised(torch.load(work / "train.pt", weights_only=False))
    speeds = {}
    for name in a.runs:
        preset, init = RUNS[name]
        over: dict[str, Any] = dict(PRESETS[preset])
        if init is not None:
            over["init_from"] = str(work / init / "last.safetensors")
        model = TwoStage(config_from_dict(TwoStageConfig, over))
        tc = TrainConfig(
            epochs=a.epochs[name] if isinstance(a.epochs, dict) else a.epochs, batch_size=a.batch_size,
            optim=OptimConfig(lr=a.lr), seed=a.seed, log_every=10, ckpt_every=10_000, val_every=0, progress=False,
        )
        t0 = time.time()
        res = train(model, data, work / name, tc, force=True)
        dt = time.time() - t0
        speeds[name] = {"steps": res.step, "seconds": round(dt, 1), "samples_per_s": round(res.step * a.batch_size / dt, 1)}
        print(f"{name}: {res.step} steps in {dt:.0f} s", file=sys.stderr)
    (work / "train_speed.json").write_text(json.dumps(speeds, indent=1))


@torch.no_grad()
def predict(model: TwoStage, items: list[dict[str, Any]]) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """Class-agnostic maps and probability-scaled class maps (id -> array) from cached features."""
    agn: dict[str, np.ndarray] = {}
    cls: dict[str, np.ndarray] = {}
    for s in range(0, len(items), 32):
        part = items[s : s + 32]
        fa = model.audio_map(torch.stack([it["audio"] for it in part]))
        fv = model.visual_map(torch.stack([it["vfeat"] for it in part]).float())
        maps, probs = model.class_maps(fa, fv), model.class_probs(fa)
        heat = model.combine(maps, probs)
        scaled = maps * probs[:, :, None, None]  # a silent class's map is scaled down by its probability
        for i, it in enumerate(part):
            agn[it["id"]] = heat[i].numpy()
            cls[it["id"]] = scaled[i].numpy()
    return agn, cls


def run_eval(a: argparse.Namespace) -> None:
    work = Path(a.work)
    test = torch.load(work / "test.pt", weights_only=False)
    models = {
        "AVC (class-agnostic)": load_model(work / "avc" / "last.safetensors"),
        "Multi-task (stage-1 CAM)": load_model(work / "stage1" / "last.safetensors"),
        "Two-stage (ours)": load_model(a.stage2 or work / "stage2" / "last.safetensors"),
    }
    results: dict[str, Any] = {}
    for mname, model in models.items():
        assert isinstance(model, TwoStage)
        model.eval()
        r: dict[str, Any] = {}
        gts = [{k: it[k] for k in GT_KEYS if k in it} for it in test["single"]]
        agn, _ = predict(model, test["single"])
        for proto in ("lvs-vggss", "sslalign-adaptive"):
            r[f"single/{proto}"] = evaluate_predictions(agn, gts, proto)
        for lv in LEVELS:
            items = test[f"multi-{lv}"]
            gts = [{k: it[k] for k in GT_KEYS if k in it} for it in items]
            _, cls = predict(model, items)
            r[f"multi-{lv}/qian"] = evaluate_predictions(cls, gts, create_protocol("qian-classaware", n_sources=lv, extra_thresholds=(0.3,)))
            r[f"multi-{lv}/dsol"] = evaluate_predictions(cls, gts, "dsol-classaware")
        results[mname] = r
    (work / "results.json").write_text(json.dumps(results, indent=1, default=float))
    print("| method | single success (lvs-vggss) | single AUC | single adaptive success | "
          + " | ".join(f"L{lv} cIoU_class@{0.3 if lv == 3 else 0.5} / AUC | L{lv} DSOL CIoU@0.5 / NSA" for lv in LEVELS) + " |")
    print("|---" * (4 + 2 * len(LEVELS)) + "|")
    for mname, r in results.items():
        row = [mname, f"{r['single/lvs-vggss']['success']:.3f}", f"{r['single/lvs-vggss']['auc']:.3f}",
               f"{r['single/sslalign-adaptive']['success']:.3f}"]
        for lv in LEVELS:
            q, d = r[f"multi-{lv}/qian"], r[f"multi-{lv}/dsol"]
            thr = "success@0.3" if lv == 3 else "success@0.5"
            row += [f"{q[thr]:.3f} / {q['auc']:.3f}", f"{d['success@0.5']:.3f} / {d['nsa']:.3f}"]
        print("| " + " | ".join(row) + " |")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("step", choices=["prepare", "train", "eval"])
    p.add_argument("--work", default="/tmp/twostage-digitscenes", help="working directory (data, runs, results)")
    p.add_argument("--raw", default=os.environ.get("AVLOC_DATA", "../shared/data"))
    p.add_argument("--pool", type=int, default=120, help="scenes per training level (sounds re-drawn per draw)")
    p.add_argument("--train-per-level", type=int, default=640)
    p.add_argument("--test-count", type=int, default=200)
    p.add_argument("--only", choices=["train", "test"], default=None, help="prepare only this part")
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("--runs", nargs="+", default=list(RUNS), choices=list(RUNS))
    p.add_argument("--epochs", type=int, default=12)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--stage2", default=None, help="stage-2 checkpoint to evaluate (default: the run's)")
    p.add_argument("--threads", type=int, default=1, help="torch threads (1: on a loaded machine 2 threads ran 10x slower)")
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    {"prepare": prepare, "train": run_train, "eval": run_eval}[a.step](a)


if __name__ == "__main__":
    main()
