"""Objects-that-sound (AVOL-Net): max-pooled similarity map trained on audio-visual correspondence.

Arandjelović & Zisserman, "Objects that Sound", ECCV 2018, Sec. 4 (AVOL-Net,
Fig. 4): the audio embedding is compared with the visual embedding at every
location, giving a similarity map; a 1x1 convolution calibrates it (one scale
``w`` and one bias ``b``); a sigmoid gives per-location correspondence
probabilities; max pooling over locations gives the clip-level score trained
with the audio-visual correspondence (AVC) objective (Sec. 3: logistic loss on
matching vs mismatched pairs).

Here the similarity is the cosine ``S_{i->j}[uv]`` (LVS Sec. 3.2) of the audio of
clip ``i`` and location ``uv`` of image ``j``, and::

    logit_{i->j}[uv] = w * S_{i->j}[uv] + b            (calibration, learnt)
    s_{i->j}        = max_uv logit_{i->j}[uv]          (multiple-instance max pooling)

Losses (``loss``):

* ``bce`` (the paper's AVC task): binary cross-entropy with logits on ``s_{i->i}``
  (label 1) and ``s_{i->(i+1) mod B}`` (label 0, audio paired with another clip's
  image), one negative per positive — the paper's balanced 50/50 sampling;
* ``contrastive`` (the form the LVS paper, Sec. 3.3 "Discussion", describes for
  [2]): cross-entropy over the batch, positive ``s_{i->i}`` against the max-pooled
  negatives ``s_{i->j}, j != i``: ``L = -1/B sum_i log softmax_j(s_{i->j})[i]``.

Heatmap: ``sigmoid(logit_{i->i})`` (B, h, w), AVOL-Net's localization output; per sample.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from avloc.errors import ConfigError
from avloc.methods import register_method
from avloc.methods.blocks import TwoStreamConfig, TwoStreamMethod, cosine_map, cross_cosine_maps

# ----------------------------------------------------------------------------- building blocks


class Calibration(nn.Module):
    """AVOL-Net's 1x1 convolution on the one-channel similarity map: ``w * S + b`` (any shape)."""

    def __init__(self, init_scale: float, init_bias: float) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.tensor(float(init_scale)))
        self.bias = nn.Parameter(torch.tensor(float(init_bias)))

    def forward(self, sim: torch.Tensor) -> torch.Tensor:
        return self.scale * sim + self.bias


# ----------------------------------------------------------------------------- model


class ObjectsThatSound(TwoStreamMethod):
    """AVOL-Net style localiser (Arandjelović & Zisserman 2018)."""

    cfg: OTSConfig

    def __init__(self, cfg: OTSConfig) -> None:
        super().__init__(cfg)
        self.calibration = Calibration(cfg.calib_init_scale, cfg.calib_init_bias)

    def forward(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        v = self.embed_visual(self.visual_features(batch))  # (B, D, h, w)
        a = self.embed_audio(batch["audio"])  # (B, D)
        logits_map = self.calibration(cross_cosine_maps(a, v))  # (B, B, h, w)
        scores = logits_map.flatten(2).amax(dim=-1)  # (B, B): s[i, j] = max_uv logit_{i->j}
        heat = logits_map.diagonal(dim1=0, dim2=1).permute(2, 0, 1).sigmoid()  # (B, h, w)
        return {"scores": scores, "heatmap": heat}

    def build_criterion(self) -> nn.Module:
        return CorrespondenceLoss(self.cfg.loss)

    def localize(self, images: torch.Tensor, audio: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W), (B, N) -> ``sigmoid(w * S_{i->i} + b)`` (B, h, w), per sample."""
        v = self.embed_visual(self.encode_images(images))  # (B, D, h, w)
        a = self.embed_audio(audio)  # (B, D)
        return self.calibration(cosine_map(a, v)).sigmoid()  # (B, h, w)


# ----------------------------------------------------------------------------- loss


def correspondence_loss(scores: torch.Tensor, kind: Literal["bce", "contrastive"] = "bce") -> torch.Tensor:
    """AVC loss from max-pooled logits ``s[i, j]`` (B, B), matching pairs on the diagonal (module doc)."""
    b = scores.shape[0]
    if scores.dim() != 2 or scores.shape[1] != b:
        raise ConfigError(f"scores must be square (B, B), got {tuple(scores.shape)}")
    if b < 2:
        raise ConfigError("the correspondence loss needs a batch of at least 2 clips (negatives come from other clips)")
    idx = torch.arange(b, device=scores.device)
    if kind == "bce":
        pos = scores[idx, idx]  # (B,)
        neg = scores[idx, (idx + 1) % b]  # (B,)
        logits = torch.cat([pos, neg])  # (2B,)
        target = torch.cat([torch.ones_like(pos), torch.zeros_like(neg)])
        return F.binary_cross_entropy_with_logits(logits, target)
    if kind == "contrastive":
        return F.cross_entropy(scores, idx)
    raise ConfigError(f"unknown OTS loss {kind!r}; valid: bce, contrastive")


class CorrespondenceLoss(nn.Module):
    """Criterion: ``outputs["scores"]`` (B, B) -> ``{"loss", "acc"}`` (acc: positive beats its negatives)."""

    def __init__(self, kind: Literal["bce", "contrastive"] = "bce") -> None:
        super().__init__()
        self.kind = kind

    def forward(self, outputs: dict[str, torch.Tensor], batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        scores = outputs["scores"]  # (B, B)
        loss = correspondence_loss(scores, self.kind)
        acc = (scores.argmax(dim=1) == torch.arange(scores.shape[0], device=scores.device)).float().mean()
        return {"loss": loss, "acc": acc.detach()}


# ----------------------------------------------------------------------------- config


@dataclass
class OTSConfig(TwoStreamConfig):
    """Objects-that-sound settings.

    ``loss``: ``bce`` (AVC, one mismatched pair per matching pair) or ``contrastive``
    (softmax over in-batch max-pooled scores).
    ``calib_init_scale`` / ``calib_init_bias``: initial ``w`` and ``b`` of the calibration
    (ours: ``w = 10`` spreads cosines over a useful logit range; ``b = 0``).
    """

    loss: Literal["bce", "contrastive"] = "bce"
    calib_init_scale: float = 10.0
    calib_init_bias: float = 0.0


# ----------------------------------------------------------------------------- registration

ObjectsThatSound.config_class = OTSConfig
register_method("ots")(ObjectsThatSound)
