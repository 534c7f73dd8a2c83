"""DNM paper, Table 2 on DigitScenes ``video``: train the six models, score HmBoxAUC / PiBR / PNSR, time them.

Models (registered methods, Nishikawa et al. Sec. 5.2): CAM (``dnm-cam``, visual
only), the Tian-style audio-guided attention (``dnm-tian``), Static-Cls,
Static-AVC, Static-DNM and CDF-DNM (``dnm`` with ``fusion`` x ``tasks``).

Each row is a named config (``src/avloc/configs/dnm-table2-ROW.json``; ``avloc train
--config dnm-table2-cdf-dnm --raw DIR --out RUN`` trains the row at the bench defaults).
The bench adds its levers to it and trains with the function ``avloc train`` calls,
:func:`avloc.engine.train.train_from_specs`, from the config file it writes
(``OUT/configs/ROW.json``; ``avloc train --config OUT/configs/ROW.json
--out RUN`` repeats the run), with the shared engine (frozen
EfficientNet-Lite0 features of the T-frame segments cached on disk in
``--feature-cache-dir`` and shared by the six runs), then scored under the
``avsol`` protocol (:func:`avloc.engine.predict.predict`, then
:meth:`~avloc.engine.predict.Predictions.score`) on the test clips: HmBoxAUC and
PiBR over all AVE frames and split into frames with one / several sounding digits,
PNSR over all non-AVE frames and per kind. The test features are encoded once
(``feature_cache``) and shared by every model. ``avloc eval --model
RUN/last.safetensors --data digitscenes:video:test --raw DIR --protocol avsol``
reproduces the "all" columns of one model (on the dataset's default 1,000 clips
unless ``count`` is given).

Latency: ``localize`` on one segment (T frames + 1 s of audio, batch 1, backbone
included), median of ``--latency-reps`` runs after a warm-up.

Training data (issue 7): ``--train-overrides`` sets DigitScenes ``video`` fields for
the training clips only (``data.train_kwargs``; the test clips keep the default config).
The other levers are method config fields (:class:`avloc.methods.dnm.DNMConfig`), applied
by ``prepare_training`` when the engine starts: ``--sound-draws K`` -> ``sound_draws``
(:class:`avloc.data.digitscenes.wrappers.RedrawnSoundTracks`: each training clip with K sound tracks, the
pictures, hence the cached features, shared; ``pixels_once`` is always on);
``--neg-other-time p`` -> ``neg_other_time`` (AVC models; a fraction p of the AVC negatives
from the same clip at another time, :class:`avloc.data.digitscenes.wrappers.OtherTimeNegatives`);
``--audio-pretrain-steps N`` pretrains the audio backbone once on FSDD digits
(:func:`avloc.methods.dnm.pretrain.pretrain_audio_backbone`, seed 0, ``OUT/audio_backbone.safetensors``;
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

from avloc.config import read_config_file
from avloc.data.collate import collate_samples
from avloc.data.datasets import KeyedSubset, dataset_from_spec
from avloc.engine.predict import Predictions, predict
from avloc.engine.train import train_from_specs
from avloc.methods import create_method
from avloc.methods.base import LocalizationMethod
from avloc.methods.dnm import DNMConfig, derangement
from avloc.methods.dnm.pretrain import pretrain_audio_backbone
from avloc.methods.zoo import load_model, save_model
from avloc.metrics.avc import avc_accuracy, roc_auc
from avloc.metrics.targets import Target

#: Table 2 rows: name -> named config (src/avloc/configs/NAME.json: method_name, method, train, data)
MODELS: dict[str, str] = {
    "CAM (visual only)": "dnm-table2-cam",
    "Tian-style attention": "dnm-table2-tian",
    "Static-Cls": "dnm-table2-static-cls",
    "Static-AVC": "dnm-table2-static-avc",
    "Static-DNM": "dnm-table2-static-dnm",
    "CDF-DNM": "dnm-table2-cdf-dnm",
}
#: the registered methods built on avloc.methods.dnm.SegmentMethod
SEGMENT_METHODS = ("dnm", "dnm-cam", "dnm-tian")
#: test frames are predicted in batches of this many segments
PREDICT_BATCH = 48


def score(preds: Predictions) -> dict[str, Any]:
    """avsol on everything, and HmBoxAUC / PiBR on AVE frames with one and with several sounding boxes."""
    res = {k: v for k, v in preds.score("avsol").items() if not isinstance(v, (list, dict))}
    for name, multi in (("single", False), ("multi", True)):

        def keep(t: Target, multi: bool = multi) -> bool:
            return len(t.boxes) > 1 if multi else len(t.boxes) == 1

        sub = preds.subset(keep)
        if len(sub):
            r = sub.score("avsol")
            res[f"hmboxauc_{name}"], res[f"pibr_{name}"], res[f"n_{name}"] = r["hmboxauc"], r["pibr"], r["n_ave"]
        else:
            res[f"hmboxauc_{name}"], res[f"pibr_{name}"], res[f"n_{name}"] = float("nan"), float("nan"), 0
    return res


def chance(preds: Predictions, draws: int) -> dict[str, Any]:
    """Mean scores of uniform random maps of the models' map shape over ``draws`` draws (generator seeds 0 .. draws-1)."""
    shape = tuple(preds.maps[0].shape[-2:])  # the backbone's map size (h, w), as every model's maps
    rows = []
    for d in range(draws):
        g = torch.Generator().manual_seed(d)
        maps = [np.stack([torch.rand(shape, generator=g).numpy() for _ in batch]) for batch in preds.targets]
        rows.append(score(Predictions("random", targets=preds.targets, maps=maps)))
    out = {k: float(np.mean([r[k] for r in rows])) for k in rows[0] if isinstance(rows[0][k], (int, float))}
    return {"draws": draws, "map_shape": list(shape), **out}


