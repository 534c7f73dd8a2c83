"""Attention10k: audio-guided attention with the unsupervised distance-ratio objective.

Senocak, Oh, Kim, Yang, Kweon, "Learning to Localize Sound Source in Visual
Scenes", CVPR 2018, Sec. 3 (unsupervised two-stream network with attention).

* Attention (Sec. 3.1): for the audio embedding ``h`` of clip ``i`` and the
  visual map ``V_j`` of clip ``j``, the score of location ``uv`` is the cosine
  similarity ``S_{i->j}[uv]`` (LVS Sec. 3.2's map, the paper's normalised inner
  product), and the attention is a softmax over locations::

      alpha_{i->j}[uv] = exp(S_{i->j}[uv] / tau) / sum_{u'v'} exp(S_{i->j}[u'v'] / tau)

  ``tau`` (``attention_temperature``) is our addition: a cosine lies in [-1, 1], so
  an untempered softmax over 196 cells is almost uniform; 0.03 is the temperature
  LVS and EZ-VSL use on the same cosine scale.
* Attended visual vector: ``z_{i->j} = sum_uv alpha_{i->j}[uv] V_j[:, uv]``, then the
  two fully connected heads ``f_v(z)`` and ``f_s(h)`` (Sec. 3.1, Fig. 2).
* Unsupervised loss (Sec. 3.2, Eq. 3; the triplet network of Hoffer & Ailon 2015):
  anchor ``f_s(h_i)``, positive ``f_v(z_{i->i})``, negative ``f_v(z_{i->j})`` with the
  image of another clip ``j != i`` attended by the same sound::

      d+ = |f_s(h_i) - f_v(z_{i->i})|_2,   d- = |f_s(h_i) - f_v(z_{i->j})|_2
      r+ = exp(d+) / (exp(d+) + exp(d-)),  r- = exp(d-) / (exp(d+) + exp(d-))
      L  = |(r+, r- - 1)|_2^2 = r+^2 + (r- - 1)^2

  averaged over anchors and negatives (``negatives="all"``: every other clip of
  the batch; ``"roll"``: one negative per anchor, clip ``(i + 1) mod B``, as the
  paper samples one random negative). ``f_s``/``f_v`` outputs are L2-normalised
  before the distance when ``normalize_embeddings`` (keeps ``d`` in [0, 2]).
* Heatmap: the attention map ``alpha_{i->i}`` (B, h, w); it depends only on the
  sample itself.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from avloc.config import check_positive
from avloc.errors import ConfigError
from avloc.methods import register_method
from avloc.methods.base import check_widths
from avloc.methods.blocks import TwoStreamConfig, TwoStreamMethod, cosine_map, cross_cosine_maps, mlp_head

# ----------------------------------------------------------------------------- building blocks


def attention_maps(scores: torch.Tensor, temperature: float) -> torch.Tensor:
    """Softmax over locations: ``(..., h, w)`` scores -> ``(..., h, w)`` attention summing to 1."""
    flat = scores.flatten(-2) / temperature  # (..., h*w)
    return flat.softmax(dim=-1).view_as(scores)


def attended_vectors(attention: torch.Tensor, visual: torch.Tensor) -> torch.Tensor:
    """``z_{i->j} = sum_uv alpha_{i->j}[uv] V_j[:, uv]``: ``(Ba, Bv, h, w)``, ``(Bv, D, h, w)`` -> ``(Ba, Bv, D)``."""
    return torch.einsum("ijhw,jdhw->ijd", attention, visual)


# ----------------------------------------------------------------------------- model


class Attention10k(TwoStreamMethod):
    """Two-stream network with audio-guided softmax attention (Senocak et al. 2018)."""

    cfg: Attention10kConfig

    def __init__(self, cfg: Attention10kConfig) -> None:
        super().__init__(cfg)
        self.visual_head = mlp_head(cfg.embed_dim, cfg.embed_dim, cfg.head_hidden)  # f_v
        self.audio_head = mlp_head(cfg.embed_dim, cfg.embed_dim, cfg.head_hidden)  # f_s

    def _final(self, x: torch.Tensor) -> torch.Tensor:
        return F.normalize(x, dim=-1) if self.cfg.normalize_embeddings else x

    def forward(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        cfg = self.cfg
        v = self.embed_visual(self.visual_features(batch))  # (B, D, h, w)
        h = self.embed_audio(batch["audio"])  # (B, D)
        scores = cross_cosine_maps(h, v)  # (B, B, h, w), [i, j] = S_{i->j}
        attn = attention_maps(scores, cfg.attention_temperature)  # (B, B, h, w)
        z = attended_vectors(attn, v)  # (B, B, D)
        fv = self._final(self.visual_head(z))  # (B, B, D)
        fs = self._final(self.audio_head(h))  # (B, D)
        dist = (fs[:, None, :] - fv).norm(dim=-1)  # (B, B): d[i, j] = |f_s(h_i) - f_v(z_{i->j})|
        return {"dist": dist, "heatmap": attn.diagonal(dim1=0, dim2=1).permute(2, 0, 1)}  # heatmap (B, h, w)

    def build_criterion(self) -> nn.Module:
        return DistanceRatioLoss(self.cfg.negatives)

    def localize(self, images: torch.Tensor, audio: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W), (B, N) -> attention ``alpha_{i->i}`` (B, h, w), per sample."""
        cfg = self.cfg
        v = self.embed_visual(self.encode_images(images))  # (B, D, h, w)
        h = self.embed_audio(audio)  # (B, D)
        return attention_maps(cosine_map(h, v), cfg.attention_temperature)  # (B, h, w)


