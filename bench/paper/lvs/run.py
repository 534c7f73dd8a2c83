"""Score trained LVS checkpoints on DigitScenes under several protocols in one pass.

The frozen visual encoder's features of the test images are computed once and
shared by all checkpoints (they must use the same frozen encoder and image
config); each checkpoint's heatmaps are exactly its ``localize`` output
(``S_{i->i}``), scored with :func:`avloc.engine.evaluate.evaluate_predictions`,
the scoring behind ``avloc eval``. ``avloc eval --model CKPT --data SPEC
--protocol NAME`` reproduces any single figure.

Usage::

    python bench/paper/lvs/run.py --raw ../shared/data --threads 2 \\
        --ckpt trimap=RUN/last.safetensors --ckpt complementary=... \\
        [--data digitscenes:single:test] [--protocols lvs-flickr sslalign-adaptive]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time

import numpy as np
import torch

from avloc.config import config_to_dict
from avloc.data.datasets import dataset_from_spec
from avloc.engine.predict import predict
from avloc.methods.zoo import load_labelled_models

#: result keys shown per protocol family: (key, column name); avsol on stills = PiBR (pointing) and HmBoxAUC
COLUMNS = {
    "ciou": (("success", "success"), ("auc", "AUC"), ("mean_ciou", "mean cIoU")),
    "avsol": (("pibr", "PiBR (pointing)"), ("hmboxauc", "HmBoxAUC")),
}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument("--raw", required=True)
    p.add_argument("--ckpt", action="append", required=True, metavar="NAME=PATH", help="checkpoint (path or zoo name)")
    p.add_argument("--data", default="digitscenes:single:test")
    p.add_argument("--protocols", nargs="+", default=["lvs-flickr", "sslalign-adaptive"])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--batch-size", type=int, default=50)
    p.add_argument("--count", type=int, help="first N generated samples (default: the dataset's default count)")
    p.add_argument("--feature-cache-dir", help="keep the frozen encoder's test features on disk (avloc.encoders.cache)")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    models = load_labelled_models(args.ckpt, ("lvs",))
    first = next(iter(models.values()))
    for n, m in models.items():
        same = (m.cfg.visual_encoder, m.cfg.visual_encoder_kwargs, config_to_dict(m.cfg.image), config_to_dict(m.cfg.audio))
        ref = (first.cfg.visual_encoder, first.cfg.visual_encoder_kwargs, config_to_dict(first.cfg.image), config_to_dict(first.cfg.audio))
        if same != ref or not m.visual_cacheable():
            raise SystemExit(f"{n}: needs the same frozen pretrained visual encoder and preprocessing as the first checkpoint")
    extra = {"count": args.count} if args.count else {}
    ds = dataset_from_spec(args.data, raw=args.raw, image_cfg=first.cfg.image, audio_cfg=first.cfg.audio, **extra)
    with tempfile.TemporaryDirectory() as tmp:  # without --feature-cache-dir the features are shared for this run only
        cache_dir = args.feature_cache_dir or tmp
        t0 = time.perf_counter()
        preds = {n: predict(m, ds, batch_size=args.batch_size, feature_cache=cache_dir) for n, m in models.items()}
        secs = time.perf_counter() - t0
    results = {n: {pr: {k: v for k, v in p.score(pr).items() if k != "curve"} for pr in args.protocols} for n, p in preds.items()}
    print(json.dumps({"data": args.data, "n": len(next(iter(preds.values()))), "seconds": round(secs, 1), "results": results}, indent=2))
    cols = [(pr, k, name) for pr in args.protocols for k, name in COLUMNS["avsol" if pr == "avsol" else "ciou"]]
    print("\n| model | " + " | ".join(f"{pr} {name}" for pr, _, name in cols) + " |")
    print("|---|" + "---:|" * len(cols))
    for n, r in results.items():
        print(f"| {n} | " + " | ".join(f"{r[pr][k]:.3f}" for pr, k, _ in cols) + " |")
    if len(results) > 1:  # mean and (population) std over the checkpoints, e.g. seeds of one config
        print(f"| mean +- std ({len(results)}) | " + " | ".join(
            f"{np.mean([r[pr][k] for r in results.values()]):.3f} +- {np.std([r[pr][k] for r in results.values()]):.3f}"
            for pr, k, _ in cols) + " |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
