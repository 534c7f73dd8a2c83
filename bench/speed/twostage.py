"""Speed of the two-stage method (Qian et al. 2020): training samples/s per stage, inference frames/s.

Training steps run on cached visual features (``vfeat``, EfficientNet-Lite0 stride 16
at 224: 112 x 14 x 14), as the engine does with a frozen pretrained encoder; a step is
forward + loss + backward + Adam update. Inference runs ``localize`` on 224x224 images
end to end (EfficientNet-Lite0 included) and ``localize_classes``. Inputs are random
tensors of the right shapes (speed does not depend on content). Prints a markdown table.

    python bench/speed/twostage.py --threads 2 --preset digitscenes
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from functools import partial
from typing import Any

import torch

from avloc.methods.twostage import TwoStage, preset_config


def rate(fn: Callable[[], None], n_items: int, min_seconds: float) -> float:
    fn()  # warm-up
    done, t0 = 0, time.perf_counter()
    while True:
        fn()
        done += n_items
        dt = time.perf_counter() - t0
        if dt >= min_seconds:
            return done / dt


def train_step(model: TwoStage, crit: torch.nn.Module, opt: torch.optim.Optimizer, batch: dict[str, Any]) -> None:
    loss = crit(model(batch), batch)["loss"]
    opt.zero_grad()
    loss.backward()
    opt.step()


@torch.no_grad()
def localize(model: TwoStage, imgs: torch.Tensor, wav: torch.Tensor) -> None:
    model.localize(imgs, wav)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--preset", default="digitscenes", choices=["digitscenes", "paper"])
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--min-seconds", type=float, default=5.0)
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    rows = []
    models: dict[int, TwoStage] = {}
    for stage in (1, 2):
        cfg = preset_config(f"{a.preset}-stage{stage}", image={"size": 224, "resize": 224})
        model = TwoStage(cfg)
        model.train()
        models[stage] = model
        opt = torch.optim.Adam([q for q in model.parameters() if q.requires_grad], lr=1e-4)
        with torch.no_grad():
            vshape = model.visual_encoder(torch.rand(1, 3, 224, 224)).shape[1:]
        b = a.batch_size
        batch = {
            "vfeat": torch.randn(b, *vshape).relu(),
            "audio": torch.randn(b, cfg.audio.num_samples) * 0.1,
            "labels": [[i % 10, (i * 3 + 1) % 10] for i in range(b)],
            "visible_labels": [sorted({i % 10, (i * 3 + 1) % 10, (i + 5) % 10, (i * 7 + 2) % 10}) for i in range(b)],
        }
        fn = partial(train_step, model, model.build_criterion(), opt, batch)
        rows.append((f"train stage {stage} (cached features, batch {b})", "samples/s", rate(fn, b, a.min_seconds)))
    n_samples = models[2].cfg.audio.num_samples
    for stage, bs in ((2, 1), (2, 16), (1, 16)):
        m = models[stage]
        m.eval()
        fn = partial(localize, m, torch.rand(bs, 3, 224, 224), torch.randn(bs, n_samples) * 0.1)
        what = "stage 2 (Eq. 8)" if stage == 2 else "stage-1 CAM"
        rows.append((f"localize {what}, 224 px end to end, batch {bs}", "frames/s", rate(fn, bs, a.min_seconds)))
    print(f"preset {a.preset}, {a.threads} threads, torch {torch.__version__}")
    print("| what | unit | rate |\n|---|---|---|")
    for what, unit, r in rows:
        print(f"| {what} | {unit} | {r:.1f} |")


if __name__ == "__main__":
    main()
