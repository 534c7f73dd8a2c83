"""Plain-NumPy reference pieces shared by the metric tests, written in the style of the public LVS/EZ-VSL code."""

from __future__ import annotations

import numpy as np

#: the public codes' evaluation resolution
S = 224


def ref_gt(boxes: np.ndarray, consensus: bool) -> np.ndarray:
    """Boxes normalised to [0, 1] -> (S, S) ground-truth map: consensus (sum / 2, capped at 1) or binary union."""
    gt_map = np.zeros([S, S])
    for b in boxes:
        xmin, ymin, xmax, ymax = (np.clip(np.array(b), 0, 1) * S).astype(int)
        temp = np.zeros([S, S])
        temp[ymin:ymax, xmin:xmax] = 1
        gt_map += temp
    if consensus:
        gt_map = gt_map / 2
        gt_map[gt_map > 1] = 1
    else:
        gt_map[gt_map > 0] = 1
    return gt_map
