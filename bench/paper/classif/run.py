""""Less can be more" on DigitScenes: localization vs LVS (Table 1 style), the head ablation
(Table 2), informative moments and pseudo boxes (Sec. 5), and throughput.

Checkpoints are trained beforehand with the one training loop (``avloc train --method
classif ...``, see docs/_pending/issue8_results.md); this script only measures:

1. localization of every ``--ckpt`` (classif) and ``--lvs`` checkpoint on
   ``--data`` (default ``digitscenes:single:test``) under ``--protocols``: one
   :func:`avloc.engine.predict.predict` pass scored by each protocol -- what ``avloc eval --model CKPT
   --data SPEC --protocol P`` prints;
2. informative moments on ``--video-clips`` clips of ``digitscenes-clips:video:test``
   with the first ``--ckpt``: videos/s, and how often the top-1 moment vs the middle
   step shows a visible digit that is speaking (the point of Sec. 5.1 / Fig. 6);
3. pseudo boxes (Sec. 5.2) at those top-1 moments and on ``--still-boxes`` stills of
   ``--data``: IoU against the true sounding box (max over sounding boxes; 0 when the
   frame has none; also the mean over the frames that have one), success@0.5, boxes/s;
4. training throughput: a ``train`` step (forward, Eq. 3, backward, Adam) on cached
   frozen features, batch ``--batch``;
5. for every ``--ckpt`` (the Table 2 columns): classification accuracy of each head on the
   first ``--acc-count`` samples of ``--data`` (argmax against the spoken digit;
   :meth:`Classif.head_logits`, so a ``single``-head model's vision / audio columns are its
   one AV FC applied to the zero-masked inputs, a probe), the training accuracy logged in the
   run's ``metrics.jsonl`` (mean over the last ``--train-acc-steps`` steps, when the file sits
   next to the checkpoint), and where the peak of the Eq. 4 map falls on the first
   ``--pointing-count`` samples (on the sounding digit / on a visible silent digit).

Usage::

    python bench/paper/classif/run.py --raw ../shared/data --threads 1 \\
        --ckpt individual=RUN_I/last.safetensors --ckpt shared=RUN_S/last.safetensors \\
        --ckpt single=RUN_1/last.safetensors --lvs lvs-digitscenes --count 500 --video-clips 40
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from avloc.applications.pseudo_boxes import PseudoBoxConfig, clip_pseudo_boxes
from avloc.data.clips import DigitScenesClips
from avloc.data.collate import collate_samples
from avloc.data.datasets import dataset_from_spec
from avloc.data.moments import select_moments
from avloc.engine.predict import predict
from avloc.engine.train import METRICS_FILE, train_end
from avloc.methods.base import LocalizationMethod
from avloc.methods.classif import HEADS, Classif
from avloc.methods.zoo import load_labelled_models, load_model
from avloc.metrics import ops
from avloc.metrics.ops import box_iou


def localization(models: dict[str, LocalizationMethod], spec: str, raw: str, count: int, protocols: list[str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name, m in models.items():
        ds = dataset_from_spec(spec, raw=raw, image_cfg=m.cfg.image, audio_cfg=m.cfg.audio, count=count)
        t0 = time.perf_counter()
        preds = predict(m, ds, batch_size=25)  # one forward pass, scored by every protocol
        out[name] = {p: {k: v for k, v in preds.score(p).items() if k != "curve"} for p in protocols}
        out[name]["seconds"] = round(time.perf_counter() - t0, 1)
    return out


def _best_iou(box: list[float] | None, truths: torch.Tensor) -> float:
    if box is None or truths.numel() == 0:
        return 0.0
    return max(box_iou(box, t.tolist()) for t in truths.reshape(-1, 4))


def moments_and_boxes(m: Classif, raw: str, n_clips: int, pcfg: PseudoBoxConfig) -> dict[str, Any]:
    clips = DigitScenesClips(raw, "test", count=n_clips, image_cfg=m.cfg.image, audio_cfg=m.cfg.audio, fps=m.cfg.fps)
    clips[0]  # load the raw sources once, outside the timings
    m.eval()
    moments, _, vps = select_moments(m.moment_scores, clips, k=1, batch_size=4)

    def speaking_visible(c: int, step: int) -> bool:
        return bool(clips.frame_sample(c, step)["boxes"].shape[0])

    top = [speaking_visible(c, moments[c][0]) for c in range(n_clips)]
    mid = [speaking_visible(c, clips.steps // 2) for c in range(n_clips)]
    ious: list[float] = []
    sounding: list[bool] = []
    t0 = time.perf_counter()
    for c in range(n_clips):
        item = clips[c]
        cb = clip_pseudo_boxes(m, item["image"], item["audio"], pcfg)[0]
        truth = clips.frame_sample(c, cb.step)["boxes"]
        ious.append(_best_iou(cb.box, truth))
        sounding.append(truth.shape[0] > 0)
    box_rate = n_clips / (time.perf_counter() - t0)
    iou = np.array(ious)
    on = np.array(sounding, dtype=bool)  # top-1 frames where a visible digit speaks (a true box exists)
    return {
        "clips": n_clips,
        "moment_selection_videos_per_s": round(vps, 3),
        "top1_frame_speaking_visible": round(float(np.mean(top)), 3),
        "middle_frame_speaking_visible": round(float(np.mean(mid)), 3),
        "pseudo_box_mean_iou": round(float(iou.mean()), 3),
        "pseudo_box_iou_at_0.5": round(float((iou >= 0.5).mean()), 3),
        "frames_with_true_box": int(on.sum()),
        "pseudo_box_mean_iou_where_true_box": round(float(iou[on].mean()), 3) if on.any() else None,
        "pseudo_box_clips_per_s": round(box_rate, 3),
    }


def still_boxes(m: Classif, spec: str, raw: str, n: int, pcfg: PseudoBoxConfig) -> dict[str, Any]:
    ds = dataset_from_spec(spec, raw=raw, image_cfg=m.cfg.image, audio_cfg=m.cfg.audio, count=n)
    m.eval()
    samples = [ds[i] for i in range(n)]  # type: ignore[index]
    ious = []
    t0 = time.perf_counter()
    for s in samples:
        steps = m.steps_for(s["audio"].shape[-1])
        frames = s["image"][None].expand(steps, -1, -1, -1)  # fixed-frame clip
        cb = clip_pseudo_boxes(m, frames, s["audio"], pcfg)[0]
        ious.append(_best_iou(cb.box, s["boxes"]))
    rate = n / (time.perf_counter() - t0)
    iou = np.array(ious)
    return {"stills": n, "pseudo_box_mean_iou": round(float(iou.mean()), 3), "pseudo_box_iou_at_0.5": round(float((iou >= 0.5).mean()), 3),
            "pseudo_boxes_per_s": round(rate, 3), **peak_landing(m, samples)}


def peak_landing(m: Classif, samples: list[dict[str, Any]]) -> dict[str, float]:
    """Does the peak of the Eq. 4 map fall on the sounding digit, or on a visible silent one?"""
    preds = predict(m, [collate_samples([s]) for s in samples])  # one sample a batch, as this table always ran
    maps = np.concatenate(preds.maps)  # (n, h, w)
    targets = [t for batch in preds.targets for t in batch]
    snd, sil = [t.boxes for t in targets], [t.silent_boxes for t in targets]
    pts = ops.peak_points(maps)  # the centre of the top cell; half-open box edges, as this table always used
    hits = [ops.in_boxes(p, b, edges="half-open") for p, b in zip(pts, snd, strict=True)]
    silent_hits = [ops.in_boxes(p, b, edges="half-open") for p, b in zip(pts, sil, strict=True)]
    return {"peak_on_sounding_digit": round(float(np.mean(hits)), 3), "peak_on_silent_digit": round(float(np.mean(silent_hits)), 3)}


def head_accuracy(m: Classif, samples: list[dict[str, Any]], batch: int = 50) -> dict[str, float]:
    """Accuracy of the vision / audio / AV heads against each sample's (single) class label."""
    m.eval()
    hits = {h: 0 for h in HEADS}
    with torch.no_grad():
        for start in range(0, len(samples), batch):
            part = samples[start : start + batch]
            b = collate_samples(part)
            y = torch.tensor([s["labels"][0] for s in part])
            for h, logits in m.head_logits({"image": b["image"], "audio": b["audio"]}).items():
                hits[h] += int((logits.argmax(dim=1) == y).sum())
    return {h: round(hits[h] / len(samples), 3) for h in HEADS}


