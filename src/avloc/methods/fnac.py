"""FNAC: false-negative-aware contrastive learning on top of EZ-VSL.

Sun et al., "Learning Audio-Visual Source Localization via False Negative Aware
Contrastive Learning", CVPR 2023 (code: OpenNLPLab/FNAC_AVL). The network is
EZ-VSL's (one projection head per modality, :mod:`avloc.methods.ezvsl`); the
loss adds three terms to EZ-VSL's multiple-instance contrastive loss. With
``a_i`` the L2-normalised audio embedding (B, D), ``V_i^{uv}`` the L2-normalised
visual map (B, D, h, w) and tau the temperature:

* contrastive term (EZ-VSL Sec. 3.2): ``s_ij = max_uv <a_i, V_j^{uv}> / tau``,
  ``L_cl = CE(s, I) + CE(s^T, I)``;
* **false negative suppression** (FNAC Sec. 3.2): in-batch clips that sound or
  look alike are false negatives of each other. The intra-modal similarities
  ``S^a_ij = <a_i, a_j>`` and ``S^v_ij = <vbar_i, vbar_j>`` (``vbar`` the
  normalised spatial mean of ``V``) give adjacency matrices, row-softmax
  normalised, ``A^a = softmax(S^a / tau)``, ``A^v = softmax(S^v / tau)``; the
  cross-modal matrix ``P = softmax(s)`` is pulled towards each:
  ``L_FNS^a = |P - A^a|_1``, ``L_FNS^v = |P - A^v|_1`` (mean absolute difference
  over the B x B entries), so a negative the other modality finds similar is
  no longer pushed away as hard as a true one;
* **true negative enhancement** (FNAC Sec. 3.3): the visual feature of each
  clip's sounding region, ``r_i = normalise(sum_uv m_i^{uv} V_i^{uv})`` with
  ``m_i = softmax_uv(S_{i->i}^{uv} / tau)`` the clip's own localisation map as
  attention weights, should be as (dis)similar across clips as their sounds:
  ``L_TNE = |softmax(R / tau) - A^a|_1`` with ``R_ij = <r_i, r_j>``; true
  negatives (different sounds) get different sounding regions.

``L = L_cl + lambda_1 L_FNS^a + lambda_2 L_FNS^v + lambda_3 L_TNE`` with
lambda = 100 each (FNAC ``train.py`` defaults). The heatmap and ``localize`` are
EZ-VSL's (``S_{i->i}``, or OGL). Checkpoints released by the authors import
with ``avloc import --from fnac``.

avloc choices where the paper leaves them open: one temperature (``temperature``,
EZ-VSL's 0.03) for the contrastive logits and every adjacency softmax; the
intra-modal adjacencies ``A^a``, ``A^v`` are targets (no gradient flows into
them): with gradients on both sides, every L1 term is minimised by collapsing
all embeddings onto one (uniform matrices), which a short run on DigitScenes
showed (the contrastive term went back to chance).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from avloc.config import check_range
from avloc.methods import register_method
from avloc.methods.blocks import NORM_EPS
from avloc.methods.ezvsl import EZVSL, EZVSLConfig, mil_contrastive_loss

#: FNAC train.py: the weight of each of the three false-negative-aware terms
FNAC_TERM_WEIGHT = 100.0
#: largest loss weight a config may give (beyond it a typo)
MAX_WEIGHT = 1e6

# ----------------------------------------------------------------------------- building blocks


def row_adjacency(sim: torch.Tensor, temperature: float) -> torch.Tensor:
    """FNAC Sec. 3.2: a similarity matrix (B, B) -> its row-softmax ``softmax(sim / tau)`` (B, B)."""
    return F.softmax(sim / temperature, dim=1)


def sounding_region_features(visual: torch.Tensor, pair_maps: torch.Tensor, temperature: float) -> torch.Tensor:
    """FNAC Sec. 3.3: visual maps (B, D, h, w), own-pair cosine maps (B, h, w) -> region features (B, D), normalised.

    Each clip's map, as a softmax over locations with temperature tau, weights its visual features.
    """
    weights = F.softmax(pair_maps.flatten(1) / temperature, dim=1)  # (B, h*w)
    region = torch.einsum("bdn,bn->bd", visual.flatten(2), weights)  # (B, D)
    return F.normalize(region, dim=1, eps=NORM_EPS)


# ----------------------------------------------------------------------------- model


class FNAC(EZVSL):
    """FNAC localiser (Sun et al. 2023): EZ-VSL's network; the loss is :class:`FNACLoss`."""

    cfg: FNACConfig

    def forward(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        cfg = self.cfg
        feat = self.train_features(batch)  # (B, C, h, w)
        audio = F.normalize(self.embed_audio(batch["audio"]), dim=1, eps=NORM_EPS)  # (B, D)
        visual = F.normalize(self.embed_visual(feat), dim=1, eps=NORM_EPS)  # (B, D, h, w)
        sim = torch.einsum("id,jdhw->ijhw", audio, visual)  # (B, B, h, w): S_{i->j}
        pair = sim.diagonal(dim1=0, dim2=1).permute(2, 0, 1)  # (B, h, w): S_{i->i}
        with torch.no_grad():
            heat = self._heatmap(feat, pair)  # (B, h, w)
        return {
            "logits": sim.flatten(2).amax(dim=-1) / cfg.temperature,  # (B, B): [audio i, image j]
            "audio": audio,
            "visual": visual,
            "pair_maps": pair,
            "heatmap": heat,
        }

    def build_criterion(self) -> nn.Module:
        cfg = self.cfg
        return FNACLoss(cfg.temperature, cfg.fns_audio_weight, cfg.fns_visual_weight, cfg.tne_weight)


# ----------------------------------------------------------------------------- loss


class FNACLoss(nn.Module):
    """``L_cl + l1 L_FNS^a + l2 L_FNS^v + l3 L_TNE`` (module docstring) -> the total and each term, plus ``acc``."""

    def __init__(self, temperature: float, fns_audio_weight: float, fns_visual_weight: float, tne_weight: float) -> None:
        super().__init__()
        self.temperature = temperature
        self.weights = (fns_audio_weight, fns_visual_weight, tne_weight)

    def forward(self, outputs: dict[str, torch.Tensor], batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        tau = self.temperature
        logits, audio, visual = outputs["logits"], outputs["audio"], outputs["visual"]  # (B, B), (B, D), (B, D, h, w)
        contrastive = mil_contrastive_loss(logits)
        cross = F.softmax(logits, dim=1)  # (B, B): P, rows = audio i
        with torch.no_grad():  # the adjacencies are targets (module docstring)
            adj_audio = row_adjacency(audio @ audio.t(), tau)  # (B, B): A^a
            vbar = F.normalize(visual.mean(dim=(2, 3)), dim=1, eps=NORM_EPS)  # (B, D)
            adj_visual = row_adjacency(vbar @ vbar.t(), tau)  # (B, B): A^v
        fns_a = F.l1_loss(cross, adj_audio)
        fns_v = F.l1_loss(cross, adj_visual)
        region = sounding_region_features(visual, outputs["pair_maps"], tau)  # (B, D)
        tne = F.l1_loss(row_adjacency(region @ region.t(), tau), adj_audio)
        w_a, w_v, w_t = self.weights
        loss = contrastive + w_a * fns_a + w_v * fns_v + w_t * tne
        target = torch.arange(logits.shape[0], device=logits.device)
        acc = (logits.argmax(dim=1) == target).float().mean()
        return {"loss": loss, "contrastive": contrastive.detach(), "fns_audio": fns_a.detach(),
                "fns_visual": fns_v.detach(), "tne": tne.detach(), "acc": acc.detach()}


# ----------------------------------------------------------------------------- config


@dataclass
class FNACConfig(EZVSLConfig):
    """FNAC settings: EZ-VSL's (one head) plus the weights of the three false-negative-aware terms.

    ``fns_audio_weight`` / ``fns_visual_weight``: lambda_1 / lambda_2 of the false negative suppression terms
    (FNAC train.py: 100 each). ``tne_weight``: lambda_3 of true negative enhancement (100).
    """

    fns_audio_weight: float = FNAC_TERM_WEIGHT
    fns_visual_weight: float = FNAC_TERM_WEIGHT
    tne_weight: float = FNAC_TERM_WEIGHT

    def __post_init__(self) -> None:
        super().__post_init__()
        check_range("heads", self.heads, 1, 1)  # FNAC has one projection head per modality
        for name in ("fns_audio_weight", "fns_visual_weight", "tne_weight"):
            check_range(name, getattr(self, name), 0.0, MAX_WEIGHT)


# ----------------------------------------------------------------------------- registration

FNAC.config_class = FNACConfig
register_method("fnac")(FNAC)