def avc_check(model: LocalizationMethod, ds: Any, frames_per_clip: int, cache_dir: str, seed: int = 0) -> dict[str, Any]:
    """AVC (Eq. 7, z_avc = GMP(M_loc)) on fixed pairs: every segment with its own audio (AVC = yes) and with the
    audio of the same annotated time of another clip (AVC = no; a seeded derangement of the clips).

    Accuracy at z_avc > 0.5 and the ROC AUC of z_avc (positives vs negatives), over all segments and over the
    positives that are AVE frames (a sounding digit visible) / not. Run on the training clips and on test clips,
    it tells whether AVC generalises or was answered by memorised clips.
    """
    n = len(ds)
    if n % frames_per_clip:
        raise ValueError(f"{n} segments are not whole clips of {frames_per_clip} annotated frames")
    g = torch.Generator().manual_seed(seed)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(torch.randint(2**31, (1,), generator=g)))
        perm = derangement(n // frames_per_clip, torch.device("cpu"))
    neg_idx = (perm[:, None] * frames_per_clip + torch.arange(frames_per_clip)).flatten().tolist()  # (n,)
    audio = [ds[i]["audio"] for i in range(n)]
    mismatched = KeyedSubset(ds, range(n), replace=[{"audio": audio[j]} for j in neg_idx])

    def z_avc(data: Any) -> tuple[np.ndarray, Predictions]:
        p = predict(model, data, batch_size=64, feature_cache=cache_dir)
        return np.concatenate([m.reshape(len(m), -1).max(1) for m in p.maps]), p

    zp, pos = z_avc(ds)
    zn, _ = z_avc(mismatched)
    ave = np.array([len(t.boxes) > 0 for batch in pos.targets for t in batch])
    return {
        "n": n, "n_ave": int(ave.sum()),
        "acc": avc_accuracy(zp, zn, 0.5),
        "auc": roc_auc(zp, zn), "auc_ave_positives": roc_auc(zp[ave], zn) if ave.any() else float("nan"),
        "auc_nonave_positives": roc_auc(zp[~ave], zn) if (~ave).any() else float("nan"),
        "mean_z_pos": float(zp.mean()), "mean_z_neg": float(zn.mean()),
    }


def latency(model: LocalizationMethod, first: dict[str, torch.Tensor], reps: int) -> float:
    """Median seconds of ``localize`` on one segment (batch 1, backbone included)."""
    x, a = first["image"][:1], first["audio"][:1]
    times = []
    model.eval()
    with torch.no_grad():
        model.localize(x, a)
        for _ in range(reps):
            t0 = time.perf_counter()
            model.localize(x, a)
            times.append(time.perf_counter() - t0)
    return statistics.median(times)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
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
    return p.parse_args(argv)


def audio_backbone(args: argparse.Namespace, out: Path, results: dict[str, Any]) -> str | None:
    """The frozen audio backbone every audio model starts from: ``--audio-init``, else pretrained once (or None)."""
    if args.audio_init:
        return str(Path(args.audio_init).resolve())
    if args.audio_pretrain_steps <= 0:
        return None
    from safetensors.torch import save_file

    wpath = out / "audio_backbone.safetensors"
    if not wpath.is_file() or args.force:
        t0 = time.perf_counter()
        weights, acc = pretrain_audio_backbone(
            args.raw, DNMConfig(), steps=args.audio_pretrain_steps, seed=0, log=lambda m: print(m, file=sys.stderr, flush=True),
        )
        save_file(weights, str(wpath))
        results["audio_pretraining"] = {"steps": args.audio_pretrain_steps, "seed": 0, "last_batch_accuracy": acc,
                                        "seconds": round(time.perf_counter() - t0, 1)}
    return str(wpath.resolve())


def row_config(name: str, args: argparse.Namespace, cache_dir: str, audio_init: str | None) -> dict[str, Any]:
    """The row's named config with the bench's levers applied (what ``OUT/configs/ROW.json`` holds)."""
    cfg = read_config_file(MODELS[name], sections=("method_name", "method", "train", "data"))
    method, overrides = cfg["method_name"], dict(cfg.get("method", {}))
    avc = method == "dnm" and overrides.get("tasks") in ("avc", "dnm")
    overrides.update(init_seed=args.seed, sound_draws=args.sound_draws, pixels_once=True)
    if avc and args.neg_other_time > 0:
        overrides["neg_other_time"] = args.neg_other_time
    if audio_init is not None and method != "dnm-cam":
        overrides.update(freeze_audio=True, audio_init_from=audio_init)
    train = dict(cfg["train"]) | {
        "steps": args.steps, "batch_size": args.batch_size, "seed": args.seed,
        "optim": dict(cfg["train"]["optim"]) | {"lr": args.lr},
        "feature_cache": True, "feature_cache_dir": str(Path(cache_dir).resolve()),
    }
    data = dict(cfg["data"]) | {"raw": str(Path(args.raw).resolve()),
                                "train_kwargs": {**cfg["data"].get("train_kwargs", {}), "count": args.train_clips,
                                                 **json.loads(args.train_overrides)}}
    return {"method_name": method, "method": overrides, "train": train, "data": data}


def train_row(
    name: str, args: argparse.Namespace, out: Path, cache_dir: str, audio_init: str | None, test: Any,
    first: dict[str, torch.Tensor], results: dict[str, Any],
) -> tuple[LocalizationMethod, dict[str, Any]]:
    """Train one Table 2 row from its config file, score it as saved (what ``avloc eval --model`` loads), time it."""
    run_cfg = row_config(name, args, cache_dir, audio_init)
    method, overrides = run_cfg["method_name"], run_cfg["method"]
    run = out / name.split(" ")[0].lower()
    cfg_path = out / "configs" / f"{run.name}.json"
    cfg_path.parent.mkdir(parents=True, exist_ok=True)
    cfg_path.write_text(json.dumps(run_cfg, indent=2) + "\n")
    t1 = time.perf_counter()
    tr = train_from_specs(None, run, config_file=cfg_path, force=True)
    train_s = time.perf_counter() - t1
    if not tr.feature_cache:
        raise SystemExit(f"{name}: the engine did not use the feature cache")
    model: Any = load_model(run / "last.safetensors")  # a SegmentMethod (frames)
    res = score(predict(model, test, batch_size=PREDICT_BATCH, feature_cache=cache_dir))
    lat = latency(model, first, args.latency_reps)
    last = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines() if x.strip()][-1]
    avc = method == "dnm" and overrides.get("tasks") in ("avc", "dnm")
    return model, {
        "method": method, "overrides": overrides, **res, "train_seconds": round(train_s, 1), "train_steps": tr.step,
        "final_train": {k: v for k, v in last.items() if k not in ("step", "split")},
        "latency_ms_per_segment": round(lat * 1e3, 2), "frames_per_s": round(model.frames / lat, 1),
        "run": str(run), "config": str(cfg_path), "seed": args.seed, "train_clips": args.train_clips,
        "train_overrides": json.loads(args.train_overrides), "batch_size": args.batch_size,
        "sound_draws": args.sound_draws, "neg_other_time": args.neg_other_time if avc else None,
        "audio_init_from": audio_init if method != "dnm-cam" else None,
    }


