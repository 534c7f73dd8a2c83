"""DNM paper, Table 2 on DigitScenes ``video``: train the six models, score HmBoxAUC / PiBR / PNSR, time them.

Models (registered methods, Nishikawa et al. Sec. 5.2): CAM (``dnm-cam``, visual
only), the Tian-style audio-guided attention (``dnm-tian``), Static-Cls,
Static-AVC, Static-DNM and CDF-DNM (``dnm`` with ``fusion`` x ``tasks``).

Each is trained by the function ``avloc train`` calls,
:func:`avloc.engine.train.train_from_specs`, from a config file the bench writes
(``OUT/configs/ROW.json``; ``avloc train --method M --config OUT/configs/ROW.json
--out RUN`` repeats the run), with the shared engine (frozen
EfficientNet-Lite0 features of the T-frame segments cached on disk in
``--feature-cache-dir`` and shared by the six runs), then scored under the
``avsol`` protocol with :func:`avloc.engine.evaluate.evaluate_predictions` on
the test clips: HmBoxAUC and PiBR over all AVE frames and split into frames with
one / several sounding digits, PNSR over all non-AVE frames and per kind. The
test features are encoded once; each model's maps are its ``localize_features``
output, checked against ``localize`` on the first batch. ``avloc eval --model
RUN/last.safetensors --data digitscenes:video:test --raw DIR --protocol avsol``
reproduces the "all" columns of one model (on the dataset's default 1,000 clips
unless ``count`` is given).

Latency: ``localize`` on one segment (T frames + 1 s of audio, batch 1, backbone
included), median of ``--latency-reps`` runs after a warm-up.

Training data (issue 7): ``--train-overrides`` sets DigitScenes ``video`` fields for
the training clips only (``data.train_kwargs``; the test clips keep the default config).
The other levers are method config fields (:class:`avloc.methods.dnm.DNMConfig`), applied
by ``prepare_training`` when the engine starts: ``--sound-draws K`` -> ``sound_draws``
(:class:`avloc.methods.dnm.RedrawnSoundTracks`: each training clip with K sound tracks, the
pictures, hence the cached features, shared; ``pixels_once`` is always on);
``--neg-other-time p`` -> ``neg_other_time`` (AVC models; a fraction p of the AVC negatives
from the same clip at another time, :class:`avloc.methods.dnm.OtherTimeNegatives`);
``--audio-pretrain-steps N`` pretrains the audio backbone once on FSDD digits
(:func:`avloc.methods.dnm.pretrain_audio_backbone`, seed 0, ``OUT/audio_backbone.safetensors``;
``--audio-init FILE`` reuses a file instead) and every audio model gets
``audio_init_from=FILE`` and ``freeze_audio=true`` (the paper's frozen VGGish; from the CLI,
``audio_pretrain_steps=N`` pretrains the same weights inside the run); ``--seed`` ->
``train.seed`` and ``init_seed`` (the weights' seed).

Usage::

    python bench/paper/dnm/run.py --raw ../shared/data --out runs/dnm --threads 1 \\
        [--train-clips 400 --test-clips 60 --steps 400] [--zoo src/avloc/zoo/dnm-digitscenes.safetensors] \\
        [--sound-draws 10 --neg-other-time 0.5 --audio-pretrain-steps 200 --train-overrides '{"n_visible": [1, 2]}']
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from avloc.config import config_to_dict
from avloc.data.collate import collate_samples
from avloc.data.datasets import dataset_from_spec
from avloc.encoders.cache import FeatureCache, content_key
from avloc.engine.evaluate import evaluate_predictions
from avloc.engine.train import train_from_specs
from avloc.methods import create_method
from avloc.methods.dnm import DNMConfig, SegmentMethod, pretrain_audio_backbone
from avloc.methods.zoo import load_model, save_model

#: Table 2 rows: name -> (method, config overrides)
MODELS: dict[str, tuple[str, dict[str, Any]]] = {
    "CAM (visual only)": ("dnm-cam", {}),
    "Tian-style attention": ("dnm-tian", {}),
    "Static-Cls": ("dnm", {"fusion": "static", "tasks": "cls"}),
    "Static-AVC": ("dnm", {"fusion": "static", "tasks": "avc"}),
    "Static-DNM": ("dnm", {"fusion": "static", "tasks": "dnm"}),
    "CDF-DNM": ("dnm", {"fusion": "cdf", "tasks": "dnm"}),
}
#: the registered methods built on avloc.methods.dnm.SegmentMethod (localize_features)
SEGMENT_METHODS = ("dnm", "dnm-cam", "dnm-tian")
GT_KEYS = ("id", "boxes", "box_labels", "labels", "silent_boxes", "onscreen", "audible", "out_of_view")


def test_features(
    model: SegmentMethod, ds: Any, batch_size: int, cache_dir: str | None
) -> tuple[list[torch.Tensor], list[torch.Tensor], list[dict[str, Any]], dict[str, torch.Tensor]]:
    """Frozen-backbone features (b, T, C, h, w) and audio (b, N) per batch, ground truth rows, first batch."""
    disk = None
    if cache_dir:
        enc = model.visual_module()
        assert enc is not None
        disk = FeatureCache.for_encoder(
            cache_dir, model.cfg.visual_encoder, model.cfg.visual_encoder_kwargs, enc,
            {"image": config_to_dict(model.cfg.image)}, dtype="float32",
        )
    feats, audio, gts = [], [], []
    first: dict[str, torch.Tensor] = {}
    n = len(ds)
    with torch.no_grad():
        for start in range(0, n, batch_size):
            batch = collate_samples([ds[i] for i in range(start, min(n, start + batch_size))])
            images = batch["image"]  # (b, T, 3, S, S)
            if disk is None:
                f = model.encode_images(images)
            else:

                def encode(idx: list[int], im: torch.Tensor = images) -> torch.Tensor:
                    return model.encode_images(im[idx])  # (m, T, C, h, w)

                f = disk.get_or_compute([content_key(im) for im in images], encode)
            if not first:
                first = {"image": images, "audio": batch["audio"]}
            feats.append(f)
            audio.append(batch["audio"])
            gts += [{k: batch[k][i] for k in GT_KEYS} for i in range(len(batch["id"]))]
    return feats, audio, gts, first


def score(preds: dict[str, np.ndarray], gts: list[dict[str, Any]]) -> dict[str, Any]:
    """avsol on everything, and HmBoxAUC / PiBR on AVE frames with one and with several sounding boxes."""
    res = {k: v for k, v in evaluate_predictions(preds, gts, "avsol").items() if not isinstance(v, (list, dict))}
    for name, sel in (("single", lambda k: k == 1), ("multi", lambda k: k > 1)):
        sub = [g for g in gts if sel(len(g["boxes"]))]
        if sub:
            r = evaluate_predictions({g["id"]: preds[g["id"]] for g in sub}, sub, "avsol")
            res[f"hmboxauc_{name}"], res[f"pibr_{name}"], res[f"n_{name}"] = r["hmboxauc"], r["pibr"], r["n_ave"]
        else:
            res[f"hmboxauc_{name}"], res[f"pibr_{name}"], res[f"n_{name}"] = float("nan"), float("nan"), 0
    return res


def model_maps(
    model: SegmentMethod, name: str, feats: list[torch.Tensor], audio: list[torch.Tensor], gts: list[dict[str, Any]],
    first: dict[str, torch.Tensor],
) -> dict[str, np.ndarray]:
    """The model's maps of the test frames from the cached features, checked against ``localize`` on the first batch."""
    model.eval()
    preds: dict[str, np.ndarray] = {}
    with torch.no_grad():
        direct = model.localize(first["image"], first["audio"])
        via = model.localize_features(feats[0], audio[0])
        if not torch.allclose(direct, via, atol=1e-4):
            raise SystemExit(f"{name}: localize_features differs from localize by {float((direct - via).abs().max()):.2e}")
        i = 0
        for f, a in zip(feats, audio):
            for m in model.localize_features(f, a).numpy():
                preds[gts[i]["id"]] = m
                i += 1
    return preds