def logged_train_accuracy(ckpt: str, last_steps: int) -> dict[str, float] | None:
    """Mean logged training accuracy per head over the last ``last_steps`` steps of the run holding ``ckpt``
    (:func:`avloc.engine.train.train_end`; ``None`` for a checkpoint outside a run directory, e.g. the zoo's)."""
    run = Path(ckpt).parent
    if not (run / METRICS_FILE).is_file():
        return None
    end = train_end(run, last=last_steps, keys=[f"acc_{h}" for h in HEADS])
    return {h: round(end[f"acc_{h}"], 3) for h in HEADS if f"acc_{h}" in end}


def heads_table(models: dict[str, Classif], paths: dict[str, str], spec: str, raw: str, n_acc: int, n_point: int,
                last_steps: int) -> dict[str, Any]:
    """Table 2's accuracy and peak-landing columns for every classification model."""
    out: dict[str, Any] = {}
    for name, m in models.items():
        ds = dataset_from_spec(spec, raw=raw, image_cfg=m.cfg.image, audio_cfg=m.cfg.audio, count=max(n_acc, n_point))
        samples = [ds[i] for i in range(max(n_acc, n_point))]  # type: ignore[index]
        out[name] = {"heads": m.cfg.heads, "train_accuracy": logged_train_accuracy(paths[name], last_steps),
                     "heldout_accuracy": head_accuracy(m, samples[:n_acc]) if n_acc else None,
                     **(peak_landing(m, samples[:n_point]) if n_point else {})}
    return out


