"""LVS: "Localizing Visual Sounds the Hard Way" (Chen et al., CVPR 2021).

Sections 3.1-3.4 of the paper, in the order of this module:

* Eq. (1)-(2): a visual map ``V_i = f(I_i)`` in R^{c x h x w} and an audio
  embedding ``A_i = g(a_i)`` in R^c. Here ``f`` = a visual encoder from the
  registry followed by a trainable projection to ``c`` channels
  (:class:`VisualProjection`); ``g`` = the LVS spectrogram front-end, an audio
  encoder (global max pool, as LVS's ``AdaptiveMaxPool2d``) and, when its
  width differs from ``c``, a linear projection.
* Section 3.2: the cosine map ``[S_{i->j}]_uv = <A_i, V_j[:, u, v]> /
  (|A_i| |V_j[:, u, v]|)`` -- audio of clip i probing image j
  (:func:`cosine_maps`).
* Section 3.4 (:class:`LVSLoss`): soft thresholds
  ``m_p = sigmoid((S_ii - eps_p) / tau)``, ``m_n = sigmoid((S_ii - eps_n) / tau)``;
  ``P_i = <m_p, S_ii> / |m_p|``; hard negative ``H_i = <1 - m_n, S_ii> / |1 - m_n|``;
  easy negatives ``E_ij = (1/hw) <1, S_{i->j}>`` for j != i.

What exactly the loss is, and why. The paper writes
``N_i = H_i + (1/hw) sum_{j != i} <1, S_{i->j}>`` and
``L = -(1/k) sum_i log(exp(P_i) / (exp(P_i) + exp(N_i)))``, with the scores
used as logits directly. The authors' public code (``model.py`` of
hche11/Localizing-Visual-Sounds-the-Hard-Way) instead concatenates
``[P_i, E_i1 .. E_ik (j != i), H_i]`` into one logit vector, divides it by a
temperature 0.07 and applies cross-entropy with target ``P_i``: each
negative is its own term of the InfoNCE denominator (the way the paper's
Section 3.3 introduces the loss, "InfoNCE [23]"). Cosine scores lie in
[-1, 1], so without the temperature the softmax is nearly flat; we therefore
implement the public form by default -- ``negatives="separate"``,
``logit_temperature=0.07`` -- and keep the paper's literal summed ``N_i``
selectable (``negatives="summed"``).

Easy negatives: the paper writes the plain mean ``(1/hw) <1, S_{i->j}>``
(``easy_pool="mean"``); the public code pools ``S_{i->j}`` with the same
positive soft mask as ``P_i`` (``sigmoid((S_{i->j} - eps_p) / tau)``,
``easy_pool="positive"``, our default). Measured on DigitScenes: with the
plain mean the loss is solved without the audio -- any map with a peak gives
``P_i`` (a soft max) far above the mean of another pair's map, the loss fell
to 1e-4 with batch accuracy 1.0 within 50 steps and the gradient vanished --
while pooling positives and easy negatives alike forces the map to respond to
*this* sound. The public code's masking of the diagonal (multiplying by
``1 - 100 eye``) is replaced by dropping j = i.

Table 4 variants (``variant``): ``"positives"`` (a) positives and easy
negatives only; ``"complementary"`` (b) plus hard negatives from the whole
complement ``1 - m_p`` of the positive mask; ``"trimap"`` (c, the method)
hard negatives from ``1 - m_n`` with ``eps_n < eps_p``, leaving the band
[eps_n, eps_p] ignored.

``localize(images, audio)`` returns ``S_{i->i}`` (B, h, w) for each sample on
its own (eval-mode BatchNorm, no in-batch terms).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn

from avloc.encoders import create_encoder, freeze
from avloc.encoders.base import AudioEncoder, VisualEncoder
from avloc.errors import ConfigError
from avloc.frontends.audio import AudioFrontend
from avloc.methods import register_method
from avloc.methods.base import LocalizationMethod, MethodConfig, check_widths

# ---------------------------------------------------------------------------------------------
# building blocks


class VisualProjection(nn.Module):
    """Trainable head on the visual features: (B, C_in, h, w) -> (B, c, h, w).

    ``"linear"``: one 1x1 conv. ``"mlp"``: ``kernel`` x ``kernel`` conv to
    ``hidden`` channels, BatchNorm, ReLU, then a 1x1 conv (spatial context for a
    frozen backbone). ``"none"``: identity (needs ``C_in == c``).
    """

    def __init__(self, in_ch: int, out_ch: int, kind: str, hidden: int, kernel: int) -> None:
        super().__init__()
        self.net: nn.Module
        if kind == "none":
            if in_ch != out_ch:
                raise ConfigError(f"lvs visual_proj='none' needs encoder channels ({in_ch}) == embed_dim ({out_ch})")
            self.net = nn.Identity()
        elif kind == "linear":
            self.net = nn.Conv2d(in_ch, out_ch, 1)
        elif kind == "mlp":
            if kernel % 2 != 1:
                raise ConfigError(f"lvs visual_proj_kernel must be odd, got {kernel}")
            self.net = nn.Sequential(
                nn.Conv2d(in_ch, hidden, kernel, padding=kernel // 2, bias=False),
                nn.BatchNorm2d(hidden),
                nn.ReLU(inplace=True),
                nn.Conv2d(hidden, out_ch, 1),
            )
        else:
            raise ConfigError(f"lvs visual_proj must be none, linear or mlp, got {kind!r}")

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, C_in, h, w) -> (B, c, h, w)
        return self.net(x)  # type: ignore[no-any-return]


def cosine_maps(aemb: torch.Tensor, vmap: torch.Tensor) -> torch.Tensor:
    """All-pairs correspondence maps (Section 3.2).

    aemb (B, c) and vmap (B, c, h, w), both L2-normalised over c ->
    S (B, B, h, w) with ``S[i, j] = S_{i->j}`` (audio i probing image j).
    """
    return torch.einsum("ic,jchw->ijhw", aemb, vmap)


def self_maps(aemb: torch.Tensor, vmap: torch.Tensor) -> torch.Tensor:
    """Diagonal maps only: (B, c), (B, c, h, w) -> S_{i->i} (B, h, w)."""
    return torch.einsum("bc,bchw->bhw", aemb, vmap)


# ---------------------------------------------------------------------------------------------
# the model


class LVS(LocalizationMethod):
    """Dual-stream network of Fig. 2 (a): visual map V, audio embedding A, cosine map S."""

    cfg: LVSConfig

    def __init__(self, cfg: LVSConfig) -> None:
        super().__init__(cfg)
        venc = create_encoder(cfg.visual_encoder, **cfg.visual_encoder_kwargs)
        aenc = create_encoder(cfg.audio_encoder, **cfg.audio_encoder_kwargs)
        if not isinstance(venc, VisualEncoder) or not isinstance(aenc, AudioEncoder):
            raise ConfigError(f"lvs needs a visual and an audio encoder, got {cfg.visual_encoder!r} and {cfg.audio_encoder!r}")
        self.visual_encoder = freeze(venc) if cfg.freeze_visual else venc
        self.visual_proj = VisualProjection(venc.feature_info.channels, cfg.embed_dim, cfg.visual_proj, cfg.visual_proj_hidden, cfg.visual_proj_kernel)
        self.audio_frontend = AudioFrontend(cfg.audio)
        self.audio_encoder = aenc
        self.audio_proj: nn.Module = nn.Linear(aenc.out_channels, cfg.embed_dim) if aenc.out_channels != cfg.embed_dim else nn.Identity()

    def visual_map(self, feats: torch.Tensor) -> torch.Tensor:
        """Encoder features (B, C, h, w) -> V, L2-normalised over channels (B, c, h, w)."""
        return F.normalize(self.visual_proj(feats), dim=1)

    def audio_embedding(self, wav: torch.Tensor) -> torch.Tensor:
        """Waveform (B, N) -> A, L2-normalised (B, c)."""
        spec = self.audio_frontend(wav)  # (B, 1, F, T)
        return F.normalize(self.audio_proj(self.audio_encoder(spec)), dim=1)  # (B, c)

    def forward(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        vmap = self.visual_map(self.visual_features(batch))  # (B, c, h, w)
        aemb = self.audio_embedding(batch["audio"])  # (B, c)
        return {"vmap": vmap, "aemb": aemb}

    def build_criterion(self) -> nn.Module:
        return LVSLoss(self.cfg)

    def localize(self, images: torch.Tensor, audio: torch.Tensor) -> torch.Tensor:
        """S_{i->i} (B, h, w) in [-1, 1] for each sample alone."""
        vmap = self.visual_map(self.encode_images(images))  # (B, c, h, w)
        return self_maps(self.audio_embedding(audio), vmap)  # (B, h, w)


# ---------------------------------------------------------------------------------------------
# its loss


class LVSLoss(nn.Module):
    """Section 3.4 contrastive loss with tri-map hard negatives (see the module docstring)."""

    def __init__(self, cfg: LVSConfig) -> None:
        super().__init__()
        self.cfg = cfg

    def soft_mask(self, s: torch.Tensor, eps: float) -> torch.Tensor:
        """sigmoid((S - eps) / tau), the smoothed Heaviside of Section 3.4."""
        return torch.sigmoid((s - eps) / self.cfg.tau)

    def _masked_mean(self, mask: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
        """<m, S> / |m| over the last two axes: (..., h, w) -> (...)."""
        den = mask.sum(dim=(-2, -1)).clamp_min(self.cfg.mask_floor)
        return (mask * s).sum(dim=(-2, -1)) / den

    def terms(self, s_all: torch.Tensor) -> dict[str, torch.Tensor]:
        """S (B, B, h, w) -> P (B,), hard negative H (B,) (NaN-free zeros if unused), easy E (B, B-1)."""
        cfg = self.cfg
        b = s_all.shape[0]
        s_ii = s_all.diagonal(dim1=0, dim2=1).permute(2, 0, 1)  # (B, h, w)
        m_p = self.soft_mask(s_ii, cfg.eps_p)  # (B, h, w)
        pos = self._masked_mean(m_p, s_ii)  # (B,)
        if cfg.variant == "trimap":
            neg_mask = 1 - self.soft_mask(s_ii, cfg.eps_n)
        else:  # complementary; unused for "positives"
            neg_mask = 1 - m_p
        hard = self._masked_mean(neg_mask, s_ii)  # (B,)
        off = ~torch.eye(b, dtype=torch.bool, device=s_all.device)  # (B, B), j != i
        if cfg.easy_pool == "mean":
            easy_all = s_all.mean(dim=(-2, -1))  # (B, B)  (1/hw) <1, S_{i->j}>
        else:
            easy_all = self._masked_mean(self.soft_mask(s_all, cfg.eps_p), s_all)  # (B, B)
        easy = easy_all[off].view(b, b - 1)  # (B, B-1)
        return {"pos": pos, "hard": hard, "easy": easy}

    def forward(self, outputs: dict[str, torch.Tensor], batch: dict[str, Any] | None = None) -> dict[str, torch.Tensor]:
        cfg = self.cfg
        s_all = cosine_maps(outputs["aemb"], outputs["vmap"])  # (B, B, h, w)
        if s_all.shape[0] < 2 and cfg.variant == "positives":
            raise ConfigError("lvs variant 'positives' needs a batch of at least 2 (easy negatives from other clips)")
        t = self.terms(s_all)
        pos, hard, easy = t["pos"], t["hard"], t["easy"]
        use_hard = cfg.variant != "positives"
        if cfg.negatives == "separate":
            cols = [pos[:, None], easy] + ([hard[:, None]] if use_hard else [])
            logits = torch.cat(cols, dim=1) / cfg.logit_temperature  # (B, 1 + (B-1) [+ 1])
        else:  # summed: N_i = H_i + sum_j E_ij, as the paper's equation is written
            neg = easy.sum(dim=1) + (hard if use_hard else 0.0)
            logits = torch.stack([pos, neg], dim=1) / cfg.logit_temperature  # (B, 2)
        target = torch.zeros(logits.shape[0], dtype=torch.long, device=logits.device)
        loss = F.cross_entropy(logits, target)
        out = {
            "loss": loss,
            "pos": pos.mean().detach(),
            "hard_neg": hard.mean().detach(),
            "easy_neg": easy.mean().detach(),
            "acc": (logits.argmax(dim=1) == 0).float().mean().detach(),
        }
        if cfg.box_weight > 0:  # optional semi-supervised box term (avloc.methods.semisup), off by default
            from avloc.methods.semisup import box_attention_loss

            s_ii = s_all.diagonal(dim1=0, dim2=1).permute(2, 0, 1)  # (B, h, w)
            box, n_sup = box_attention_loss(s_ii, batch or {}, cfg.box_temperature)
            out["loss"] = loss + cfg.box_weight * box
            out["box"], out["n_box"] = box.detach(), torch.tensor(float(n_sup))
        return out


# ---------------------------------------------------------------------------------------------
# its config


@dataclass
class LVSConfig(MethodConfig):
    """LVS hyper-parameters (paper Section 5.3 unless stated).

    Paper defaults: eps_p 0.65, eps_n 0.4, tau 0.03, Adam 1e-4 (TrainConfig),
    ResNet-18 visual (ImageNet) with a 14x14 map, ResNet-18 audio from scratch
    on the 257 x 300 LVS spectrogram, c = 512.

    CPU defaults here (documented deviations): the visual encoder is the
    frozen ImageNet EfficientNet-Lite0 at stride 16 (112 x 14 x 14 at 224, the
    paper's map size) with a trainable projection (``visual_proj="mlp"``:
    1x1 conv to 128, BatchNorm, ReLU, 1x1 conv to c) -- its features are cached
    by the engine, so training runs in minutes; the audio encoder is
    ``small_cnn_audio`` from scratch with 4 conv blocks of 8-16-32-64 channels,
    each halving frequency and time (``time_stride=16``), ~27k parameters,
    instead of ResNet-18 audio (11M parameters: its backward pass alone costs
    seconds per batch on 2 shared cores); c = 128. The paper's
    set-up is ``visual_encoder="resnet18"``, ``visual_encoder_kwargs={"out_stride": 16}``,
    ``freeze_visual=false``, ``audio_encoder="resnet18_audio"``, ``embed_dim=512``,
    ``visual_proj="none"``.
    """

    visual_encoder: str = "efficientnet_lite0"
    visual_encoder_kwargs: dict[str, Any] = field(default_factory=lambda: {"out_stride": 16})
    audio_encoder: str = "small_cnn_audio"
    audio_encoder_kwargs: dict[str, Any] = field(default_factory=lambda: {"channels": [8, 16, 32, 64], "time_stride": 16})
    freeze_visual: bool = True
    #: c, channels of V and A
    embed_dim: int = 128
    visual_proj: Literal["none", "linear", "mlp"] = "mlp"
    visual_proj_hidden: int = 128
    visual_proj_kernel: int = 1
    #: Table 4: "positives" (a), "complementary" (b), "trimap" (c)
    variant: Literal["positives", "complementary", "trimap"] = "trimap"
    eps_p: float = 0.65
    eps_n: float = 0.4
    #: tau of the soft threshold sigmoid((S - eps) / tau)
    tau: float = 0.03
    #: temperature dividing the logits (public code: 0.07; the paper's equation has none)
    logit_temperature: float = 0.07
    #: "separate": one logit per negative (public code); "summed": the paper's N_i = H_i + sum_j E_ij
    negatives: Literal["separate", "summed"] = "separate"
    #: easy-negative pooling of S_{i->j}: "positive" (public code, default) or "mean" (paper, (1/hw) <1, S>)
    easy_pool: Literal["mean", "positive"] = "positive"
    #: lower bound of |m| in <m, S> / |m|: only guards 0/0 (sigmoid underflow); far below any real mask sum
    mask_floor: float = 1e-30
    #: semi-supervised box term (Senocak et al. 2018; "Less can be more" Table 4 with pseudo boxes): weight of
    #: -sum q log softmax(S_ii / box_temperature) on samples with batch["box_supervised"]; 0 = off (unsupervised LVS)
    box_weight: float = 0.0
    box_temperature: float = 0.07

    def __post_init__(self) -> None:
        super().__post_init__()
        check_widths(embed_dim=self.embed_dim, visual_proj_hidden=self.visual_proj_hidden,
                     visual_proj_kernel=self.visual_proj_kernel)
        if not -1.0 <= self.eps_n < self.eps_p <= 1.0 and self.variant == "trimap":
            raise ConfigError(f"lvs needs -1 <= eps_n < eps_p <= 1 for the tri-map, got eps_n={self.eps_n}, eps_p={self.eps_p}")
        if self.tau <= 0 or self.logit_temperature <= 0:
            raise ConfigError(f"lvs tau and logit_temperature must be > 0, got {self.tau}, {self.logit_temperature}")
        if self.embed_dim < 1:
            raise ConfigError(f"lvs embed_dim must be >= 1, got {self.embed_dim}")


# ---------------------------------------------------------------------------------------------
# registration

LVS.config_class = LVSConfig
register_method("lvs")(LVS)
