"""No shortcut (slow): the image alone must not tell which visible digit sounds.

A visual-only probe trained on fresh ``single`` draws stays near chance on the
test split, while the same probe given the spoken class is far above it.
Figures: docs/RESULTS.md, "## DigitScenes" (bench/paper/digitscenes/shortcut.py).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from avloc.data.digitscenes.probe import ProbeConfig, run_probe
from avloc.data.sources import RawSources


@pytest.mark.slow
def test_visual_only_probe_stays_at_chance(shared_data: Path) -> None:
    raw = RawSources(shared_data)
    r = run_probe(raw, ProbeConfig(train_count=4000, test_count=600))
    visual, label = r["visual"], r["label"]
    # 600 test draws: the standard error of an accuracy near 0.36 is ~0.02
    assert abs(visual["accuracy"] - visual["chance"]) < 0.08, visual
    assert label["accuracy"] > label["chance"] + 0.25, label