def chance(gts: list[dict[str, Any]], shape: tuple[int, ...], draws: int) -> dict[str, Any]:
    """Mean scores of uniform random maps of ``shape`` over ``draws`` draws (generator seeds 0 .. draws-1)."""
    rows = []
    for d in range(draws):
        g = torch.Generator().manual_seed(d)
        rows.append(score({x["id"]: torch.rand(shape, generator=g).numpy() for x in gts}, gts))
    return {k: float(np.mean([r[k] for r in rows])) for k in rows[0] if isinstance(rows[0][k], (int, float))}


def avc_check(
    model: SegmentMethod, feats: list[torch.Tensor], audio: list[torch.Tensor], gts: list[dict[str, Any]],
    frames_per_clip: int, seed: int = 0,
) -> dict[str, Any]:
    """AVC (Eq. 7, z_avc = GMP(M_loc)) on fixed pairs: every segment with its own audio (AVC = yes) and with the
    audio of the same annotated time of another clip (AVC = no; a seeded derangement of the clips).

    Accuracy at z_avc > 0.5 and the ROC AUC of z_avc (positives vs negatives), over all segments and over the
    positives that are AVE frames (a sounding digit visible) / not. Run on the training clips and on test clips,
    it tells whether AVC generalises or was answered by memorised clips.
    """
    from avloc.methods.dnm import derangement

    model.eval()
    f_all, a_all = torch.cat(feats), torch.cat(audio)
    n = len(f_all)
    if n % frames_per_clip:
        raise ValueError(f"{n} segments are not whole clips of {frames_per_clip} annotated frames")
    n_clips = n // frames_per_clip
    g = torch.Generator().manual_seed(seed)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(torch.randint(2**31, (1,), generator=g)))
        perm = derangement(n_clips, torch.device("cpu"))
    neg_idx = (perm[:, None] * frames_per_clip + torch.arange(frames_per_clip)).flatten()  # (n,)
    z_pos, z_neg = [], []
    with torch.no_grad():
        for s in range(0, n, 64):
            sl = slice(s, min(n, s + 64))
            z_pos.append(model.localize_features(f_all[sl], a_all[sl]).flatten(1).amax(1))
            z_neg.append(model.localize_features(f_all[sl], a_all[neg_idx[sl]]).flatten(1).amax(1))
    zp, zn = torch.cat(z_pos).numpy(), torch.cat(z_neg).numpy()
    ave = np.array([len(x["boxes"]) > 0 for x in gts[:n]])

    def auc(pos: np.ndarray, neg: np.ndarray) -> float:
        return float((pos[:, None] > neg[None, :]).mean() + 0.5 * (pos[:, None] == neg[None, :]).mean())

    return {
        "n": n, "n_ave": int(ave.sum()),
        "acc": float(((zp > 0.5).sum() + (zn <= 0.5).sum()) / (2 * n)),
        "auc": auc(zp, zn), "auc_ave_positives": auc(zp[ave], zn) if ave.any() else float("nan"),
        "auc_nonave_positives": auc(zp[~ave], zn) if (~ave).any() else float("nan"),
        "mean_z_pos": float(zp.mean()), "mean_z_neg": float(zn.mean()),
    }


