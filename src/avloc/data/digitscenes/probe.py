"""The "no shortcut" probe: can the image alone tell which visible digit sounds?

Every visible digit's box is cropped from the frame and resized to 28x28; a
small CNN scores each crop and a softmax over the visible digits is trained
(cross entropy) to pick the sounding one, on fresh ``single`` training draws
(no draw is seen twice). Two heads on the same network and the same draws:

* ``visual``: image only; a learned linear map of the crop features gives the
  score. DigitScenes draws the sounding digit uniformly among the visible ones
  after composing the image, so this must stay at chance (mean of 1 / number
  of visible digits) on the test split.
* ``label``: the spoken class (a stand-in for perfect audio) selects the crop's
  class logit as its score. It must be far above chance: the task is learnable
  from the image once the sound is known.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from avloc.data.digitscenes.config import SceneConfig, variant_config
from avloc.data.digitscenes.sampler import DigitScenesSampler
from avloc.data.sources import RawSources

CROP = 28  # MNIST resolution
MAX_VISIBLE = 4


@dataclass
class ProbeConfig:
    size: int = 96  # frame side of the probe's scenes (small keeps it fast on a CPU)
    train_count: int = 4000
    batch: int = 32
    epochs: int = 2
    lr: float = 2e-3
    test_count: int = 600
    seed: int = 0


class CropNet(nn.Module):
    """(B, K, 3, 28, 28) crops -> class logits (B, K, 10) and a label-free score (B, K)."""

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Flatten(), nn.Linear(32 * 7 * 7, 64), nn.ReLU(), nn.Linear(64, 10),
        )
        self.score = nn.Linear(10, 1)

    def forward(self, crops: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        b, k = crops.shape[:2]
        logits = self.body(crops.flatten(0, 1)).view(b, k, 10)
        return logits, self.score(logits)[..., 0]


def collect(sampler: DigitScenesSampler, start: int, n: int) -> tuple[torch.Tensor, ...]:
    """Crops (n, 4, 3, 28, 28), valid (n, 4), spoken class (n,), target box index (n,) = 0."""
    crops = np.zeros((n, MAX_VISIBLE, CROP, CROP, 3), np.float32)
    valid = np.zeros((n, MAX_VISIBLE), bool)
    labels = np.zeros(n, np.int64)
    for r in range(n):
        s = sampler.sample(start + r)
        for k, b in enumerate(s.boxes + s.silent_boxes):  # sounding first; the score sees crops, not order
            crops[r, k] = cv2.resize(s.image[b[1] : b[3], b[0] : b[2]], (CROP, CROP), interpolation=cv2.INTER_AREA) / 255.0
            valid[r, k] = True
        labels[r] = s.labels[0]
    x = torch.from_numpy(crops).permute(0, 1, 4, 2, 3).contiguous()
    return x, torch.from_numpy(valid), torch.from_numpy(labels), torch.zeros(n, dtype=torch.long)


def _scores(net: CropNet, x: torch.Tensor, valid: torch.Tensor, lab: torch.Tensor, with_label: bool) -> torch.Tensor:
    logits, free = net(x)
    s = logits.gather(2, lab[:, None, None].expand(-1, x.shape[1], 1))[..., 0] if with_label else free
    return s.masked_fill(~valid, float("-inf"))  # (B, K)


def run_probe(raw: str | RawSources, cfg: ProbeConfig | None = None) -> dict[str, dict[str, float]]:
    """Train the visual-only and the spoken-label probe; return their test pointing accuracy and chance."""
    cfg = cfg or ProbeConfig()
    sources = raw if isinstance(raw, RawSources) else RawSources(raw)
    vc = variant_config("single", scene=SceneConfig(size=cfg.size))
    t0 = time.time()
    train = collect(DigitScenesSampler(sources, "single", "train", vc, seed=cfg.seed), 0, cfg.train_count)
    test = collect(DigitScenesSampler(sources, "single", "test", vc, seed=cfg.seed), 0, cfg.test_count)
    chance = float((1.0 / test[1].sum(1).float()).mean())
    out: dict[str, dict[str, float]] = {}
    for name, with_label in (("visual", False), ("label", True)):
        torch.manual_seed(cfg.seed)
        net = CropNet()
        opt = torch.optim.Adam(net.parameters(), lr=cfg.lr)
        g = torch.Generator().manual_seed(cfg.seed)
        for _ in range(cfg.epochs):
            for idx in torch.randperm(cfg.train_count, generator=g).split(cfg.batch):
                x, v, lab, y = (t[idx] for t in train)
                loss = F.cross_entropy(_scores(net, x, v, lab, with_label), y)
                opt.zero_grad()
                loss.backward()
                opt.step()
        with torch.no_grad():
            pred = _scores(net, test[0], test[1], test[2], with_label).argmax(1)
        out[name] = {"accuracy": float((pred == test[3]).float().mean()), "chance": chance}
    out["info"] = {"train_draws": float(cfg.train_count), "seconds": time.time() - t0}
    return out
