"""On/off-screen decision of ``avsemantic``: a few evidence features and a logistic model fitted on real footage.

Per analysed frame the method measures (all in [0, 1]):

* ``object``: ``max_c s_c * v_c`` over heard object classes -- tagger score times the ImageNet softmax mass
  of that class's visible counterparts above chance (heard *and* seen, ``method.visible_mass``);
* ``human``: ``max_c s_c`` over heard human sounds times the best face score (0 without a face);
* ``speaker``: synchrony of the chosen face's mouth region with the audio (0 without faces);
* ``unseen``: ``max_c s_c`` over heard classes with no visual counterpart (music, noise, wind ...);
* ``narration``: ``max_c s_c`` over classes flagged ``offscreen_prior`` (narration, speech synthesiser).

``P(on-screen) = sigmoid(b + sum_i w_i * phi_i)`` with ``phi = (logit(object), logit(human), speaker, unseen,
narration)``, ``logit(x) = log((x + eps) / (1 - x + eps))``: a five-weight logistic regression (Cox 1958), fitted
by IRLS on the development clips' on/off labels (``bench/paper/avsemantic/realclips.py --fit-onscreen``, cross-validated by
clip; docs/RESULTS.md), stored as config defaults.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np

from avloc.errors import ConfigError

#: feature order of the logistic model (``AVSemanticConfig.onscreen_weights``)
FEATURES = ("object", "human", "speaker", "unseen", "narration")
#: features passed through ``logit`` first (evidence products spanning orders of magnitude)
LOGIT_FEATURES = ("object", "human")
LOGIT_EPS = 1e-3


def design_row(f: Mapping[str, float]) -> np.ndarray:
    """Feature dict -> the model's input row ``phi`` (module doc)."""
    missing = [k for k in FEATURES if k not in f]
    if missing:
        raise ConfigError(f"on-screen features missing {missing}; expected {list(FEATURES)}")
    row = []
    for k in FEATURES:
        x = float(f[k])
        if k in LOGIT_FEATURES:
            x = min(max(x, 0.0), 1.0)
            x = math.log((x + LOGIT_EPS) / (1.0 - x + LOGIT_EPS))
        row.append(x)
    return np.asarray(row, dtype=np.float64)


def onscreen_probability(f: Mapping[str, float], weights: Sequence[float], bias: float) -> float:
    """``sigmoid(bias + weights . phi(f))``."""
    if len(weights) != len(FEATURES):
        raise ConfigError(f"onscreen_weights needs {len(FEATURES)} values ({', '.join(FEATURES)}), got {len(weights)}")
    z = bias + float(np.dot(np.asarray(weights, dtype=np.float64), design_row(f)))
    return 1.0 / (1.0 + math.exp(-max(min(z, 50.0), -50.0)))


def fit_logistic(x: np.ndarray, y: np.ndarray, l2: float = 1.0, iters: int = 100) -> tuple[np.ndarray, float]:
    """Class-balanced L2 logistic regression (unpenalised bias) -> (w, b): :func:`avloc.metrics.logistic.fit_logistic`
    with the settings the on-screen weights were fitted with (matching the balanced accuracy they are judged by)."""
    from avloc.metrics.logistic import fit_logistic as irls

    return irls(x, y, l2=l2, iters=iters, balanced=True, penalise_bias=False, ridge=1e-9, clip=50.0, tol=1e-10)
