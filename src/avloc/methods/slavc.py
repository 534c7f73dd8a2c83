"""SLAVC: simultaneous localisation and audio-visual correspondence, with momentum encoders and visual dropout.

Mo & Morgado, "A Closer Look at Weakly-Supervised Audio-Visual Source
Localization", NeurIPS 2022 (code: stoneMo/SLAVC). The network is EZ-VSL's
encoders with two projection heads per modality (:mod:`avloc.methods.ezvsl`,
``heads=2``); SLAVC adds, against the overfitting it shows in EZ-VSL-style
training (Sec. 3-4):

* **extreme visual dropout**: dropout with rate ``visual_dropout`` (SLAVC:
  0.9) on the visual feature map, and ``audio_dropout`` (0) on the audio
  embedding, before the projections, while training only;
* **momentum encoders**: a copy of every trainable encoder and head whose
  weights follow the online ones as an exponential moving average,
  ``theta_m <- m theta_m + (1 - m) theta`` after each optimiser step
  (m = ``momentum``, SLAVC 0.999; MoCo, He et al. 2020), without dropout and
  without gradients. The contrastive targets come from it: each modality's
  online embedding is contrasted with the other modality's momentum
  embedding, in both directions;
* **two heads, two tasks**: head 1 learns localisation with EZ-VSL's
  multiple-instance logits ``s_ij = max_uv <a_i, V_j^{uv}> / tau``; head 2
  learns audio-visual correspondence from global logits
  ``c_ij = <a_i, vbar_j> / tau`` (``vbar`` the normalised spatial mean of the
  head's visual map). With ``o`` online and ``m`` momentum,
  ``L = CE(s[a_o, V_m]) + CE(s[a_m, V_o]^T) + CE(c[a_o, V_m]) + CE(c[a_m, V_o]^T)``
  (each CE against the diagonal: clip i's audio with clip i's image).

Inference (SLAVC ``test.py``): the map is the mean of the two heads' cosine
maps, ``(S^1 + S^2) / 2``, from the online encoders, or the momentum ones with
``momentum_eval`` (``--use_mom_eval``). Its top-quarter mean is the
confidence the extended protocols (``slavc-extended``) score for silent frames.

Checkpoints released by the authors import with ``avloc import --from slavc``
(online weights used) or ``--from slavc-momentum``; both keep every weight, so
an imported model trains on. avloc choices where the paper leaves them open:
the global visual embedding of head 2 is the spatial mean; when the visual
encoder is frozen it has no momentum copy (it never changes).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import cast

import torch
import torch.nn.functional as F
from torch import nn

from avloc.config import ConfigValueError, check_range
from avloc.errors import ConfigError
from avloc.methods import register_method
from avloc.methods.blocks import NORM_EPS
from avloc.methods.ezvsl import EZVSL, EZVSLConfig

#: SLAVC scripts: dropout_img 0.9, dropout_aud 0, momentum 0.999 for the image and the audio encoders
SLAVC_VISUAL_DROPOUT = 0.9
SLAVC_MOMENTUM = 0.999
#: SLAVC's two heads: localisation and audio-visual correspondence
SLAVC_HEADS = 2

# ----------------------------------------------------------------------------- building blocks


def ema_update(target: nn.Module, online: nn.Module, momentum: float) -> None:
    """``theta_t <- m theta_t + (1 - m) theta_o`` for every parameter; buffers (BatchNorm statistics) copied."""
    with torch.no_grad():
        for pt, po in zip(target.parameters(), online.parameters(), strict=True):
            pt.mul_(momentum).add_(po.detach(), alpha=1.0 - momentum)
        for bt, bo in zip(target.buffers(), online.buffers(), strict=True):
            bt.copy_(bo)


def frozen_copy(module: nn.Module) -> nn.Module:
    """A deep copy of ``module`` with gradients off (a momentum target)."""
    twin = copy.deepcopy(module)
    for p in twin.parameters():
        p.requires_grad_(False)
    return twin


def global_embedding(visual: torch.Tensor) -> torch.Tensor:
    """Normalised visual maps (..., D, h, w) -> their normalised spatial mean (..., D)."""
    return F.normalize(visual.mean(dim=(-2, -1)), dim=-1, eps=NORM_EPS)


def max_logits(audio: torch.Tensor, visual: torch.Tensor, temperature: float) -> torch.Tensor:
    """EZ-VSL MIL logits: (B, D), (B, D, h, w), both normalised -> ``max_uv <a_i, V_j> / tau`` (B, B)."""
    return torch.einsum("id,jdhw->ijhw", audio, visual).flatten(2).amax(dim=-1) / temperature


@dataclass
class Embeddings:
    """One branch's normalised embeddings per head: audio (B, D), visual maps (B, D, h, w)."""

    audio: list[torch.Tensor]
    visual: list[torch.Tensor]


