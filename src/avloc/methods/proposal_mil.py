"""Proposal-based sound source localization: global response map, proposal selection and MIL.

Xuan, Wu, Yang, Yan, Alameda-Pineda, "A Proposal-based Paradigm for
Self-supervised Sound Source Localization in Videos", CVPR 2022 (Sec. 3, Fig. 2).
Registered as ``proposal``.

Three streams (Sec. 3.2)
------------------------
* Audio stream: waveform -> front-end -> audio encoder -> ``s_n in R^{d_s}``
  (:class:`~avloc.methods.blocks.AudioPath`'s front-end and encoder); its FC
  projection (``AudioPath.proj``) gives ``f_n^s in R^d``.
* Frame stream: visual map ``v_n in R^{d_v x c}`` (the visual encoder, plus an
  optional trainable 1x1 adapter, see "Deviations"); audio-guided attention
  (Sec. 3.3)::

      w_n = phi(U_v v_n)^T phi(U_s s_n)          (w_n in R^c)
      v_n^att = sum_i w_n^i v_n^i

  ``U_v`` (1x1 conv) and ``U_s`` (linear) project both to ``att_dim``; ``phi`` is
  the softmax. The paper calls ``v_n^att`` a weighted *average*, so we apply
  ``phi`` over the ``c`` locations for every projected visual channel and over
  the ``att_dim`` channels for the audio: then ``sum_i w_n^i = 1`` exactly
  (each row of ``phi(U_v v_n)`` sums to 1 over locations, ``phi(U_s s_n)`` sums
  to 1). ``f_n^att = FC(v_n^att) in R^d``. The location map ``m_n`` is ``w_n``
  reshaped to ``h x w`` and bilinearly up-sampled to the image size.
* Modality LSTMs (Sec. 3.2, optional, ``temporal_lstm``): for video inputs
  ``image`` (B, T, 3, H, W) / ``vfeat`` (B, T, C, h, w) and ``audio`` (B, T, N),
  ``s_n`` runs through an LSTM over the T frames, and ``v_n`` through a second
  LSTM over T at every location (weights shared across locations), before the
  attention. Still images (the default, and every ``localize`` call) skip them:
  an LSTM over one step is only a gated non-linearity the paper never uses on
  still images.
* Proposal stream: Selective Search proposals ``V(I_n)``
  (:mod:`avloc.methods.proposals`, cached per image) pooled by spatial pyramid
  pooling (1x1 + 2x2 + 4x4 RoI max pooling) on the shared visual map, then an
  FC layer: ``f_{nk}^box in R^d``.

Proposal Selection Network (Sec. 3.3)
-------------------------------------
``g_n = (m_n - min(m_n)) / max(m_n)`` (the paper's normalisation, literally);
the confidence of a proposal is the sum of ``g_n`` over its pixels; the top
``K`` proposals form the bag ``V_B(I_n)`` (Eq. 2). Frames with fewer than ``K``
proposals are padded and masked by the binary ``e`` (Sec. 3.4).

Localization Network (Sec. 3.4, Eq. 3)
--------------------------------------
::

    d_n^k = ReLU(cos(f_n^s, f_{nk}^box)) * e_k                        (Eq. 3)
    alpha_n^k = d_n^k / sum_k' d_n^k'        (0 when every d_n^k is 0)
    f_n^v = sum_k alpha_n^k f_{nk}^box

Loss (Sec. 3.5)
---------------
``L = sum_n (L_n^tri + lambda L_n^edu)``, lambda = 0.5, averaged (not summed)
over the frames of the batch:

* ``L^tri``: distance-ratio loss (Senocak et al. CVPR 2018, Eq. 3, the paper's
  [31]) with query ``f_n^v``, positive ``f_n^{s+}`` (its own audio) and negative
  ``f_n^{s-}`` (the audio of another video of the batch: video ``(b + 1) mod B``)::

      D+- = |f_n^v - f_n^{s+-}|_2,  r+- = exp(D+-) / (exp(D+) + exp(D-)),
      L^tri = |(r+, r- - 1)|_2^2 = r+^2 + (r- - 1)^2

* ``L^edu = |f_n^v - f_n^att|_2^2``.

Without proposal selection (Table 3 "- ProSelectNet", ``proposal_selection=False``)
the bag is every proposal and the loss is ``L^tri`` only.

Outputs
-------
* ``localize`` -> ``m_n`` (B, H, W) (``localize_output="location_map"``), or the
  box output rendered as a binary map (``"boxes"``, ``localize_max_sources``
  boxes) so map protocols score the boxes (the MUSIC-Synthetic protocol).
* ``boxes(images, audio, max_sources)``: single source -> the proposal with
  the highest ``d_n^k`` (the one giving ``d_on``, Sec. 4.3); multiple sources ->
  the top non-overlapping proposals (greedy NMS at IoU 0 on ``d_n^k``).
* ``onscreen``: Sec. 4.2 — ``d_on = max_k d_n^k > 0.2``; ``m_on``: the Euclidean
  distance ``|f_n^v - f_n^s|`` below a threshold set to the average of the
  medians of positive- and negative-pair distances on training pairs
  (:meth:`ProposalMIL.calibrate_onscreen`, stored in the buffer
  ``m_on_threshold``, hence in checkpoints); and their OR (the paper's best).

Deviations (documented, all configurable)
-----------------------------------------
* Backbone: the paper fine-tunes a dilated VGG16 (ImageNet) with SPP in place of
  its last max-pooling and a VGGish audio encoder; we use the registered
  encoders (frozen EfficientNet-Lite0 by default) and, because a frozen map
  leaves no trainable convolution, a trainable 1x1 conv + ReLU adapter
  (``visual_adapter_dim``; 0 disables it) shared by the frame and proposal streams.
* ``normalize_embeddings``: the paper does not say whether ``f`` are
  L2-normalised before the Euclidean distances; we normalise by default
  (Attention10k's convention here), which bounds ``D`` in [0, 2].
* Frozen features: the training engine's feature cache replaces ``image`` by
  ``vfeat``, but proposals need the image, so this method reports
  ``visual_cacheable() = False`` (the engine keeps ``image``) and memoises the
  frozen encoder's features itself, keyed by image content
  (``memo_visual_features``; :class:`avloc.encoders.cache.FeatureCache` under
  ``$AVLOC_CACHE/features``).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import Dataset

from avloc.encoders.cache import FeatureCache, content_key
from avloc.errors import ConfigError, DataError
from avloc.methods import register_method
from avloc.methods.base import Capability, LocalizationMethod, check_widths
from avloc.methods.blocks import AudioPath, TwoStreamConfig, build_visual_encoder, mlp_head
from avloc.methods.proposals import (
    SPP_LEVELS,
    ProposalCache,
    ProposalConfig,
    box_sums,
    default_cache_root,
    spp_pool,
)
from avloc.methods.zoo import init_audio_encoder_from
from avloc.metrics.onscreen import median_distance_threshold
from avloc.metrics.ops import nms

# ----------------------------------------------------------------------------- building blocks


def audio_guided_attention(v_proj: torch.Tensor, s_proj: torch.Tensor) -> torch.Tensor:
    """Sec. 3.3 ``w_n = phi(U_v v_n)^T phi(U_s s_n)``: (B, a, h, w), (B, a) -> (B, h, w), each map summing to 1.

    ``phi`` is a softmax over the ``h*w`` locations for ``U_v v_n`` (per channel)
    and over the ``a`` channels for ``U_s s_n`` (see the module docstring).
    """
    b, _, h, w = v_proj.shape
    pv = v_proj.flatten(2).softmax(dim=2)  # (B, a, h*w): each channel a distribution over locations
    ps = s_proj.softmax(dim=1)  # (B, a)
    return torch.einsum("bac,ba->bc", pv, ps).view(b, h, w)


def global_response_map(m: torch.Tensor) -> torch.Tensor:
    """Sec. 3.3 ``g_n = (m_n - min(m_n)) / max(m_n)`` per map: (B, H, W) -> (B, H, W)."""
    flat = m.flatten(1)  # (B, H*W)
    lo = flat.amin(dim=1, keepdim=True)
    hi = flat.amax(dim=1, keepdim=True)
    if (hi <= 0).any():
        raise ConfigError("global response map: m_n must have a positive maximum (softmax attention is positive)")
    return ((flat - lo) / hi).view_as(m)


def proposal_confidence(g: torch.Tensor, boxes: torch.Tensor, score: Literal["sum", "centred"] = "sum") -> torch.Tensor:
    """Sec. 3.3 proposal confidence from the GRM: (B, H, W), (B, R, 4) normalised boxes -> (B, R).

    ``sum``: the GRM accumulated inside each box (the paper). ``centred``: ``g_n -
    mean(g_n)`` accumulated, so below-average pixels count against a box and the
    whole-frame box no longer wins by size alone (see :class:`ProposalMILConfig`).
    """
    if score == "centred":
        g = g - g.mean(dim=(1, 2), keepdim=True)
    elif score != "sum":
        raise ConfigError(f"selection_score must be sum or centred, got {score!r}")
    return box_sums(g, boxes)


def select_top_k(
    scores: torch.Tensor, boxes: torch.Tensor, valid: torch.Tensor, k: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The bag ``V_B``: top-``k`` valid proposals per frame, padded and masked (Sec. 3.3-3.4).

    (B, R) scores, (B, R, 4) boxes, (B, R) bool valid -> boxes (B, k, 4), mask ``e``
    (B, k) float, indices (B, k) into R. Padding slots repeat a valid box of the
    frame (so pooling stays finite) and have ``e_k = 0``. Requires ``R >= k``
    (pad the proposal tensor first) and at least one valid proposal per frame.
    """
    if scores.shape[1] < k:
        raise ConfigError(f"select_top_k: {scores.shape[1]} proposal slots < K={k}; pad the proposals to K first")
    if not valid.any(dim=1).all():
        raise DataError("a frame has no proposals: the bag cannot be empty")
    masked = scores.masked_fill(~valid, float("-inf"))
    top = masked.topk(k, dim=1).indices  # (B, k), valid ones first
    e = valid.gather(1, top)  # (B, k) bool
    first = top[:, :1].expand_as(top)  # the best valid proposal of each frame
    top = torch.where(e, top, first)
    sel = boxes.gather(1, top[..., None].expand(-1, -1, 4))  # (B, k, 4)
    return sel, e.float(), top


