"""Reproduce the two-stage (Qian et al. 2020) DigitScenes results of docs/RESULTS.md.

Three steps, each reading the previous step's files in ``--work``:

1. ``prepare``: draw the training set once, with the frozen EfficientNet-Lite0
   features of every distinct image computed once (``vfeat``): DigitScenes
   ``multi`` with 1, 2 and 3 sounding digits (4 visible), per level ``--pool``
   distinct scenes (scene seed ``--seed`` + level, so the levels do not share
   images) and ``--train-per-level`` draws over them (the sounding digits and
   their utterances re-drawn per draw).
2. ``train``: stage 1 (= the "multi-task" baseline), stage 2 initialised from
   stage 1, the AVC-only baseline, and (an addition, not the paper's method)
   ``stage2-projpool``, stage 2 with ``class_pooling="projections"``, each with :func:`avloc.engine.train.train`
   on the in-memory set (batches carry the cached features as ``vfeat``, the
   spoken digits as ``labels`` and the digits in view as ``visible_labels``;
   ``--visual-labels`` picks the image classifier's targets). Training speed
   (samples/s, whole loop) is merged into ``train_speed.json``.
3. ``eval``: the test sets (the first ``--single-count`` draws of ``single:test``
   and ``--test-count`` of ``multi:test`` at levels 1-3, rendered once) through
   :func:`avloc.engine.predict.predict` (class-agnostic maps, probability-scaled
   class maps and audio class probabilities; frozen features from one disk
   cache in ``WORK/features`` shared by every model), each prediction scored by
   several protocols with :meth:`~avloc.engine.predict.Predictions.score`:
   ``lvs-vggss``, ``sslalign-adaptive`` and ``avsol`` (PiBR = pointing: map peak
   inside the sounding box) on ``single``; ``qian-classaware`` (Eq. 9) and
   ``dsol-classaware`` at levels 1-3; plus the classifiers' top-k recall and
   where the map peaks. The stage-2 model is read out under each ``--readouts``
   (Eq. 8 with each ``map_norm``, and its own visual Grad-CAMs); runs without a
   checkpoint are skipped; ``--extra LABEL=CKPT`` adds checkpoints or zoo names
   (``twostage-digitscenes``). Prints a markdown table, writes ``results.json``.

Nothing derived from the data is written outside ``--work``.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import time
from pathlib import Path
from typing import Any, cast

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from avloc.config import config_from_dict
from avloc.data.collate import collate_samples
from avloc.data.datasets import dataset_from_spec
from avloc.encoders.cache import FeatureCache
from avloc.engine.predict import Predictions, predict
from avloc.engine.train import OptimConfig, TrainConfig, train
from avloc.methods.twostage import PRESETS, TwoStage, TwoStageConfig
from avloc.methods.zoo import list_zoo, load_model
from avloc.metrics import ops
from avloc.metrics.protocols import create_protocol

LEVELS = (1, 2, 3)
GT_KEYS = ("id", "boxes", "box_labels", "labels", "silent_boxes", "onscreen", "audible")
SINGLE_PROTOCOLS = ("lvs-vggss", "sslalign-adaptive", "avsol")
log = logging.getLogger("bench.twostage")


class Materialised(Dataset):
    """Samples held in memory: ``vfeat`` instead of ``image`` (features of a frozen encoder)."""

    def __init__(self, items: list[dict[str, Any]]) -> None:
        self.items = items

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> dict[str, Any]:
        it = self.items[i]
        return {
            "id": it["id"], "vfeat": it["vfeat"].float(), "audio": it["audio"], "labels": list(it["labels"]),
            "visible_labels": list(it["visible_labels"]),
        }


def _draw(spec: str, raw: str, cfg: TwoStageConfig, count: int, enc: torch.nn.Module, **kw: Any) -> list[dict[str, Any]]:
    """``count`` draws of ``spec``; the encoder runs once per distinct scene (pool mode shares scenes)."""
    ds = dataset_from_spec(spec, raw=raw, image_cfg=cfg.image, audio_cfg=cfg.audio, count=count, **kw)
    feats: dict[int, torch.Tensor] = {}
    out: list[dict[str, Any]] = []
    for b in DataLoader(ds, batch_size=64, num_workers=0, collate_fn=collate_samples):
        scenes = [int(j) for j in b["scene_index"]]
        new = [i for i, j in enumerate(scenes) if j not in feats and j not in scenes[:i]]
        if new:
            with torch.no_grad():
                f = enc(b["image"][new]).half()  # (n, C, h, w)
            for k, i in enumerate(new):
                feats[scenes[i]] = f[k].clone()
        for i in range(len(b["id"])):
            keep = {k: b[k][i] for k in GT_KEYS if k in b}
            out.append(keep | {"vfeat": feats[scenes[i]], "audio": b["audio"][i], "visible_labels": b["visible_labels"][i]})
        log.info("  %s %s: %d/%d (%d scenes)", spec, kw, len(out), count, len(feats))
    return out


def prepare(a: argparse.Namespace) -> None:
    """The training set (``train.pt``: cached frozen features, sounds and labels of every draw)."""
    cfg = config_from_dict(TwoStageConfig, PRESETS["digitscenes-stage1"])
    enc = TwoStage(cfg).visual_encoder.eval()
    work = Path(a.work)
    work.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    tr: list[dict[str, Any]] = []
    for lv in LEVELS:
        tr += _draw("digitscenes:multi:train", a.raw, cfg, a.train_per_level, enc, pool=a.pool, n_sounding=lv, seed=a.seed + lv)
    torch.save(tr, work / "train.pt")
    log.info("prepared the training set in %.0f s", time.time() - t0)


RUNS: dict[str, tuple[str, str | None, dict[str, Any]]] = {  # run name -> (preset, init from run, config overrides)
    "stage1": ("digitscenes-stage1", None, {}),
    "stage2": ("digitscenes-stage2", "stage1", {}),
    "avc": ("digitscenes-avc", None, {}),
    # an addition, not the paper's method: class features pooled from per-position projections (see twostage.py)
    "stage2-projpool": ("digitscenes-stage2", "stage1", {"class_pooling": "projections"}),
}
#: Eq. 8 read-outs of the stage-2 run evaluated by ``eval`` (``map_norm`` values; ``cam`` = its visual Grad-CAMs)
READOUTS = ("cosine", "minmax", "margin", "cam")


def run_train(a: argparse.Namespace) -> None:
    work = Path(a.work)
    data = Materialised(torch.load(work / "train.pt", weights_only=False))
    speed_file = work / "train_speed.json"
    speeds = json.loads(speed_file.read_text()) if speed_file.is_file() else {}
    for name in a.runs:
        preset, init, extra = RUNS[name]
        over: dict[str, Any] = dict(PRESETS[preset]) | {"visual_labels": a.visual_labels} | extra
        if init is not None:
            over["init_from"] = str(work / init / "last.safetensors")
        model = TwoStage(config_from_dict(TwoStageConfig, over))
        tc = TrainConfig(
            steps=a.steps, epochs=a.epochs, batch_size=a.batch_size, optim=OptimConfig(lr=a.lr), seed=a.seed,
            log_every=25, ckpt_every=250, val_every=0, progress=False, num_workers=0,
        )
        t0 = time.time()
        res = train(model, data, work / name, tc, force=True)
        dt = time.time() - t0
        speeds[name] = {"steps": res.step, "batch_size": a.batch_size, "seconds": round(dt, 1),
                        "samples_per_s": round(res.step * a.batch_size / dt, 1), "threads": torch.get_num_threads()}
        log.info("%s: %d steps in %.0f s", name, res.step, dt)
        speed_file.write_text(json.dumps(speeds, indent=1))


def render_test_set(spec: str, raw: str, cfg: TwoStageConfig, count: int, batch_size: int = 32, **kw: Any) -> list[dict[str, Any]]:
    """The first ``count`` draws of ``spec`` as collated batches, rendered once and scored by every model."""
    ds = dataset_from_spec(spec, raw=raw, image_cfg=cfg.image, audio_cfg=cfg.audio, count=count, **kw)
    return list(DataLoader(ds, batch_size=batch_size, num_workers=0, collate_fn=collate_samples))


@torch.no_grad()
def visual_probs(model: TwoStage, batches: list[dict[str, Any]], cache: FeatureCache) -> np.ndarray:
    """The image classifier's class probabilities ``(N, C)`` (method-specific, read from the same feature cache)."""
    out = []
    with model.use_feature_cache(cache):
        for b in batches:
            out.append(torch.sigmoid(model.visual_logits(model.visual_map(model.encode_images(b["image"])))).numpy())
    return np.concatenate(out)


