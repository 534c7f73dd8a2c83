"""Proposal-based method (issue 5): speed figures and DigitScenes results.

Two sub-commands, both on DigitScenes composed from the raw sources (``--raw`` or ``$AVLOC_DATA``):

* ``speed``: Selective Search extraction (cold, frames/s) and cache reads (warm,
  frames/s), one training step (forward + loss + backward, samples/s, caches
  warm) and inference (``localize`` and ``boxes``, frames/s, batch 1 and 16)::

      python bench/paper/proposal/run.py speed --model CKPT --frames 24

* ``results``: evaluates a checkpoint on ``single`` / ``multi`` / ``offscreen``
  through :func:`avloc.engine.predict.predict` (one forward pass per setting, its
  maps scored by each protocol with :meth:`~avloc.engine.predict.Predictions.score`),
  switching only inference-time config fields of the loaded model:
  ``localize_output`` (the location map ``m_n`` or the rendered box output),
  ``localize_max_sources`` (1 or 2 boxes) and ``top_k`` (the bag size K); the
  on/off-screen accuracies use ``OnscreenAccuracy`` with the checkpoint's
  calibrated ``m_on_threshold`` (set on training pairs by ``calibrate``)::

      python bench/paper/proposal/run.py calibrate --model CKPT --out CKPT2
      python bench/paper/proposal/run.py results --model CKPT2 --count 300 --json out.json

* ``table3``: the paper's Table 3 with *retrained* models: each ``LABEL=CKPT``
  (trained with its own K, or without proposal selection) is scored on the same
  ``single`` test scenes at the settings it was trained with: the top box
  (``dsol-music``: IoU >= 0.5), the location map ``m_n`` (``dsol-music``,
  ``sslalign-adaptive``, ``avsol`` pointing) and where the top box lands. One
  forward pass per output, its maps scored for each
  protocol (:func:`avloc.engine.predict.predict`, :meth:`~avloc.engine.predict.Predictions.score`); the table goes to stderr::

      python bench/paper/proposal/run.py table3 --model K10=RUN10/last.safetensors \
          --model K20=proposal-digitscenes --model all=RUNALL/last.safetensors --count 500

  ``LABEL=CKPT@field=value,...`` changes config fields of a model first, on the
  same weights (e.g. ``K20-centred=proposal-digitscenes@selection_score=centred``).

Prints JSON; the markdown tables in docs/RESULTS.md and docs/BENCHMARKS.md are
copied from it.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch


def _raw(args: argparse.Namespace) -> str:
    raw = args.raw or os.environ.get("AVLOC_DATA")
    if not raw:
        sys.exit("pass --raw DIR or set AVLOC_DATA")
    return str(raw)


def _dataset(spec: str, raw: str, model: Any, **kw: Any) -> Any:
    from avloc.data.datasets import dataset_from_spec

    return dataset_from_spec(spec, raw=raw, image_cfg=model.cfg.image, audio_cfg=model.cfg.audio, **kw)


_INFER_FIELDS = ("localize_output", "localize_max_sources", "top_k", "proposal_selection", "selection_score")


def _with(model: Any, **changes: Any) -> Any:
    """The same weights with inference-time config fields changed."""
    model.cfg = dataclasses.replace(model.cfg, **changes)
    return model


def _batches(ds: Any, batch_size: int) -> list[dict[str, Any]]:
    from torch.utils.data import DataLoader

    from avloc.data.collate import collate_samples

    return list(DataLoader(ds, batch_size=batch_size, shuffle=False, collate_fn=collate_samples))


def cmd_calibrate(args: argparse.Namespace) -> dict[str, Any]:
    """m_on threshold on training pairs (single train: own audio = positive, another clip's audio = negative)."""
    from avloc.methods.zoo import load_model, save_model

    model = load_model(args.model)
    ds = _dataset("digitscenes:single:train", _raw(args), model, count=args.count, seed=args.seed)
    m = model.calibrate_onscreen(_batches(ds, args.batch_size))  # type: ignore[operator]
    meta = dict(model.checkpoint_meta)
    meta["m_on_calibration"] = {"data": "digitscenes:single:train", "count": args.count, "seed": args.seed, "m_on": m}
    meta.pop("excluded_prefixes", None)
    save_model(model, args.out, meta=meta)
    return {"m_on_threshold": m, "out": str(args.out)}


def _numbers(r: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in r.items() if isinstance(v, int | float) and not isinstance(v, bool)}


def cmd_results(args: argparse.Namespace) -> dict[str, Any]:
    from avloc.engine.predict import Predictions, predict
    from avloc.methods.zoo import load_model
    from avloc.metrics.onscreen import OnscreenAccuracy

    raw = _raw(args)
    model = load_model(args.model)
    base = dataclasses.asdict(model.cfg)
    res: dict[str, Any] = {"model": str(args.model), "count": args.count, "seed": args.seed}
    single = _batches(
        _dataset("digitscenes:single:test", raw, model, count=args.count, seed=args.seed), args.batch_size
    )
    multi = _batches(_dataset("digitscenes:multi:test", raw, model, count=args.count, seed=args.seed), args.batch_size)

    def run(data: list[dict[str, Any]], **changes: Any) -> Predictions:
        """One forward pass at the given inference-time settings (the checkpoint's for the rest)."""
        _with(model, **{k: base[k] for k in _INFER_FIELDS})
        return predict(_with(model, **changes), data)

    t0 = time.perf_counter()
    for k in sorted({*args.ks, base["top_k"]}):
        top = run(single, localize_output="boxes", top_k=k)
        if k in args.ks:
            res[f"single/boxes/K={k}/dsol-music"] = _numbers(top.score("dsol-music"))
        if k == base["top_k"]:
            for p in ("lvs-vggss", "sslalign-adaptive"):
                res[f"single/boxes/K={k}/{p}"] = _numbers(top.score(p))
    res["single/boxes/all-proposals/dsol-music"] = _numbers(
        run(single, localize_output="boxes", proposal_selection=False).score("dsol-music")
    )
    m_n = run(single, localize_output="location_map")
    for p in ("dsol-music", "lvs-vggss", "sslalign-adaptive"):
        res[f"single/location_map/{p}"] = _numbers(m_n.score(p))
    _with(model, **{k: base[k] for k in _INFER_FIELDS})
    res["single/top_box_lands_on"] = box_landing(model, single)
    res["multi/boxes2/dsol-music"] = _numbers(run(multi, localize_output="boxes", localize_max_sources=2).score("dsol-music"))
    res["multi/boxes1/dsol-music"] = _numbers(run(multi, localize_output="boxes", localize_max_sources=1).score("dsol-music"))
    res["multi/location_map/dsol-music"] = _numbers(run(multi, localize_output="location_map").score("dsol-music"))
    # on/off-screen (Table 1): m_on threshold from training pairs, d_on > 0.2, OR (the method's own two criteria)
    _with(model, **{k: base[k] for k in _INFER_FIELDS})
    off = _batches(
        _dataset("digitscenes:offscreen:test", raw, model, count=args.count, seed=args.seed), args.batch_size
    )
    m = float(model.state_dict()["m_on_threshold"])
    acc = OnscreenAccuracy(d_threshold=model.cfg.d_on_threshold, m_threshold=m if np.isfinite(m) else None)  # type: ignore[attr-defined]
    model.eval()
    with torch.no_grad():
        for b in off:
            sc = model.onscreen_scores(b["image"], b["audio"])  # type: ignore[operator]
            acc.update(np.asarray(b["onscreen"], bool), b["id"], sc["distance"].numpy(), sc["d_on"].numpy())
    res["offscreen"] = acc.compute()
    tuned = OnscreenAccuracy(d_threshold=model.cfg.d_on_threshold)  # type: ignore[attr-defined]
    tuned.merge(acc.state_dict())
    res["offscreen/m_on_tuned_on_test"] = tuned.compute()
    res["seconds"] = round(time.perf_counter() - t0, 1)
    return res


def cmd_table3(args: argparse.Namespace) -> dict[str, Any]:
    from avloc.engine.predict import Predictions, predict
    from avloc.methods.zoo import load_model_spec

    raw = _raw(args)
    models: dict[str, Any] = {}
    for item in args.model:  # LABEL=CKPT[@field=value,...]
        label, _, spec = item.partition("=")
        models[label] = load_model_spec(spec)
        if models[label].name != "proposal":
            raise SystemExit(f"{spec}: not a proposal checkpoint")
    first = next(iter(models.values()))
    fronts = (first.cfg.image, first.cfg.audio)
    for label, model in models.items():
        if (model.cfg.image, model.cfg.audio) != fronts:
            raise SystemExit(f"{label}: front-end settings differ from the first model's; compare like with like")
    data = _batches(_dataset("digitscenes:single:test", raw, first, count=args.count, seed=args.seed), args.batch_size)

    def score(preds: Predictions, protocol: str) -> dict[str, Any]:
        return _numbers(preds.score(protocol))

    res: dict[str, Any] = {"count": args.count, "seed": args.seed, "models": {}}
    t0 = time.perf_counter()
    for label, model in models.items():
        base = dataclasses.asdict(model.cfg)
        # one forward pass per output, scored by several protocols
        m_n = predict(_with(model, localize_output="location_map"), data)
        top_box = predict(_with(model, localize_output="boxes"), data)
        _with(model, localize_output=base["localize_output"])
        res["models"][label] = {
            "top_k": base["top_k"],
            "proposal_selection": base["proposal_selection"],
            "selection_score": base["selection_score"],
            "boxes/dsol-music": score(top_box, "dsol-music"),
            "location_map/dsol-music": score(m_n, "dsol-music"),
            "location_map/sslalign-adaptive": score(m_n, "sslalign-adaptive"),
            "location_map/avsol": score(m_n, "avsol"),
            "top_box_lands_on": box_landing(model, data),
        }
    res["seconds"] = round(time.perf_counter() - t0, 1)
    print(table3_markdown(res), file=sys.stderr)
    return res


def table3_markdown(res: dict[str, Any]) -> str:
    """The ``table3`` JSON as the markdown table of docs/RESULTS.md."""
    lines = [
        "| model | top box IoU@0.5 / AUC (dsol-music) | top box on sounding / silent / background | bag holds sounding "
        "| m_n dsol-music AUC | m_n adaptive success / AUC | m_n pointing (PiBR) / HmBoxAUC |",
        "|---|---|---|---:|---:|---|---|",
    ]
    for label, r in res["models"].items():
        b, land = r["boxes/dsol-music"], r["top_box_lands_on"]
        ad, av = r["location_map/sslalign-adaptive"], r["location_map/avsol"]
        lines.append(
            f"| {label} | {b['success']:.3f} / {b['auc']:.3f} | {land['sounding']:.3f} / {land['silent']:.3f} / "
            f"{land['background']:.3f} | {land['bag_has_sounding']:.3f} | {r['location_map/dsol-music']['auc']:.3f} "
            f"| {ad['success']:.3f} / {ad['auc']:.3f} | {av['pibr']:.3f} / {av['hmboxauc']:.3f} |"
        )
    return "\n".join(lines)


def box_landing(model: Any, batches: list[dict[str, Any]]) -> dict[str, float]:
    """Where the top proposal (highest ``d_n^k``) lands, by its centre: on a sounding box, a silent box or the
    background; and how often the K-proposal bag holds a box centred on a sounding box (an upper bound on the choice)."""

    from avloc.metrics.ops import in_boxes

    def inside(c: torch.Tensor, boxes: torch.Tensor) -> bool:  # (2,), (n, 4) normalised; closed edges
        return in_boxes(c.double().numpy(), boxes.double().numpy(), edges="closed")

    counts = {"sounding": 0, "silent": 0, "background": 0, "bag_has_sounding": 0}
    n = 0
    model.eval()
    with torch.no_grad():
        for b in batches:
            out = model.infer(b["image"], b["audio"])
            centres = (out["boxes"][..., :2] + out["boxes"][..., 2:]) / 2  # (B, K, 2)
            for j in range(len(b["id"])):
                top = centres[j, int(out["sim"][j].argmax())]
                snd, sil = b["boxes"][j], b["silent_boxes"][j]
                where = "sounding" if inside(top, snd) else "silent" if inside(top, sil) else "background"
                counts[where] += 1
                bag = centres[j][out["mask"][j] > 0]
                counts["bag_has_sounding"] += any(inside(c, snd) for c in bag)
                n += 1
    return {k: v / max(n, 1) for k, v in counts.items()} | {"n": n}


def cmd_speed(args: argparse.Namespace) -> dict[str, Any]:
    from avloc.methods.proposals import ProposalCache
    from avloc.methods.zoo import load_model

    torch.set_num_threads(args.threads)
    model = load_model(args.model)
    ds = _dataset("digitscenes:single:val", _raw(args), model, count=args.frames, seed=args.seed)
    batches = _batches(ds, 16)
    images = torch.cat([b["image"] for b in batches])
    audio = torch.cat([b["audio"] for b in batches])
    root = Path(args.scratch) / f"proposals-{os.getpid()}"
    cache = ProposalCache(model.cfg.proposals, root=root, memory_items=0)  # type: ignore[attr-defined]
    t = time.perf_counter()
    for im in images:
        cache.get(im)
    cold = len(images) / (time.perf_counter() - t)
    t = time.perf_counter()
    for im in images:
        cache.get(im)
    warm = len(images) / (time.perf_counter() - t)
    out: dict[str, Any] = {
        "frames": len(images),
        "proposals_per_frame": float(np.mean([len(cache.get(im)) for im in images])),
        "extract_cold_frames_per_s": round(cold, 2),
        "cache_warm_frames_per_s": round(warm, 1),
    }
    # training step (model memo and proposal caches warm: the steady state of a pool run)
    model.train()
    crit = model.build_criterion()
    tb = {"image": images[:16], "audio": audio[:16]}
    crit(model(tb), tb)["loss"].backward()  # warm-up
    t = time.perf_counter()
    n = 0
    while time.perf_counter() - t < args.min_seconds:
        model.zero_grad(set_to_none=True)
        crit(model(tb), tb)["loss"].backward()
        n += 16
    out["train_samples_per_s"] = round(n / (time.perf_counter() - t), 2)
    model.eval()
    with torch.no_grad():
        for bs in (1, 16):
            model.localize(images[:bs], audio[:bs])
            t = time.perf_counter()
            n = 0
            while time.perf_counter() - t < args.min_seconds:
                model.localize(images[:bs], audio[:bs])
                model.boxes(images[:bs], audio[:bs], max_sources=2)  # type: ignore[call-arg]
                n += bs
            out[f"infer_b{bs}_frames_per_s"] = round(n / (time.perf_counter() - t), 2)
    # SPP pooling alone (forward + backward), the proposal stream's main cost: 32 frames x K boxes
    from avloc.methods.proposals import spp_pool

    c = model.cfg.visual_adapter_dim or 64  # type: ignore[attr-defined]
    feat = torch.randn(32, c, 14, 14, requires_grad=True)
    g = torch.Generator().manual_seed(0)
    x0 = torch.rand(32, model.cfg.top_k, 2, generator=g) * 0.6  # type: ignore[attr-defined]
    boxes = torch.cat([x0, x0 + 0.1 + torch.rand(x0.shape, generator=g) * 0.3], -1).clamp(0, 1)
    spp_pool(feat, boxes).sum().backward()
    t = time.perf_counter()
    reps = 0
    while time.perf_counter() - t < args.min_seconds:
        spp_pool(feat, boxes).sum().backward()
        reps += 1
    out["spp_fwd_bwd_ms_32_frames"] = round(1000 * (time.perf_counter() - t) / reps, 1)
    out["load_average"] = os.getloadavg()
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    for name in ("speed", "results", "calibrate", "table3"):
        p = sub.add_parser(name)
        if name == "table3":
            p.add_argument("--model", required=True, action="append", help="LABEL=CHECKPOINT (checkpoint or zoo name)")
        else:
            p.add_argument("--model", required=True, help="checkpoint path or zoo name")
        p.add_argument("--raw", default=None)
        p.add_argument("--seed", type=int, default=0)
        p.add_argument("--json", default=None, help="also write the JSON here")
        if name == "speed":
            p.add_argument("--frames", type=int, default=24)
            p.add_argument("--threads", type=int, default=2)
            p.add_argument("--min-seconds", type=float, default=5.0)
            p.add_argument("--scratch", default="/tmp")
        else:
            p.add_argument("--count", type=int, default=300)
            p.add_argument("--batch-size", type=int, default=16)
        if name == "results":
            p.add_argument("--ks", type=int, nargs="+", default=[10, 20, 30])
        if name == "calibrate":
            p.add_argument("--out", required=True)
    args = ap.parse_args()
    cmds = {"calibrate": cmd_calibrate, "results": cmd_results, "speed": cmd_speed, "table3": cmd_table3}
    res = cmds[args.cmd](args)
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    res["meta"] = {
        "date": time.strftime("%Y-%m-%d"),
        "commit": commit,
        "torch": torch.__version__,
        "machine": platform.machine(),
    }
    text = json.dumps(res, indent=2, default=float)
    print(text)
    if args.json:
        Path(args.json).write_text(text + "\n")


if __name__ == "__main__":
    main()