def proposal_similarity(f_s: torch.Tensor, f_box: torch.Tensor, e: torch.Tensor) -> torch.Tensor:
    """Eq. 3 ``d_n^k = ReLU(cos(f_n^s, f_nk^box)) * e_k``: (B, d), (B, K, d), (B, K) -> (B, K)."""
    cos = F.cosine_similarity(f_s[:, None, :], f_box, dim=-1, eps=1e-8)  # (B, K)
    return F.relu(cos) * e


def proposal_level_feature(
    d: torch.Tensor, f_box: torch.Tensor, eps: float = 1e-8
) -> tuple[torch.Tensor, torch.Tensor]:
    """Sec. 3.4 ``f_n^v = sum_k alpha_n^k f_nk^box``, ``alpha = d / sum d``: -> (f_v (B, d), alpha (B, K))."""
    alpha = d / d.sum(dim=1, keepdim=True).clamp_min(eps)  # (B, K); all-zero d -> alpha = 0
    return torch.einsum("bk,bkd->bd", alpha, f_box), alpha


def pad_proposals(props: list[torch.Tensor], min_slots: int) -> tuple[torch.Tensor, torch.Tensor]:
    """B tensors (R_b, 4) -> boxes (B, R, 4) and valid (B, R), R = max(max R_b, min_slots); padding is the full frame."""
    if any(p.dim() != 2 or p.shape[1] != 4 for p in props):
        raise ConfigError("proposals must be (R, 4) normalised (x0, y0, x1, y1) per image")
    r = max(min_slots, max(len(p) for p in props))
    boxes = torch.zeros(len(props), r, 4)
    boxes[..., 2:] = 1.0
    valid = torch.zeros(len(props), r, dtype=torch.bool)
    for i, p in enumerate(props):
        boxes[i, : len(p)] = p
        valid[i, : len(p)] = True
    return boxes, valid


