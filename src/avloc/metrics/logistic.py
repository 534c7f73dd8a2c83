"""One L2-regularised logistic regression by IRLS (Newton), for the small calibration fits of the on-screen models.

Used by :mod:`avloc.methods.avsemantic.onscreen` (class-balanced, unpenalised bias) and
:mod:`avloc.inference.calibrate` (unweighted, every weight penalised). Plain NumPy, float64.
"""

from __future__ import annotations

import numpy as np

from avloc.errors import ConfigError


def fit_logistic(
    x: np.ndarray,
    y: np.ndarray,
    *,
    l2: float = 1.0,
    iters: int = 100,
    balanced: bool = True,
    penalise_bias: bool = False,
    ridge: float = 1e-9,
    clip: float | None = 50.0,
    tol: float = 1e-10,
) -> tuple[np.ndarray, float]:
    """``x`` (N, D), ``y`` (N,) in {0, 1} -> weights (D,) and bias of ``P(y = 1) = sigmoid(x . w + b)``.

    ``balanced``: each class contributes half the likelihood (for balanced accuracy); ``penalise_bias``: the
    L2 term covers the bias too; ``ridge``: added to the Hessian's diagonal (numerical safety); ``clip``: logits
    clipped to +-clip (None = not); stops when no Newton step component exceeds ``tol``.
    """
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    if x.ndim != 2 or len(x) != len(y) or len(y) == 0:
        raise ConfigError(f"fit_logistic: x {x.shape} and y {y.shape} do not match")
    pos = y.sum()
    if balanced and (pos == 0 or pos == len(y)):
        raise ConfigError("fit_logistic needs both on-screen and off-screen examples")
    sw = np.where(y > 0, 0.5 / pos, 0.5 / (len(y) - pos)) * len(y) if balanced else np.ones(len(y))  # (N,)
    xa = np.hstack([x, np.ones((len(x), 1))])  # (N, D+1)
    theta = np.zeros(xa.shape[1])
    reg = np.full(xa.shape[1], l2)
    if not penalise_bias:
        reg[-1] = 0.0
    for _ in range(iters):
        z = xa @ theta
        p = 1.0 / (1.0 + np.exp(-(np.clip(z, -clip, clip) if clip is not None else z)))
        g = xa.T @ (sw * (p - y)) + reg * theta
        h = (xa * (sw * p * (1 - p))[:, None]).T @ xa + np.diag(reg) + ridge * np.eye(xa.shape[1])
        step = np.linalg.solve(h, g)
        theta -= step
        if np.abs(step).max() < tol:
            break
    return theta[:-1], float(theta[-1])