def print_table(results: dict[str, Any]) -> None:
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


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    cache_dir = args.feature_cache_dir or str(out / "feature_cache")
    results_path = out / "results.json"
    results: dict[str, Any] = json.loads(results_path.read_text()) if results_path.is_file() and not args.force else {}

    def save() -> None:
        results_path.write_text(json.dumps(results, indent=2) + "\n")

    train_over: dict[str, Any] = json.loads(args.train_overrides)
    audio_init = audio_backbone(args, out, results)
    ref = create_method("dnm")
    test: Any = dataset_from_spec(f"digitscenes:video:{args.eval_split}", raw=args.raw, image_cfg=ref.cfg.image,
                             audio_cfg=ref.cfg.audio, count=args.test_clips)
    if results.setdefault("eval_split", args.eval_split) != args.eval_split:
        raise SystemExit(f"{results_path} holds scores on the {results['eval_split']} clips; use another --out for {args.eval_split}")
    first = collate_samples([test[0]])
    t0 = time.perf_counter()
    ref_preds = predict(ref, test, batch_size=PREDICT_BATCH, feature_cache=cache_dir)  # encodes the test frames once
    print(f"{args.eval_split}: {len(ref_preds)} frames of {args.test_clips} clips encoded in {time.perf_counter() - t0:.0f} s",
          file=sys.stderr)

    for name in args.models:
        if name in results:
            print(f"{name}: done already (results.json); --force to redo", file=sys.stderr)
            continue
        model, results[name] = train_row(name, args, out, cache_dir, audio_init, test, first, results)
        save()
        print(f"{name}: {json.dumps(results[name])}", file=sys.stderr)
        if name == args.zoo_model and args.zoo:
            r = results[name]
            save_model(model, args.zoo, meta={"bench": "bench/paper/dnm/run.py", "train_clips": args.train_clips, "steps": r["train_steps"],
                                              "train_overrides": train_over, "neg_other_time": args.neg_other_time,
                                              "sound_draws": args.sound_draws, "seed": args.seed,
                                              "audio_pretrain_steps": args.audio_pretrain_steps, "batch_size": args.batch_size,
                                              "test_clips": args.test_clips,
                                              "avsol_test": {k: r[k] for k in ("hmboxauc", "pibr", "pnsr")}})
            print(f"saved {args.zoo}", file=sys.stderr)

    for spec in args.score:
        row_name, _, src = spec.partition("=")
        if not src:
            raise SystemExit(f"--score {spec!r}: give ROW=MODEL")
        model = load_model(src)
        if model.name not in SEGMENT_METHODS:
            raise SystemExit(f"--score {spec!r}: not a dnm model")
        res = score(predict(model, test, batch_size=PREDICT_BATCH, feature_cache=cache_dir))
        results[f"scored: {row_name}"] = {"method": model.name, "overrides": {"tasks": model.cfg.tasks if model.name == "dnm" else None},  # type: ignore[attr-defined]
                                          "source": src, **res, "latency_ms_per_segment": float("nan")}
        save()
    if args.avc_check:
        train_ds: Any = dataset_from_spec("digitscenes:video:train", raw=args.raw, image_cfg=ref.cfg.image, audio_cfg=ref.cfg.audio,
                                     count=args.avc_train_clips, **train_over)
        for spec in args.avc_check:
            row_name, _, src = spec.partition("=")
            model = load_model(src)
            if model.name != "dnm" or model.cfg.tasks not in ("avc", "dnm"):  # type: ignore[attr-defined]
                raise SystemExit(f"--avc-check {spec!r}: not a dnm model with an AVC output")
            results[f"avc check: {row_name}"] = {
                "source": src, "train_clips": args.avc_train_clips, "train_overrides": train_over,
                "train": avc_check(model, train_ds, len(train_ds.config.annotated_frames()), cache_dir),
                args.eval_split: avc_check(model, test, len(test.config.annotated_frames()), cache_dir),
            }
            save()
            print(f"avc check {row_name}: {json.dumps(results[f'avc check: {row_name}'])}", file=sys.stderr)
    if args.chance_draws > 0:
        results["chance"] = chance(ref_preds, args.chance_draws)
        save()
    print_table(results)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
