"""DNM: "Dual Normalization Multitasking for Audio-Visual Sounding Object Localization"
(Nishikawa, Shimada, Yokono, Sony; AVSOL / AVSOL-E).

The paper's Section 4, in the order of this module:

* Sec. 4.1: the input is a 1-second segment keeping time: T frames and the
  aligned 1 s of audio (``ImageConfig.frames`` = T; the dataset gives
  ``image`` (B, T, 3, H, W), ``audio`` (B, N)).
* Sec. 4.2 (:class:`VisualSubNet`): a frozen pretrained backbone per frame
  (cached by the engine), then a 3-D CNN sub-network -> ``v`` in
  R^{I x T x D} (I = h*w) and, from a branch of the same sub-network,
  ``v_cls`` in R^{I x D'} (Eq. 8).
* Sec. 4.3 (:class:`AudioSubNet`): log-mel -> audio backbone keeping time ->
  a sub-network -> ``a`` in R^{T x D}.
* Sec. 4.4 fusion (:func:`static_map`, :class:`DynamicFusion`):
  static ``M_Static^i = average_t (v_t^i . a_t)``; Combined Dynamic Fusion:
  a ConvGRU over ``v_t`` (Eq. 4) and a GRU over ``a_t`` (Eq. 5), unidirectional,
  ``M_Dynamic^i = v'_T^i . a'_T`` and ``M_CDF = M_Static o M_Dynamic`` (Eq. 6).
* Sec. 4.5 dual normalization (:class:`DNM`): local -- ``M_loc = sigmoid(s)``
  per pixel, ``z_avc = GMP(M_loc)`` (Eq. 7, multiple-instance AVC); global --
  ``w_att = softmax(s)`` over pixels, ``v_att = sum_i w_att^i v_cls^i`` (Eq. 8)
  -> fully connected -> event classification.
* Sec. 5.1 (:class:`DNMLoss`): binary cross-entropy for AVC and for the
  classification, summed; the classification error is back-propagated only for
  AVC = yes pairs; negatives 1:1, the video with the audio of another clip or
  time: of another sample of the shuffled batch, or (a fraction ``neg_other_time``)
  of the same clip at another time (:class:`OtherTimeNegatives`), re-drawn every step.
* Sec. 5.2: the localisation result is ``M_loc`` (AVC-only and DNM models) or
  ``w_att`` (classification-only models).

Variants of Table 2 (config fields ``fusion`` x ``tasks``):
Static-Cls = (static, cls), Static-AVC = (static, avc), Static-DNM =
(static, dnm), CDF-DNM = (cdf, dnm). The baselines (visual-only CAM, the
audio-guided attention of Tian et al.) are in :mod:`avloc.methods.dnm_baselines`.

CPU deviations (documented in :class:`DNMConfig`): EfficientNet-Lite0
(ImageNet, frozen, stride 16) instead of VGG19 / I3D; no VGGish weights here,
so the audio backbone is trained from scratch or first pretrained on FSDD digits
(:func:`pretrain_audio_backbone`) and frozen; similarities are scaled by
``dot_scale``; no image augmentation (frozen features are cached).

Training-only levers (issue 7) are config fields too, applied by
:meth:`SegmentMethod.prepare_training` when the engine starts, so ``avloc train
--method dnm key=value`` trains what ``bench/paper/dnm/run.py`` trains:
``sound_draws`` / ``pixels_once`` (:class:`RedrawnSoundTracks`),
``neg_other_time`` (:class:`OtherTimeNegatives`), ``audio_init_from`` /
``audio_pretrain_steps`` with ``freeze_audio``, ``init_seed``. The DigitScenes data
wrappers live in :mod:`avloc.data.digitscenes.wrappers`, the audio pretraining in
:mod:`avloc.methods.dnm.pretrain`.

``localize(images, audio)``: ``images`` (B, T, 3, H, W) segments or single
frames (B, 3, H, W), which are taken as a still segment (the frame repeated T
times). Each sample is computed alone (eval-mode BatchNorm, no in-batch
negatives). ``localize_clip`` serves ``avloc localize``: every analysed frame
gets the segment of T frames around it from the run of frames it is given.
"""

from __future__ import annotations

import functools
import logging
import math
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import Dataset

from avloc.config import check_positive
from avloc.data.digitscenes.wrappers import OtherTimeNegatives, RedrawnSoundTracks
from avloc.encoders import AudioEncoder, create_encoder
from avloc.errors import ConfigError, DataError
from avloc.frontends.audio import AudioFrontend, AudioFrontendConfig
from avloc.frontends.image import ImageConfig, segment_times
from avloc.methods import register_method
from avloc.methods.base import Capability, LocalizationMethod, MethodConfig, check_widths
from avloc.methods.blocks import build_visual_encoder
from avloc.methods.dnm.pretrain import pretrain_audio_backbone

