"""EZ-VSL: multiple-instance contrastive learning, with optional object-guided localization.

Mo & Morgado, "Localizing Visual Sounds the Easy Way", ECCV 2022.

* Audio-visual similarity (Sec. 3.1-3.2): cosine map ``S_{i->j}[uv]`` between the
  audio embedding of clip ``i`` and location ``uv`` of image ``j`` (both projected
  to ``D`` channels, L2-normalised).
* Multiple-instance contrastive loss (Sec. 3.2): the clip-level similarity is the
  max over locations, ``s_ij = max_uv S_{i->j}[uv] / tau`` (tau = 0.03), and InfoNCE
  is applied in both directions::

      L = -1/B sum_i log softmax_j(s_ij)[i]  -  1/B sum_j log softmax_i(s_ij)[j]

  (audio->image plus image->audio, summed as in the public implementation).
* Object-guided localization, OGL (Sec. 3.3), at inference only: the final map is::

      map = mm( alpha * mm(S_{i->i}) + (1 - alpha) * mm(P_i) ),  alpha = 0.4

  where ``mm`` is per-map min-max normalisation and ``P_i`` the class-agnostic
  object prior of the frozen ImageNet-pretrained visual encoder:
  ``object_prior="l1"`` = mean over channels of ``|f(I_i)|`` (what EZ-VSL's public
  code computes on its ImageNet ResNet-18), ``"l2"`` = channel L2 norm. It uses the
  encoder feature map the method already computes (or the cached ``vfeat``), so
  it has the AV map's resolution. OGL needs a pretrained visual encoder.

* Several projection heads (``heads``, default 1): SLAVC (Mo & Morgado, "A Closer
  Look at Weakly-Supervised Audio-Visual Source Localization", NeurIPS 2022, Sec. 3)
  projects the same encoder outputs with two heads per modality and localises with
  the mean of the two heads' maps (its public ``test.py``: ``(S1 + S2) / 2``, up to the
  1/tau scale). ``heads > 1`` computes ``S = mean_k cos(A^k, V^k)`` for the map and the
  MIL logits; it expresses SLAVC's published inference (``avloc import --from slavc``),
  while training it with this loss is EZ-VSL's objective, not SLAVC's momentum-target one.

* Training augmentation (``augment``, :class:`avloc.frontends.augment.AugmentConfig`): EZ-VSL's public
  code resizes the training images to 1.1x, crops the input size at a random place and flips
  horizontally; avloc draws the same per sample on the batch, in the model while it trains
  (:meth:`EZVSL.train_features`). Augmented images cannot come from the engine's frozen-feature cache,
  so a method with augmentation reports ``visual_cacheable() = False`` and encodes every image.

Heatmap: ``S_{i->i}`` (B, h, w) (cosine in [-1, 1]), or the OGL map in [0, 1]; per sample.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from avloc.config import check_positive, check_range
from avloc.errors import ConfigError
from avloc.frontends.augment import AugmentConfig, augment_images
from avloc.methods import register_method
from avloc.methods.blocks import (
    ObjectPriorKind,
    TwoStreamConfig,
    TwoStreamMethod,
    VisualProjection,
    cosine_map,
    cross_cosine_maps,
    minmax_per_sample,
    mlp_head,
    object_prior,
    symmetric_infonce,
)

#: most projection heads per modality: SLAVC uses 2; each head is a full projection of the embedding
MAX_HEADS = 16

# ----------------------------------------------------------------------------- building blocks


def object_guided_map(av_map: torch.Tensor, prior: torch.Tensor, alpha: float) -> torch.Tensor:
    """EZ-VSL OGL: ``mm(alpha * mm(av) + (1 - alpha) * mm(prior))``, ``(B, h, w)`` each."""
    if av_map.shape != prior.shape:
        raise ConfigError(f"OGL: AV map {tuple(av_map.shape)} and object prior {tuple(prior.shape)} differ in shape")
    return minmax_per_sample(alpha * minmax_per_sample(av_map) + (1 - alpha) * minmax_per_sample(prior))


# ----------------------------------------------------------------------------- model


class EZVSL(TwoStreamMethod):
    """EZ-VSL localiser (Mo & Morgado 2022)."""

    cfg: EZVSLConfig

    def __init__(self, cfg: EZVSLConfig) -> None:
        super().__init__(cfg)
        if cfg.ogl and not (self.visual_encoder.pretrained and cfg.freeze_visual):
            raise ConfigError(
                f"ogl=True needs a frozen ImageNet-pretrained visual encoder for the object prior; "
                f"{cfg.visual_encoder!r} is {'pretrained' if self.visual_encoder.pretrained else 'not pretrained'} "
                f"and freeze_visual={cfg.freeze_visual} (use e.g. visual_encoder='efficientnet_lite0', or ogl=False)"
            )
        # heads 2..K (SLAVC); an empty ModuleList adds no weights, so one-head checkpoints are unchanged
        c_v, c_a = self.visual_encoder.feature_info.channels, self.audio_path.encoder.out_channels
        self.extra_visual_proj = nn.ModuleList(
            VisualProjection(c_v, cfg.embed_dim, cfg.visual_proj_hidden) for _ in range(cfg.heads - 1)
        )
        self.extra_audio_proj = nn.ModuleList(
            mlp_head(c_a, cfg.embed_dim, cfg.audio_proj_hidden) for _ in range(cfg.heads - 1)
        )

    def similarity(self, feat: torch.Tensor, wav: torch.Tensor, cross: bool) -> torch.Tensor:
        """Encoder map (B, C, h, w), waveforms (B, N) -> cosine maps, the mean over heads.

        ``cross``: all pairs ``S`` (B, B, h, w), ``S[i, j] = S_{i->j}``; else the matching pairs (B, h, w).
        """
        pair = cross_cosine_maps if cross else cosine_map
        if self.cfg.heads == 1:
            return pair(self.embed_audio(wav), self.embed_visual(feat))
        if wav.dim() != 2:
            raise ConfigError(f"audio must be a waveform batch (B, N), got shape {tuple(wav.shape)}")
        ap = self.audio_path
        h = ap.encoder(ap.frontend(wav))  # (B, C_a)
        v_heads = [self.visual_proj, *self.extra_visual_proj]
        a_heads = [ap.proj, *self.extra_audio_proj]
        return torch.stack([pair(pa(h), pv(feat)) for pv, pa in zip(v_heads, a_heads)]).mean(dim=0)

    def _heatmap(self, feat: torch.Tensor, av: torch.Tensor) -> torch.Tensor:
        """Encoder map (B, C, h, w), AV cosine map (B, h, w) -> heatmap (B, h, w) (OGL when ``cfg.ogl``)."""
        cfg = self.cfg
        if not cfg.ogl:
            return av
        return object_guided_map(av, object_prior(feat, cfg.object_prior), cfg.ogl_alpha)

    def train_features(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Visual encoder features (B, C, h, w) of the batch, its images augmented (``cfg.augment``) while training."""
        if not (self.training and self.cfg.augment.enabled):
            return self.visual_features(batch)
        if "image" not in batch:
            raise ConfigError(f"{self.name}: augment needs the batch's images, but it holds cached features (vfeat); "
                              "train with train.feature_cache=false or without augment")
        return self.encode_images(augment_images(batch["image"], self.cfg.augment))

    def visual_cacheable(self) -> bool:
        """As the base class, but False when the images are augmented (the cache would hold unaugmented features)."""
        return super().visual_cacheable() and not self.cfg.augment.enabled

    def checkpoint_exclude_prefixes(self) -> list[str]:
        """A frozen pretrained encoder is rebuilt from its own weights, so it is never saved (augmented or not)."""
        enc = self.visual_module()
        pretrained = enc is not None and bool(getattr(enc, "pretrained", False))
        return ["visual_encoder."] if self.cfg.freeze_visual and pretrained else []

    def forward(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        cfg = self.cfg
        feat = self.train_features(batch)  # (B, C, h, w)
        sim = self.similarity(feat, batch["audio"], cross=True)  # (B, B, h, w)
        logits = sim.flatten(2).amax(dim=-1) / cfg.temperature  # (B, B): [audio i, image j]
        with torch.no_grad():
            heat = self._heatmap(feat, sim.diagonal(dim1=0, dim2=1).permute(2, 0, 1))  # (B, h, w)
        return {"logits": logits, "heatmap": heat}

    def build_criterion(self) -> nn.Module:
        return MILContrastiveLoss()

    def localize(self, images: torch.Tensor, audio: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W), (B, N) -> AV cosine map, or the OGL map when ``cfg.ogl`` (B, h, w); per sample."""
        feat = self.encode_images(images)  # (B, C, h, w)
        return self._heatmap(feat, self.similarity(feat, audio, cross=False))


# ----------------------------------------------------------------------------- loss


def mil_contrastive_loss(logits: torch.Tensor) -> torch.Tensor:
    """EZ-VSL Sec. 3.2: ``CE(logits, diag) + CE(logits^T, diag)`` for max-pooled, tempered logits (B, B)."""
    return symmetric_infonce(logits)


class MILContrastiveLoss(nn.Module):
    """Criterion: ``outputs["logits"]`` (B, B) -> ``{"loss", "acc"}`` (audio->image retrieval accuracy)."""

    def forward(self, outputs: dict[str, torch.Tensor], batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        logits = outputs["logits"]  # (B, B)
        acc = (logits.argmax(dim=1) == torch.arange(logits.shape[0], device=logits.device)).float().mean()
        return {"loss": mil_contrastive_loss(logits), "acc": acc.detach()}


# ----------------------------------------------------------------------------- config


@dataclass
class EZVSLConfig(TwoStreamConfig):
    """EZ-VSL settings.

    ``temperature``: tau of the MIL contrastive loss (EZ-VSL: 0.03).
    ``ogl``: use object-guided localization at inference (EZ-VSL Sec. 3.3).
    ``ogl_alpha``: weight of the AV map in OGL (EZ-VSL: 0.4).
    ``object_prior``: ``l1`` (EZ-VSL's channel mean of ``|f|``) or ``l2`` (channel L2 norm).
    ``heads``: projection heads per modality, maps averaged (EZ-VSL: 1; SLAVC: 2; module docstring).
    ``augment``: training-time image augmentation (module docstring; default: none).
    """

    temperature: float = 0.03
    ogl: bool = False
    ogl_alpha: float = 0.4
    object_prior: ObjectPriorKind = "l1"
    heads: int = 1
    augment: AugmentConfig = field(default_factory=AugmentConfig)

    def __post_init__(self) -> None:
        super().__post_init__()
        check_positive(temperature=self.temperature)
        check_range("ogl_alpha", self.ogl_alpha, 0.0, 1.0)
        check_range("heads", self.heads, 1, MAX_HEADS)


# ----------------------------------------------------------------------------- registration

EZVSL.config_class = EZVSLConfig
register_method("ezvsl")(EZVSL)
