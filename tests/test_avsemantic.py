"""avsemantic building blocks (issue 16): letterbox geometry, atrous stride-16 head, map centring, on-screen model."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from avloc.errors import ConfigError
from avloc.frontends.image import PAD_VALUE, ImageConfig, crop_geometry, preprocess_image, transform_boxes
from avloc.inference.postprocess import boxes_to_source, unwarp_map
from avloc.methods.avsemantic.grounding import centre_map
from avloc.methods.avsemantic.method import fit_window
from avloc.methods.avsemantic.onscreen import (
    EVIDENCE,
    GROUPS,
    HeardEvidence,
    OnscreenModel,
    _frame_terms,
    _loss,
    fit_onscreen_model,
)


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


def _model(seed: int = 0) -> OnscreenModel:
    rng = np.random.default_rng(seed)
    return OnscreenModel({g: float(rng.normal()) for g in GROUPS},
                         {g: tuple(float(v) for v in rng.uniform(0, 5, len(EVIDENCE[g]))) for g in GROUPS})


def test_onscreen_model_is_monotone_in_the_evidence_for_the_heard_source() -> None:
    """More evidence for a heard source never lowers its P(visible) nor the frame's P(on-screen)."""
    rng = np.random.default_rng(1)
    for seed in range(20):
        m = _model(seed)
        srcs = [HeardEvidence(str(rng.choice(GROUPS)), float(rng.uniform(0.05, 1)),
                              {k: float(rng.random()) for k in ("visible", "detected", "face", "sync", "person", "motion")})
                for _ in range(int(rng.integers(1, 5)))]
        base = m.frame_probability(srcs)
        for i, s in enumerate(srcs):
            for k in EVIDENCE[s.group]:
                more = HeardEvidence(s.group, s.score, {**s.evidence, k: min(1.0, s.evidence[k] + 0.3)})
                assert m.source_probability(more) >= m.source_probability(s)
                assert m.frame_probability([*srcs[:i], more, *srcs[i + 1:]]) >= base - 1e-12
    with pytest.raises(ConfigError, match=">= 0"):
        OnscreenModel({g: 0.0 for g in GROUPS}, {**{g: (1.0,) * len(EVIDENCE[g]) for g in GROUPS}, "none": (-1.0,)})


def test_onscreen_frame_probability_by_hand() -> None:
    """Noisy-OR by relative audibility: 1 - (1 - p1)^1 (1 - p2)^(a2 / a1)."""
    m = OnscreenModel({g: 0.0 for g in GROUPS}, {g: (0.0,) * len(EVIDENCE[g]) for g in GROUPS})
    m = OnscreenModel({**m.bias, "object": np.log(0.6 / 0.4), "none": np.log(0.2 / 0.8)}, m.weights)
    srcs = [HeardEvidence("object", 0.8, {}), HeardEvidence("none", 0.4, {})]
    assert m.source_probability(srcs[0]) == pytest.approx(0.6) and m.source_probability(srcs[1]) == pytest.approx(0.2)
    assert m.frame_probability(srcs) == pytest.approx(1 - 0.4 * 0.8 ** 0.5)
    assert m.frame_probability([], motion=0.0) == pytest.approx(0.2)  # nothing heard: the none group
    # classes grounded on one thing are one cause: the max of their p and of their audibility counts once
    same = [HeardEvidence("object", 0.8, {}, "seen:clock"), HeardEvidence("object", 0.6, {}, "seen:clock"),
            HeardEvidence("none", 0.4, {}, "none"), HeardEvidence("none", 0.3, {}, "none")]
    assert m.frame_probability(same) == pytest.approx(1 - 0.4 * 0.8 ** 0.5)


def test_onscreen_loss_gradient_matches_finite_differences() -> None:
    rng = np.random.default_rng(3)
    frames = [[HeardEvidence(str(rng.choice(GROUPS)), float(rng.uniform(0.1, 1)),
                             {k: float(rng.random()) for k in ("visible", "detected", "face", "sync", "person", "motion")})
               for _ in range(int(rng.integers(0, 4)))] for _ in range(30)]
    y = rng.random(30) < 0.5
    terms = _frame_terms(frames, list(rng.random(30)))
    theta = _model(5).vector()
    w = np.full(30, 1 / 30)
    _f0, g = _loss(theta, terms, y, w, 0.1)
    num = np.zeros_like(theta)
    for i in range(len(theta)):
        d = np.zeros_like(theta)
        d[i] = 1e-6
        num[i] = (_loss(theta + d, terms, y, w, 0.1)[0] - _loss(theta - d, terms, y, w, 0.1)[0]) / 2e-6
    np.testing.assert_allclose(g, num, rtol=1e-4, atol=1e-7)


def test_onscreen_model_fit_recovers_the_evidence_that_matters() -> None:
    """Generated frames: speech is on-screen when a face moves with it, objects when seen; the fit finds
    positive weights on exactly that evidence and separates the frames."""
    rng = np.random.default_rng(0)
    frames, y = [], []
    for _ in range(400):
        on = bool(rng.random() < 0.5)
        if rng.random() < 0.5:
            ev = {"face": float(rng.uniform(0.6, 1)), "sync": float(rng.uniform(0.5, 1) if on else rng.uniform(0, 0.1)),
                  "person": float(rng.random())}
            frames.append([HeardEvidence("human", 0.9, ev)])
        else:
            ev = {"visible": float(rng.uniform(0.3, 1) if on else rng.uniform(0, 0.02)), "detected": 0.0}
            frames.append([HeardEvidence("object", 0.8, ev), HeardEvidence("none", 0.3, {"motion": float(rng.random())})])
        y.append(on)
    m = fit_onscreen_model(frames, y)
    assert m.weights["human"][EVIDENCE["human"].index("sync")] > 1.0
    assert m.weights["object"][EVIDENCE["object"].index("visible")] > 1.0
    p = np.array([m.frame_probability(f) for f in frames])
    assert np.mean((p >= 0.5) == np.array(y)) > 0.95


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