_log = logging.getLogger(__name__)

# ---------------------------------------------------------------------------------------------
# building blocks


def conv3d_bn_relu(in_ch: int, out_ch: int, kt: int, ks: int) -> nn.Sequential:
    """(B, C, T, h, w) -> (B, out, T, h, w): a kt x ks x ks 3-D convolution (same padding), BatchNorm, ReLU."""
    return nn.Sequential(
        nn.Conv3d(in_ch, out_ch, (kt, ks, ks), padding=(kt // 2, ks // 2, ks // 2), bias=False),
        nn.BatchNorm3d(out_ch),
        nn.ReLU(inplace=True),
    )


class VisualSubNet(nn.Module):
    """Sec. 4.2 sub-network: backbone maps (B, T, C, h, w) -> v (B, T, D, h, w) and v_cls (B, D', h, w).

    A 3-D conv trunk, then two branches: 1x1x1 to D (the AVSM features ``v``)
    and a 1x1x1 conv-BN-ReLU to D' averaged over time (``v_cls``, Eq. 8). A
    branch whose width is 0 is not built (models that do not use it) and
    returns ``None``.
    """

    def __init__(self, in_ch: int, hidden: int, dim: int, cls_dim: int, kt: int, ks: int) -> None:
        super().__init__()
        if kt % 2 != 1 or ks % 2 != 1:
            raise ConfigError(f"dnm sub-network kernels must be odd, got temporal {kt}, spatial {ks}")
        self.trunk = nn.Sequential(conv3d_bn_relu(in_ch, hidden, kt, ks), conv3d_bn_relu(hidden, hidden, kt, ks))
        self.avsm = nn.Conv3d(hidden, dim, 1) if dim > 0 else None
        self.cls = conv3d_bn_relu(hidden, cls_dim, 1, 1) if cls_dim > 0 else None

    def forward(self, feats: torch.Tensor) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        x = self.trunk(feats.transpose(1, 2))  # (B, T, C, h, w) -> (B, hidden, T, h, w)
        v = self.avsm(x).transpose(1, 2) if self.avsm is not None else None  # (B, T, D, h, w)
        v_cls = self.cls(x).mean(dim=2) if self.cls is not None else None  # (B, D', h, w)
        return v, v_cls


class AudioSubNet(nn.Module):
    """Sec. 4.3: waveform (B, N) -> log-mel -> backbone keeping time -> sub-network -> a (B, T, D).

    The encoder contract gives per-time features (B, C, T') with the mel axis
    already pooled, so the paper's 2-D sub-network becomes two 1-D convolutions
    over time; T' is then average-pooled to the T video steps.
    """

    def __init__(self, cfg: DNMConfig) -> None:
        super().__init__()
        enc = create_encoder(cfg.audio_encoder, **cfg.audio_encoder_kwargs)
        if not isinstance(enc, AudioEncoder):
            raise ConfigError(f"audio_encoder {cfg.audio_encoder!r} is not an audio encoder (got {type(enc).__name__})")
        self.frontend = AudioFrontend(cfg.audio)
        self.encoder = enc
        if cfg.freeze_audio:  # Sec. 5.1: the (pretrained) audio backbone is fixed during training
            for p in enc.parameters():
                p.requires_grad_(False)
        h = cfg.sub_hidden
        self.sub = nn.Sequential(
            nn.Conv1d(enc.out_channels, h, 3, padding=1, bias=False),
            nn.BatchNorm1d(h),
            nn.ReLU(inplace=True),
            nn.Conv1d(h, cfg.embed_dim, 1),
        )
        self.steps = cfg.image.frames

    def forward(self, wav: torch.Tensor) -> torch.Tensor:  # (B, N) -> (B, T, D)
        if wav.dim() != 2:
            raise DataError(f"audio must be a waveform batch (B, N), got shape {tuple(wav.shape)}")
        x = self.encoder.forward_time(self.frontend(wav))  # (B, C, T')
        if x.shape[-1] < self.steps:
            raise DataError(f"audio gives {x.shape[-1]} time steps after the encoder, fewer than T={self.steps} frames")
        x = self.sub(x)  # (B, D, T')
        return F.adaptive_avg_pool1d(x, self.steps).transpose(1, 2)  # (B, T, D)


class ConvGRUCell(nn.Module):
    """Convolutional GRU cell (Ballas et al. 2016): x, h (B, D, h, w) -> new h (B, D, h, w)."""

    def __init__(self, in_ch: int, hid: int, k: int) -> None:
        super().__init__()
        self.gates = nn.Conv2d(in_ch + hid, 2 * hid, k, padding=k // 2)
        self.cand = nn.Conv2d(in_ch + hid, hid, k, padding=k // 2)
        self.hid = hid

    def forward(self, x: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
        z, r = torch.sigmoid(self.gates(torch.cat([x, h], 1))).chunk(2, dim=1)  # (B, D, h, w) each
        c = torch.tanh(self.cand(torch.cat([x, r * h], 1)))
        return (1 - z) * h + z * c


class DynamicFusion(nn.Module):
    """Eqs. 4-5: a ConvGRU over v_t and a GRU over a_t (unidirectional, h_0 = 0); final outputs v'_T, a'_T."""

    def __init__(self, dim: int, kernel: int) -> None:
        super().__init__()
        self.vgru = ConvGRUCell(dim, dim, kernel)
        self.agru = nn.GRU(dim, dim, batch_first=True)

    def visual(self, v: torch.Tensor) -> torch.Tensor:  # (B, T, D, h, w) -> v'_T (B, D, h, w)
        h = v.new_zeros(v.shape[0], *v.shape[2:])
        for t in range(v.shape[1]):
            h = self.vgru(v[:, t], h)
        return h

    def audio(self, a: torch.Tensor) -> torch.Tensor:  # (B, T, D) -> a'_T (B, D)
        out, _ = self.agru(a)  # (B, T, D)
        return out[:, -1]


def static_map(v: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
    """M_Static (Sec. 4.4): average_t (v_t^i . a_t); v (B, T, D, h, w), a (B, T, D) -> (B, h, w)."""
    return torch.einsum("btdhw,btd->bhw", v, a) / v.shape[1]


def dynamic_map(v_last: torch.Tensor, a_last: torch.Tensor) -> torch.Tensor:
    """M_Dynamic (Sec. 4.4): v'_T^i . a'_T; (B, D, h, w), (B, D) -> (B, h, w)."""
    return torch.einsum("bdhw,bd->bhw", v_last, a_last)


def derangement(n: int, device: torch.device) -> torch.Tensor:
    """A random permutation of range(n) without fixed points (n >= 2): a random cyclic shift of a random order."""
    order = torch.randperm(n, device=device)
    shift = int(torch.randint(1, n, (1,)))
    perm = torch.empty_like(order)
    perm[order] = order.roll(shift)
    return perm


# ---------------------------------------------------------------------------------------------
# the model


_SEEDING = threading.local()


def _seeded_init(init: Callable[..., None]) -> Callable[..., None]:
    """Run a model constructor with its weights drawn from ``cfg.init_seed`` (when set) on a forked torch RNG:
    the weights are those of ``torch.manual_seed(init_seed)`` and the caller's global RNG is left as it was."""

    @functools.wraps(init)
    def wrapper(self: Any, cfg: DNMConfig, *args: Any, **kwargs: Any) -> None:
        if getattr(_SEEDING, "depth", 0) or cfg.init_seed is None:  # inside an outer seeded constructor, or unseeded
            init(self, cfg, *args, **kwargs)
            return
        _SEEDING.depth = 1
        try:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(cfg.init_seed)
                init(self, cfg, *args, **kwargs)
        finally:
            _SEEDING.depth = 0

    return wrapper


class SegmentMethod(LocalizationMethod):
    """Shared plumbing of DNM and its baselines: frozen backbone over T frames, segment handling."""

    capabilities = frozenset({Capability.CLIP})

    cfg: DNMConfig

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "__init__" in cls.__dict__:  # a subclass's weights are drawn from ``init_seed`` too
            cls.__init__ = _seeded_init(cls.__dict__["__init__"])  # type: ignore[method-assign]

    @_seeded_init
    def __init__(self, cfg: DNMConfig, avsm_branch: bool = True, cls_branch: bool = True) -> None:
        super().__init__(cfg)
        self.visual_encoder = build_visual_encoder(cfg)
        self.visual_sub = VisualSubNet(
            self.visual_encoder.feature_info.channels, cfg.sub_hidden, cfg.embed_dim if avsm_branch else 0,
            cfg.cls_dim if cls_branch else 0, cfg.temporal_kernel, cfg.spatial_kernel,
        )

    @property
    def frames(self) -> int:
        return self.cfg.image.frames

    def train(self, mode: bool = True) -> SegmentMethod:
        """As the base class; a frozen audio backbone (``freeze_audio``) also stays in eval mode."""
        super().train(mode)
        sub = getattr(self, "audio_sub", None)
        if self.cfg.freeze_audio and isinstance(sub, AudioSubNet):
            sub.encoder.eval()
        return self

    def audio_module(self) -> nn.Module | None:
        """The audio backbone (``audio_sub.encoder``), or ``None`` for a model without audio."""
        sub = getattr(self, "audio_sub", None)
        return sub.encoder if isinstance(sub, AudioSubNet) else None

    def uses_other_time_negatives(self) -> bool:
        """True when training needs ``batch["neg_audio"]`` (:class:`OtherTimeNegatives`)."""
        return False

    def prepare_training(self, train_set: Dataset, *, feature_cache: bool) -> Dataset:
        """The config's training-only levers, applied when the engine starts (``avloc train`` and the bench alike).

        In this order: the audio backbone's initial weights (``audio_init_from``, else
        ``audio_pretrain_steps`` of :func:`pretrain_audio_backbone` on the training set's raw
        sources); ``sound_draws`` > 1 or ``pixels_once`` (with the feature cache only) wrap the
        set in :class:`RedrawnSoundTracks`; AVC models with ``neg_other_time`` > 0 wrap it in
        :class:`OtherTimeNegatives`. With the defaults the set is returned unchanged.
        """
        cfg = self.cfg
        enc = self.audio_module()
        if (cfg.audio_init_from or cfg.audio_pretrain_steps > 0) and enc is None:
            raise ConfigError(f"{type(self).__name__} has no audio backbone: audio_init_from / audio_pretrain_steps do not apply")
        if enc is not None and cfg.audio_init_from:
            load_audio_backbone(self, cfg.audio_init_from)
        elif enc is not None and cfg.audio_pretrain_steps > 0:
            weights, _ = pretrain_audio_backbone(
                _raw_sources(train_set), cfg, steps=cfg.audio_pretrain_steps, seed=cfg.audio_pretrain_seed, log=_log.info,
            )
            enc.load_state_dict(weights)
        # applied: the weights now hold the initialisation, so the model's config (saved in its checkpoints) no
        # longer asks for it; fine-tuning a checkpoint must not look for the file or pretrain again
        cfg.audio_init_from, cfg.audio_pretrain_steps = None, 0
        ds: Any = train_set
        wrapped = _wrapper_types(ds)  # a set the caller wrapped already is kept as it is
        pixels_once = cfg.pixels_once and feature_cache  # without the cache the engine needs every item's pictures
        if (cfg.sound_draws > 1 or pixels_once) and RedrawnSoundTracks not in wrapped:
            ds = RedrawnSoundTracks(ds, cfg.sound_draws, pixels_once=pixels_once)
        if self.uses_other_time_negatives() and OtherTimeNegatives not in wrapped:
            ds = OtherTimeNegatives(ds)
        return ds  # type: ignore[no-any-return]

    def segment_features(self, feats: torch.Tensor) -> torch.Tensor:
        """(B, T, C, h, w) as is; a single frame's (B, C, h, w) becomes a still segment (B, T, C, h, w)."""
        if feats.dim() == 4:
            return feats[:, None].expand(-1, self.frames, -1, -1, -1)
        if feats.dim() != 5 or feats.shape[1] != self.frames:
            raise DataError(
                f"expected a segment of T={self.frames} frames' features (B, T, C, h, w), got {tuple(feats.shape)}; "
                f"build the dataset with the model's image config (ImageConfig.frames={self.frames})"
            )
        return feats

    def localize_features(self, feats: torch.Tensor, audio: torch.Tensor) -> torch.Tensor:
        """Backbone features (B, T, C, h, w) or (B, C, h, w), audio (B, N) -> (B, h, w)."""
        raise NotImplementedError

    def localize(self, images: torch.Tensor, audio: torch.Tensor) -> torch.Tensor:
        """Segments (B, T, 3, H, W) or single frames (B, 3, H, W) in [0, 1], audio (B, N) -> (B, h, w)."""
        return self.localize_features(self.encode_images(images), audio)

    @property
    def clip_context_seconds(self) -> float:
        """``avloc localize``: frames this far on each side of an analysed frame form its segment."""
        return self.cfg.audio.window_seconds / 2

    def localize_clip(
        self, frames: torch.Tensor, audio: torch.Tensor, times: torch.Tensor, keep: slice | None = None
    ) -> torch.Tensor:
        """Consecutive frames (N, 3, S, S), audio windows centred on them (N, n), times (N,) s -> maps for ``keep``.

        The segment of frame k: for each of the T times of
        :func:`avloc.frontends.image.segment_times` (centred on ``times[k]``,
        as long as the audio windows given: ``avloc localize --window`` changes both), the nearest frame of the run.
        """
        keep = keep if keep is not None else slice(None)
        feats = self.encode_images(frames)  # (N, C, h, w), each frame once
        centres = times[keep].tolist()
        span = audio.shape[-1] / self.cfg.audio.sample_rate  # seconds of each audio window
        idx = [[int(torch.argmin((times - t).abs())) for t in segment_times(c, span, self.frames)] for c in centres]
        seg = feats[torch.tensor(idx, dtype=torch.long, device=feats.device)]  # (K, T, C, h, w)
        return self.localize_features(seg, audio[keep])


class DNM(SegmentMethod):
    """Fig. 2: visual / audio feature networks, static or CDF fusion into the AVSM s, dual normalization."""

    capabilities = SegmentMethod.capabilities | {Capability.ONSCREEN}

    def __init__(self, cfg: DNMConfig) -> None:
        use_cls = cfg.tasks in ("cls", "dnm")
        super().__init__(cfg, avsm_branch=True, cls_branch=use_cls)
        self.audio_sub = AudioSubNet(cfg)
        self.dynamic = DynamicFusion(cfg.embed_dim, cfg.convgru_kernel) if cfg.fusion == "cdf" else None
        # the event classifier (Eq. 8) exists only when the model is trained on classification
        self.classifier = nn.Linear(cfg.cls_dim, cfg.num_classes) if use_cls else None
        self.scale = cfg.dot_scale if cfg.dot_scale is not None else 1.0 / math.sqrt(cfg.embed_dim)

    def streams(self, feats: torch.Tensor, wav: torch.Tensor) -> dict[str, torch.Tensor]:
        """Per-modality features: v (B, T, D, h, w), v_cls (B, D', h, w), a (B, T, D) and, for CDF, v'_T, a'_T."""
        v, v_cls = self.visual_sub(self.segment_features(feats))
        assert v is not None
        out = {"v": v, **self.audio_streams(wav)}  # a (B, T, D), a'_T (B, D) for CDF
        if v_cls is not None:
            out["v_cls"] = v_cls
        if self.dynamic is not None:
            out["v_last"] = self.dynamic.visual(v)  # (B, D, h, w)
        return out

    def uses_other_time_negatives(self) -> bool:
        return self.cfg.tasks in ("avc", "dnm") and self.cfg.neg_other_time > 0

    def audio_streams(self, wav: torch.Tensor) -> dict[str, torch.Tensor]:
        """Audio side only: a (B, T, D) and, for CDF, a'_T (B, D) (Eq. 5)."""
        a = self.audio_sub(wav)
        out = {"a": a}
        if self.dynamic is not None:
            out["a_last"] = self.dynamic.audio(a)
        return out

    def avsm(
        self, st: dict[str, torch.Tensor], perm: torch.Tensor | None = None, audio: dict[str, torch.Tensor] | None = None
    ) -> torch.Tensor:
        """The AVSM s (B, h, w) of video i with audio i, audio perm[i], or ``audio`` (:meth:`audio_streams`).

        M_Static, or M_CDF (Eq. 6).
        """
        src = audio if audio is not None else st
        a = src["a"] if perm is None else src["a"][perm]
        s = static_map(st["v"], a) * self.scale
        if self.dynamic is not None:
            a_last = src["a_last"] if perm is None else src["a_last"][perm]
            s = s * (dynamic_map(st["v_last"], a_last) * self.scale)
        return s

    def negative_avsm(self, st: dict[str, torch.Tensor], batch: dict[str, Any]) -> torch.Tensor:
        """AVSM of the AVC = no pairs (Sec. 5.1: "the audio of a different clip or time"), (B, h, w).

        Each video gets, with probability ``neg_other_time``, ``batch["neg_audio"]`` (the
        same clip at another time, from :class:`OtherTimeNegatives`), else the audio of
        another sample of the batch (a random derangement); both re-drawn every step.
        """
        b = st["v"].shape[0]
        if b < 2:
            raise ConfigError("dnm AVC needs a batch of at least 2 (negatives pair a video with another sample's audio)")
        s_other_clip = self.avsm(st, derangement(b, st["v"].device))
        p = self.cfg.neg_other_time
        if p <= 0:
            return s_other_clip
        if "neg_audio" not in batch:
            raise DataError(
                f"dnm neg_other_time={p} needs batch['neg_audio'] (same clip, another time): "
                "wrap the training set in avloc.data.digitscenes.wrappers.OtherTimeNegatives"
            )
        s_other_time = self.avsm(st, audio=self.audio_streams(batch["neg_audio"]))
        pick = torch.rand(b, device=s_other_clip.device) < p  # (B,) True -> same clip, another time
        return torch.where(pick[:, None, None], s_other_time, s_other_clip)

    def classify(self, s: torch.Tensor, v_cls: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Global normalization (Eq. 8): w_att = softmax_i(s_i) (B, h, w); logits of fc(v_att) (B, K)."""
        if self.classifier is None:
            raise ConfigError("this dnm model has no classification branch (tasks='avc')")
        w_att = torch.softmax(s.flatten(1), dim=1)  # (B, I)
        v_att = torch.einsum("bi,bdi->bd", w_att, v_cls.flatten(2))  # (B, D')
        return w_att.view_as(s), self.classifier(v_att)

    def forward(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        st = self.streams(self.visual_features(batch), batch["audio"])
        s = self.avsm(st)  # (B, h, w), AVC = yes pairs
        out: dict[str, torch.Tensor] = {"s": s}
        if self.cfg.tasks in ("avc", "dnm"):
            s_neg = self.negative_avsm(st, batch)  # (B, h, w), AVC = no pairs
            out["avc_pos"] = s.flatten(1).amax(1)  # logit of z_avc = GMP(sigmoid(s)) (Eq. 7)
            out["avc_neg"] = s_neg.flatten(1).amax(1)
        if self.cfg.tasks in ("cls", "dnm"):
            out["cls_logits"] = self.classify(s, st["v_cls"])[1]  # (B, K), AVC = yes pairs only
        return out

    def build_criterion(self) -> nn.Module:
        return DNMLoss(self.cfg)

    def localize_features(self, feats: torch.Tensor, audio: torch.Tensor) -> torch.Tensor:
        """M_loc = sigmoid(s) (AVC, DNM) or w_att = softmax(s) (classification only), (B, h, w)."""
        st = self.streams(feats, audio)
        s = self.avsm(st)
        if self.cfg.tasks == "cls":
            return self.classify(s, st["v_cls"])[0]
        return torch.sigmoid(s)

    def onscreen(self, images: torch.Tensor, audio: torch.Tensor) -> torch.Tensor:
        """(B,) z_avc = GMP(M_loc) (Eq. 7); classification-only models: the largest event probability.

        Takes segments or single frames like :meth:`localize` (``avloc localize`` passes the analysed frames).
        """
        feats = self.encode_images(images)
        st = self.streams(feats, audio)
        s = self.avsm(st)
        if self.cfg.tasks == "cls":
            return torch.sigmoid(self.classify(s, st["v_cls"])[1]).amax(1)
        return torch.sigmoid(s.flatten(1).amax(1))


def load_audio_backbone(model: SegmentMethod, source: str) -> None:
    """Set ``model``'s audio backbone from ``source`` (``DNMConfig.audio_init_from``).

    ``source``: a safetensors file holding exactly the backbone's state dict (what
    :func:`pretrain_audio_backbone` returns; the bench saves it as ``audio_backbone.safetensors``),
    or a checkpoint / zoo model with the same audio front-end and encoder
    (:func:`avloc.methods.zoo.init_audio_encoder_from`).
    """
    from avloc.methods.zoo import init_audio_encoder_from

    enc = model.audio_module()
    if enc is None:
        raise ConfigError(f"{type(model).__name__} has no audio backbone to initialise")
    path = Path(source)
    if path.is_file():
        from safetensors.torch import load_file

        sd = load_file(str(path))
        if set(sd) == set(enc.state_dict()):
            enc.load_state_dict(sd)
            return
    init_audio_encoder_from(model, source)


def _wrapper_types(dataset: Any) -> set[type]:
    """Types along a chain of wrappers (``dataset`` attributes), the outermost first."""
    out: set[type] = set()
    d = dataset
    while d is not None:
        out.add(type(d))
        d = getattr(d, "dataset", None)
    return out


def _raw_sources(dataset: Any) -> Any:
    """The raw sources (FSDD, ESC-10) of a DigitScenes set, through wrappers with a ``dataset`` attribute."""
    d = dataset
    while d is not None:
        raw = getattr(getattr(d, "sampler", None), "raw", None)
        if raw is not None:
            return raw
        d = getattr(d, "dataset", None)
    raise ConfigError(
        f"audio_pretrain_steps needs a DigitScenes training set (its FSDD / ESC-10 sources), not {type(dataset).__name__}; "
        "pretrain with avloc.methods.dnm.pretrain.pretrain_audio_backbone and pass the file as audio_init_from"
    )


# ---------------------------------------------------------------------------------------------
# its loss


def event_targets(batch: dict[str, Any], key: str, num_classes: int, device: torch.device) -> torch.Tensor:
    """Multi-hot event labels (B, K) from ``batch[key]`` (a list per sample, or tensors); none = background."""
    if key not in batch:
        raise DataError(f"event classification needs batch[{key!r}] (class labels per sample)")
    rows = batch[key]
    if isinstance(rows, torch.Tensor):
        rows = list(rows)
    y = torch.zeros(len(rows), num_classes, device=device)
    for i, labs in enumerate(rows):
        vals = labs.tolist() if isinstance(labs, torch.Tensor) else list(labs)
        for c in vals:
            if not 0 <= int(c) < num_classes:
                raise DataError(f"event label {c} outside the {num_classes} classes (set num_classes)")
            y[i, int(c)] = 1.0
    return y


class DNMLoss(nn.Module):
    """Sec. 5.1: BCE(AVC) over positives and 1:1 negatives + BCE(classification) over positives, summed."""

    def __init__(self, cfg: DNMConfig) -> None:
        super().__init__()
        self.cfg = cfg

    def forward(self, outputs: dict[str, torch.Tensor], batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        cfg = self.cfg
        terms: dict[str, torch.Tensor] = {}
        loss = outputs["s"].new_zeros(())
        if cfg.tasks in ("avc", "dnm"):
            logits = torch.cat([outputs["avc_pos"], outputs["avc_neg"]])  # (2B,)
            target = torch.cat([torch.ones_like(outputs["avc_pos"]), torch.zeros_like(outputs["avc_neg"])])
            avc = F.binary_cross_entropy_with_logits(logits, target)
            loss = loss + avc
            terms["avc"] = avc.detach()
            terms["avc_acc"] = ((logits > 0).float() == target).float().mean().detach()
        if cfg.tasks in ("cls", "dnm"):
            y = event_targets(batch, cfg.cls_labels, cfg.num_classes, outputs["cls_logits"].device)
            cls = F.binary_cross_entropy_with_logits(outputs["cls_logits"], y)
            loss = loss + cls
            terms["cls"] = cls.detach()
        return {"loss": loss, **terms}


# ---------------------------------------------------------------------------------------------
# its config


def _dnm_audio() -> AudioFrontendConfig:
    # VGGish front-end (Hershey et al. 2017): 16 kHz, 25 ms window, 10 ms hop, 64 mel bands 125-7500 Hz, log(mel + 0.01);
    # 1 s of audio per segment (Sec. 4.1)
    return AudioFrontendConfig(
        sample_rate=16000, window_seconds=1.0, kind="logmel", n_fft=512, win_length=400, hop_length=160,
        n_mels=64, fmin=125.0, fmax=7500.0, mel_log_eps=0.01,
    )


@dataclass
class DNMConfig(MethodConfig):
    """DNM hyper-parameters (Nishikawa et al.; sections / equations cited per field).

    Paper set-up: 1 s segments (Sec. 4.1); VGG19 (ImageNet, a middle layer, 14 x 14) or
    I3D RGB (Kinetics) visual backbone and VGGish (AudioSet) audio backbone, both frozen
    (Sec. 5.1); a 3-D CNN visual and a 2-D CNN audio sub-network (Secs. 4.2-4.3); static
    or CDF fusion (Sec. 4.4, Eqs. 4-6); sigmoid + GMP for AVC (Eq. 7) and softmax
    attention for classification (Eq. 8), BCE for both, classification only on AVC = yes
    pairs, negatives 1:1 (Sec. 5.1). The paper gives no widths, optimizer or T.

    CPU deviations: the visual backbone is the frozen ImageNet EfficientNet-Lite0 at
    stride 16 (112 channels, 10 x 10 at 160 px), features cached by the engine; T = 4
    frames per segment; the audio backbone (``small_cnn_audio``, ~100k parameters) on
    VGGish-style log-mels has no AudioSet-pretrained weights here: it trains from scratch
    by default, or ``audio_pretrain_steps`` / ``audio_init_from`` + ``freeze_audio`` give it
    FSDD-digit-pretrained, frozen weights; D = D' = 64 and 64-wide sub-networks (the
    ConvGRU dominates the cost: 0.46 s per training step of 32 segments on one core). Similarities are scaled by
    ``dot_scale`` (1/sqrt(D) by default, as scaled dot-product attention) so the
    sigmoid and softmax start unsaturated -- the paper's raw dot product is
    ``dot_scale=1``. No augmentation (the paper: random flip and resized crop), since
    frozen features are cached. Event labels: DigitScenes digit classes (10).

    Training data: AVC is self-supervised and learns any cue that ties a sound to its
    clip; on 150 DigitScenes clips it memorised the clips (training AVC AUC 0.86, test
    0.51) and localised nothing. The shipped recipe, ``dnm-digitscenes``,
    trains on 1,000 distinct clips (docs/RESULTS.md, issue 7; ``bench/paper/dnm/run.py
    --avc-check`` tells memorisation from learning).
    """

    image: ImageConfig = field(default_factory=lambda: ImageConfig(size=160, resize=160, frames=4))
    audio: AudioFrontendConfig = field(default_factory=_dnm_audio)
    visual_encoder: str = "efficientnet_lite0"
    visual_encoder_kwargs: dict[str, Any] = field(default_factory=lambda: {"out_stride": 16})
    audio_encoder: str = "small_cnn_audio"
    audio_encoder_kwargs: dict[str, Any] = field(default_factory=lambda: {"channels": [16, 32, 64, 128], "time_stride": 4})
    freeze_visual: bool = True
    #: Sec. 4.4: "static" (M_Static) or "cdf" (Combined Dynamic Fusion, Eq. 6)
    fusion: Literal["static", "cdf"] = "cdf"
    #: Sec. 5.2 / Table 2: "cls" (classification only), "avc" (AVC only), "dnm" (both, Sec. 4.5)
    tasks: Literal["cls", "avc", "dnm"] = "dnm"
    #: D, channels of v and a (Secs. 4.2-4.3)
    embed_dim: int = 64
    #: D', channels of v_cls (Eq. 8)
    cls_dim: int = 64
    #: width of the sub-networks' hidden layers
    sub_hidden: int = 64
    #: 3-D sub-network kernel: time x space
    temporal_kernel: int = 3
    spatial_kernel: int = 3
    #: ConvGRU kernel (Eq. 4)
    convgru_kernel: int = 3
    #: multiplier of each dot-product map; None = 1/sqrt(embed_dim) (see the class doc; the paper: 1)
    dot_scale: float | None = None
    #: event classes (AVE: 28; DigitScenes: the 10 digits)
    num_classes: int = 10
    #: sample key of the event labels: "box_labels" = classes of visible sounding objects (an AVE event is
    #: audible *and* visible; none = background), "labels" = every sounding class, visible or not
    cls_labels: Literal["box_labels", "labels"] = "box_labels"
    #: Sec. 5.1 negatives "of a different clip or time": the fraction of AVC = no pairs whose audio is the
    #: same clip at another time (``batch["neg_audio"]``, see :class:`OtherTimeNegatives`); the rest take
    #: another batch sample's audio. 0 = other clips only. Same-clip negatives share the clip's background
    #: and ambient sound, so "same clip" no longer answers AVC.
    neg_other_time: float = 0.0
    #: Sec. 5.1: "the parameters of the backbone networks are fixed" -- also the audio backbone. Set it
    #: with weights from :func:`pretrain_audio_backbone` (the paper: VGGish); from scratch it must train.
    freeze_audio: bool = False
    # -- training only: applied by ``prepare_training`` when the engine starts (``avloc train`` as the bench);
    # -- inference ignores them. They are saved with the config, so a checkpoint records how it was trained.
    #: sound tracks per training clip (:class:`RedrawnSoundTracks`, DigitScenes ``video``); 1 = the clips as drawn
    sound_draws: int = 1
    #: with the engine's frozen-feature cache: read each training segment's pictures once (RedrawnSoundTracks)
    pixels_once: bool = False
    #: initial audio backbone: a safetensors file of its state dict (:func:`pretrain_audio_backbone`'s output,
    #: the bench's ``audio_backbone.safetensors``) or a checkpoint / zoo model with the same audio encoder
    audio_init_from: str | None = None
    #: if > 0 and no ``audio_init_from``: first pretrain the audio backbone this many steps
    #: (:func:`pretrain_audio_backbone` on the DigitScenes training set's raw sources, seed ``audio_pretrain_seed``)
    audio_pretrain_steps: int = 0
    audio_pretrain_seed: int = 0
    #: torch seed set just before the weights are built (None: the process's RNG as it stands)
    init_seed: int | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        check_widths(embed_dim=self.embed_dim, cls_dim=self.cls_dim, sub_hidden=self.sub_hidden,
                     num_classes=self.num_classes, temporal_kernel=self.temporal_kernel,
                     spatial_kernel=self.spatial_kernel, convgru_kernel=self.convgru_kernel)
        if self.dot_scale is not None:
            check_positive(dot_scale=self.dot_scale)
        if self.convgru_kernel % 2 != 1:
            raise ConfigError(f"dnm convgru_kernel must be odd, got {self.convgru_kernel}")
        if self.fusion not in ("static", "cdf") or self.tasks not in ("cls", "avc", "dnm"):
            raise ConfigError(f"dnm fusion must be static|cdf and tasks cls|avc|dnm, got {self.fusion!r}, {self.tasks!r}")
        if self.cls_labels not in ("box_labels", "labels"):
            raise ConfigError(f"dnm cls_labels must be box_labels or labels, got {self.cls_labels!r}")
        if not 0.0 <= self.neg_other_time <= 1.0:
            raise ConfigError(f"dnm neg_other_time must be in [0, 1], got {self.neg_other_time}")
        if self.sound_draws < 1 or self.audio_pretrain_steps < 0:
            raise ConfigError(
                f"dnm sound_draws must be >= 1 and audio_pretrain_steps >= 0, got {self.sound_draws}, {self.audio_pretrain_steps}"
            )


# ---------------------------------------------------------------------------------------------
# registration

DNM.config_class = DNMConfig
register_method("dnm")(DNM)
