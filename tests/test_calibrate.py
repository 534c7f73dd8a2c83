"""``python -m avloc.inference.calibrate`` logs its fit through ``logging`` (no print in the library)."""

from __future__ import annotations

import logging

import numpy as np
import pytest

from avloc.inference import calibrate as cal


def test_calibrate_logs_and_returns_the_weights(monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    rng = np.random.default_rng(0)
    y = (rng.random(200) < 0.5).astype(np.float64)
    x = np.stack([rng.normal(2.0 * y, 1.0), rng.normal(0.5 * y, 1.0)], 1)  # (N, 2): contrast, dB feature
    monkeypatch.setattr(cal, "features", lambda model_name, n_clips: (x, y))
    with caplog.at_level(logging.INFO, logger="avloc.inference.calibrate"):
        w = cal.calibrate("unused", 1)
    assert set(w) == {"onscreen_w_contrast", "onscreen_w_db", "onscreen_bias"} and w["onscreen_w_contrast"] > 0
    want = cal.fit_logistic(x, y)
    assert [w["onscreen_w_contrast"], w["onscreen_w_db"], w["onscreen_bias"]] == pytest.approx(want.tolist())
    text = caplog.text
    assert "200 frames" in text and f"onscreen_w_contrast = {want[0]:.3f}" in text
    assert capsys.readouterr().out == ""  # nothing printed
