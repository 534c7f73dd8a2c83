"""Two-stage class-aware localization of multiple sound sources (Qian, Hu, Dinkel, Wu, Xu, Lin,
"A Two-Stage Framework for Multiple Sound-Source Localization", ECCV 2020).

Stage 1 (Sec. 2.1), multi-task learning:

* multi-label classification of the audio and of the image with binary
  cross-entropy (Eq. 1): ``L_cls = H_bce(y_a, p_a) + H_bce(y_v, p_v)``. The
  audio targets ``y_a`` are the batch's ``labels`` (the classes heard). The
  image targets ``y_v`` follow ``visual_labels``: ``"visible"`` (default, the
  paper's setting: video tags or a visual tagger's pseudo-labels describe what
  the image shows) uses the batch's ``visible_labels`` (DigitScenes: every
  digit in view, sounding or silent); ``"sounding"`` uses ``labels`` for both
  modalities (a dataset that has only clip tags). Pseudo-labels from a
  pretrained tagger are not implemented: a batch without the labels raises;
* audio-visual correspondence as a two-way classification (Eq. 2): audio map
  ``F_a`` and visual map ``O_v`` go through convolutions, are pooled and
  concatenated into one ``avc_dim`` (1024) vector, then FC ``1024 -> 128 -> 2``;
  pairs ``(a_i, v_j)`` with ``i != j`` (other clips of the batch) are the
  mis-corresponding pairs. As in the public implementation, every ``(i, j)`` of
  the batch is scored and the cross-entropy is averaged separately over the
  corresponding and mis-corresponding pairs (``mean_pos / 2 + mean_neg / 2``);
* ``L_mul = L_cls + lambda L_avc`` (Eq. 3), ``lambda = 1`` (the paper leaves it
  open; the public implementation adds the terms unweighted).

Stage 2 (Sec. 2.2), audio-visual feature alignment:

* Grad-CAM (Selvaraju et al. 2017) per class on both modalities (Eq. 4):
  ``alpha_k^c = mean_{u,v} d p_hat^c / d F^k(u,v)``,
  ``W^c = ReLU(sum_k alpha_k^c F^k)``, written with ``torch.autograd.grad`` on the
  last feature maps ``F_a`` (audio, over time) and ``F_v`` (visual, over space);
  the maps are constants for the rest of the graph (attention weights);
* class-aware features by map-weighted pooling of the embedding maps ``E_r``
  (Eq. 5): ``f_r^c = sum_{u,v} E_r(u,v) W_r^c(u,v) / sum_{u,v} W_r^c(u,v)``;
* projections ``g_a``, ``g_v``: FC ``512 -> 128 -> 128`` (Eq. 6), Euclidean
  distance ``D = ||g_a(f_a^m) - g_v(f_v^n)||_2``;
* contrastive alignment with margin (Eq. 7):
  ``sum delta D^2 + (1 - delta) max(Delta - D, 0)^2``, positives = same class
  and same clip, over the valid classes only (footnote 3: class probability
  above ``valid_threshold`` on both sides). By default the two sums are averaged
  separately (positives, negatives), as the public implementation does; set
  ``ava_reduction="sum"`` for the literal sum of Eq. 7;
* the stage-1 losses are kept during stage 2 (public implementation).

Localization (Sec. 2.3, Eq. 8): ``K^c(u,v) = ||g_a(f_a^c) - g_v(E_v)(u,v)||_2``,
every visual position ``E_v(u,v)`` projected with the same ``g_v`` (and the
same L2 normalisation) as the pooled class features of Eq. 6. A small
distance means the position matches the class-``c`` audio; the paper then
says only "normalized and resized". ``map_norm`` picks the transform:
``cosine`` (default, the public implementation's read-out): ``relu(1 - K^2 / 2)``
(on unit-norm embeddings exactly the ReLU'd cosine similarity the public code
computes) divided by its maximum per class map; ``minmax``: ``-K`` min-max
normalised per map (stretches every map to [0, 1] whatever its absolute
distances); ``margin``: ``relu(1 - K / Delta)``. The class-agnostic map
(Sec. 3.1) is the sum of the maps of the valid classes (audio probability >=
``valid_threshold``; the top class is always valid) weighted by their
normalised probabilities. Maps are returned at feature resolution; the
evaluation protocols resize them (bilinear) to their own frame, which for
these linear combinations equals resizing each class map first.

Addition, not the paper's method (``class_pooling="projections"``): Eq. 5 pools
the embedding map and Eq. 6 projects the pooled vector, so ``g_v`` only ever
sees pooled features in training while Eq. 8 applies it to single positions.
With ``projections`` every position is projected first and the class feature
is the map-weighted mean of the position embeddings (re-normalised), on both
modalities; Eq. 7 then trains exactly the per-position embeddings that Eq. 8
compares. For a linear ``g`` without normalisation the two orders are equal.

The paper's baselines (Table 2) are configs of this module:

* ``localization="cam"`` (``stage=1``): "multi-task", i.e. stage 1 alone; class
  maps are the visual Grad-CAMs of each class, weighted by the audio class
  probabilities (the paper's "CAM" method, Sec. 3.3);
* ``use_classification=False, localization="avc"``: "AVC", correspondence only;
  the class-agnostic map is the Grad-CAM of the "corresponds" logit on the
  visual map, and every class map is that same map (class-agnostic evaluation).

Training the two stages with the one training loop: train ``stage=1``, then
``stage=2`` with ``init_from=<stage-1 checkpoint>``; the stage-1 weights are
loaded when the model is built (see :meth:`TwoStage.load_stage1`). Every
module exists in both stages, so checkpoints of either stage have the same
keys. :data:`PRESETS` holds the named configs (paper settings and a
CPU-friendly DigitScenes preset).

Architecture choices the paper leaves to its Fig. 2 (documented here):
``F_v`` is a trainable conv-BN-ReLU on top of the (frozen, cacheable) visual
encoder map, ``F_a`` is the audio encoder's per-time map ``(B, C, T')``; the
classifiers are global average pooling + linear on ``F``; ``E_r`` is a 1x1
conv + ReLU on ``F_r`` (``feat_dim`` channels, the paper's 512);
``O_v = F_v``; the AVC branches are a conv + ReLU + global max pool per
modality, each giving ``avc_dim / 2`` channels.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn

from avloc.checkpoint import load_checkpoint
from avloc.config import config_from_dict, config_to_dict
from avloc.encoders import AudioEncoder, create_encoder
from avloc.errors import CheckpointError, ConfigError, DataError
from avloc.frontends.audio import AudioFrontend, AudioFrontendConfig
from avloc.frontends.image import ImageConfig
from avloc.methods import register_method
from avloc.methods.base import Capability, ClassMaps, DetectedClasses, LocalizationMethod, MethodConfig, check_widths
from avloc.methods.blocks import NORM_EPS, build_visual_encoder, labels_to_multihot, minmax_per_sample

# ----------------------------------------------------------------------------- building blocks


def grad_cam(feat: torch.Tensor, head: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
    """Grad-CAM (Selvaraju et al. 2017, Eqs. 1-2; the paper's Eq. 4) of every output of ``head``.

    ``feat``: feature map ``(B, K, *S)`` (``S`` = ``(T,)`` for audio, ``(h, w)`` for images);
    ``head``: ``(B, K, *S) -> (B, C)`` pre-activation scores, each sample's scores depending
    only on that sample's map. Returns ``W`` ``(B, C, *S)``:
    ``alpha[b, c, k] = mean_S d head(feat)[b, c] / d feat[b, k, S]``,
    ``W[b, c] = ReLU(sum_k alpha[b, c, k] feat[b, k])``.
    The gradient is taken on a detached copy of ``feat``: the maps are constants for any
    surrounding graph. Works under ``torch.no_grad`` and ``torch.inference_mode``.
    """
    if feat.dim() < 3:
        raise ConfigError(f"grad_cam needs a feature map (B, K, *S), got shape {tuple(feat.shape)}")
    with torch.inference_mode(False), torch.enable_grad():
        a = feat.detach().clone().requires_grad_(True)  # (B, K, *S), a normal (non-inference) leaf
        scores = head(a)  # (B, C)
        if scores.dim() != 2 or scores.shape[0] != a.shape[0]:
            raise ConfigError(f"grad_cam head must return (B, C) scores, got {tuple(scores.shape)}")
        n_cls = scores.shape[1]
        # one backward per class, all at once: grad_outputs (C, B, C) one-hot along the last axis
        onehot = torch.eye(n_cls, dtype=scores.dtype, device=scores.device)[:, None, :].expand(n_cls, *scores.shape)
        (grads,) = torch.autograd.grad(scores, a, grad_outputs=onehot, is_grads_batched=True)  # (C, B, K, *S)
    spatial = tuple(range(3, grads.dim()))
    alpha = grads.mean(dim=spatial)  # (C, B, K)
    cam = torch.einsum("cbk,bk...->bc...", alpha, a.detach())  # (B, C, *S)
    return F.relu(cam)


def weighted_pool(emb: torch.Tensor, weights: torch.Tensor, eps: float = NORM_EPS) -> torch.Tensor:
    """Eq. 5: ``f^c = sum_S E(S) W^c(S) / sum_S W^c(S)``; ``(B, D, *S)``, ``(B, C, *S)`` -> ``(B, C, D)``.

    A class whose map is zero everywhere gets the zero vector (its denominator is floored at ``eps``).
    """
    if emb.shape[0] != weights.shape[0] or emb.shape[2:] != weights.shape[2:]:
        raise ConfigError(f"weighted_pool: embedding {tuple(emb.shape)} and maps {tuple(weights.shape)} do not align")
    e = emb.flatten(2)  # (B, D, N)
    w = weights.flatten(2)  # (B, C, N)
    num = torch.einsum("bdn,bcn->bcd", e, w)  # (B, C, D)
    return num / w.sum(dim=2, keepdim=True).clamp_min(eps)  # (B, C, D)


def alignment_loss(
    fa: torch.Tensor,
    fv: torch.Tensor,
    valid_a: torch.Tensor,
    valid_v: torch.Tensor,
    margin: float,
    reduction: Literal["balanced", "sum"] = "balanced",
) -> dict[str, torch.Tensor]:
    """Eq. 7 over all ``(i, m)`` x ``(j, n)`` pairs: projected class features ``(B, C, P)`` each.

    ``valid_a`` / ``valid_v``: ``(B, C)`` bool, the classes taking part (footnote 3).
    Positive pairs (``i = j``, ``m = n``, both valid) contribute ``D^2``; the other valid
    pairs ``max(margin - D, 0)^2``. ``balanced``: mean over positives + mean over
    negatives (an empty set contributes 0); ``sum``: the literal sum of Eq. 7.
    Returns ``loss``, ``pos`` (mean D^2 of positives), ``neg`` (mean hinge term), ``n_pos``.
    """
    b, c, p = fa.shape
    if fv.shape != fa.shape or valid_a.shape != (b, c) or valid_v.shape != (b, c):
        raise ConfigError(f"alignment_loss: shapes {tuple(fa.shape)}, {tuple(fv.shape)}, {tuple(valid_a.shape)}, {tuple(valid_v.shape)}")
    d2 = pairwise_sq_dist(fa.reshape(b * c, p), fv.reshape(b * c, p))  # (BC, BC)
    d = d2.clamp_min(NORM_EPS).sqrt()
    mask = valid_a.reshape(-1, 1) & valid_v.reshape(1, -1)  # (BC, BC)
    pos = torch.eye(b * c, dtype=torch.bool, device=fa.device) & mask
    neg = mask & ~pos
    pos_terms = d2[pos]
    neg_terms = F.relu(margin - d[neg]).square()
    zero = fa.sum() * 0.0
    pos_mean = pos_terms.mean() if pos_terms.numel() else zero
    neg_mean = neg_terms.mean() if neg_terms.numel() else zero
    if reduction == "balanced":
        loss = pos_mean + neg_mean
    elif reduction == "sum":
        loss = pos_terms.sum() + neg_terms.sum()
    else:
        raise ConfigError(f"unknown ava_reduction {reduction!r}; valid: balanced, sum")
    return {"loss": loss, "pos": pos_mean.detach(), "neg": neg_mean.detach(), "n_pos": torch.tensor(float(pos_terms.numel()))}


def pairwise_sq_dist(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Squared Euclidean distances ``(N, P)``, ``(M, P)`` -> ``(N, M)``: ``|x|^2 + |y|^2 - 2 x.y``, floored at 0.

    On unit vectors this is ``2 - 2 cos``, the public implementation's form. The difference form
    ``(x[:, None] - y[None]).square().sum(-1)`` materialises an ``(N, M, P)`` tensor (N = M = 640
    clip-class pairs at batch 64) and dominated the stage-2 step time (docs/BENCHMARKS.md).
    """
    return (x.square().sum(1)[:, None] + y.square().sum(1)[None, :] - 2.0 * (x @ y.T)).clamp_min(0.0)


def distance_maps(audio_emb: torch.Tensor, visual_emb: torch.Tensor) -> torch.Tensor:
    """Eq. 8: ``K^c(u,v) = ||g_a(f_a^c) - g_v(E_v)(u,v)||_2``; ``(B, C, P)``, ``(B, P, h, w)`` -> ``(B, C, h, w)``.

    Expanded as ``|a|^2 + |v|^2 - 2 a.v`` so no (B, C, P, h, w) difference tensor is built.
    """
    cross = torch.einsum("bcp,bphw->bchw", audio_emb, visual_emb)  # (B, C, h, w)
    sq = audio_emb.square().sum(2)[:, :, None, None] + visual_emb.square().sum(1)[:, None] - 2 * cross
    return sq.clamp_min(0.0).sqrt()


def distance_to_maps(k: torch.Tensor, mode: str, margin: float) -> torch.Tensor:
    """Eq. 8 distances ``K`` ``(B, C, h, w)`` -> class maps in [0, 1] (high = matches the class audio).

    ``cosine``: ``relu(1 - K^2 / 2)`` (the cosine similarity of unit vectors, ReLU'd) divided by
    each map's maximum (an all-zero map stays zero); ``minmax``: ``-K`` min-max normalised per map;
    ``margin``: ``relu(1 - K / margin)`` (absolute, no per-map rescaling).
    """
    if mode == "cosine":
        sim = F.relu(1.0 - k.square() / 2)
        return sim / sim.flatten(2).amax(dim=2)[:, :, None, None].clamp_min(NORM_EPS)
    if mode == "minmax":
        return minmax_per_sample((-k).flatten(0, 1)).view_as(k)
    if mode == "margin":
        return F.relu(1.0 - k / margin)
    raise ConfigError(f"unknown map_norm {mode!r}; valid: cosine, minmax, margin")


def project_positions(emb: torch.Tensor, proj: nn.Module) -> torch.Tensor:
    """Apply a projection ``(..., E) -> (..., P)`` at every position of a map: ``(B, E, *S)`` -> ``(B, P, *S)``."""
    return proj(emb.movedim(1, -1)).movedim(-1, 1)  # type: ignore[no-any-return]


class ProjectionMLP(nn.Module):
    """``g_r`` of Eq. 6: FC ``in -> hidden -> out`` with a ReLU between (paper: 512-128-128)."""

    def __init__(self, in_dim: int, hidden: int, out_dim: int, normalize: bool) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(in_dim, hidden), nn.ReLU(inplace=True), nn.Linear(hidden, out_dim))
        self.normalize = normalize

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (..., in) -> (..., out)
        y = self.net(x)
        return F.normalize(y, dim=-1, eps=NORM_EPS) if self.normalize else y