class ModalityLSTMs(nn.Module):
    """Sec. 3.2 modality-specific LSTMs over the T frames of a video (hidden size = input size)."""

    def __init__(self, visual_dim: int, audio_dim: int) -> None:
        super().__init__()
        self.visual = nn.LSTM(visual_dim, visual_dim, batch_first=True)
        self.audio = nn.LSTM(audio_dim, audio_dim, batch_first=True)

    def forward(self, v: torch.Tensor, s: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, T, C, h, w), (B, T, d_s) -> same shapes, temporally contextualised."""
        b, t, c, h, w = v.shape
        vs = v.permute(0, 3, 4, 1, 2).reshape(b * h * w, t, c)  # one sequence per location
        vo = self.visual(vs)[0].reshape(b, h, w, t, c).permute(0, 3, 4, 1, 2)  # (B, T, C, h, w)
        so = self.audio(s)[0]  # (B, T, d_s)
        return vo.contiguous(), so


# ----------------------------------------------------------------------------- model


class ProposalMIL(LocalizationMethod):
    """Three-stream proposal-based localiser (Xuan et al. CVPR 2022); equations in the module docstring."""

    capabilities = frozenset({Capability.BOXES, Capability.ONSCREEN})

    def __init__(self, cfg: ProposalMILConfig) -> None:
        super().__init__(cfg)
        self.visual_encoder = build_visual_encoder(cfg)
        c = self.visual_encoder.feature_info.channels
        if cfg.visual_adapter_dim > 0:
            self.visual_adapter: nn.Module = nn.Sequential(
                nn.Conv2d(c, cfg.visual_adapter_dim, 1), nn.ReLU(inplace=True)
            )
            dv = cfg.visual_adapter_dim
        else:
            self.visual_adapter = nn.Identity()
            dv = c
        self.audio_path = AudioPath(cfg)  # front-end + encoder (s_n) + FC projection (f_n^s)
        if cfg.freeze_audio:
            for p in self.audio_path.encoder.parameters():
                p.requires_grad_(False)
        ds = self.audio_path.encoder.out_channels
        self.lstms = ModalityLSTMs(dv, ds) if cfg.temporal_lstm else None
        self.u_v = nn.Conv2d(dv, cfg.att_dim, 1)  # U_v
        self.u_s = nn.Linear(ds, cfg.att_dim)  # U_s
        self.frame_head = mlp_head(dv, cfg.embed_dim, cfg.head_hidden)  # v_att -> f^att
        n_bins = sum(n * n for n in cfg.spp_levels)
        self.box_head = mlp_head(dv * n_bins, cfg.embed_dim, cfg.head_hidden)  # SPP -> f^box
        # m_on distance threshold (Sec. 4.2), set by calibrate_onscreen; NaN = not calibrated
        self.m_on_threshold: torch.Tensor
        self.register_buffer("m_on_threshold", torch.tensor(float("nan")))
        self._proposals: ProposalCache | None = None
        self._feature_memo: FeatureCache | None = None

    def prepare_training(self, train_set: Dataset, *, feature_cache: bool) -> Dataset:
        """Before training: the pretrained audio stream of ``audio_init_from`` (the paper: VGGish), if any.

        Done here rather than at construction, so loading a trained checkpoint never reads the source model.
        """
        cfg: ProposalMILConfig = self.cfg  # type: ignore[assignment]
        if cfg.audio_init_from:
            init_audio_encoder_from(self, cfg.audio_init_from)
        return train_set

    def train(self, mode: bool = True) -> ProposalMIL:
        """As the base class; a frozen audio encoder also stays in eval mode (BatchNorm statistics fixed)."""
        super().train(mode)
        if self.cfg.freeze_audio:  # type: ignore[attr-defined]
            self.audio_path.encoder.eval()
        return self

    # -- caches -------------------------------------------------------------------------

    @property
    def proposal_cache(self) -> ProposalCache:
        if self._proposals is None:
            self._proposals = ProposalCache(self.cfg.proposals)  # type: ignore[attr-defined]
        return self._proposals

    def visual_cacheable(self) -> bool:
        """False: the engine's cache would drop ``image``, which proposals need (module docstring)."""
        return False

    def checkpoint_exclude_prefixes(self) -> list[str]:
        """A frozen pretrained encoder is rebuilt from its own weights, so it is not saved."""
        enc = self.visual_encoder
        return ["visual_encoder."] if self.cfg.freeze_visual and bool(getattr(enc, "pretrained", False)) else []

    def _memo(self) -> FeatureCache | None:
        cfg: ProposalMILConfig = self.cfg  # type: ignore[assignment]
        if not (
            cfg.memo_visual_features and cfg.freeze_visual and bool(getattr(self.visual_encoder, "pretrained", False))
        ):
            return None
        if self._feature_memo is None:
            self._feature_memo = FeatureCache.for_encoder(
                default_cache_root().parent / "features",
                cfg.visual_encoder,
                cfg.visual_encoder_kwargs,
                self.visual_encoder,
                {"image": dataclasses.asdict(cfg.image), "keyed_by": "content_key"},
                memory_items=cfg.memo_memory_items,
            )
        return self._feature_memo

    def frame_features(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) -> encoder map (B, C, h, w); memoised by image content while training a frozen encoder."""
        memo = self._memo() if self.training else None
        if memo is None:
            return self.encode_images(images)
        keys = [content_key(im) for im in images]
        return memo.get_or_compute(keys, lambda idx: self.encode_images(images[idx]).cpu()).to(images.device)

    # -- the three streams ----------------------------------------------------------------

    def _streams(
        self, feat: torch.Tensor, images: torch.Tensor, wav: torch.Tensor, bag: Literal["top_k", "all"]
    ) -> dict[str, torch.Tensor]:
        """Per frame: encoder map (B', C, h, w), images (B', 3, H, W), spectrogram-ready audio (B', N) -> outputs."""
        cfg: ProposalMILConfig = self.cfg  # type: ignore[assignment]
        v = self.visual_adapter(feat)  # (B', d_v, h, w)
        s = self.audio_path.encoder(self.audio_path.frontend(wav))  # (B', d_s)
        return self._heads(v, s, images, bag, cfg)

    def _heads(
        self,
        v: torch.Tensor,
        s: torch.Tensor,
        images: torch.Tensor,
        bag: Literal["top_k", "all"],
        cfg: ProposalMILConfig,
    ) -> dict[str, torch.Tensor]:
        height, width = images.shape[-2:]
        # frame stream (Sec. 3.3)
        w = audio_guided_attention(self.u_v(v), self.u_s(s))  # (B, h, w), sums to 1
        v_att = torch.einsum("bhw,bchw->bc", w, v)  # (B, d_v)
        f_att = self.frame_head(v_att)  # (B, d)
        m = F.interpolate(w[:, None], size=(height, width), mode="bilinear", align_corners=False)[:, 0]  # (B, H, W)
        g = global_response_map(m.detach())  # (B, H, W); selection is not differentiated
        # proposals and the bag (Sec. 3.3, Eq. 2)
        props = self.proposal_cache.batch(images)
        k = cfg.top_k
        boxes_all, valid = pad_proposals(props, k)
        boxes_all, valid = boxes_all.to(v.device), valid.to(v.device)
        conf = proposal_confidence(g, boxes_all, cfg.selection_score)  # (B, R)
        if bag == "top_k":
            boxes, e, _ = select_top_k(conf, boxes_all, valid, k)  # (B, K, 4), (B, K)
        else:
            boxes, e = boxes_all, valid.float()
        # proposal stream + localization network (Sec. 3.4)
        f_box = self.box_head(spp_pool(v, boxes, cfg.spp_levels))  # (B, K, d)
        f_s = self.audio_path.proj(s)  # (B, d)
        if cfg.embedding_relu:  # FC + ReLU projections: non-negative embeddings (see ProposalMILConfig)
            f_box, f_s, f_att = F.relu(f_box), F.relu(f_s), F.relu(f_att)
        if cfg.normalize_embeddings:
            f_box, f_s, f_att = F.normalize(f_box, dim=-1), F.normalize(f_s, dim=-1), F.normalize(f_att, dim=-1)
        d = proposal_similarity(f_s, f_box, e)  # (B, K)
        f_v, alpha = proposal_level_feature(d, f_box)  # (B, d), (B, K)
        return {
            "f_v": f_v, "f_s": f_s, "f_att": f_att, "sim": d, "alpha": alpha, "mask": e,
            "boxes": boxes, "location_map": m, "confidence": conf, "n_proposals": valid.sum(1),
        }  # fmt: skip

    def forward(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Training outputs (see :class:`ProposalMILLoss`). Needs ``image`` (proposals) and ``audio``.

        Still images: ``image`` (B, 3, H, W), ``audio`` (B, N). With
        ``temporal_lstm``: ``image`` (B, T, 3, H, W), ``audio`` (B, T, N); frames are
        flattened to B*T and ``frames_per_video`` = T is returned for the loss.
        """
        cfg: ProposalMILConfig = self.cfg  # type: ignore[assignment]
        if "image" not in batch:
            raise DataError(
                "the proposal method needs batch['image'] for Selective Search even when cached 'vfeat' is given; "
                "the engine keeps it when the method reports visual_cacheable() = False"
            )
        images, wav = batch["image"], batch["audio"]
        bag: Literal["top_k", "all"] = "top_k" if cfg.proposal_selection else "all"
        if not cfg.temporal_lstm:
            if images.dim() != 4 or wav.dim() != 2 or images.shape[0] != wav.shape[0]:
                raise ConfigError(
                    f"expected image (B, 3, H, W) and audio (B, N), got {tuple(images.shape)}, {tuple(wav.shape)}"
                )
            feat = batch["vfeat"].float() if "vfeat" in batch else self.frame_features(images)  # (B, C, h, w)
            out = self._streams(feat, images, wav, bag)
            out["frames_per_video"] = torch.tensor(1)
            return out
        if images.dim() != 5 or wav.dim() != 3 or images.shape[:2] != wav.shape[:2]:
            raise ConfigError(
                f"temporal_lstm expects image (B, T, 3, H, W) and audio (B, T, N), got {tuple(images.shape)}, {tuple(wav.shape)}"
            )
        b, t = images.shape[:2]
        flat_images = images.flatten(0, 1)  # (B*T, 3, H, W)
        feat = batch["vfeat"].flatten(0, 1).float() if "vfeat" in batch else self.frame_features(flat_images)
        v = self.visual_adapter(feat)  # (B*T, d_v, h, w)
        s = self.audio_path.encoder(self.audio_path.frontend(wav.flatten(0, 1)))  # (B*T, d_s)
        assert self.lstms is not None  # built when temporal_lstm
        v5, s3 = self.lstms(v.view(b, t, *v.shape[1:]), s.view(b, t, -1))
        # frames ordered video-major: frame (b, t) at row b*T + t
        out = self._heads(v5.flatten(0, 1), s3.flatten(0, 1), flat_images, bag, cfg)
        out["frames_per_video"] = torch.tensor(t)
        return out

    def build_criterion(self) -> nn.Module:
        cfg: ProposalMILConfig = self.cfg  # type: ignore[assignment]
        return ProposalMILLoss(cfg.edu_weight if cfg.proposal_selection else 0.0, cfg.distance_scale)

    # -- inference ------------------------------------------------------------------------

    def infer(self, images: torch.Tensor, audio: torch.Tensor) -> dict[str, torch.Tensor]:
        """Still-image outputs for (B, 3, H, W), (B, N); every output depends on its own sample only."""
        if images.dim() != 4 or images.shape[1] != 3 or audio.dim() != 2 or images.shape[0] != audio.shape[0]:
            raise ConfigError(
                f"expected images (B, 3, H, W) in [0, 1] and audio (B, N), got {tuple(images.shape)}, {tuple(audio.shape)}"
            )
        cfg: ProposalMILConfig = self.cfg  # type: ignore[assignment]
        feat = self.encode_images(images)
        if self.lstms is None:
            return self._streams(feat, images, audio, "top_k" if cfg.proposal_selection else "all")
        v = self.visual_adapter(feat)
        s = self.audio_path.encoder(self.audio_path.frontend(audio))
        v5, s3 = self.lstms(v[:, None], s[:, None])  # T = 1
        return self._heads(v5[:, 0], s3[:, 0], images, "top_k" if cfg.proposal_selection else "all", cfg)

    def localize(self, images: torch.Tensor, audio: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W), (B, N) -> (B, H, W): ``m_n``, or the rendered box output (``localize_output``)."""
        cfg: ProposalMILConfig = self.cfg  # type: ignore[assignment]
        out = self.infer(images, audio)
        if cfg.localize_output == "location_map":
            return out["location_map"]
        return render_boxes(pick_boxes(out, cfg.localize_max_sources, cfg.multi_iou_threshold), images.shape[-2:])

    def boxes(self, images: torch.Tensor, audio: torch.Tensor, max_sources: int | None = None) -> list[torch.Tensor]:
        """Per sample (n, 5): ``x1, y1, x2, y2`` in model-input pixels and the score ``d_n^k`` (Sec. 4.3).

        ``n <= max_sources`` (default ``localize_max_sources``): the top proposal, or the
        top non-overlapping ones. This is the box contract of ``avloc localize``.
        """
        cfg: ProposalMILConfig = self.cfg  # type: ignore[assignment]
        with torch.no_grad():
            out = self.infer(images, audio)
        h, w = images.shape[-2:]
        scale = images.new_tensor([w, h, w, h])
        picked = pick_boxes(out, max_sources or cfg.localize_max_sources, cfg.multi_iou_threshold)
        return [torch.cat([bx * scale, sc[:, None]], dim=1) for bx, sc in picked]

    def onscreen_scores(self, images: torch.Tensor, audio: torch.Tensor) -> dict[str, torch.Tensor]:
        """Sec. 4.2 scores: ``distance`` = |f_n^v - f_n^s| (m_on) and ``d_on`` = max_k d_n^k, each (B,)."""
        out = self.infer(images, audio)
        return {"distance": (out["f_v"] - out["f_s"]).norm(dim=-1), "d_on": out["sim"].amax(dim=1)}

    def onscreen(self, images: torch.Tensor, audio: torch.Tensor) -> torch.Tensor:
        """(B,) 1.0 = on-screen by ``onscreen_criterion`` (``d_on``, ``m_on`` or their ``or``), else 0.0."""
        cfg: ProposalMILConfig = self.cfg  # type: ignore[assignment]
        sc = self.onscreen_scores(images, audio)
        by_d = sc["d_on"] > cfg.d_on_threshold
        if cfg.onscreen_criterion == "d_on":
            return by_d.float()
        m = float(self.m_on_threshold)
        if not np.isfinite(m):
            raise ConfigError(
                "m_on is not calibrated: run ProposalMIL.calibrate_onscreen on training pairs, or use onscreen_criterion='d_on'"
            )
        by_m = sc["distance"] < m
        return (by_m if cfg.onscreen_criterion == "m_on" else by_m | by_d).float()

    @torch.no_grad()
    def calibrate_onscreen(
        self, batches: Iterable[dict[str, Any]], use_labels: bool = False, max_batches: int | None = None
    ) -> float:
        """Set ``m_on_threshold`` = (median positive distance + median negative distance) / 2 (Sec. 4.2).

        ``use_labels=False`` (training data of on-screen pairs): every pair
        (image_b, audio_b) is positive and (image_b, audio_{(b+1) mod B}) negative.
        ``use_labels=True``: pairs are taken as given, labelled by ``batch["onscreen"]``.
        Returns the threshold; it lives in a buffer, so checkpoints keep it.
        """
        was = self.training
        self.eval()
        dists: list[np.ndarray] = []
        labels: list[np.ndarray] = []
        dev = self.m_on_threshold.device
        try:
            for i, batch in enumerate(batches):
                if max_batches is not None and i >= max_batches:
                    break
                images, audio = batch["image"].to(dev), batch["audio"].to(dev)
                pos = self.onscreen_scores(images, audio)["distance"].cpu().numpy()
                dists.append(pos)
                if use_labels:
                    labels.append(np.asarray(batch["onscreen"], dtype=bool))
                    continue
                if images.shape[0] < 2:
                    raise DataError(
                        "calibrate_onscreen without labels needs batches of >= 2 pairs (negatives from other clips)"
                    )
                neg = self.onscreen_scores(images, audio.roll(-1, dims=0))["distance"].cpu().numpy()
                dists.append(neg)
                labels += [np.ones(len(pos), bool), np.zeros(len(neg), bool)]
        finally:
            self.train(was)
        if not dists:
            raise DataError("calibrate_onscreen got no batches")
        m = median_distance_threshold(np.concatenate(dists), np.concatenate(labels))
        self.m_on_threshold.fill_(m)
        return m


def pick_boxes(
    out: dict[str, torch.Tensor], max_sources: int, iou_threshold: float
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Top proposal (``max_sources=1``) or top non-overlapping proposals by ``d_n^k``, per sample (Sec. 4.3)."""
    if max_sources < 1:
        raise ConfigError(f"max_sources must be >= 1, got {max_sources}")
    res = []
    for boxes, sim, e in zip(out["boxes"], out["sim"], out["mask"]):  # (K, 4), (K,), (K,)
        ok = e > 0
        bx, sc = boxes[ok], sim[ok]
        keep = nms(bx, sc, iou_threshold, max_keep=max_sources) if max_sources > 1 else sc.argmax()[None]
        res.append((bx[keep], sc[keep]))
    return res


def render_boxes(picked: list[tuple[torch.Tensor, torch.Tensor]], size: tuple[int, int] | torch.Size) -> torch.Tensor:
    """Binary maps (B, H, W): 1 inside any picked box (the predicted region of the box output)."""
    h, w = int(size[0]), int(size[1])
    ys = (torch.arange(h) + 0.5) / h
    xs = (torch.arange(w) + 0.5) / w
    maps = []
    for boxes, _ in picked:
        b = boxes.detach().cpu().float()  # (n, 4)
        iny = (ys[None, :] >= b[:, 1:2]) & (ys[None, :] < b[:, 3:4])  # (n, H)
        inx = (xs[None, :] >= b[:, 0:1]) & (xs[None, :] < b[:, 2:3])  # (n, W)
        maps.append((iny[:, :, None] & inx[:, None, :]).any(dim=0).float())
    return torch.stack(maps).to(picked[0][0].device if picked else "cpu")


# ----------------------------------------------------------------------------- loss


def distance_ratio_loss(
    f_v: torch.Tensor, f_pos: torch.Tensor, f_neg: torch.Tensor, scale: float = 1.0
) -> torch.Tensor:
    """Senocak et al. Eq. 3 per frame: (B, d) query, positive, negative -> (B,) ``r+^2 + (r- - 1)^2``.

    ``scale`` multiplies both distances inside the ratio (``r+ = exp(s D+) / (exp(s D+) + exp(s D-))``);
    1 is the published loss (see ``ProposalMILConfig.distance_scale``).
    """
    dist = torch.stack([(f_v - f_pos).norm(dim=-1), (f_v - f_neg).norm(dim=-1)], dim=-1)  # (B, 2)
    r = (scale * dist).softmax(dim=-1)  # exp(sD) / (exp(sD+) + exp(sD-)), overflow-safe
    return r[:, 0].square() + (r[:, 1] - 1).square()


def euclidean_loss(f_v: torch.Tensor, f_att: torch.Tensor) -> torch.Tensor:
    """Sec. 3.5 ``L^edu = |f_n^v - f_n^att|_2^2``: (B, d), (B, d) -> (B,)."""
    return (f_v - f_att).square().sum(dim=-1)


class ProposalMILLoss(nn.Module):
    """``L = mean_n (L_n^tri + lambda L_n^edu)`` (Sec. 3.5); negatives: the same frame of video ``(b + 1) mod B``."""

    def __init__(self, edu_weight: float = 0.5, distance_scale: float = 1.0) -> None:
        super().__init__()
        self.edu_weight = edu_weight
        self.distance_scale = distance_scale

    def forward(self, outputs: dict[str, torch.Tensor], batch: dict[str, Any] | None = None) -> dict[str, torch.Tensor]:
        f_v, f_s, f_att = outputs["f_v"], outputs["f_s"], outputs["f_att"]  # (B', d)
        t = int(outputs.get("frames_per_video", torch.tensor(1)))
        if f_v.shape[0] < 2 * t:
            raise ConfigError("the distance-ratio loss needs >= 2 videos per batch (negatives come from another video)")
        f_neg = f_s.roll(-t, dims=0)  # frame n of the next video
        tri = distance_ratio_loss(f_v, f_s, f_neg, self.distance_scale)  # (B',)
        edu = euclidean_loss(f_v, f_att)  # (B',)
        loss = (tri + self.edu_weight * edu).mean()
        return {
            "loss": loss,
            "tri": tri.mean().detach(),
            "edu": edu.mean().detach(),
            "d_on": outputs["sim"].amax(dim=1).mean().detach(),
        }


# ----------------------------------------------------------------------------- config


@dataclass
class ProposalMILConfig(TwoStreamConfig):
    """Settings of the proposal-based method (sources in brackets).

    ``top_k``: bag size K (Sec. 3.3; Table 3: 20 best). ``edu_weight``: lambda
    (Sec. 4.1: 0.5). ``distance_scale``: multiplies the distances inside the
    distance ratio (a softmax inverse temperature; 1 = the published loss, ours).
    ``embedding_relu``: the FC projections of the three streams end in a ReLU
    (the paper says only "FC layers"; its loss comes from [31], whose embeddings
    are post-ReLU). Non-negative embeddings keep ``cos >= 0``, so Eq. 3's ReLU
    cannot zero a whole bag (``alpha = 0``, ``f_v = 0``, no gradient): with plain
    linear projections that happened within 20-50 steps on DigitScenes.
    ``audio_init_from``: a checkpoint or zoo name whose audio encoder (same
    front-end and encoder settings) initialises the audio stream: the paper's
    audio network is pretrained (VGGish), ours otherwise starts from scratch;
    ``freeze_audio`` keeps it fixed.
    ``d_on_threshold``: 0.2 (Sec. 4.2). ``spp_levels``: 1, 2, 4
    (SPP-net, He et al. 2015, the paper's [17]). ``proposals``: Selective Search
    (Sec. 3.1, [39]; :class:`~avloc.methods.proposals.ProposalConfig`).
    ``proposal_selection``: False = Table 3 "- ProSelectNet" (all proposals, L^tri
    only). ``selection_score``: the proposal confidence of Sec. 3.3: ``sum``
    accumulates ``g_n`` inside the box (the paper, literally; a larger box never
    scores less, so the bag is biased to the largest proposals); ``centred``
    accumulates ``g_n - mean(g_n)``, so pixels below the frame's mean response
    count against a box and the bag favours boxes that cover the response
    tightly (ours; the paper's stated intent, "how well they cover the GRM"). ``embed_dim`` (``d``), ``att_dim``, ``head_hidden``: not given in the
    paper (ours). ``visual_adapter_dim``, ``normalize_embeddings``,
    ``memo_visual_features``: see "Deviations" in the module docstring.
    ``temporal_lstm``: the modality LSTMs for video batches (Sec. 3.2).
    ``onscreen_criterion``: ``or`` (Table 1's best), ``d_on`` or ``m_on``.
    ``multi_iou_threshold``: NMS IoU for "non-overlapping" proposals (Sec. 4.3: 0).
    ``localize_output`` / ``localize_max_sources``: what ``localize`` returns.
    """

    embed_dim: int = 256
    att_dim: int = 128
    head_hidden: int = 0
    visual_adapter_dim: int = 128
    top_k: int = 20
    edu_weight: float = 0.5
    distance_scale: float = 1.0
    embedding_relu: bool = True
    audio_init_from: str | None = None
    freeze_audio: bool = False
    spp_levels: tuple[int, ...] = SPP_LEVELS
    proposals: ProposalConfig = field(default_factory=ProposalConfig)
    proposal_selection: bool = True
    selection_score: Literal["sum", "centred"] = "sum"
    normalize_embeddings: bool = True
    temporal_lstm: bool = False
    d_on_threshold: float = 0.2
    onscreen_criterion: Literal["or", "d_on", "m_on"] = "or"
    multi_iou_threshold: float = 0.0
    localize_output: Literal["location_map", "boxes"] = "location_map"
    localize_max_sources: int = 1
    memo_visual_features: bool = True
    memo_memory_items: int = 4096

    def __post_init__(self) -> None:
        super().__post_init__()
        check_widths(att_dim=self.att_dim, top_k=self.top_k)
        check_widths(0, head_hidden=self.head_hidden, visual_adapter_dim=self.visual_adapter_dim)
        if self.distance_scale <= 0:
            raise ConfigError(f"distance_scale must be > 0, got {self.distance_scale}")
        if self.edu_weight < 0:
            raise ConfigError(f"edu_weight (lambda) must be >= 0, got {self.edu_weight}")
        if not self.spp_levels or min(self.spp_levels) < 1:
            raise ConfigError(f"spp_levels must be positive grid sizes, got {self.spp_levels}")
        if self.onscreen_criterion not in ("or", "d_on", "m_on"):
            raise ConfigError(f"onscreen_criterion must be or, d_on or m_on, got {self.onscreen_criterion!r}")
        if self.selection_score not in ("sum", "centred"):
            raise ConfigError(f"selection_score must be sum or centred, got {self.selection_score!r}")
        if self.localize_output not in ("location_map", "boxes"):
            raise ConfigError(f"localize_output must be location_map or boxes, got {self.localize_output!r}")
        if self.localize_max_sources < 1:
            raise ConfigError(f"localize_max_sources must be >= 1, got {self.localize_max_sources}")


# ----------------------------------------------------------------------------- registration

ProposalMIL.config_class = ProposalMILConfig
register_method("proposal")(ProposalMIL)
