"""The two baselines of the DNM paper (Nishikawa et al., Sec. 5.2, Table 2), on DNM's segment inputs.

* ``dnm-cam`` (:class:`SegmentCAM`): "We modified our proposed model to take only
  visual input and output CAM [Zhou et al. 2016]": global average pooling of
  ``v_cls`` from the visual sub-CNN, a fully connected layer, event
  classification (BCE, as DNM); the map is the class activation map
  ``sum_d W[c, d] v_cls^i_d`` of the top predicted class ``c``, min-max
  normalised per frame (WSOL evaluation, Choe et al. 2020). No audio is read.
* ``dnm-tian`` (:class:`TianAttention`): the audio-guided visual attention of
  Tian et al. (ECCV 2018, Sec. 3.2): ``x_i = w^T tanh(U_v v_i + U_a a)``,
  ``alpha = softmax_i(x_i)``, ``v_att = sum_i alpha_i v_i``; visual features
  are time-averaged backbone maps of the segment (Tian: pool5 averaged over the
  segment's frames), the audio vector the time-pooled audio sub-network output.
  The map is ``alpha``, min-max normalised per frame as in the DNM paper.

Deviations: the DNM paper used the authors' trained model of Tian et al., which
sees the whole 10-s video through a bidirectional LSTM; that model is not
available and our benchmark segments are 1 s, so we train the attention and a
classifier on ``[v_att, a]`` per segment with the same BCE event loss as DNM
(no LSTM, no background softmax class: an all-zero target is background).
Both reuse DNM's building blocks and config (:class:`avloc.methods.dnm.DNMConfig`;
``fusion``/``tasks`` are unused).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from avloc.methods import register_method
from avloc.methods.blocks import minmax_per_sample
from avloc.methods.dnm import AudioSubNet, DNMConfig, SegmentMethod, event_targets

# ---------------------------------------------------------------------------------------------
# the models


class SegmentCAM(SegmentMethod):
    """Visual-only CAM on DNM's visual feature network (Sec. 5.2)."""

    def __init__(self, cfg: DNMConfig) -> None:
        super().__init__(cfg, avsm_branch=False, cls_branch=True)
        self.classifier = nn.Linear(cfg.cls_dim, cfg.num_classes)

    def forward(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        _, v_cls = self.visual_sub(self.segment_features(self.visual_features(batch)))  # (B, D', h, w)
        assert v_cls is not None
        return {"cls_logits": self.classifier(v_cls.mean(dim=(2, 3)))}  # GAP -> fc, (B, K)

    def build_criterion(self) -> nn.Module:
        return EventLoss(self.cfg)

    def localize_features(self, feats: torch.Tensor, audio: torch.Tensor) -> torch.Tensor:
        """CAM of the top predicted class, min-max per frame: (B, h, w). ``audio`` is not used."""
        _, v_cls = self.visual_sub(self.segment_features(feats))  # (B, D', h, w)
        assert v_cls is not None
        cams = torch.einsum("kd,bdhw->bkhw", self.classifier.weight, v_cls)  # (B, K, h, w)
        top = self.classifier(v_cls.mean(dim=(2, 3))).argmax(1)  # (B,)
        return minmax_per_sample(cams[torch.arange(len(top)), top])


class TianAttention(SegmentMethod):
    """Audio-guided visual attention (Tian et al. 2018, Sec. 3.2) with a per-segment event classifier."""

    def __init__(self, cfg: DNMConfig) -> None:
        super().__init__(cfg, avsm_branch=False, cls_branch=False)
        c = self.visual_encoder.feature_info.channels
        h = cfg.sub_hidden
        self.audio_sub = AudioSubNet(cfg)
        self.u_v = nn.Linear(c, h)
        self.u_a = nn.Linear(cfg.embed_dim, h)
        self.w = nn.Linear(h, 1, bias=False)
        self.classifier = nn.Sequential(nn.Linear(c + cfg.embed_dim, h), nn.ReLU(inplace=True), nn.Linear(h, cfg.num_classes))
        # the 3-D sub-network of DNM is not part of Tian et al.'s model
        del self.visual_sub

    def attend(self, feats: torch.Tensor, wav: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """-> alpha (B, h, w), v_att (B, C), a (B, D)."""
        v = self.segment_features(feats).mean(dim=1)  # (B, C, h, w): time-averaged backbone maps
        a = self.audio_sub(wav).mean(dim=1)  # (B, D)
        vi = v.flatten(2).transpose(1, 2)  # (B, I, C)
        x = self.w(torch.tanh(self.u_v(vi) + self.u_a(a)[:, None])).squeeze(-1)  # (B, I)
        alpha = torch.softmax(x, dim=1)  # (B, I)
        v_att = torch.einsum("bi,bic->bc", alpha, vi)  # (B, C)
        return alpha.view(v.shape[0], *v.shape[2:]), v_att, a

    def forward(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        _, v_att, a = self.attend(self.visual_features(batch), batch["audio"])
        return {"cls_logits": self.classifier(torch.cat([v_att, a], dim=1))}  # (B, K)

    def build_criterion(self) -> nn.Module:
        return EventLoss(self.cfg)

    def localize_features(self, feats: torch.Tensor, audio: torch.Tensor) -> torch.Tensor:
        """The attention alpha, min-max per frame (as the DNM paper evaluates Tian et al.): (B, h, w)."""
        return minmax_per_sample(self.attend(feats, audio)[0])


# ---------------------------------------------------------------------------------------------
# their loss


class EventLoss(nn.Module):
    """Event classification: BCE against multi-hot labels (DNM Sec. 5.1's classification term)."""

    def __init__(self, cfg: DNMConfig) -> None:
        super().__init__()
        self.cfg = cfg

    def forward(self, outputs: dict[str, torch.Tensor], batch: dict[str, object]) -> dict[str, torch.Tensor]:
        logits = outputs["cls_logits"]  # (B, K)
        y = event_targets(batch, self.cfg.cls_labels, self.cfg.num_classes, logits.device)  # type: ignore[arg-type]
        loss = F.binary_cross_entropy_with_logits(logits, y)
        return {"loss": loss, "cls": loss.detach()}


# ---------------------------------------------------------------------------------------------
# their config


@dataclass
class DNMBaselineConfig(DNMConfig):
    """DNM's config (inputs, backbone, widths, event labels; see :class:`DNMConfig`); ``fusion``/``tasks`` unused."""


# ---------------------------------------------------------------------------------------------
# registration

SegmentCAM.config_class = DNMBaselineConfig
TianAttention.config_class = DNMBaselineConfig
register_method("dnm-cam")(SegmentCAM)
register_method("dnm-tian")(TianAttention)
