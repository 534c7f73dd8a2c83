"""Evaluate several models on one generated test split under several protocols, one forward pass each.

Usage::

    python bench/paper/baselines/run.py --raw ../shared/data --data digitscenes:single:test --count 500 \
        --model random=random --model ezvsl=RUN/best.safetensors --model ezvsl+ogl=RUN/best.safetensors@ogl=true \
        [--protocol lvs-flickr --protocol sslalign-adaptive --protocol avsol ...] [--split-by heard] [--json OUT.json]

``--model LABEL=SPEC[@key=value,...]``: SPEC is anything ``avloc.methods.zoo.load_model``
accepts (checkpoint path, zoo name, training-free method name); ``@key=value`` changes
inference-only config fields of the loaded model (e.g. EZ-VSL's ``ogl``) and is applied by
rebuilding the model from the edited config with the same weights.

Each model's ``localize`` runs once over the data (:func:`avloc.engine.predict.predict`, eval
mode); the maps are scored by :meth:`~avloc.engine.predict.Predictions.score` for every protocol
— the same accumulators as ``avloc eval``. Prints a markdown table (and writes JSON with ``--json``).
``avsol`` on still scenes (every sample an AVE frame) gives PiBR, the pointing accuracy (map peak
inside a sounding box), and HmBoxAUC. ``--split-by FIELD`` scores the samples whose boolean
sample field (e.g. ``heard`` of the ``openset`` variant) is true and false separately.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from avloc.data.collate import collate_samples
from avloc.data.datasets import dataset_from_spec
from avloc.engine.predict import predict
from avloc.methods.zoo import load_model_spec
from avloc.metrics.targets import Target

DEFAULT_PROTOCOLS = ("lvs-flickr", "lvs-vggss", "sslalign-adaptive")
#: result keys shown per protocol family: (key, column name)
COLUMNS = {
    "ciou": (("success", "success"), ("auc", "AUC"), ("mean_ciou", "mean cIoU")),
    "avsol": (("pibr", "PiBR (pointing)"), ("hmboxauc", "HmBoxAUC")),
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--raw", required=True, help="raw sources of the generated data")
    ap.add_argument("--data", default="digitscenes:single:test")
    ap.add_argument("--count", type=int, default=500, help="samples of the generated split")
    ap.add_argument("--model", action="append", required=True, help="LABEL=SPEC[@key=value,...]")
    ap.add_argument("--protocol", action="append", default=None)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--json", default=None, help="write all results here")
    ap.add_argument("--split-by", default=None, help="boolean sample field: score its true / false samples separately")
    args = ap.parse_args()
    protocols = args.protocol or list(DEFAULT_PROTOCOLS)
    models = [(lab, load_model_spec(spec)) for lab, _, spec in (m.partition("=") for m in args.model)]
    cfg0 = models[0][1].cfg
    for lab, m in models[1:]:
        if m.cfg.image != cfg0.image or m.cfg.audio != cfg0.audio:
            raise SystemExit(f"{lab}: preprocessing differs from {models[0][0]}'s; evaluate them separately")
    data = dataset_from_spec(args.data, raw=args.raw, image_cfg=cfg0.image, audio_cfg=cfg0.audio, count=args.count)
    batches = [
        collate_samples([data[i] for i in range(s, min(s + args.batch_size, args.count))])
        for s in range(0, args.count, args.batch_size)
    ]
    flags = {str(i): bool(v) for b in batches for i, v in zip(b["id"], b[args.split_by])} if args.split_by else {}
    groups: dict[str, Callable[[Target], bool] | None] = {"": None}
    if args.split_by:
        groups = {f" ({args.split_by})": lambda t: flags[t.id], f" (not {args.split_by})": lambda t: not flags[t.id]}
    results: dict[str, Any] = {}
    for lab, model in models:
        t0 = time.perf_counter()
        preds = predict(model, batches)  # one forward pass; every protocol scores these maps
        sec = time.perf_counter() - t0
        for suffix, keep in groups.items():
            sub = preds if keep is None else preds.subset(keep)
            results[lab + suffix] = {p: sub.score(p) for p in protocols}
            results[lab + suffix]["seconds"] = sec
            results[lab + suffix]["n"] = len(sub)
        print(f"{lab}: {len(preds)} maps in {sec:.0f} s", flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1, default=float))
    cols = [(p, k, name) for p in protocols for k, name in (COLUMNS["avsol"] if p == "avsol" else COLUMNS["ciou"])]
    print("\n| model | n | " + " | ".join(f"{p} {name}" for p, _, name in cols) + " |\n|---|---:|" + "---:|" * len(cols))
    for lab, r in results.items():
        print(f"| {lab} | {r['n']} | " + " | ".join(f"{r[p][k]:.3f}" for p, k, _ in cols) + " |")


if __name__ == "__main__":
    main()