# ----------------------------------------------------------------------------- loss


def distance_ratio_loss(dist: torch.Tensor, negatives: Literal["all", "roll"] = "all") -> torch.Tensor:
    """Senocak et al. Eq. 3 from a distance matrix ``d[i, j]`` (B, B); positives on the diagonal.

    ``r+ = softmax(d+, d-)[0]``; ``L = r+^2 + (r- - 1)^2`` averaged over (anchor, negative) pairs.
    """
    b = dist.shape[0]
    if dist.dim() != 2 or dist.shape[1] != b:
        raise ConfigError(f"distance matrix must be square (B, B), got {tuple(dist.shape)}")
    if b < 2:
        raise ConfigError("the distance-ratio loss needs a batch of at least 2 clips (negatives come from other clips)")
    d_pos = dist.diagonal()  # (B,)
    if negatives == "all":
        off = ~torch.eye(b, dtype=torch.bool, device=dist.device)
        d_neg = dist[off].view(b, b - 1)  # (B, B-1)
    elif negatives == "roll":
        d_neg = dist[torch.arange(b), (torch.arange(b) + 1) % b][:, None]  # (B, 1)
    else:
        raise ConfigError(f"unknown negatives {negatives!r}; valid: all, roll")
    pair = torch.stack([d_pos[:, None].expand_as(d_neg), d_neg], dim=-1)  # (B, K, 2)
    r = pair.softmax(dim=-1)  # exp(d) / (exp(d+) + exp(d-))
    return (r[..., 0].square() + (r[..., 1] - 1).square()).mean()


class DistanceRatioLoss(nn.Module):
    """Criterion: ``outputs["dist"]`` (B, B) -> ``{"loss", "d_pos", "d_neg"}``."""

    def __init__(self, negatives: Literal["all", "roll"] = "all") -> None:
        super().__init__()
        self.negatives = negatives

    def forward(self, outputs: dict[str, torch.Tensor], batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        dist = outputs["dist"]  # (B, B)
        b = dist.shape[0]
        off = ~torch.eye(b, dtype=torch.bool, device=dist.device)
        loss = distance_ratio_loss(dist, self.negatives)
        return {"loss": loss, "d_pos": dist.diagonal().mean().detach(), "d_neg": dist[off].mean().detach()}


# ----------------------------------------------------------------------------- config


@dataclass
class Attention10kConfig(TwoStreamConfig):
    """Attention10k settings (see the module docstring for the equations).

    ``attention_temperature``: softmax temperature on cosine scores (ours; 0.03 as LVS/EZ-VSL).
    ``head_hidden``: width of the hidden layer of ``f_v``/``f_s`` (0 = one linear layer).
    ``negatives``: ``all`` other clips of the batch, or ``roll`` (one per anchor, as the paper).
    ``normalize_embeddings``: L2-normalise ``f_v``/``f_s`` before the Euclidean distance.
    """

    attention_temperature: float = 0.03
    head_hidden: int = 0
    negatives: Literal["all", "roll"] = "all"
    normalize_embeddings: bool = True

    def __post_init__(self) -> None:
        super().__post_init__()
        check_positive(attention_temperature=self.attention_temperature)
        check_widths(0, head_hidden=self.head_hidden)


# ----------------------------------------------------------------------------- registration

Attention10k.config_class = Attention10kConfig
register_method("attention10k")(Attention10k)
