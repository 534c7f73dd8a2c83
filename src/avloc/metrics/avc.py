"""Audio-visual correspondence (AVC) scores: accuracy at a threshold and ROC AUC of matched vs mismatched pairs.

An AVC score ``z`` (e.g. DNM's ``z_avc = GMP(M_loc)``, Nishikawa et al. Eq. 7) is computed for
*positive* pairs (a frame with its own audio) and *negative* pairs (the frame with another clip's
audio). :func:`avc_accuracy` counts positives above and negatives at or below ``threshold``;
:func:`roc_auc` is the probability that a random positive outscores a random negative, ties
counting one half (the Mann-Whitney U statistic divided by ``n_pos * n_neg``).
"""

from __future__ import annotations

import numpy as np

from avloc.errors import DataError


def _scores(x: np.ndarray, name: str) -> np.ndarray:
    a = np.asarray(x, dtype=np.float64).reshape(-1)
    if not np.isfinite(a).all():
        raise DataError(f"{name} AVC scores hold NaN or inf")
    return a


def avc_accuracy(pos: np.ndarray, neg: np.ndarray, threshold: float = 0.5) -> float:
    """Fraction of the ``len(pos) + len(neg)`` pairs classified right: ``pos > threshold``, ``neg <= threshold``."""
    p, n = _scores(pos, "positive"), _scores(neg, "negative")
    if len(p) + len(n) == 0:
        raise DataError("AVC accuracy of no pairs")
    return float(((p > threshold).sum() + (n <= threshold).sum()) / (len(p) + len(n)))


def roc_auc(pos: np.ndarray, neg: np.ndarray) -> float:
    """ROC AUC of scores ``pos`` (positives) against ``neg`` (negatives): ``P(pos > neg) + P(pos == neg) / 2``.

    NaN when either side is empty. Exact (rank-based, ``O((P + N) log(P + N))``), no thresholds.
    """
    p, n = _scores(pos, "positive"), _scores(neg, "negative")
    if len(p) == 0 or len(n) == 0:
        return float("nan")
    ns = np.sort(n)
    below = np.searchsorted(ns, p, side="left")  # negatives strictly below each positive
    ties = np.searchsorted(ns, p, side="right") - below
    pairs = len(p) * len(n)
    return float(below.sum() / pairs + 0.5 * (ties.sum() / pairs))
