"""The applications of "Less can be more" (Sec. 5) on DigitScenes ``video``: LVS trained on
top-1 informative moments vs middle frames (Table 3), and LVS with vs without pseudo boxes
as the supervised part of semi-supervised training (Table 4).

Everything goes through the library paths the CLIs use:

* moments: :func:`avloc.data.moments.select_moments` with the classification model on
  ``--clips`` training clips of ``digitscenes-clips:video:train``; the LVS training sets
  are :class:`avloc.data.moments.MomentFrames` of the top-1 and of the middle steps;
* pseudo boxes: :func:`avloc.data.pseudo_boxes.clip_pseudo_boxes` at the top-1 moment
  (what ``avloc pseudo-boxes`` writes), attached to the top-1 frames;
  the semi-supervised set is :func:`avloc.data.pseudo_boxes.semi_supervised` of the
  unlabelled top-1 frames of the other clips + the ``--labelled`` pseudo-boxed ones,
  LVS runs with ``box_weight`` > 0; "w/o bbox" is plain LVS on the same frames;
* training: :func:`avloc.engine.train.train` (cached frozen features); evaluation:
  :func:`avloc.engine.evaluate.evaluate_model` on ``--data`` (default ``digitscenes:single:test``).

Usage::

    python bench/classif_lvs_apps.py --raw ../shared/data --classif classif-digitscenes --out /tmp/apps \\
        --clips 400 --labelled 100 --steps 150 --batch 64 --threads 1 [--tables 3 4]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import Dataset

from avloc.data.clips import DigitScenesClips
from avloc.data.datasets import dataset_from_spec
from avloc.data.moments import MomentFrames, middle_moments, select_moments
from avloc.data.pseudo_boxes import PseudoBoxConfig, clip_pseudo_boxes, semi_supervised
from avloc.engine.evaluate import evaluate_model
from avloc.engine.train import OptimConfig, TrainConfig, train
from avloc.methods import create_method
from avloc.methods.classif import Classif
from avloc.methods.lvs import LVS, LVSConfig
from avloc.methods.zoo import load_model


class WithBoxes(Dataset):
    """Items of ``base`` whose ``boxes`` are replaced by given boxes (normalised, model input frame)."""

    def __init__(self, base: MomentFrames, indices: list[int], boxes: list[list[float]]) -> None:
        self.base, self.indices, self.boxes = base, indices, boxes

    def __len__(self) -> int:
        return len(self.indices)

    def feature_cache_keys(self) -> list[str]:
        return [self.base.image_key(i) for i in self.indices]

    def __getitem__(self, i: int) -> dict[str, Any]:
        s = self.base[self.indices[i]]
        s["boxes"] = torch.tensor([self.boxes[i]], dtype=torch.float32)
        return s


class Subset(Dataset):
    """A subset keeping feature-cache keys."""

    def __init__(self, base: MomentFrames, indices: list[int]) -> None:
        self.base, self.indices = base, indices

    def __len__(self) -> int:
        return len(self.indices)

    def feature_cache_keys(self) -> list[str]:
        return [self.base.image_key(i) for i in self.indices]

    def __getitem__(self, i: int) -> dict[str, Any]:
        return self.base[self.indices[i]]


def run_lvs(name: str, data: Dataset, out: Path, args: argparse.Namespace, test: Dataset, **lvs_kw: Any) -> dict[str, Any]:
    torch.manual_seed(args.seed)
    model = create_method("lvs", LVSConfig(**lvs_kw))
    cfg = TrainConfig(steps=args.steps, batch_size=args.batch, optim=OptimConfig(lr=1e-3, warmup_steps=20), val_every=0, ckpt_every=0,
                      log_every=10, seed=args.seed, progress=False, feature_cache_dir=args.feature_cache_dir)
    t0 = time.perf_counter()
    train(model, data, out / name, cfg, force=True)
    secs = time.perf_counter() - t0
    res = {p: {k: v for k, v in evaluate_model(model, test, p, progress=False, batch_size=25).items() if k != "curve"} for p in args.protocols}
    return {"train_seconds": round(secs, 1), "train_samples": len(data), **res}  # type: ignore[arg-type]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    p.add_argument("--raw", required=True)
    p.add_argument("--classif", required=True, help="classif checkpoint (path or zoo name)")
    p.add_argument("--out", required=True, help="folder for the LVS runs")
    p.add_argument("--clips", type=int, default=400)
    p.add_argument("--labelled", type=int, default=100, help="clips whose top-1 frame gets a pseudo box (Table 4)")
    p.add_argument("--steps", type=int, default=150)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--box-weight", type=float, default=1.0)
    p.add_argument("--data", default="digitscenes:single:test")
    p.add_argument("--count", type=int, default=300)
    p.add_argument("--protocols", nargs="+", default=["lvs-vggss", "sslalign-adaptive"])
    p.add_argument("--tables", nargs="+", type=int, default=[3, 4])
    p.add_argument("--threshold", type=float, default=0.5)
    p.add_argument("--feature-cache-dir")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--json-out")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    cm = load_model(args.classif)
    if not isinstance(cm, Classif):
        raise SystemExit(f"{args.classif}: not a classif checkpoint")
    lvs_ref = create_method("lvs")
    assert isinstance(lvs_ref, LVS)
    clips_c = DigitScenesClips(args.raw, "train", count=args.clips, image_cfg=cm.cfg.image, audio_cfg=cm.cfg.audio, fps=cm.cfg.fps)
    clips_l = DigitScenesClips(args.raw, "train", count=args.clips, image_cfg=lvs_ref.cfg.image, audio_cfg=lvs_ref.cfg.audio, fps=cm.cfg.fps)
    test = dataset_from_spec(args.data, raw=args.raw, image_cfg=lvs_ref.cfg.image, audio_cfg=lvs_ref.cfg.audio, count=args.count)
    t0 = time.perf_counter()
    top1, _, vps = select_moments(cm.moment_scores, clips_c, k=1, batch_size=4)
    res: dict[str, Any] = {"clips": args.clips, "steps": args.steps, "batch": args.batch, "moment_selection_videos_per_s": round(vps, 3),
                           "moment_seconds": round(time.perf_counter() - t0, 1)}
    top_frames = MomentFrames(clips_l, top1, lvs_ref.cfg.audio)
    if 3 in args.tables:
        mid_frames = MomentFrames(clips_l, middle_moments(args.clips, clips_l.steps), lvs_ref.cfg.audio)
        res["table3"] = {
            "top-1": run_lvs("lvs_top1", top_frames, out, args, test),
            "mid-frame": run_lvs("lvs_mid", mid_frames, out, args, test),
        }
    if 4 in args.tables:
        n_lab = min(args.labelled, args.clips)
        boxes, idx = [], []
        for c in range(n_lab):
            item = clips_c[c]
            cb = clip_pseudo_boxes(cm, item["image"], item["audio"], PseudoBoxConfig(threshold=args.threshold))[0]
            if cb.box is not None:
                idx.append(c)
                boxes.append(cb.box)
        labelled = WithBoxes(top_frames, idx, boxes)  # MomentFrames item c is clip c's top-1 frame
        unlabelled = Subset(top_frames, list(range(n_lab, len(top_frames))))
        semi = semi_supervised(unlabelled, labelled)
        plain = Subset(top_frames, idx + list(range(n_lab, len(top_frames))))  # the same frames, no box term
        res["table4"] = {
            "labelled": len(idx),
            "w/o bbox": run_lvs("lvs_nobox", plain, out, args, test),
            "w/ bbox": run_lvs("lvs_box", semi, out, args, test, box_weight=args.box_weight),
        }
    print(json.dumps(res, indent=2))
    if args.json_out:
        from avloc.io.atomic import write_text_atomic

        write_text_atomic(args.json_out, json.dumps(res, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