def topk_recall(prob: np.ndarray, wanted: list[list[int]]) -> float:
    """Mean fraction of a clip's k classes (``wanted``) among its k most probable (``prob`` ``(N, C)``)."""
    rec = []
    for p, want_list in zip(prob, wanted, strict=True):
        want = {int(c) for c in want_list}
        if want:
            top = set(np.argsort(-p)[: len(want)].tolist())
            rec.append(len(top & want) / len(want))
    return float(np.mean(rec))


def peak_places(preds: Predictions) -> dict[str, float]:
    """Where the class-agnostic map peaks (centre of its top cell, at feature resolution): fraction of clips with the
    peak in a sounding digit's box, else in a silent digit's box, else on the background
    (:func:`avloc.metrics.ops.peak_places`, closed box edges)."""
    targets = [t for batch in preds.targets for t in batch]
    return ops.peak_places(
        np.concatenate(preds.maps), [t.boxes for t in targets], [t.silent_boxes for t in targets], edges="closed"
    )


def run_eval(a: argparse.Namespace) -> None:
    """Every model's predictions once per test set (:func:`avloc.engine.predict.predict`, frozen features from one
    disk cache shared by all models), each scored by several protocols (:meth:`Predictions.score`)."""
    work = Path(a.work)
    # label -> (checkpoint, read-out override: a map_norm value, "cam", or None = the checkpoint's own)
    models: dict[str, tuple[Any, str | None]] = {}
    if not a.only_extra:
        models["AVC (class-agnostic)"] = (work / "avc" / "last.safetensors", None)
        models["Multi-task (stage-1 CAM)"] = (work / "stage1" / "last.safetensors", None)
        for ro in a.readouts:
            label = "Two-stage (stage 2, its Grad-CAM)" if ro == "cam" else f"Two-stage (stage 2, Eq. 8, {ro})"
            models[label] = (a.stage2 or work / "stage2" / "last.safetensors", ro)
        for ro in a.readouts[:1]:
            models[f"Addition: stage 2 with projection pooling (Eq. 8, {ro})"] = (work / "stage2-projpool" / "last.safetensors", ro)
    for spec in a.extra:
        label, _, path = spec.rpartition("=")
        models[label] = (path, None)
    ref = config_from_dict(TwoStageConfig, PRESETS["digitscenes-stage1"])  # the test sets' front ends
    test: dict[str, list[dict[str, Any]]] = {}
    results: dict[str, Any] = {}
    for mname, (path, readout) in models.items():
        if not Path(path).is_file() and str(path) not in list_zoo():
            log.warning("%s: no checkpoint %s, skipped", mname, path)
            continue
        loaded = load_model(path)
        if loaded.name != TwoStage.name:
            raise SystemExit(f"{path}: not a twostage checkpoint ({loaded.name!r})")
        model = cast(TwoStage, loaded)
        if (model.cfg.image, model.cfg.audio) != (ref.image, ref.audio):
            raise SystemExit(f"{mname}: front-end settings differ from the test sets'; compare like with like")
        if readout == "cam":
            model.cfg.localization = "cam"
        elif readout is not None:
            model.cfg.map_norm = readout  # type: ignore[assignment]
        if not test:
            test["single"] = render_test_set("digitscenes:single:test", a.raw, ref, a.single_count)
            for lv in LEVELS:
                test[f"multi-{lv}"] = render_test_set("digitscenes:multi:test", a.raw, ref, a.test_count, n_sounding=lv)
        cache = model.feature_cache_at(work / "features")
        t0 = time.time()
        r: dict[str, Any] = {"checkpoint": str(path), "localization": model.cfg.localization, "map_norm": model.cfg.map_norm}
        single = predict(model, test["single"], outputs=("maps", "class_maps"), feature_cache=cache)
        for proto in SINGLE_PROTOCOLS:
            r[f"single/{proto}"] = single.score(proto)
        r["single/recall_audio"] = topk_recall(np.concatenate(single.class_probs), [t.labels for b in single.targets for t in b])
        r["single/peak_places"] = peak_places(single)
        for lv in LEVELS:
            batches = test[f"multi-{lv}"]
            multi = predict(model, batches, outputs=("class_maps",), feature_cache=cache)
            r[f"multi-{lv}/qian"] = multi.score(create_protocol("qian-classaware", n_sources=lv, extra_thresholds=(0.3,)))
            r[f"multi-{lv}/dsol"] = multi.score("dsol-classaware")
            r[f"multi-{lv}/recall_audio"] = topk_recall(np.concatenate(multi.class_probs), [t.labels for b in multi.targets for t in b])
            visible = [list(v) for b in batches for v in b["visible_labels"]]
            r[f"multi-{lv}/recall_visual_visible"] = topk_recall(visual_probs(model, batches, cache), visible)
        results[mname] = r
        log.info("%s: evaluated in %.0f s", mname, time.time() - t0)
    out = Path(a.out) if a.out else work / "results.json"
    out.write_text(json.dumps(results, indent=1, default=float))
    print_table(results)


