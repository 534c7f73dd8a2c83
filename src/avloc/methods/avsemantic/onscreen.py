"""On/off-screen decision of ``avsemantic``: per heard source, from the evidence for *that* source.

Each heard source ``s`` (an AudioSet class above the tagger threshold, score ``a_s``) belongs to one evidence
group ``g(s)`` and carries evidence ``x_s`` in [0, 1] that it is visible:

* ``object`` (dog, piano, boat ...): ``visible`` -- the ImageNet softmax mass of its (and its descendants')
  counterparts above chance; ``detected`` -- the best detector instance of its COCO categories;
* ``human`` (speech, singing, crying ...): ``face`` -- the best face score; ``sync`` -- the chosen speaker's
  audio-mouth synchrony confidence (0 when no face moves with the sound); ``person`` -- the best person
  detection;
* ``narration`` (classes whose source is often unseen: narration, synthesised speech): the same evidence as
  ``human``, with a bias of its own;
* ``none`` (no visual counterpart: wind, water, noise, music with no instrument in view): ``motion`` -- the
  peak correlation of local motion with the audio envelope (Hershey & Movellan 1999's synchrony).

The source is visible with ``p_s = sigmoid(b_g + w_g . x_s)``, every ``w_g >= 0``: more evidence for the heard
source never lowers it. Heard classes grounded on the same thing (YAMNet's "Tick", "Clock" and "Tick-tock"
on one clock; "Noise", "Static" and "White noise" on no visual counterpart) are one physical cause ``k``:
``p_k = max p_s`` and ``r_k = max r_s`` over its classes, with the relative audibility ``r_s = a_s / max_t a_t``
(the loudest heard class counts fully). The frame holds a visible cause with their noisy-OR (Pearl 1988):

    P(on-screen) = 1 - prod_k (1 - p_k) ** r_k

which is non-decreasing in every ``p_s``, hence in every evidence value. A frame with nothing heard uses the
``none`` group on the frame's motion evidence. The parameters are fitted by maximum likelihood on labelled
frames (:func:`fit_onscreen_model`, box-constrained L-BFGS; ``bench/paper/avsemantic/fit_onscreen.py``,
cross-validated by clip, docs/RESULTS.md) and stored in :class:`avloc.methods.avsemantic.method.AVSemanticConfig`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from avloc.errors import ConfigError

#: the evidence each group reads, in weight order
EVIDENCE: Mapping[str, tuple[str, ...]] = {
    "object": ("visible", "detected"),
    "human": ("face", "sync", "person"),
    "narration": ("face", "sync", "person"),
    "none": ("motion",),
}
GROUPS: tuple[str, ...] = tuple(EVIDENCE)
#: logits are clipped to this magnitude (exp overflow)
LOGIT_CLIP = 50.0


@dataclass(frozen=True)
class HeardEvidence:
    """One heard source as the on-screen model sees it: its group, tagger score, evidence values, and the cause
    it is grounded on (:func:`cause_key`; sources with one key are one cause)."""

    group: str
    score: float
    evidence: Mapping[str, float]
    cause: str = ""

    def row(self) -> np.ndarray:
        """The evidence in :data:`EVIDENCE` order, each clipped to [0, 1]; a missing value counts 0."""
        return np.array([min(max(float(self.evidence.get(k, 0.0)), 0.0), 1.0) for k in EVIDENCE[self.group]])


@dataclass(frozen=True)
class OnscreenModel:
    """Biases and non-negative weights per group (module doc)."""

    bias: Mapping[str, float]
    weights: Mapping[str, Sequence[float]]

    def __post_init__(self) -> None:
        if set(self.bias) != set(GROUPS) or set(self.weights) != set(GROUPS):
            raise ConfigError(f"on-screen model: bias and weights need exactly the groups {list(GROUPS)}")
        for g in GROUPS:
            w = [float(v) for v in self.weights[g]]
            if len(w) != len(EVIDENCE[g]):
                raise ConfigError(f"on-screen model: {g} needs {len(EVIDENCE[g])} weights ({', '.join(EVIDENCE[g])}), "
                                  f"got {len(w)}")
            if not all(math.isfinite(v) and v >= 0 for v in w) or not math.isfinite(float(self.bias[g])):
                raise ConfigError(f"on-screen model: {g}: weights must be finite and >= 0 (more evidence for the "
                                  f"heard source never lowers P(on-screen)), bias finite; got {w}, {self.bias[g]}")

    @classmethod
    def from_vector(cls, theta: np.ndarray) -> OnscreenModel:
        """Inverse of :meth:`vector`."""
        bias, weights, k = {}, {}, 0
        for g in GROUPS:
            bias[g] = float(theta[k])
            n = len(EVIDENCE[g])
            weights[g] = tuple(float(v) for v in theta[k + 1 : k + 1 + n])
            k += 1 + n
        return cls(bias, weights)

    def vector(self) -> np.ndarray:
        """``[b_object, w_object..., b_human, w_human..., ...]`` in :data:`GROUPS` order."""
        return np.concatenate([[self.bias[g], *self.weights[g]] for g in GROUPS]).astype(np.float64)

    def source_probability(self, s: HeardEvidence) -> float:
        """``p_s = sigmoid(b_g + w_g . x_s)`` (module doc)."""
        if s.group not in EVIDENCE:
            raise ConfigError(f"unknown on-screen evidence group {s.group!r}; known: {list(GROUPS)}")
        z = float(self.bias[s.group]) + float(np.dot(np.asarray(self.weights[s.group], np.float64), s.row()))
        return 1.0 / (1.0 + math.exp(-min(max(z, -LOGIT_CLIP), LOGIT_CLIP)))

    def frame_probability(self, sources: Sequence[HeardEvidence], motion: float = 0.0) -> float:
        """P(a heard source is visible) = noisy-OR of the sources by relative audibility (module doc); with
        nothing heard, the ``none`` group on ``motion``."""
        return frame_probability(self, sources, motion)


def cause_key(kind: str, grounding: str, label: str, grounded: bool) -> str:
    """What a heard source is grounded on, as the cause it shares with other heard classes: its instance when
    grounded, the one fallback cue for sounds with no visual counterpart, else the class itself."""
    if grounded:
        return f"seen:{grounding}"
    return "none" if kind == "none" else f"class:{label}"


def _causes(sources: Sequence[HeardEvidence]) -> dict[str, list[int]]:
    out: dict[str, list[int]] = {}
    for i, s in enumerate(sources):
        out.setdefault(s.cause or f"#{i}", []).append(i)
    return out


def frame_probability(model: OnscreenModel, sources: Sequence[HeardEvidence], motion: float = 0.0) -> float:
    """:meth:`OnscreenModel.frame_probability`."""
    if not sources:
        return model.source_probability(HeardEvidence("none", 1.0, {"motion": motion}))
    top = max(max(float(s.score) for s in sources), 1e-12)
    p = [model.source_probability(s) for s in sources]
    log_off = 0.0
    for members in _causes(sources).values():
        r = min(max(float(sources[i].score) for i in members) / top, 1.0)
        log_off += r * math.log1p(-min(max(p[i] for i in members), 1 - 1e-12))
    return 1.0 - math.exp(log_off)


# --------------------------------------------------------------------------- fitting
Term = tuple[float, list[tuple[int, np.ndarray]]]  # (relative audibility, [(group index, evidence row)]) of a cause


def _frame_terms(frames: Sequence[Sequence[HeardEvidence]], motions: Sequence[float]) -> list[list[Term]]:
    """Per frame, per cause: its relative audibility and its sources' (group index, evidence row); a frame with
    nothing heard has one pseudo-cause of the ``none`` group on its motion."""
    out = []
    for srcs, m in zip(frames, motions, strict=True):
        if not srcs:
            out.append([(1.0, [(GROUPS.index("none"), np.array([min(max(m, 0.0), 1.0)]))])])
            continue
        top = max(max(float(s.score) for s in srcs), 1e-12)
        out.append([(min(max(float(srcs[i].score) for i in members) / top, 1.0),
                     [(GROUPS.index(srcs[i].group), srcs[i].row()) for i in members])
                    for members in _causes(srcs).values()])
    return out


def _offsets() -> list[int]:
    k, out = 0, []
    for g in GROUPS:
        out.append(k)
        k += 1 + len(EVIDENCE[g])
    return out


def _loss(theta: np.ndarray, terms: list[list[Term]], y: np.ndarray, w: np.ndarray,
          l2: float) -> tuple[float, np.ndarray]:
    """Weighted negative log-likelihood of the frame labels plus ``l2 |w|^2`` (biases free), and its gradient
    (through each cause's most probable source: the max's subgradient)."""
    off = _offsets()
    grad = np.zeros_like(theta)
    nll = 0.0
    for fr, yi, wi in zip(terms, y, w, strict=True):
        log_off = 0.0
        parts = []
        for r, members in fr:
            best = None
            for gi, x in members:
                k = off[gi]
                z = float(np.clip(theta[k] + theta[k + 1 : k + 1 + len(x)] @ x, -LOGIT_CLIP, LOGIT_CLIP))
                if best is None or z > best[0]:
                    best = (z, k, x)
            assert best is not None
            z, k, x = best
            p = 1.0 / (1.0 + math.exp(-z))
            log_off += r * math.log1p(-min(p, 1 - 1e-12))  # log(1 - p) = -softplus(z)
            parts.append((k, r, x, p))
        q_off = math.exp(log_off)  # P(off-screen)
        q_off = min(max(q_off, 1e-12), 1 - 1e-12)
        nll -= wi * (math.log1p(-q_off) if yi else math.log(q_off))
        # d log_off / d z_s = -r_s p_s; d nll / d log_off = wi * (y q/(1-q) - (1 - y))
        d_log_off = wi * ((q_off / (1 - q_off)) if yi else -1.0)
        for k, r, x, p in parts:
            dz = d_log_off * (-r * p)
            grad[k] += dz
            grad[k + 1 : k + 1 + len(x)] += dz * x
    reg = np.zeros_like(theta)
    for gi, g in enumerate(GROUPS):
        k = off[gi]
        reg[k + 1 : k + 1 + len(EVIDENCE[g])] = 1.0
    return nll + l2 * float((reg * theta**2).sum()), grad + 2 * l2 * reg * theta


def fit_onscreen_model(
    frames: Sequence[Sequence[HeardEvidence]], labels: Sequence[bool], motions: Sequence[float] | None = None,
    l2: float = 0.01, balanced: bool = False, init: OnscreenModel | None = None,
) -> OnscreenModel:
    """Maximum-likelihood fit of :class:`OnscreenModel` to frames with on/off labels (weights >= 0: L-BFGS-B
    with bounds; biases free). ``balanced``: each label class weighs half (else every frame weighs the same,
    which keeps the probabilities calibrated on the fitted distribution)."""
    from scipy.optimize import minimize

    y = np.asarray(labels, bool)
    if len(y) != len(frames) or not y.any() or y.all():
        raise ConfigError("fitting the on-screen model needs frames with both on-screen and off-screen labels")
    motions = [0.0] * len(frames) if motions is None else list(motions)
    terms = _frame_terms(frames, motions)
    pos = y.mean()
    w = np.where(y, 0.5 / pos, 0.5 / (1 - pos)) if balanced else np.ones(len(y))
    w = w / w.sum()
    off = _offsets()
    bounds: list[tuple[float | None, float | None]] = []
    for g in GROUPS:
        bounds += [(-20.0, 20.0)] + [(0.0, 50.0)] * len(EVIDENCE[g])
    theta0 = init.vector() if init is not None else np.zeros(len(bounds))
    if init is None:
        for gi in range(len(GROUPS)):
            theta0[off[gi]] = -1.0
    res = minimize(_loss, theta0, args=(terms, y, w, l2), jac=True, method="L-BFGS-B", bounds=bounds,
                   options={"maxiter": 2000})
    return OnscreenModel.from_vector(np.asarray(res.x))