# ----------------------------------------------------------------------------- model


class SLAVC(EZVSL):
    """SLAVC localiser (Mo & Morgado 2022): EZ-VSL's two-head network, dropout, momentum targets."""

    cfg: SLAVCConfig

    def __init__(self, cfg: SLAVCConfig) -> None:
        super().__init__(cfg)
        self.visual_dropout = nn.Dropout(cfg.visual_dropout)
        self.audio_dropout = nn.Dropout(cfg.audio_dropout)
        online = self._online_modules()
        self.momentum = nn.ModuleDict({k: frozen_copy(m) for k, m in online.items()})

    def _online_modules(self) -> dict[str, nn.Module]:
        """The trainable modules the momentum encoders mirror (a frozen visual encoder is shared, not copied)."""
        mods: dict[str, nn.Module] = {
            "audio_encoder": self.audio_path.encoder,
            "audio_proj": self.audio_path.proj,
            "visual_proj": self.visual_proj,
            "extra_audio_proj": self.extra_audio_proj,
            "extra_visual_proj": self.extra_visual_proj,
        }
        if not self.cfg.freeze_visual:
            mods["visual_encoder"] = self.visual_encoder
        return mods

    def after_optimizer_step(self, step: int) -> None:
        """Momentum update of every mirrored module (module docstring)."""
        for key, online in self._online_modules().items():
            ema_update(self.momentum[key], online, self.cfg.momentum)

    def train(self, mode: bool = True) -> SLAVC:
        """As the base class; the momentum encoders always stay in eval mode (no dropout, fixed BatchNorm)."""
        super().train(mode)
        self.momentum.eval()
        return self

    def embed(self, feat: torch.Tensor, images: torch.Tensor | None, wav: torch.Tensor, momentum: bool) -> Embeddings:
        """Both heads' normalised embeddings of one branch.

        ``feat``: the online encoder's map (B, C, h, w); ``images``: the (augmented) images the momentum visual
        encoder needs when the visual encoder trains (``None`` when it is frozen: ``feat`` is shared).
        """
        if wav.dim() != 2:
            raise ConfigError(f"audio must be a waveform batch (B, N), got shape {tuple(wav.shape)}")
        spec = self.audio_path.frontend(wav)  # (B, 1, F, T)
        if momentum:
            mods = self.momentum
            if "visual_encoder" in mods:
                if images is None:
                    raise ConfigError("slavc: the momentum visual encoder needs the images, not cached features")
                feat = mods["visual_encoder"](images)  # (B, C, h, w)
            h = mods["audio_encoder"](spec)  # (B, C_a)
            v_heads = [mods["visual_proj"], *cast(nn.ModuleList, mods["extra_visual_proj"])]
            a_heads = [mods["audio_proj"], *cast(nn.ModuleList, mods["extra_audio_proj"])]
        else:
            if self.training:
                feat = self.visual_dropout(feat)
            h = self.audio_path.encoder(spec)  # (B, C_a)
            if self.training:
                h = self.audio_dropout(h)
            v_heads = [self.visual_proj, *self.extra_visual_proj]
            a_heads = [self.audio_path.proj, *self.extra_audio_proj]
        return Embeddings(
            audio=[F.normalize(pa(h), dim=1, eps=NORM_EPS) for pa in a_heads],  # (B, D) each
            visual=[F.normalize(pv(feat), dim=1, eps=NORM_EPS) for pv in v_heads],  # (B, D, h, w) each
        )

    def forward(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        tau = self.cfg.temperature
        images = None
        if (self.training and self.cfg.augment.enabled) or not self.cfg.freeze_visual:
            images = self._train_images(batch)
            feat = self.encode_images(images)  # (B, C, h, w)
        else:
            feat = self.visual_features(batch)  # (B, C, h, w) (cached vfeat or encoded images)
        online = self.embed(feat, None, batch["audio"], momentum=False)
        with torch.no_grad():
            target = self.embed(feat.detach(), images, batch["audio"], momentum=True)
            heat = torch.stack([torch.einsum("bd,bdhw->bhw", a, v) for a, v in zip(online.audio, online.visual,
                                                                                      strict=True)]).mean(dim=0)
        loc, avc = 0, 1  # head indices
        return {
            "loc_av": max_logits(online.audio[loc], target.visual[loc], tau),  # (B, B): online audio i, momentum image j
            "loc_va": max_logits(target.audio[loc], online.visual[loc], tau),  # (B, B): momentum audio i, online image j
            "avc_av": online.audio[avc] @ global_embedding(target.visual[avc]).t() / tau,  # (B, B)
            "avc_va": target.audio[avc] @ global_embedding(online.visual[avc]).t() / tau,  # (B, B)
            "heatmap": heat,  # (B, h, w) (with dropout while training)
        }

    def _train_images(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """The batch's images (B, 3, H, W), augmented (``cfg.augment``) while training."""
        if "image" not in batch:
            raise ConfigError("slavc: augment or a trainable visual encoder needs the batch's images, but it holds "
                              "cached features (vfeat); train with train.feature_cache=false")
        from avloc.frontends.augment import augment_images

        images = batch["image"]
        return augment_images(images, self.cfg.augment) if self.training and self.cfg.augment.enabled else images

    def build_criterion(self) -> nn.Module:
        return SLAVCLoss()

    def localize(self, images: torch.Tensor, audio: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W), (B, N) -> ``(S^1 + S^2) / 2`` (B, h, w) of the online or momentum encoders; per sample."""
        if not self.cfg.momentum_eval:
            return super().localize(images, audio)
        feat = self.encode_images(images)  # (B, C, h, w) (unused by a momentum visual encoder)
        emb = self.embed(feat, images, audio, momentum=True)
        av = torch.stack([torch.einsum("bd,bdhw->bhw", a, v) for a, v in zip(emb.audio, emb.visual,
                                                                               strict=True)]).mean(dim=0)
        return self._heatmap(feat, av)


# ----------------------------------------------------------------------------- loss


def slavc_loss(loc_av: torch.Tensor, loc_va: torch.Tensor, avc_av: torch.Tensor, avc_va: torch.Tensor) -> dict[str, torch.Tensor]:
    """Localisation and correspondence InfoNCE against momentum targets (module docstring), each logits (B, B)."""
    b = loc_av.shape[0]
    if b < 2:
        raise ConfigError("the SLAVC loss needs a batch of at least 2 clips (negatives come from other clips)")
    target = torch.arange(b, device=loc_av.device)
    loc = F.cross_entropy(loc_av, target) + F.cross_entropy(loc_va.t(), target)
    avc = F.cross_entropy(avc_av, target) + F.cross_entropy(avc_va.t(), target)
    return {"loss": loc + avc, "localization": loc.detach(), "correspondence": avc.detach()}


class SLAVCLoss(nn.Module):
    """Criterion: the four logits of :meth:`SLAVC.forward` -> ``loss`` and its two terms, plus ``acc``."""

    def forward(self, outputs: dict[str, torch.Tensor], batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        out = slavc_loss(outputs["loc_av"], outputs["loc_va"], outputs["avc_av"], outputs["avc_va"])
        logits = outputs["loc_av"]
        out["acc"] = (logits.argmax(dim=1) == torch.arange(logits.shape[0], device=logits.device)).float().mean().detach()
        return out


# ----------------------------------------------------------------------------- config


@dataclass
class SLAVCConfig(EZVSLConfig):
    """SLAVC settings: EZ-VSL's with two heads, plus dropout and momentum (module docstring).

    ``visual_dropout`` / ``audio_dropout``: dropout rates on the visual map / audio embedding (SLAVC: 0.9 / 0).
    ``momentum``: EMA rate m of the momentum encoders (SLAVC: 0.999).
    ``momentum_eval``: localise with the momentum encoders (SLAVC ``--use_mom_eval``; default: online).
    """

    heads: int = SLAVC_HEADS
    visual_dropout: float = SLAVC_VISUAL_DROPOUT
    audio_dropout: float = 0.0
    momentum: float = SLAVC_MOMENTUM
    momentum_eval: bool = False

    def __post_init__(self) -> None:
        super().__post_init__()
        check_range("heads", self.heads, SLAVC_HEADS, SLAVC_HEADS)  # head 1 localisation, head 2 correspondence
        for name in ("visual_dropout", "audio_dropout"):
            check_range(name, getattr(self, name), 0.0, 1.0)
            if getattr(self, name) == 1.0:
                raise ConfigValueError(name, "must be below 1 (a rate of 1 drops every feature)")
        check_range("momentum", self.momentum, 0.0, 1.0)


# ----------------------------------------------------------------------------- registration

SLAVC.config_class = SLAVCConfig
register_method("slavc")(SLAVC)