def train_throughput(m: Classif, batch: int, repeats: int) -> float:
    """Samples/s of a training step on cached features (the engine's path with a frozen encoder)."""
    g = torch.Generator().manual_seed(0)
    enc = m.visual_module()
    assert enc is not None
    with torch.no_grad():
        feat = m.encode_images(torch.rand(1, 3, m.cfg.image.size, m.cfg.image.size, generator=g))  # (1, C, h, w)
    b = {"vfeat": feat.expand(batch, -1, -1, -1).contiguous() + 0.01 * torch.randn(batch, *feat.shape[1:], generator=g),
         "audio": 0.1 * torch.randn(batch, m.cfg.audio.num_samples, generator=g), "labels": [[i % m.cfg.num_classes] for i in range(batch)]}
    m.train()
    crit = m.build_criterion()
    opt = torch.optim.Adam([p for p in m.parameters() if p.requires_grad], lr=1e-4)
    times = []
    for _ in range(repeats + 1):
        t0 = time.perf_counter()
        loss = crit(m(b), b)["loss"]
        opt.zero_grad()
        loss.backward()
        opt.step()
        times.append(time.perf_counter() - t0)
    m.eval()
    return batch / float(np.median(times[1:]))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    p.add_argument("--raw", required=True)
    p.add_argument("--ckpt", action="append", required=True, metavar="NAME=PATH", help="classif checkpoint (path or zoo name); the first drives Sec. 5")
    p.add_argument("--lvs", action="append", default=[], metavar="NAME=PATH", help="LVS (or any method) checkpoint to compare")
    p.add_argument("--data", default="digitscenes:single:test")
    p.add_argument("--count", type=int, default=500, help="test samples for the localization table (0 = skip it)")
    p.add_argument("--protocols", nargs="+", default=["lvs-vggss", "sslalign-adaptive"])
    p.add_argument("--video-clips", type=int, default=40)
    p.add_argument("--still-boxes", type=int, default=200)
    p.add_argument("--threshold", type=float, default=0.5)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--acc-count", type=int, default=300, help="samples of --data for the per-head accuracy (0 = skip)")
    p.add_argument("--pointing-count", type=int, default=300, help="samples of --data for the peak-landing columns (0 = skip)")
    p.add_argument("--train-acc-steps", type=int, default=100, help="logged steps averaged for the training accuracy")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--json-out", help="also write the results JSON here")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)

    classif = load_labelled_models(args.ckpt, ("classif",))
    others: dict[str, LocalizationMethod] = {}
    for item in args.lvs:
        name, _, path = item.partition("=")
        others[name or path] = load_model(path or name)
    main_name, main_model = next(iter(classif.items()))
    pcfg = PseudoBoxConfig(top_k=1, threshold=args.threshold)
    res: dict[str, Any] = {"data": args.data, "count": args.count, "threads": args.threads}
    res["localization"] = localization({**classif, **others}, args.data, args.raw, args.count, args.protocols) if args.count else {}
    if args.video_clips:
        res["video_moments"] = {"model": main_name, **moments_and_boxes(main_model, args.raw, args.video_clips, pcfg)}
    if args.still_boxes:
        res["still_boxes"] = {"model": main_name, **still_boxes(main_model, args.data, args.raw, args.still_boxes, pcfg)}
    if args.acc_count or args.pointing_count:
        paths = {n: (path or n) for n, _, path in (item.partition("=") for item in args.ckpt)}
        res["heads"] = heads_table(classif, paths, args.data, args.raw, args.acc_count, args.pointing_count, args.train_acc_steps)
    if args.repeats:
        res["train_samples_per_s"] = {n: round(train_throughput(m, args.batch, args.repeats), 1) for n, m in classif.items()}
    print(json.dumps(res, indent=2))
    if args.json_out:
        from avloc.formats.atomic import write_text_atomic

        write_text_atomic(args.json_out, json.dumps(res, indent=2) + "\n")
    cols = [(pr, k) for pr in args.protocols for k in (("pibr", "hmboxauc") if pr == "avsol" else ("success", "auc", "mean_ciou"))]
    print("\n| model | " + " | ".join(f"{pr} {k}" for pr, k in cols) + " |")
    print("|---|" + "---:|" * len(cols))
    for n, r in res["localization"].items():
        print(f"| {n} | " + " | ".join(f"{r[pr][k]:.3f}" for pr, k in cols) + " |")
    if "heads" in res:
        print("\n| model | heads | train acc vision / audio / AV | held-out acc vision / audio / AV | peak on sounding | peak on silent |")
        print("|---|---|---|---|---:|---:|")
        for n, r in res["heads"].items():
            tr, ho = r["train_accuracy"] or {}, r["heldout_accuracy"] or {}
            fmt = lambda d: " / ".join(f"{d[h]:.3f}" if h in d else "-" for h in ("vision", "audio", "av"))  # noqa: E731
            print(f"| {n} | {r['heads']} | {fmt(tr)} | {fmt(ho)} | {r.get('peak_on_sounding_digit', '-')} | {r.get('peak_on_silent_digit', '-')} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
