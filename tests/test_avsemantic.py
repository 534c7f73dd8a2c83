"""avsemantic building blocks (issue 16): letterbox geometry, atrous stride-16 head, map centring, on-screen model."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from avloc.frontends.image import PAD_VALUE, ImageConfig, crop_geometry, preprocess_image, transform_boxes
from avloc.inference.postprocess import boxes_to_source, unwarp_map
from avloc.methods.avsemantic.method import centre_map, fit_window
from avloc.methods.avsemantic.onscreen import FEATURES, design_row, fit_logistic, onscreen_probability


def test_pad_mode_geometry_round_trips() -> None:
    cfg = ImageConfig(size=64, mode="pad")
    img = torch.zeros(3, 90, 160)  # 16:9 -> 64 x 36 inside a 64 x 64 square, 14 rows of grey above and below
    img[:, 30:60, 40:80] = 1.0  # a white box at x 40-80, y 30-60
    x = preprocess_image(img, cfg)
    assert x.shape == (3, 64, 64)
    assert torch.all(x[:, :14] == PAD_VALUE) and torch.all(x[:, 50:] == PAD_VALUE)
    sx, sy, ox, oy = crop_geometry(90, 160, cfg)
    assert (sx, sy, ox, oy) == (0.4, 0.4, 0.0, -14.0)
    b = transform_boxes(torch.tensor([[40.0, 30.0, 80.0, 60.0]]), (90, 160), cfg)[0]
    torch.testing.assert_close(b, torch.tensor([16 / 64, 26 / 64, 32 / 64, 38 / 64]))
    assert float(x[0, 30, 24]) > 0.9  # the box centre (60, 45) -> (24, 14 + 18)
    back = boxes_to_source(np.array([[16.0, 26.0, 32.0, 38.0]]), (160, 90), cfg)
    np.testing.assert_allclose(back, [[40, 30, 80, 60]])
    m = np.zeros((64, 64), np.float32)
    m[26:38, 16:32] = 1.0  # the box in model geometry -> back over the whole frame
    full = unwarp_map(m, (160, 90), (160, 90), cfg)
    assert full[45, 60] == pytest.approx(1.0) and full[10, 10] == 0.0 and full[45, 120] == 0.0


def test_atrous_stride16_head_keeps_the_classifier() -> None:
    from avloc.encoders.efficientnet_lite import EfficientNetLite0

    net = EfficientNetLite0(out_stride=32).eval()
    x = torch.rand(2, 3, 128, 192, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        h32, h16 = net.forward_head(x, 32), net.forward_head(x, 16)
        torch.testing.assert_close(h32, net.forward_features_all(x)[32])
        l32, l16 = net._fc(h32.mean((2, 3))), net._fc(h16.mean((2, 3)))
    assert h16.shape[-2:] == (8, 12) and h32.shape[-2:] == (4, 6)
    for a, b in zip(l32, l16, strict=True):  # the same classifier evidence, on a twice finer grid
        assert float(torch.corrcoef(torch.stack([a, b]))[0, 1]) > 0.95


def test_centre_map_and_window() -> None:
    m = torch.tensor([[0.0, 1.0], [2.0, 5.0]])  # mean 2 -> relu(m - 2) = [[0, 0], [0, 3]] / 3
    torch.testing.assert_close(centre_map(m), torch.tensor([[0.0, 0.0], [0.0, 1.0]]))
    assert torch.all(centre_map(torch.ones(3, 3)) == 0)
    a = torch.arange(10.0)[None]
    torch.testing.assert_close(fit_window(a, 4), torch.tensor([[3.0, 4.0, 5.0, 6.0]]))
    torch.testing.assert_close(fit_window(a[:, :2], 5), torch.tensor([[0.0, 0.0, 1.0, 0.0, 0.0]]))


def test_onscreen_model_fits_and_predicts() -> None:
    rng = np.random.default_rng(0)
    y = rng.random(200) < 0.8
    feats = [
        {"object": (0.6 if on else 0.01) * rng.random(), "human": 0.0, "speaker": 0.0,
         "unseen": 0.0 if on else 0.9, "narration": 0.0}
        for on in y
    ]
    x = np.stack([design_row(f) for f in feats])
    w, b = fit_logistic(x, y)
    p = np.array([onscreen_probability(f, tuple(w), b) for f in feats])
    assert np.mean((p >= 0.5) == y) > 0.95
    assert w[FEATURES.index("unseen")] < 0  # sounds with no visual counterpart push towards off-screen
    # logit transform of the evidence products: x = 0.5 -> 0
    assert design_row({k: 0.5 for k in FEATURES})[0] == pytest.approx(0.0)


def test_face_cache_does_not_leak_between_videos() -> None:
    """One model serves many videos: faces cached for one clip's frames are not reused for another's."""
    from avloc.methods import create_method

    model = create_method("avsemantic").eval()
    model._build(torch.device("cpu"))
    calls: list[float] = []

    class Stub:
        def detect(self, rgb: np.ndarray) -> np.ndarray:
            calls.append(float(rgb.mean()))
            return np.zeros((0, 15), np.float32)

    from avloc.methods.avsemantic.faces import FaceSession

    model._parts["faces"] = FaceSession(Stub(), model.cfg.speaker)  # type: ignore[arg-type]
    times = torch.arange(4) / 5.0
    audio = torch.zeros(4, 15600)
    a = torch.full((4, 3, 64, 64), 0.2)
    b = torch.full((4, 3, 64, 64), 0.8)
    model._faces_and_speaker(a, audio, times, slice(None))
    model._faces_and_speaker(a, audio, times, slice(None))  # same clip again: cached
    assert len(calls) == 4
    model._faces_and_speaker(b, audio, times, slice(None))  # another clip at the same times: detected anew
    assert len(calls) == 8 and calls[-1] > calls[0]