def latency(model: SegmentMethod, first: dict[str, torch.Tensor], reps: int) -> float:
    """Median seconds of ``localize`` on one segment (batch 1, backbone included)."""
    x, a = first["image"][:1], first["audio"][:1]
    times = []
    with torch.no_grad():
        model.localize(x, a)
        for _ in range(reps):
            t0 = time.perf_counter()
            model.localize(x, a)
            times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument("--raw", required=True)
    p.add_argument("--out", required=True, help="run directories and results.json go here")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--train-clips", type=int, default=400)
    p.add_argument("--test-clips", type=int, default=60)
    p.add_argument(
        "--eval-split", default="test", choices=["test", "val"],
        help="split of the scored clips (val: model selection, as the paper's, without touching the test clips)",
    )
    p.add_argument("--steps", type=int, default=400)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--models", nargs="*", default=list(MODELS), choices=list(MODELS), help="rows to train (none: only score)")
    p.add_argument(
        "--score", nargs="*", default=[], metavar="ROW=MODEL",
        help="also score saved models (checkpoint path or zoo name) on the same test frames, e.g. zoo=dnm-digitscenes",
    )
    p.add_argument("--chance-draws", type=int, default=0, help="score this many uniform random maps (the chance row)")
    p.add_argument("--feature-cache-dir", default=None, help="default: OUT/feature_cache")
    p.add_argument("--latency-reps", type=int, default=20)
    p.add_argument("--zoo", default=None, help="also save the --zoo-model model here (avloc.methods.zoo.save_model)")
    p.add_argument("--zoo-model", default="CDF-DNM", choices=list(MODELS), help="which row --zoo saves")
    p.add_argument(
        "--train-overrides", default="{}",
        help='JSON of DigitScenes video config fields for the *training* clips only, e.g. \'{"n_visible": [1, 2]}\'',
    )
    p.add_argument(
        "--sound-draws", type=int, default=1,
        help="sound tracks per training clip (RedrawnSoundTracks; features are encoded once per clip)",
    )
    p.add_argument(
        "--audio-pretrain-steps", type=int, default=0,
        help="pretrain the audio backbone on FSDD digits for N steps (OUT/audio_backbone.safetensors), then freeze it "
        "in every audio model (the paper's frozen VGGish); 0 = train it from scratch with the model",
    )
    p.add_argument(
        "--audio-init", default=None,
        help="an audio backbone state dict (e.g. another run's OUT/audio_backbone.safetensors): frozen in every audio "
        "model instead of pretraining one",
    )
    p.add_argument(
        "--neg-other-time", type=float, default=0.0,
        help="fraction of AVC negatives from the same clip at another time (DNMConfig.neg_other_time)",
    )
    p.add_argument(
        "--avc-check", nargs="*", default=[], metavar="ROW=MODEL",
        help="AVC accuracy / AUC (avc_check) of saved AVC or DNM models on the test clips and on the first "
        "--avc-train-clips training clips (with --train-overrides): does AVC generalise or memorise?",
    )
    p.add_argument("--avc-train-clips", type=int, default=150)
    p.add_argument("--force", action="store_true")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    cache_dir = args.feature_cache_dir or str(out / "feature_cache")
    results_path = out / "results.json"
    results: dict[str, Any] = json.loads(results_path.read_text()) if results_path.is_file() and not args.force else {}
    train_over: dict[str, Any] = json.loads(args.train_overrides)
    audio_init: str | None = str(Path(args.audio_init).resolve()) if args.audio_init else None
    if audio_init is None and args.audio_pretrain_steps > 0:
        from safetensors.torch import save_file

        wpath = out / "audio_backbone.safetensors"
        if not wpath.is_file() or args.force:
            t0 = time.perf_counter()
            weights, acc = pretrain_audio_backbone(
                args.raw, DNMConfig(), steps=args.audio_pretrain_steps, seed=0,
                log=lambda m: print(m, file=sys.stderr, flush=True),
            )
            save_file(weights, str(wpath))
            results["audio_pretraining"] = {"steps": args.audio_pretrain_steps, "seed": 0, "last_batch_accuracy": acc,
                                            "seconds": round(time.perf_counter() - t0, 1)}
        audio_init = str(wpath.resolve())

    ref = create_method("dnm")
    t0 = time.perf_counter()
    test_ds = dataset_from_spec(f"digitscenes:video:{args.eval_split}", raw=args.raw, image_cfg=ref.cfg.image, audio_cfg=ref.cfg.audio, count=args.test_clips)
    feats, audio, gts, first = test_features(ref, test_ds, 48, cache_dir)
    if results.setdefault("eval_split", args.eval_split) != args.eval_split:
        raise SystemExit(f"{results_path} holds scores on the {results['eval_split']} clips; use another --out for {args.eval_split}")
    print(f"{args.eval_split}: {len(gts)} frames of {args.test_clips} clips encoded in {time.perf_counter() - t0:.0f} s", file=sys.stderr)

    for name in args.models:
        if name in results:
            print(f"{name}: done already (results.json); --force to redo", file=sys.stderr)
            continue
        method, overrides = MODELS[name]
        avc = method == "dnm" and overrides.get("tasks") in ("avc", "dnm")
        # the levers are config fields: the run is what `avloc train --config OUT/configs/ROW.json` does
        overrides = {**overrides, "init_seed": args.seed, "sound_draws": args.sound_draws, "pixels_once": True}
        if avc and args.neg_other_time > 0:
            overrides["neg_other_time"] = args.neg_other_time
        if audio_init is not None and method != "dnm-cam":
            overrides.update(freeze_audio=True, audio_init_from=audio_init)
        run = out / name.split(" ")[0].lower()
        run_cfg = {
            "method": overrides,
            "train": {
                "steps": args.steps, "batch_size": args.batch_size, "seed": args.seed, "val_every": 0, "ckpt_every": 0,
                "log_every": 20, "optim": {"lr": args.lr, "schedule": "cosine", "min_lr_ratio": 0.1},
                "feature_cache": True, "feature_cache_dir": str(Path(cache_dir).resolve()), "progress": False,
            },
            "data": {"train": "digitscenes:video:train", "raw": str(Path(args.raw).resolve()),
                     "train_kwargs": {"count": args.train_clips, **train_over}},
        }
        cfg_path = out / "configs" / f"{run.name}.json"
        cfg_path.parent.mkdir(parents=True, exist_ok=True)
        cfg_path.write_text(json.dumps(run_cfg, indent=2) + "\n")
        t1 = time.perf_counter()
        tr = train_from_specs(method, run, config_file=cfg_path, force=True)
        train_s = time.perf_counter() - t1
        if not tr.feature_cache:
            raise SystemExit(f"{name}: the engine did not use the feature cache")
        model = load_model(run / "last.safetensors")  # scored as saved (what `avloc eval --model` loads)
        res = score(model_maps(model, name, feats, audio, gts, first), gts)
        lat = latency(model, first, args.latency_reps)
        last = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines() if x.strip()][-1]
        results[name] = {
            "method": method, "overrides": overrides, **res, "train_seconds": round(train_s, 1), "train_steps": tr.step,
            "final_train": {k: v for k, v in last.items() if k not in ("step", "split")},
            "latency_ms_per_segment": round(lat * 1e3, 2), "frames_per_s": round(model.frames / lat, 1),
            "run": str(run), "config": str(cfg_path), "seed": args.seed, "train_clips": args.train_clips,
            "train_overrides": train_over, "batch_size": args.batch_size,
            "sound_draws": args.sound_draws, "neg_other_time": args.neg_other_time if avc else None,
            "audio_init_from": audio_init if method != "dnm-cam" else None,
        }
        results_path.write_text(json.dumps(results, indent=2) + "\n")
        print(f"{name}: {json.dumps(results[name])}", file=sys.stderr)
        if name == args.zoo_model and args.zoo:
            save_model(model, args.zoo, meta={"bench": "bench/paper/dnm/run.py", "train_clips": args.train_clips, "steps": tr.step,
                                              "train_overrides": train_over, "neg_other_time": args.neg_other_time,
                                              "sound_draws": args.sound_draws, "seed": args.seed,
                                              "audio_pretrain_steps": args.audio_pretrain_steps, "batch_size": args.batch_size,
                                              "test_clips": args.test_clips,
                                              "avsol_test": {k: res[k] for k in ("hmboxauc", "pibr", "pnsr")}})
            print(f"saved {args.zoo}", file=sys.stderr)

    for spec in args.score:
        row_name, _, src = spec.partition("=")
        if not src:
            raise SystemExit(f"--score {spec!r}: give ROW=MODEL")
        model = load_model(src)
        if model.name not in SEGMENT_METHODS:
            raise SystemExit(f"--score {spec!r}: not a dnm model")
        res = score(model_maps(model, row_name, feats, audio, gts, first), gts)
        results[f"scored: {row_name}"] = {"method": model.name, "overrides": {"tasks": model.cfg.tasks if model.name == "dnm" else None},
                                          "source": src, **res, "latency_ms_per_segment": float("nan")}
        results_path.write_text(json.dumps(results, indent=2) + "\n")
    if args.avc_check:
        train_ds = dataset_from_spec(
            "digitscenes:video:train", raw=args.raw, image_cfg=ref.cfg.image, audio_cfg=ref.cfg.audio,
            count=args.avc_train_clips, **train_over,
        )
        tr_feats, tr_audio, tr_gts, _ = test_features(ref, train_ds, 48, cache_dir)
        for spec in args.avc_check:
            row_name, _, src = spec.partition("=")
            model = load_model(src)
            if model.name != "dnm" or model.cfg.tasks not in ("avc", "dnm"):
                raise SystemExit(f"--avc-check {spec!r}: not a dnm model with an AVC output")
            results[f"avc check: {row_name}"] = {
                "source": src, "train_clips": args.avc_train_clips, "train_overrides": train_over,
                "train": avc_check(model, tr_feats, tr_audio, tr_gts, len(train_ds.config.annotated_frames())),
                args.eval_split: avc_check(model, feats, audio, gts, len(test_ds.config.annotated_frames())),
            }
            results_path.write_text(json.dumps(results, indent=2) + "\n")
            print(f"avc check {row_name}: {json.dumps(results[f'avc check: {row_name}'])}", file=sys.stderr)
    if args.chance_draws > 0:
        shape = tuple(feats[0].shape[-2:])  # the backbone's map size (h, w), as every model's maps
        results["chance"] = {"draws": args.chance_draws, "map_shape": list(shape), **chance(gts, shape, args.chance_draws)}
        results_path.write_text(json.dumps(results, indent=2) + "\n")

    print("| model | HmBoxAUC all | single | multi | PiBR all | single | multi | PNSR all | visible | audible | noise | ms / segment |")
    print("|---|" + "---:|" * 11)
    for name in [*MODELS, *(k for k in results if k.startswith("scored: "))]:
        if name not in results or "method" not in results[name]:
            continue
        r = results[name]
        pn = "" if r["method"] != "dnm" or r["overrides"].get("tasks") == "cls" else "x"
        cells = [r["hmboxauc"], r["hmboxauc_single"], r["hmboxauc_multi"], r["pibr"], r["pibr_single"], r["pibr_multi"]]
        pns = [r["pnsr"], r["pnsr_visible"], r["pnsr_audible"], r["pnsr_noise"]]
        print(f"| {name} | " + " | ".join(f"{c:.3f}" for c in cells) + " | "
              + " | ".join((f"{c:.3f}" if pn else f"({c:.3f})") for c in pns) + f" | {r['latency_ms_per_segment']:.1f} |")
    if "chance" in results:
        r = results["chance"]
        cells = [r["hmboxauc"], r["hmboxauc_single"], r["hmboxauc_multi"], r["pibr"], r["pibr_single"], r["pibr_multi"]]
        print(f"| *random {'x'.join(map(str, r['map_shape']))} maps (chance, mean of {r['draws']} draws)* | "
              + " | ".join(f"{c:.3f}" for c in cells) + " | | | | | |")
    row = next((r for r in results.values() if "n_ave" in r), None)
    if row is not None:
        print(f"\nAVE frames: {row['n_ave']}; non-AVE visible / audible / noise: "
              + " / ".join(str(row[f"n_{k}"]) for k in ("visible", "audible", "noise")))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
