"""Building blocks shared by the two-stream localization methods (LVS, Attention10k, OTS, EZ-VSL).

Every method here follows the same two-stream layout (LVS, Chen et al. CVPR 2021,
Sec. 3.1, Eqs. 1-2): a visual encoder ``f`` gives a map ``V in R^{C x h x w}``,
an audio encoder ``g`` gives ``A in R^C``; the methods differ in how they
compare the two and in their losses. The shared parts live here so the logic
exists once:

* :class:`AudioPath` — waveform ``(B, N)`` -> front-end spectrogram -> audio
  encoder -> projection -> embedding ``(B, D)``;
* :class:`VisualProjection` — 1x1-conv projection of a (possibly frozen, possibly
  cached) visual feature map to ``D`` channels;
* :class:`TwoStreamMethod` — a :class:`~avloc.methods.base.LocalizationMethod`
  base that owns ``visual_encoder`` (frozen when ``cfg.freeze_visual``), the
  audio path and the visual projection, reads cached features ``batch["vfeat"]``
  when present, and excludes a frozen *pretrained* encoder from checkpoints;
* :func:`cosine_map` / :func:`cross_cosine_maps` — LVS Sec. 3.2's
  ``[S_{i->j}]_{uv} = <A_i, V_j[:, u, v]> / (|A_i| |V_j[:, u, v]|)``;
* :func:`object_prior` — class-agnostic ImageNet activation map (EZ-VSL's
  object-guided localization prior);
* :func:`minmax_per_sample` — per-map min-max normalisation;
* :class:`TrainingFreeMethod` — base of the training-free baselines.

LVS (``methods/lvs.py``, another engineer's module) may import any of these.
This module is owned by the baselines' author: open an issue / ping them
before changing a signature.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn

from avloc.encoders import AudioEncoder, VisualEncoder, create_encoder, freeze
from avloc.errors import ConfigError, DataError
from avloc.frontends.audio import AudioFrontend
from avloc.methods.base import LocalizationMethod, MethodConfig, check_widths

#: numerical floor of the L2 norm in cosine similarities (``F.normalize``'s default).
NORM_EPS = 1e-12


@dataclass
class TwoStreamConfig(MethodConfig):
    """Fields shared by two-stream methods (on top of :class:`MethodConfig`).

    ``embed_dim``: channels ``D`` of the common space (LVS / EZ-VSL: 512).
    ``visual_proj_hidden`` / ``audio_proj_hidden``: 0 = a single linear map
    (EZ-VSL's ``Conv2d(C, D, 1)`` / ``Linear(C, D)``); > 0 = two layers with a ReLU
    of that width in between (useful on a frozen backbone, whose features are fixed).
    """

    embed_dim: int = 512
    visual_proj_hidden: int = 0
    audio_proj_hidden: int = 0

    def __post_init__(self) -> None:
        super().__post_init__()
        check_widths(embed_dim=self.embed_dim)
        check_widths(0, visual_proj_hidden=self.visual_proj_hidden, audio_proj_hidden=self.audio_proj_hidden)


# ----------------------------------------------------------------------------- building blocks


def mlp_head(in_dim: int, out_dim: int, hidden: int = 0) -> nn.Module:
    """``Linear(in, out)`` when ``hidden == 0``, else ``Linear(in, hidden) -> ReLU -> Linear(hidden, out)``."""
    if hidden > 0:
        return nn.Sequential(nn.Linear(in_dim, hidden), nn.ReLU(inplace=True), nn.Linear(hidden, out_dim))
    return nn.Linear(in_dim, out_dim)


class AudioPath(nn.Module):
    """Waveform ``(B, N)`` -> spectrogram -> audio encoder ``g`` -> projection -> ``(B, D)``."""

    def __init__(self, cfg: TwoStreamConfig) -> None:
        super().__init__()
        self.frontend = AudioFrontend(cfg.audio)
        enc = create_encoder(cfg.audio_encoder, **cfg.audio_encoder_kwargs)
        if not isinstance(enc, AudioEncoder):
            raise ConfigError(f"audio_encoder {cfg.audio_encoder!r} is not an audio encoder (got {type(enc).__name__})")
        self.encoder = enc
        self.proj = mlp_head(enc.out_channels, cfg.embed_dim, cfg.audio_proj_hidden)

    def forward(self, wav: torch.Tensor) -> torch.Tensor:  # (B, N) -> (B, D)
        if wav.dim() != 2:
            raise ConfigError(f"audio must be a waveform batch (B, N), got shape {tuple(wav.shape)}")
        spec = self.frontend(wav)  # (B, 1, F, T)
        return self.proj(self.encoder(spec))  # (B, C) -> (B, D)


class VisualProjection(nn.Module):
    """Visual feature map ``(B, C, h, w)`` -> ``(B, D, h, w)`` by 1x1 convolutions."""

    def __init__(self, in_channels: int, embed_dim: int, hidden: int = 0) -> None:
        super().__init__()
        if hidden > 0:
            self.proj: nn.Module = nn.Sequential(
                nn.Conv2d(in_channels, hidden, 1), nn.ReLU(inplace=True), nn.Conv2d(hidden, embed_dim, 1)
            )
        else:
            self.proj = nn.Conv2d(in_channels, embed_dim, 1)

    def forward(self, feat: torch.Tensor) -> torch.Tensor:  # (B, C, h, w) -> (B, D, h, w)
        return self.proj(feat)


def symmetric_infonce(logits: torch.Tensor) -> torch.Tensor:
    """``CE(logits, I) + CE(logits^T, I)`` for (B, B) tempered audio-image logits (rows: audio, columns: images):
    the symmetric InfoNCE of EZ-VSL Sec. 3.2 and SSL-Alignment; negatives are the other clips of the batch."""
    b = logits.shape[0]
    if logits.dim() != 2 or logits.shape[1] != b:
        raise ConfigError(f"logits must be square (B, B), got {tuple(logits.shape)}")
    if b < 2:
        raise ConfigError("the contrastive loss needs a batch of at least 2 clips (negatives come from other clips)")
    target = torch.arange(b, device=logits.device)
    return F.cross_entropy(logits, target) + F.cross_entropy(logits.t(), target)


def cosine_map(audio: torch.Tensor, visual: torch.Tensor) -> torch.Tensor:
    """LVS Sec. 3.2 for matching pairs: ``(B, D)``, ``(B, D, h, w)`` -> ``S_{i->i}`` ``(B, h, w)``."""
    a = F.normalize(audio, dim=1, eps=NORM_EPS)  # (B, D)
    v = F.normalize(visual, dim=1, eps=NORM_EPS)  # (B, D, h, w)
    return torch.einsum("bd,bdhw->bhw", a, v)


def cross_cosine_maps(audio: torch.Tensor, visual: torch.Tensor) -> torch.Tensor:
    """LVS Sec. 3.2 for all pairs: ``(Ba, D)``, ``(Bv, D, h, w)`` -> ``S`` ``(Ba, Bv, h, w)``, ``S[i, j] = S_{i->j}``."""
    a = F.normalize(audio, dim=1, eps=NORM_EPS)  # (Ba, D)
    v = F.normalize(visual, dim=1, eps=NORM_EPS)  # (Bv, D, h, w)
    return torch.einsum("id,jdhw->ijhw", a, v)


ObjectPriorKind = Literal["l1", "l2"]


def object_prior(feat: torch.Tensor, kind: ObjectPriorKind = "l1") -> torch.Tensor:
    """Class-agnostic activation map of a pretrained feature map: ``(B, C, h, w)`` -> ``(B, h, w)``.

    ``l1``: mean over channels of ``|f|`` — what EZ-VSL's public object-guided
    localization computes on the last ResNet-18 ImageNet stage (a channel-wise
    norm reducer); ``l2``: the channel L2 norm. Both are class-agnostic (no
    ImageNet logits), so they highlight any salient object, sounding or not.
    """
    if feat.dim() != 4:
        raise ConfigError(f"object_prior expects a feature map (B, C, h, w), got {tuple(feat.shape)}")
    if kind == "l1":
        return feat.abs().mean(dim=1)  # (B, h, w)
    if kind == "l2":
        return feat.norm(dim=1)  # (B, h, w)
    raise ConfigError(f"unknown object prior {kind!r}; valid: l1, l2")


def minmax_per_sample(maps: torch.Tensor, eps: float = NORM_EPS) -> torch.Tensor:
    """``(B, h, w)`` -> each map rescaled to [0, 1] on its own (a constant map becomes 0)."""
    flat = maps.flatten(1)  # (B, h*w)
    lo = flat.amin(dim=1, keepdim=True)
    hi = flat.amax(dim=1, keepdim=True)
    return ((flat - lo) / (hi - lo).clamp_min(eps)).view_as(maps)


def build_visual_encoder(cfg: MethodConfig) -> VisualEncoder:
    """The configured visual encoder, frozen (eval mode, no gradients) when ``cfg.freeze_visual``."""
    enc = create_encoder(cfg.visual_encoder, **cfg.visual_encoder_kwargs)
    if not isinstance(enc, VisualEncoder):
        raise ConfigError(f"visual_encoder {cfg.visual_encoder!r} is not a visual encoder (got {type(enc).__name__})")
    if cfg.freeze_visual:
        freeze(enc)
    return enc


# ----------------------------------------------------------------------------- base model


class TwoStreamMethod(LocalizationMethod):
    """Base of the two-stream methods: visual encoder + projection, audio path.

    Subclasses implement ``forward``/``build_criterion``/``localize`` with the
    base-class helpers ``visual_features(batch)`` (cached ``batch["vfeat"]`` or
    the encoded ``batch["image"]``) and ``encode_images(images)``, then
    :meth:`embed_visual` and :meth:`embed_audio`. ``visual_encoder`` is the
    top-level attribute the base class and the engine's feature cache use; the
    base class also keeps a frozen encoder in eval mode and leaves a frozen
    pretrained encoder out of checkpoints.
    """

    config_class = TwoStreamConfig

    def __init__(self, cfg: TwoStreamConfig) -> None:
        super().__init__(cfg)
        self.visual_encoder = build_visual_encoder(cfg)
        self.visual_proj = VisualProjection(
            self.visual_encoder.feature_info.channels, cfg.embed_dim, cfg.visual_proj_hidden
        )
        self.audio_path = AudioPath(cfg)

    def embed_visual(self, feat: torch.Tensor) -> torch.Tensor:  # (B, C, h, w) -> (B, D, h, w)
        return self.visual_proj(feat)

    def embed_audio(self, wav: torch.Tensor) -> torch.Tensor:  # (B, N) -> (B, D)
        return self.audio_path(wav)


class TrainingFreeMethod(LocalizationMethod):
    """Base of methods with nothing to train: ``forward`` returns the heatmap, no criterion."""

    training_free = True

    def forward(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return {"heatmap": self.localize(batch["image"], batch["audio"])}

    def build_criterion(self) -> nn.Module:
        raise ConfigError(f"method {self.name!r} is training-free: there is nothing to train (use it directly in eval)")


def labels_to_multihot(labels: Any, num_classes: int, device: torch.device) -> torch.Tensor:
    """Batch ``labels`` -> ``(B, C)`` float multi-hot.

    Accepts a float/bool tensor ``(B, C)`` (already multi-hot), an integer tensor
    ``(B, K)`` of class indices padded with -1, or a sequence of per-sample index lists.
    """
    if isinstance(labels, torch.Tensor):
        if labels.dtype == torch.bool or labels.is_floating_point():
            if labels.dim() != 2 or labels.shape[1] != num_classes:
                raise DataError(f"multi-hot labels must be (B, {num_classes}), got {tuple(labels.shape)}")
            return labels.to(device=device, dtype=torch.float32)
        idx = labels.reshape(labels.shape[0], -1).tolist()
    elif isinstance(labels, Sequence) and not isinstance(labels, str):
        idx = [list(x) if isinstance(x, Sequence | torch.Tensor) else [x] for x in labels]
    else:
        raise DataError(f"batch 'labels' must be a tensor or a list of class lists, got {type(labels).__name__}")
    out = torch.zeros(len(idx), num_classes, device=device)
    for i, row in enumerate(idx):
        for c in row:
            c = int(c)
            if c < 0:
                continue  # padding
            if c >= num_classes:
                raise DataError(f"label {c} out of range for num_classes={num_classes}")
            out[i, c] = 1.0
    return out