def print_table(results: dict[str, Any]) -> None:
    def f(x: float) -> str:
        return f"{x:.3f}"

    print("| method | single lvs-vggss success / AUC (mean cIoU) | single adaptive success / AUC (mean cIoU) | single pointing (PiBR) | "
          + " | ".join(f"L{lv} cIoU_class@{0.3 if lv == 3 else 0.5} / AUC (mean)" for lv in LEVELS) + " | DSOL CIoU@0.3 L1 / L2 / L3 | DSOL NSA L1 / L2 / L3 |")
    print("|---" * (5 + len(LEVELS) + 1) + "|")
    for mname, r in results.items():
        row = [mname]
        for proto in ("lvs-vggss", "sslalign-adaptive"):
            q = r[f"single/{proto}"]
            row.append(f"{f(q['success'])} / {f(q['auc'])} ({f(q['mean_ciou'])})")
        row.append(f(r["single/avsol"]["pibr"]))
        for lv in LEVELS:
            q = r[f"multi-{lv}/qian"]
            row.append(f"{f(q['success@0.3' if lv == 3 else 'success@0.5'])} / {f(q['auc'])} ({f(q['mean_ciou'])})")
        row.append(" / ".join(f(r[f"multi-{lv}/dsol"]["success@0.3"]) for lv in LEVELS))
        row.append(" / ".join(f(r[f"multi-{lv}/dsol"]["nsa"]) for lv in LEVELS))
        print("| " + " | ".join(row) + " |")
    print("\n| method | audio top-k recall single / L1 / L2 / L3 | visual top-4 recall of the visible digits L1 / L2 / L3 | "
          "single: map peak on the sounding digit / a silent digit / background |\n|---|---|---|---|")
    for mname, r in results.items():
        au = [r["single/recall_audio"]] + [r[f"multi-{lv}/recall_audio"] for lv in LEVELS]
        vi = [r[f"multi-{lv}/recall_visual_visible"] for lv in LEVELS]
        pk = r.get("single/peak_places")
        where = " / ".join(f(pk[k]) for k in ("sounding", "silent", "background")) if pk else "-"
        print(f"| {mname} | {' / '.join(f(x) for x in au)} | {' / '.join(f(x) for x in vi)} | {where} |")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("step", choices=["prepare", "train", "eval", "table"])
    p.add_argument("--work", default="/tmp/twostage-digitscenes", help="working directory (data, runs, results)")
    p.add_argument("--raw", default=os.environ.get("AVLOC_DATA", "../shared/data"))
    p.add_argument("--pool", type=int, default=2000, help="distinct scenes per training level (sounds re-drawn per draw)")
    p.add_argument("--train-per-level", type=int, default=4000, help="training draws per level over its --pool scenes")
    p.add_argument("--test-count", type=int, default=300, help="test clips per multi level")
    p.add_argument("--single-count", type=int, default=500, help="test clips of single")
    p.add_argument("--runs", nargs="+", default=["stage1", "stage2", "avc"], choices=list(RUNS))
    p.add_argument("--steps", type=int, default=1000, help="training steps per run")
    p.add_argument("--epochs", type=int, default=None, help="epochs per run (overrides --steps)")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--visual-labels", choices=["visible", "sounding"], default="visible",
                   help="image classifier targets: digits in view (paper: image tags) or the spoken digits")
    p.add_argument("--stage2", default=None, help="stage-2 checkpoint to evaluate (default: the run's)")
    p.add_argument("--readouts", nargs="+", default=list(READOUTS), choices=list(READOUTS),
                   help="read-outs of the stage-2 model to evaluate (map_norm values of Eq. 8, or cam); the first "
                        "is also used for the stage2-projpool run if it exists")
    p.add_argument("--extra", action="append", default=[], help="LABEL=CHECKPOINT: another twostage model to evaluate")
    p.add_argument("--only-extra", action="store_true", help="evaluate only the --extra models")
    p.add_argument("--out", default=None, help="results JSON (default WORK/results.json); 'table' reads it")
    p.add_argument("--threads", type=int, default=1, help="torch threads (1: on a loaded machine 2 threads ran 10x slower)")
    a = p.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    torch.set_num_threads(a.threads)
    if a.step == "table":
        print_table(json.loads(Path(a.out or Path(a.work) / "results.json").read_text()))
        return
    {"prepare": prepare, "train": run_train, "eval": run_eval}[a.step](a)


if __name__ == "__main__":
    main()