class AVCHead(nn.Module):
    """Audio-visual correspondence network (Eq. 2): ``F_a``, ``O_v`` -> 2-way logits for every pair.

    Each modality: conv (1x1 audio, ``kernel`` x ``kernel`` visual) + ReLU + global max pool -> ``avc_dim / 2``;
    concatenation ``avc_dim`` (1024) -> FC ``avc_hidden`` (128) -> ReLU -> FC 2.
    """

    def __init__(self, feat_dim: int, avc_dim: int, avc_hidden: int, kernel: int = 3) -> None:
        super().__init__()
        if avc_dim % 2:
            raise ConfigError(f"avc_dim must be even (two halves concatenated), got {avc_dim}")
        half = avc_dim // 2
        self.audio_conv = nn.Sequential(nn.Conv1d(feat_dim, half, 1), nn.ReLU(inplace=True))
        self.visual_conv = nn.Sequential(nn.Conv2d(feat_dim, half, kernel, padding=kernel // 2), nn.ReLU(inplace=True))
        self.fc = nn.Sequential(nn.Linear(avc_dim, avc_hidden), nn.ReLU(inplace=True), nn.Linear(avc_hidden, 2))

    def audio_vec(self, fa: torch.Tensor) -> torch.Tensor:  # (B, K, T) -> (B, half)
        return self.audio_conv(fa).amax(dim=2)

    def visual_vec(self, fv: torch.Tensor) -> torch.Tensor:  # (B, K, h, w) -> (B, half)
        return self.visual_conv(fv).amax(dim=(2, 3))

    def pair_logits(self, a: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """Matched rows: ``(B, half)``, ``(B, half)`` -> ``(B, 2)``."""
        return self.fc(torch.cat([a, v], dim=1))  # type: ignore[no-any-return]

    def all_pairs(self, a: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """Every (audio i, image j): ``(B, half)``, ``(B, half)`` -> ``(B, B, 2)``."""
        b = a.shape[0]
        cat = torch.cat([a[:, None].expand(b, b, -1), v[None].expand(b, b, -1)], dim=2)  # (B, B, avc_dim)
        return self.fc(cat)  # type: ignore[no-any-return]


# ----------------------------------------------------------------------------- model


class TwoStage(LocalizationMethod):
    """Qian et al. 2020: multi-task stage 1, Grad-CAM disentangled alignment stage 2 (see module doc)."""

    capabilities = frozenset({Capability.CLASSES, Capability.DETECTED})

    def __init__(self, cfg: TwoStageConfig) -> None:
        super().__init__(cfg)
        self.cfg: TwoStageConfig = cfg
        c, d = cfg.num_classes, cfg.feat_dim
        self.visual_encoder = build_visual_encoder(cfg)
        vis_ch = self.visual_encoder.feature_info.channels
        # F_v: the last (trainable) conv layer on top of the possibly frozen encoder
        k = cfg.visual_kernel
        self.visual_trunk = nn.Sequential(nn.Conv2d(vis_ch, d, k, padding=k // 2, bias=False), nn.BatchNorm2d(d), nn.ReLU(inplace=True))
        self.audio_frontend = AudioFrontend(cfg.audio)
        enc = create_encoder(cfg.audio_encoder, **cfg.audio_encoder_kwargs)
        if not isinstance(enc, AudioEncoder):
            raise ConfigError(f"audio_encoder {cfg.audio_encoder!r} is not an audio encoder (got {type(enc).__name__})")
        self.audio_encoder = enc
        # F_a: the audio encoder's per-time map, brought to feat_dim channels
        self.audio_trunk = nn.Sequential(nn.Conv1d(enc.out_channels, d, 1, bias=False), nn.BatchNorm1d(d), nn.ReLU(inplace=True))
        # classification heads on F (global average pool + linear), Eq. 1
        self.audio_cls = nn.Linear(d, c)
        self.visual_cls = nn.Linear(d, c)
        # correspondence network, Eq. 2
        self.avc = AVCHead(d, cfg.avc_dim, cfg.avc_hidden, cfg.visual_kernel)
        # E_r maps (Eq. 5) and projections g_r (Eq. 6)
        self.audio_embed = nn.Sequential(nn.Conv1d(d, cfg.embed_dim, 1), nn.ReLU(inplace=True))
        self.visual_embed = nn.Sequential(nn.Conv2d(d, cfg.embed_dim, 1), nn.ReLU(inplace=True))
        self.audio_proj = ProjectionMLP(cfg.embed_dim, cfg.proj_hidden, cfg.proj_dim, cfg.normalize_embed)
        self.visual_proj = ProjectionMLP(cfg.embed_dim, cfg.proj_hidden, cfg.proj_dim, cfg.normalize_embed)
        if cfg.init_from:
            self.load_stage1(cfg.init_from)

    # -- stage-1 initialisation ------------------------------------------------------

    #: config fields that must agree between the stage-1 checkpoint and this model
    ARCH_FIELDS = (
        "visual_encoder", "visual_encoder_kwargs", "audio_encoder", "audio_encoder_kwargs", "num_classes",
        "feat_dim", "embed_dim", "proj_hidden", "proj_dim", "avc_dim", "avc_hidden", "visual_kernel", "audio", "image",
    )

    def load_stage1(self, path: str | Path) -> None:
        """Initialise from a ``twostage`` checkpoint (normally stage 1) before stage-2 training.

        The checkpoint's architecture fields must match this config. ``cfg.init_from`` is
        consumed: it is cleared so that the saved config rebuilds this model without the
        file, and ``checkpoint_meta["initialized_from"]`` records it.
        """
        p = Path(path)
        if not p.is_file():
            raise CheckpointError(f"init_from: stage-1 checkpoint not found: {p} (train stage=1 first)")
        ck = load_checkpoint(p, map_location="cpu")
        if ck.method != self.name:
            raise CheckpointError(f"init_from {p}: a {ck.method!r} checkpoint, expected {self.name!r}")
        mine = config_to_dict(self.cfg)
        diff = [k for k in self.ARCH_FIELDS if k in ck.config and ck.config[k] != mine[k]]
        if diff:
            raise CheckpointError(f"init_from {p}: architecture differs from this config in {diff}; use the stage-1 settings")
        skip = tuple(ck.meta.get("excluded_prefixes", []))
        missing, unexpected = self.load_state_dict(ck.state_dict, strict=False)
        bad = [k for k in missing if not k.startswith(skip)]
        if bad or unexpected:
            raise CheckpointError(f"init_from {p}: weights do not match (missing {bad[:5]}, unexpected {list(unexpected)[:5]})")
        self.checkpoint_meta["initialized_from"] = str(p)
        self.cfg.init_from = None

    # -- encoders --------------------------------------------------------------------

    def audio_map(self, wav: torch.Tensor) -> torch.Tensor:
        """Waveform ``(B, N)`` -> ``F_a`` ``(B, feat_dim, T')``."""
        if wav.dim() != 2:
            raise ConfigError(f"audio must be a waveform batch (B, N), got shape {tuple(wav.shape)}")
        spec = self.audio_frontend(wav)  # (B, 1, F, T)
        return self.audio_trunk(self.audio_encoder.forward_time(spec))  # type: ignore[no-any-return]  # (B, d, T')

    def visual_map(self, vfeat: torch.Tensor) -> torch.Tensor:
        """Encoder map ``(B, C_enc, h, w)`` -> ``F_v`` ``(B, feat_dim, h, w)``."""
        c = self.visual_encoder.feature_info.channels
        if vfeat.dim() != 4 or vfeat.shape[1] != c:
            raise ConfigError(f"visual features must be (B, {c}, h, w) from {self.cfg.visual_encoder!r}, got {tuple(vfeat.shape)}")
        return self.visual_trunk(vfeat.float())  # type: ignore[no-any-return]

    def audio_logits(self, fa: torch.Tensor) -> torch.Tensor:  # (B, d, T) -> (B, C)
        return self.audio_cls(fa.mean(dim=2))  # type: ignore[no-any-return]

    def visual_logits(self, fv: torch.Tensor) -> torch.Tensor:  # (B, d, h, w) -> (B, C)
        return self.visual_cls(fv.mean(dim=(2, 3)))  # type: ignore[no-any-return]

    # -- stage 2: class-aware features -----------------------------------------------

    def class_embedding(self, emb: torch.Tensor, weights: torch.Tensor, proj: ProjectionMLP) -> torch.Tensor:
        """Projected class feature ``(B, C, P)`` from an embedding map ``E`` ``(B, E, *S)`` and class maps ``(B, C, *S)``.

        ``class_pooling="features"`` (Eqs. 5-6): ``g(sum_S E W^c / sum_S W^c)``;
        ``"projections"``: the ``W^c``-weighted mean of the per-position ``g(E(S))``,
        re-normalised when ``normalize_embed``.
        """
        if self.cfg.class_pooling == "features":
            return proj(weighted_pool(emb, weights))  # type: ignore[no-any-return]
        per_pos = project_positions(emb, proj)  # (B, P, *S)
        pooled = weighted_pool(per_pos, weights)  # (B, C, P)
        return F.normalize(pooled, dim=-1, eps=NORM_EPS) if self.cfg.normalize_embed else pooled

    def class_features(self, fa: torch.Tensor, fv: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Eqs. 4-6: projected class-aware features ``g_a(f_a^c)``, ``g_v(f_v^c)``, each ``(B, C, P)``."""
        wa = grad_cam(fa, self.audio_logits)  # (B, C, T)
        wv = grad_cam(fv, self.visual_logits)  # (B, C, h, w)
        ga = self.class_embedding(self.audio_embed(fa), wa, self.audio_proj)  # (B, C, P)
        gv = self.class_embedding(self.visual_embed(fv), wv, self.visual_proj)  # (B, C, P)
        return ga, gv

    # -- training outputs -------------------------------------------------------------

    def forward(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Training outputs: class logits, all-pairs AVC logits and (stage 2) projected class features."""
        if "audio" not in batch:
            raise KeyError("batch needs 'audio' (B, N)")
        fa = self.audio_map(batch["audio"])  # (B, d, T)
        fv = self.visual_map(self.visual_features(batch))  # (B, d, h, w)
        out: dict[str, torch.Tensor] = {
            "logits_a": self.audio_logits(fa),  # (B, C)
            "logits_v": self.visual_logits(fv),  # (B, C)
            "avc_logits": self.avc.all_pairs(self.avc.audio_vec(fa), self.avc.visual_vec(fv)),  # (B, B, 2)
        }
        if self.cfg.stage == 2:
            ga, gv = self.class_features(fa, fv)
            out["class_emb_a"], out["class_emb_v"] = ga, gv  # (B, C, P)
        return out

    def build_criterion(self) -> nn.Module:
        return TwoStageLoss(self.cfg)

    # -- localization -------------------------------------------------------------------

    def _encode(self, images: torch.Tensor, audio: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if images.dim() != 4 or images.shape[1] != 3:
            raise ConfigError(f"images must be (B, 3, H, W) in [0, 1], got shape {tuple(images.shape)}")
        if audio.dim() != 2 or audio.shape[0] != images.shape[0]:
            raise ConfigError(f"audio must be (B, N) with B = {images.shape[0]}, got shape {tuple(audio.shape)}")
        return self.audio_map(audio), self.visual_map(self.encode_images(images))

    def class_maps(self, fa: torch.Tensor, fv: torch.Tensor) -> torch.Tensor:
        """Per-class maps ``(B, C, h, w)`` in [0, 1] from ``F_a``, ``F_v`` per ``cfg.localization``."""
        cfg = self.cfg
        b, c = fa.shape[0], cfg.num_classes
        if cfg.localization == "align":
            wa = grad_cam(fa, self.audio_logits)  # (B, C, T)
            ga = self.class_embedding(self.audio_embed(fa), wa, self.audio_proj)  # (B, C, P), as in training
            gv = project_positions(self.visual_embed(fv), self.visual_proj)  # (B, P, h, w): g_v of every position
            return distance_to_maps(distance_maps(ga, gv), cfg.map_norm, cfg.margin)
        if cfg.localization == "cam":
            cam = grad_cam(fv, self.visual_logits)  # (B, C, h, w)
            return minmax_per_sample(cam.flatten(0, 1)).view_as(cam)
        # avc: Grad-CAM of the "corresponds" logit of the matched pair, the same map for every class
        av = self.avc.audio_vec(fa).detach()  # (B, half)
        cam = grad_cam(fv, lambda x: self.avc.pair_logits(av, self.avc.visual_vec(x))[:, 1:])  # (B, 1, h, w)
        m = minmax_per_sample(cam[:, 0])  # (B, h, w)
        return m[:, None].expand(b, c, *m.shape[1:]).contiguous()

    def class_probs(self, fa: torch.Tensor) -> torch.Tensor:
        """Audio class probabilities ``(B, C)`` (ones for the class-agnostic AVC config)."""
        if not self.cfg.use_classification:
            return torch.ones(fa.shape[0], self.cfg.num_classes, device=fa.device)
        return torch.sigmoid(self.audio_logits(fa))

    def localize_classes(self, images: torch.Tensor, audio: torch.Tensor) -> ClassMaps:
        """``(B, 3, H, W)``, ``(B, N)`` -> per-class maps ``(B, C, h, w)`` in [0, 1] and audio class probabilities ``(B, C)``."""
        fa, fv = self._encode(images, audio)
        return ClassMaps(self.class_maps(fa, fv), self.class_probs(fa))

    def valid_classes(self, probs: torch.Tensor) -> torch.Tensor:
        """``(B, C)`` probabilities -> ``(B, C)`` bool: probability >= ``valid_threshold``, and always the top class."""
        top = F.one_hot(probs.argmax(dim=1), probs.shape[1]).bool()  # (B, C)
        return (probs >= self.cfg.valid_threshold) | top

    def combine(self, maps: torch.Tensor, probs: torch.Tensor) -> torch.Tensor:
        """Class-agnostic map (Sec. 3.1): valid-class probability-weighted sum ``(B, C, h, w)``, ``(B, C)`` -> ``(B, h, w)``.

        Valid = probability >= ``valid_threshold``; the most probable class is always valid.
        """
        w = probs * self.valid_classes(probs).float()  # (B, C)
        w = w / w.sum(dim=1, keepdim=True).clamp_min(NORM_EPS)
        return torch.einsum("bc,bchw->bhw", w, maps)

    def localize_detected(self, images: torch.Tensor, audio: torch.Tensor) -> DetectedClasses:
        """For ``avloc localize``: class maps ``(B, C, h, w)``, audio class probabilities ``(B, C)``, the
        class-agnostic map ``(B, h, w)`` (= ``localize``) and the detected (valid) classes ``(B, C)`` bool."""
        cm = self.localize_classes(images, audio)
        probs = cm.probabilities
        return DetectedClasses(cm.maps, probs, self.combine(cm.maps, probs), self.valid_classes(probs))

    def localize(self, images: torch.Tensor, audio: torch.Tensor) -> torch.Tensor:
        """``(B, 3, H, W)`` in [0, 1], ``(B, N)`` -> class-agnostic heatmap ``(B, h, w)`` at feature resolution."""
        cm = self.localize_classes(images, audio)
        return self.combine(cm.maps, cm.probabilities)


# ----------------------------------------------------------------------------- loss


class TwoStageLoss(nn.Module):
    """``L_mul = L_cls + lambda L_avc`` (Eqs. 1-3); stage 2 adds ``mu L_ava`` (Eq. 7)."""

    def __init__(self, cfg: TwoStageConfig) -> None:
        super().__init__()
        self.cfg = cfg

    def forward(self, outputs: dict[str, torch.Tensor], batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        cfg = self.cfg
        la, lv, avc = outputs["logits_a"], outputs["logits_v"], outputs["avc_logits"]
        b = la.shape[0]
        if b < 2:
            raise ConfigError("twostage training needs batches of >= 2 clips (negatives come from other clips)")
        terms: dict[str, torch.Tensor] = {}
        loss = la.sum() * 0.0
        # Eq. 2: 2-way cross-entropy on every (audio i, image j); target 1 iff i == j
        target = torch.eye(b, dtype=torch.long, device=avc.device)  # (B, B)
        ce = F.cross_entropy(avc.reshape(-1, 2), target.reshape(-1), reduction="none").view(b, b)
        pos = target.bool()
        l_avc = ce[pos].mean() / 2 + ce[~pos].mean() / 2
        terms["loss_avc"] = l_avc.detach()
        loss = loss + cfg.avc_weight * l_avc
        if cfg.use_classification:
            if "labels" not in batch:
                raise DataError("twostage needs class labels: batch has no 'labels' (set use_classification=False for AVC only)")
            y = labels_to_multihot(batch["labels"], cfg.num_classes, la.device)  # (B, C) audio: classes heard
            yv = y
            if cfg.visual_labels == "visible":
                if "visible_labels" not in batch:
                    raise DataError(
                        "twostage visual_labels='visible' needs the image's classes: batch has no 'visible_labels' "
                        "(set visual_labels='sounding' to train the visual classifier on 'labels')"
                    )
                yv = labels_to_multihot(batch["visible_labels"], cfg.num_classes, la.device)  # (B, C) image tags
            if y.shape[0] != b or yv.shape[0] != b:
                raise DataError(f"labels for {y.shape[0]} / {yv.shape[0]} samples in a batch of {b}")
            l_cls = F.binary_cross_entropy_with_logits(la, y) + F.binary_cross_entropy_with_logits(lv, yv)  # Eq. 1
            terms["loss_cls"] = l_cls.detach()
            loss = loss + l_cls
        if cfg.stage == 2:
            pa, pv = torch.sigmoid(la.detach()), torch.sigmoid(lv.detach())
            ava = alignment_loss(
                outputs["class_emb_a"], outputs["class_emb_v"], pa >= cfg.valid_threshold, pv >= cfg.valid_threshold,
                cfg.margin, cfg.ava_reduction,
            )
            terms["loss_ava"] = ava["loss"].detach()
            terms["ava_pos"], terms["ava_neg"], terms["ava_n_pos"] = ava["pos"], ava["neg"], ava["n_pos"]
            loss = loss + cfg.ava_weight * ava["loss"]
        terms["loss"] = loss
        return terms


# ----------------------------------------------------------------------------- config


def paper_audio() -> AudioFrontendConfig:
    """Qian et al. input pipeline (docs PROTOCOLS.md): 22.05 kHz, 5 s, 64-band log-mel, n_fft 0.04 sr, hop 0.02 sr."""
    sr = 22050
    return AudioFrontendConfig(
        sample_rate=sr, window_seconds=5.0, kind="logmel", n_fft=round(0.04 * sr), hop_length=round(0.02 * sr), n_mels=64
    )


@dataclass
class TwoStageConfig(MethodConfig):
    """Two-stage framework settings; defaults are the paper's (Sec. 2, public code where the paper is silent).

    * ``stage``: 1 trains ``L_cls + lambda L_avc`` (Eq. 3); 2 adds ``ava_weight * L_ava`` (Eq. 7).
    * ``init_from``: a ``twostage`` checkpoint (stage 1) loaded at construction for stage 2.
    * ``localization``: ``align`` (Eq. 8, stage 2), ``cam`` (visual Grad-CAM, the "multi-task"
      baseline), ``avc`` (Grad-CAM of the correspondence logit, the "AVC" baseline).
    * ``use_classification``: False = the AVC-only baseline (no ``L_cls``).
    * ``visual_labels``: targets of the image classifier (Eq. 1): ``visible`` (the paper's
      setting, image tags = what is visible: the batch's ``visible_labels``) or ``sounding``
      (the batch's ``labels``, the audio targets, for both modalities).
    * ``num_classes``: C (DigitScenes: the digits 0-9).
    * widths: ``feat_dim`` (F_r and E_r channels, ResNet-18's 512), ``embed_dim`` (E_r; 512),
      projections ``embed_dim -> proj_hidden -> proj_dim`` (512-128-128), AVC ``avc_dim`` (1024)
      -> ``avc_hidden`` (128) -> 2.
    * ``visual_kernel``: kernel of the visual trunk (``F_v``) and AVC visual convolutions (3; odd).
    * ``avc_weight``: lambda of Eq. 3 (1: public implementation, the paper gives none).
    * ``ava_weight``: weight of Eq. 7 in stage 2 (1, public implementation).
    * ``margin``: Delta of Eq. 7 (1.4 on unit-norm embeddings, public implementation: just under
      the distance sqrt(2) of orthogonal unit vectors); ``normalize_embed``: L2-normalise the
      projections before Eq. 6 (public implementation).
    * ``valid_threshold``: class probability that makes a class valid (footnote 3; 0.3 public code).
    * ``ava_reduction``: ``balanced`` (mean positives + mean negatives, public code) or ``sum`` (Eq. 7).
    * ``map_norm``: Eq. 8 distance -> map: ``cosine`` = ``relu(1 - K^2 / 2)`` / its max per class
      map (public implementation), ``minmax`` per class map of ``-K``, or ``margin`` =
      ``relu(1 - K / Delta)``. Inference only (a trained model can be read out either way).
    * ``class_pooling``: ``features`` (Eqs. 5-6: pool ``E``, then project) or ``projections``
      (an addition, not the paper: project every position, then pool; see the module doc).
    """

    audio: AudioFrontendConfig = field(default_factory=paper_audio)
    image: ImageConfig = field(default_factory=lambda: ImageConfig(size=256, resize=256))
    visual_encoder: str = "efficientnet_lite0"
    visual_encoder_kwargs: dict[str, Any] = field(default_factory=lambda: {"out_stride": 16})
    audio_encoder: str = "resnet18_audio"
    stage: int = 2
    init_from: str | None = None
    localization: Literal["align", "cam", "avc"] = "align"
    use_classification: bool = True
    visual_labels: Literal["visible", "sounding"] = "visible"
    num_classes: int = 10
    feat_dim: int = 512
    embed_dim: int = 512
    proj_hidden: int = 128
    proj_dim: int = 128
    avc_dim: int = 1024
    avc_hidden: int = 128
    visual_kernel: int = 3
    avc_weight: float = 1.0
    ava_weight: float = 1.0
    margin: float = 1.4
    normalize_embed: bool = True
    valid_threshold: float = 0.3
    ava_reduction: Literal["balanced", "sum"] = "balanced"
    map_norm: Literal["cosine", "minmax", "margin"] = "cosine"
    class_pooling: Literal["features", "projections"] = "features"

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.stage not in (1, 2):
            raise ConfigError(f"stage must be 1 or 2, got {self.stage}")
        if self.stage == 2 and not self.use_classification:
            raise ConfigError("stage 2 needs the classifiers (Grad-CAM of class logits): use_classification=True")
        if self.localization == "align" and self.stage != 2:
            raise ConfigError("localization='align' needs the stage-2 alignment (stage=2); stage 1 uses 'cam' or 'avc'")
        if self.localization == "cam" and not self.use_classification:
            raise ConfigError("localization='cam' needs use_classification=True (class logits to explain)")
        check_widths(**{n: getattr(self, n) for n in ("num_classes", "feat_dim", "embed_dim", "proj_hidden",
                                                                  "proj_dim", "avc_dim", "avc_hidden", "visual_kernel")})
        if self.visual_kernel < 1 or self.visual_kernel % 2 == 0:
            raise ConfigError(f"visual_kernel must be a positive odd number, got {self.visual_kernel}")
        if self.margin <= 0:
            raise ConfigError(f"margin must be > 0, got {self.margin}")
        if self.visual_labels not in ("visible", "sounding"):
            raise ConfigError(f"visual_labels must be 'visible' or 'sounding', got {self.visual_labels!r}")
        if self.map_norm not in ("cosine", "minmax", "margin"):
            raise ConfigError(f"map_norm must be 'cosine', 'minmax' or 'margin', got {self.map_norm!r}")
        if self.class_pooling not in ("features", "projections"):
            raise ConfigError(f"class_pooling must be 'features' or 'projections', got {self.class_pooling!r}")
        if not 0.0 <= self.valid_threshold <= 1.0:
            raise ConfigError(f"valid_threshold must be in [0, 1], got {self.valid_threshold}")


def _digitscenes_cpu() -> dict[str, Any]:
    """CPU preset for DigitScenes: 3 s clips at 8 kHz (FSDD's native rate: the spoken digits hold
    nothing above 4 kHz, and no resampling of the utterances) with the paper's log-mel ratios
    (n_fft 0.04 sr, hop 0.02 sr, 64 bands), 224 px frames, frozen cached EfficientNet-Lite0
    (stride 16, 14x14), the small audio CNN at half its default widths (16-32-64-64), the
    method's widths scaled down 4x (512 -> 128, 128 -> 64) and 1x1
    visual convolutions (9x fewer FLOPs than 3x3 on the 14x14 map)."""
    sr = 8000
    return {
        "audio": {"sample_rate": sr, "window_seconds": 3.0, "kind": "logmel", "n_fft": round(0.04 * sr),
                  "hop_length": round(0.02 * sr), "n_mels": 64},
        "image": {"size": 224, "resize": 224},
        "audio_encoder": "small_cnn_audio",
        "audio_encoder_kwargs": {"channels": [16, 32, 64, 64], "time_stride": 4},
        "feat_dim": 128, "embed_dim": 128, "proj_hidden": 64, "proj_dim": 64, "avc_dim": 256, "avc_hidden": 64,
        "visual_kernel": 1,
    }


#: Named configs (override dicts for :class:`TwoStageConfig`): the paper's two stages and its
#: AVC baseline, and the same three on the CPU-friendly DigitScenes preset. Stage 2 needs
#: ``init_from`` set to the stage-1 checkpoint. The "multi-task" baseline is the stage-1 model.
PRESETS: dict[str, dict[str, Any]] = {
    "paper-stage1": {"stage": 1, "localization": "cam"},
    "paper-stage2": {"stage": 2, "localization": "align"},
    "paper-avc": {"stage": 1, "localization": "avc", "use_classification": False},
    "digitscenes-stage1": {**_digitscenes_cpu(), "stage": 1, "localization": "cam"},
    "digitscenes-stage2": {**_digitscenes_cpu(), "stage": 2, "localization": "align"},
    "digitscenes-avc": {**_digitscenes_cpu(), "stage": 1, "localization": "avc", "use_classification": False},
}


def preset_config(name: str, **overrides: Any) -> TwoStageConfig:
    """The named preset (see :data:`PRESETS`) with optional field overrides."""
    if name not in PRESETS:
        raise ConfigError(f"unknown twostage preset {name!r}; valid: {', '.join(sorted(PRESETS))}")
    return config_from_dict(TwoStageConfig, {**PRESETS[name], **overrides})


# ----------------------------------------------------------------------------- registration

TwoStage.config_class = TwoStageConfig
register_method("twostage")(TwoStage)
