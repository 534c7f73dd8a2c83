"""Two-stage class-aware method (Qian et al. 2020): Grad-CAM, Eqs. 5/7/8 vs hand computations,
batch independence, both training stages, stage-1 initialisation."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from avloc.errors import CheckpointError, ConfigError, DataError
from avloc.methods import create_method, list_methods
from avloc.methods.blocks import minmax_per_sample
from avloc.methods.twostage import (
    PRESETS,
    TwoStage,
    TwoStageConfig,
    alignment_loss,
    distance_maps,
    grad_cam,
    labels_to_multihot,
    pairwise_sq_dist,
    preset_config,
    weighted_pool,
)
from avloc.methods.zoo import load_model, save_model

TINY: dict[str, Any] = {
    "visual_encoder": "small_cnn",
    "visual_encoder_kwargs": {"channels": [8, 16, 16, 16], "out_stride": 16},
    "image": {"size": 64, "resize": 64},
    "audio": {"sample_rate": 8000, "window_seconds": 0.5, "kind": "logmel", "n_fft": 320, "hop_length": 160, "n_mels": 32},
    "audio_encoder": "small_cnn_audio",
    "audio_encoder_kwargs": {"channels": [8, 16, 16, 16], "time_stride": 2},
    "feat_dim": 16, "embed_dim": 16, "proj_hidden": 8, "proj_dim": 8, "avc_dim": 16, "avc_hidden": 8,
}


def tiny(**overrides: Any) -> TwoStage:
    model = create_method("twostage", {**TINY, **overrides})
    assert isinstance(model, TwoStage)
    return model


def batch(b: int = 4, seed: int = 0) -> dict[str, Any]:
    g = torch.Generator().manual_seed(seed)
    labels = [[1, 2], [3], [0, 9], [5], [2, 7], [4]][:b]
    visible = [[1, 2, 6], [3, 8], [0, 4, 9], [5, 6], [2, 3, 7], [4, 8]][:b]  # heard digits + silent ones in view
    return {
        "image": torch.rand(b, 3, 64, 64, generator=g), "audio": torch.randn(b, 4000, generator=g),
        "labels": labels, "visible_labels": visible,
    }


# ----------------------------------------------------------------------------- Grad-CAM


def test_grad_cam_linear_head_matches_hand_computation() -> None:
    torch.manual_seed(0)
    feat = torch.randn(2, 3, 4, 5)
    lin = torch.nn.Linear(3, 6)
    cam = grad_cam(feat, lambda a: lin(a.mean(dim=(2, 3))))
    # GAP + linear: d y_c / d A_k(u,v) = W[c, k] / (h w), so alpha_k^c = W[c, k] / (h w)
    f, w = feat.numpy().astype(np.float64), lin.weight.detach().numpy().astype(np.float64)
    expected = np.zeros((2, 6, 4, 5))
    for b in range(2):
        for c in range(6):
            acc = sum(w[c, k] / 20.0 * f[b, k] for k in range(3))
            expected[b, c] = np.maximum(acc, 0.0)
    assert cam.shape == (2, 6, 4, 5)
    np.testing.assert_allclose(cam.numpy(), expected, rtol=1e-5, atol=1e-6)


def test_grad_cam_nonlinear_head_is_per_sample() -> None:
    torch.manual_seed(1)
    feat = torch.randn(3, 2, 7)  # audio-like (B, K, T)
    w = torch.randn(4, 2)
    cam = grad_cam(feat, lambda a: a.square().mean(dim=2) @ w.T)
    # y_bc = sum_k w_ck mean_t A_bk(t)^2 -> dy/dA_bk(t) = 2 w_ck A_bk(t) / T; alpha = mean_t of that
    f, wn = feat.double().numpy(), w.double().numpy()
    expected = np.zeros((3, 4, 7))
    for b in range(3):
        for c in range(4):
            alpha = [np.mean(2 * wn[c, k] * f[b, k] / 7) for k in range(2)]
            expected[b, c] = np.maximum(sum(alpha[k] * f[b, k] for k in range(2)), 0.0)
    np.testing.assert_allclose(cam.numpy(), expected, rtol=1e-5, atol=1e-6)


def test_grad_cam_under_inference_mode_and_detached() -> None:
    lin = torch.nn.Linear(3, 2)
    feat = torch.randn(1, 3, 2, 2, requires_grad=True)
    cam = grad_cam(feat, lambda a: lin(a.mean(dim=(2, 3))))
    assert not cam.requires_grad  # constants for the surrounding graph
    with torch.inference_mode():
        inf = torch.randn(1, 3, 2, 2)
        cam2 = grad_cam(inf, lambda a: lin(a.mean(dim=(2, 3))))
    assert cam2.shape == (1, 2, 2, 2) and torch.isfinite(cam2).all()


# ----------------------------------------------------------------------------- Eqs. 5, 7, 8


def test_weighted_pool_eq5() -> None:
    torch.manual_seed(2)
    emb, wts = torch.randn(2, 5, 3, 4), torch.rand(2, 3, 3, 4)
    wts[1, 2] = 0.0  # a class whose map is empty -> zero vector
    out = weighted_pool(emb, wts)
    e, w = emb.double().numpy(), wts.double().numpy()
    for b in range(2):
        for c in range(3):
            den = w[b, c].sum()
            ref = np.zeros(5) if den == 0 else np.array([(e[b, d] * w[b, c]).sum() / den for d in range(5)])
            np.testing.assert_allclose(out[b, c].numpy(), ref, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("reduction", ["balanced", "sum"])
def test_alignment_loss_eq7(reduction: str) -> None:
    torch.manual_seed(3)
    b, c, p, margin = 3, 4, 5, 1.5
    fa, fv = torch.randn(b, c, p) * 0.6, torch.randn(b, c, p) * 0.6
    va, vv = torch.rand(b, c) > 0.3, torch.rand(b, c) > 0.3
    va[0, 1] = vv[0, 1] = True  # at least one positive
    out = alignment_loss(fa, fv, va, vv, margin, reduction)  # type: ignore[arg-type]
    pos_terms, neg_terms = [], []
    for i in range(b):
        for m in range(c):
            for j in range(b):
                for n in range(c):
                    if not (va[i, m] and vv[j, n]):
                        continue
                    d = float(np.linalg.norm(fa[i, m].double().numpy() - fv[j, n].double().numpy()))
                    if i == j and m == n:
                        pos_terms.append(d**2)
                    else:
                        neg_terms.append(max(margin - d, 0.0) ** 2)
    if reduction == "sum":
        ref = float(sum(pos_terms) + sum(neg_terms))
    else:
        ref = float(np.mean(pos_terms) + np.mean(neg_terms))
    assert float(out["loss"]) == pytest.approx(ref, rel=1e-5)
    assert float(out["n_pos"]) == len(pos_terms)
    assert sum(t > 0 for t in neg_terms) > 0  # the hinge is active somewhere: the test exercises it


def test_alignment_loss_gradient_pulls_positives_together() -> None:
    fa = torch.tensor([[[0.0, 0.0]], [[3.0, 0.0]]], requires_grad=True)  # (B=2, C=1, P=2)
    fv = torch.tensor([[[1.0, 0.0]], [[3.0, 0.5]]])
    out = alignment_loss(fa, fv, torch.ones(2, 1, dtype=torch.bool), torch.ones(2, 1, dtype=torch.bool), 1.0)
    out["loss"].backward()
    assert fa.grad is not None and fa.grad[0, 0, 0] < 0  # a_0 moves towards v_0 at (1, 0)


def test_pairwise_sq_dist_matches_difference_form() -> None:
    torch.manual_seed(9)
    x, y = torch.randn(7, 5, dtype=torch.float64), torch.randn(4, 5, dtype=torch.float64)
    y[2] = x[3]  # an identical pair: exactly 0, never negative
    d2 = pairwise_sq_dist(x, y)
    torch.testing.assert_close(d2, (x[:, None] - y[None]).square().sum(-1))
    assert float(d2.min()) >= 0.0 and float(d2[3, 2]) == pytest.approx(0.0, abs=1e-12)
    u = torch.nn.functional.normalize(x, dim=1)
    torch.testing.assert_close(pairwise_sq_dist(u, u), 2 - 2 * u @ u.T)  # unit vectors: 2 - 2 cos (public code)


def test_distance_maps_eq8() -> None:
    torch.manual_seed(4)
    ga, gv = torch.randn(2, 3, 4), torch.randn(2, 4, 5, 6)
    k = distance_maps(ga, gv)
    for b in range(2):
        for c in range(3):
            for u in range(5):
                for v in range(6):
                    ref = np.linalg.norm(ga[b, c].double().numpy() - gv[b, :, u, v].double().numpy())
                    assert float(k[b, c, u, v]) == pytest.approx(ref, rel=1e-5)
    # unit embeddings (the public code's) with an exact match at one position: distance ~0 there, never NaN
    ga = torch.nn.functional.normalize(torch.randn(1, 2, 8), dim=2)
    gv = torch.nn.functional.normalize(torch.randn(1, 8, 3, 3), dim=1)
    gv[0, :, 1, 2] = ga[0, 1]
    k = distance_maps(ga, gv)
    assert torch.isfinite(k).all() and float(k[0, 1, 1, 2]) == pytest.approx(0.0, abs=1e-3)
    ref = (ga[0, :, :, None, None] - gv[0][None]).norm(dim=1)
    torch.testing.assert_close(k[0], ref, atol=1e-3, rtol=0)


def _eq8_reference(k: torch.Tensor, map_norm: str, margin: float) -> torch.Tensor:
    """Hand transforms of the Eq. 8 distances ``K`` ``(B, C, h, w)`` (see ``TwoStageConfig.map_norm``)."""
    if map_norm == "minmax":
        return minmax_per_sample((-k).flatten(0, 1)).view_as(k)
    if map_norm == "margin":
        return torch.relu(1 - k / margin)
    sim = torch.relu(1 - k**2 / 2)  # cosine of unit vectors = 1 - |a - b|^2 / 2
    out = torch.zeros_like(sim)
    for b in range(k.shape[0]):
        for c in range(k.shape[1]):
            if float(sim[b, c].max()) > 0:
                out[b, c] = sim[b, c] / sim[b, c].max()
    return out


@pytest.mark.parametrize("map_norm", ["cosine", "minmax", "margin"])
def test_align_class_maps_are_transformed_distances(map_norm: str) -> None:
    torch.manual_seed(5)
    model = tiny(map_norm=map_norm).eval()
    bt = batch(2)
    with torch.no_grad():
        fa, fv = model._encode(bt["image"], bt["audio"])
        model.double()  # the heads in float64: min-max normalisation amplifies float32 rounding
        fa, fv = fa.double(), fv.double()
        # hand path: Grad-CAM on F_a (GAP + linear: alpha = W / T), Eq. 5, g_a; g_v per position; Eq. 8
        w = model.audio_cls.weight  # (C, d)
        wa = torch.relu(torch.einsum("cd,bdt->bct", w / fa.shape[2], fa))
        ea = model.audio_embed(fa)
        f_a = torch.einsum("bdt,bct->bcd", ea, wa) / wa.sum(2, keepdim=True).clamp_min(1e-12)
        ga = model.audio_proj(f_a)
        ev = model.visual_embed(fv)
        gv = torch.stack([torch.stack([model.visual_proj(ev[:, :, u, v]) for v in range(ev.shape[3])], -1) for u in range(ev.shape[2])], -2)
        k = ((ga[:, :, :, None, None] - gv[:, None]) ** 2).sum(2).sqrt()
        ref = _eq8_reference(k, map_norm, model.cfg.margin)
        maps = model.class_maps(fa, fv)
    torch.testing.assert_close(maps, ref, rtol=1e-6, atol=1e-8)
    assert float(maps.amin()) >= 0.0 and float(maps.amax()) <= 1.0
    if map_norm == "cosine":  # with unit-norm embeddings the map is the ReLU'd cosine similarity, max-normalised
        cos = torch.einsum("bcp,bpuv->bcuv", ga, gv / gv.norm(dim=1, keepdim=True))
        torch.testing.assert_close(torch.relu(cos), torch.relu(1 - k**2 / 2), rtol=1e-6, atol=1e-8)
        peak = maps.flatten(2).amax(2)  # (B, C): 1, or 0 for a map with no positive cosine
        assert bool((((peak - 1).abs() < 1e-9) | (peak == 0)).all())


def test_projection_pooling_is_the_weighted_mean_of_position_embeddings() -> None:
    """``class_pooling="projections"`` (an addition): g at every position, Eq. 5 weights, re-normalised."""
    torch.manual_seed(8)
    model = tiny(class_pooling="projections").eval().double()
    emb = torch.rand(2, 16, 3, 4, dtype=torch.float64)
    w = torch.rand(2, 10, 3, 4, dtype=torch.float64)
    w[1, 3] = 0.0  # a class with an empty map
    with torch.no_grad():
        got = model.class_embedding(emb, w, model.visual_proj)
        for b in range(2):
            for c in range(10):
                acc = torch.zeros(8, dtype=torch.float64)
                for u in range(3):
                    for v in range(4):
                        acc += w[b, c, u, v] * model.visual_proj(emb[b, :, u, v])
                ref = acc / max(float(w[b, c].sum()), 1e-12)
                ref = ref / max(float(ref.norm()), 1e-12)
                torch.testing.assert_close(got[b, c], ref)
    assert float(got[1, 3].abs().sum()) == 0.0
    # the paper's order (pool E, then project) differs for the non-linear g
    paper = tiny().eval().double()
    paper.load_state_dict(model.state_dict())
    with torch.no_grad():
        assert not torch.allclose(paper.class_embedding(emb, w, paper.visual_proj), got)
    # trains and reads out (Eq. 8 against the same per-position g_v)
    model.float().train()
    bt = batch(4)
    out = model(bt)
    model.build_criterion()(out, bt)["loss"].backward()
    assert model.visual_proj.net[0].weight.grad is not None
    with torch.no_grad():
        maps = model.eval().localize_classes(bt["image"], bt["audio"]).maps
    assert maps.shape == (4, 10, 4, 4) and torch.isfinite(maps).all()


def test_combine_probability_weighted_valid_classes() -> None:
    model = tiny(valid_threshold=0.5).eval()
    maps = torch.rand(2, 10, 3, 3)
    probs = torch.full((2, 10), 0.1)
    probs[0, 2], probs[0, 7] = 0.9, 0.6  # two valid classes
    probs[1, 4] = 0.3  # none valid: the top class is used
    out = model.combine(maps, probs)
    torch.testing.assert_close(out[0], (0.9 * maps[0, 2] + 0.6 * maps[0, 7]) / 1.5)
    torch.testing.assert_close(out[1], maps[1, 4])


# ----------------------------------------------------------------------------- contract


@pytest.mark.parametrize(
    "overrides",
    [
        {"stage": 2, "localization": "align"},
        {"stage": 1, "localization": "cam"},
        {"stage": 1, "localization": "avc", "use_classification": False},
    ],
    ids=["stage2", "stage1-cam", "avc"],
)
def test_forward_backward_and_batch_independence(overrides: dict[str, Any]) -> None:
    torch.manual_seed(6)
    model = tiny(**overrides)
    bt = batch(4)
    out = model(bt)
    assert out["logits_a"].shape == (4, 10) and out["avc_logits"].shape == (4, 4, 2)
    losses = model.build_criterion()(out, bt)
    assert torch.isfinite(losses["loss"])
    losses["loss"].backward()
    grads = {n: p.grad for n, p in model.named_parameters() if p.requires_grad}
    assert all(g is None or torch.isfinite(g).all() for g in grads.values())
    assert grads["audio_encoder.blocks.0.0.weight"] is not None and grads["audio_encoder.blocks.0.0.weight"].abs().sum() > 0
    if overrides["stage"] == 2:
        assert {"loss_cls", "loss_avc", "loss_ava"} <= set(losses)
        for name in ("audio_proj.net.0.weight", "visual_proj.net.2.weight", "visual_embed.0.weight"):
            g = grads[name]
            assert g is not None and g.abs().sum() > 0, name

    model.eval()
    with torch.inference_mode():
        heat = model.localize(bt["image"], bt["audio"])
        cm = model.localize_classes(bt["image"], bt["audio"])
        maps, probs = cm.maps, cm.probabilities
        assert heat.shape == (4, 4, 4) and maps.shape == (4, 10, 4, 4) and probs.shape == (4, 10)
        assert torch.isfinite(heat).all() and torch.isfinite(maps).all()
        for i in (0, 3):
            one = model.localize(bt["image"][i : i + 1], bt["audio"][i : i + 1])
            per = model.localize_classes(bt["image"][i : i + 1], bt["audio"][i : i + 1])
            m1, p1 = per.maps, per.probabilities
            torch.testing.assert_close(one[0], heat[i], rtol=1e-3, atol=1e-4)
            torch.testing.assert_close(m1[0], maps[i], rtol=1e-3, atol=1e-4)
            torch.testing.assert_close(p1[0], probs[i], rtol=1e-4, atol=1e-5)
        # a different partner in the batch changes nothing
        swapped = model.localize(torch.stack([bt["image"][0], bt["image"][2]]), torch.stack([bt["audio"][0], bt["audio"][2]]))
        torch.testing.assert_close(swapped[0], heat[0], rtol=1e-3, atol=1e-4)


@pytest.mark.parametrize("visual_labels", ["visible", "sounding"])
def test_classification_targets_eq1(visual_labels: str) -> None:
    """Eq. 1: audio BCE on the heard classes; image BCE on the classes in view (paper) or on the heard ones."""
    torch.manual_seed(3)
    model = tiny(stage=1, localization="cam", visual_labels=visual_labels)
    bt = batch(4)
    out = model(bt)
    losses = model.build_criterion()(out, bt)
    ya = torch.zeros(4, 10)
    yv = torch.zeros(4, 10)
    for i in range(4):
        ya[i, bt["labels"][i]] = 1
        yv[i, bt["visible_labels" if visual_labels == "visible" else "labels"][i]] = 1
    bce = torch.nn.functional.binary_cross_entropy_with_logits
    torch.testing.assert_close(losses["loss_cls"], bce(out["logits_a"], ya) + bce(out["logits_v"], yv))
    torch.testing.assert_close(losses["loss"], losses["loss_cls"] + losses["loss_avc"])
    # the image targets matter only for the visual classifier: with sounding labels a batch needs no visible_labels
    no_vis = {k: v for k, v in bt.items() if k != "visible_labels"}
    if visual_labels == "visible":
        with pytest.raises(DataError, match="visible_labels"):
            model.build_criterion()(out, no_vis)
    else:
        torch.testing.assert_close(model.build_criterion()(out, no_vis)["loss"], losses["loss"])


def test_cached_features_path_equals_image_path() -> None:
    model = tiny(stage=1, localization="cam").eval()
    bt = batch(3)
    with torch.no_grad():
        a = model(bt)
        b = model({"vfeat": model.encode_images(bt["image"]), "audio": bt["audio"], "labels": bt["labels"]})
    torch.testing.assert_close(a["logits_v"], b["logits_v"])


def test_stage1_init_and_zoo_roundtrip(tmp_path: Path) -> None:
    torch.manual_seed(7)
    s1 = tiny(stage=1, localization="cam")
    path = save_model(s1, tmp_path / "s1.safetensors")
    s2 = tiny(stage=2, localization="align", init_from=str(path))
    for (n, p1), (_, p2) in zip(s1.state_dict().items(), s2.state_dict().items(), strict=True):
        torch.testing.assert_close(p1, p2, msg=n)
    assert s2.cfg.init_from is None and s2.checkpoint_meta["initialized_from"] == str(path)
    # the stage-2 checkpoint rebuilds without the stage-1 file
    p2 = save_model(s2, tmp_path / "s2.safetensors")
    path.unlink()
    again = load_model(p2)
    assert isinstance(again, TwoStage) and again.cfg.stage == 2
    with pytest.raises(CheckpointError, match="not found"):
        tiny(stage=2, init_from=str(path))
    other = save_model(tiny(stage=1, localization="cam", feat_dim=8), tmp_path / "o.safetensors")
    with pytest.raises(CheckpointError, match="feat_dim"):
        tiny(stage=2, init_from=str(other))


def test_config_validation_and_presets() -> None:
    assert "twostage" in list_methods()
    with pytest.raises(ConfigError):
        tiny(stage=3)
    with pytest.raises(ConfigError, match="align"):
        tiny(stage=1, localization="align")
    with pytest.raises(ConfigError, match="use_classification"):
        tiny(stage=2, use_classification=False)
    with pytest.raises(ConfigError, match="visual_labels"):
        tiny(visual_labels="tags")
    with pytest.raises(ConfigError, match="map_norm"):
        tiny(map_norm="softmax")
    with pytest.raises(ConfigError, match="class_pooling"):
        tiny(class_pooling="mean")
    assert TwoStageConfig().map_norm == "cosine" and TwoStageConfig().class_pooling == "features"
    assert TwoStageConfig().visual_labels == "visible"  # the paper's setting: image tags = what is visible
    with pytest.raises(ConfigError, match="unknown twostage preset"):
        preset_config("nope")
    paper = TwoStageConfig()
    assert paper.audio.sample_rate == 22050 and paper.audio.n_fft == 882 and paper.audio.hop_length == 441
    assert paper.audio.n_mels == 64 and paper.audio.window_seconds == 5.0 and paper.image.size == 256
    assert (paper.embed_dim, paper.proj_hidden, paper.proj_dim, paper.avc_dim, paper.avc_hidden) == (512, 128, 128, 1024, 128)
    for name in PRESETS:
        preset_config(name)  # built and checked (TwoStageConfig.__post_init__)
    ds = preset_config("digitscenes-stage2")
    assert ds.audio.n_fft == 320 and ds.audio.hop_length == 160


def test_labels_to_multihot_forms_and_errors() -> None:
    dev = torch.device("cpu")
    ref = torch.zeros(2, 4)
    ref[0, 1] = ref[0, 3] = ref[1, 0] = 1
    torch.testing.assert_close(labels_to_multihot([[1, 3], [0]], 4, dev), ref)
    torch.testing.assert_close(labels_to_multihot(torch.tensor([[1, 3], [0, -1]]), 4, dev), ref)
    torch.testing.assert_close(labels_to_multihot(ref.bool(), 4, dev), ref)
    with pytest.raises(DataError, match="out of range"):
        labels_to_multihot([[4]], 4, dev)
    model = tiny(stage=1, localization="cam")
    bt = batch(2)
    out = model(bt)
    with pytest.raises(DataError, match="labels"):
        model.build_criterion()(out, {"audio": bt["audio"]})


def test_bench_peak_places() -> None:
    """bench/paper/twostage/run.py: where the class-agnostic map peaks (sounding / silent digit / background)."""
    import importlib.util

    path = Path(__file__).resolve().parents[1] / "bench" / "paper" / "twostage" / "run.py"
    spec = importlib.util.spec_from_file_location("twostage_digitscenes_bench", path)
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    m = np.zeros((4, 4))
    m[0, 3] = 1.0  # peak cell centre at (x, y) = (0.875, 0.125)
    from avloc.engine.predict import Predictions
    from avloc.metrics.targets import Target

    def t(i: str, snd: list[list[float]], sil: list[list[float]]) -> Target:
        return Target(i, boxes=np.array(snd).reshape(-1, 4), silent_boxes=np.array(sil).reshape(-1, 4))

    preds = Predictions("twostage", targets=[
        [t("a", [[0.7, 0.0, 1.0, 0.3]], [[0.0, 0.0, 0.3, 0.3]]), t("b", [[0.0, 0.0, 0.3, 0.3]], [[0.7, 0.0, 1.0, 0.3]])],
        [t("c", [[0.0, 0.0, 0.3, 0.3]], []), t("d", [[0.8, 0.1, 0.9, 0.2]], [[0.7, 0.0, 1.0, 0.3]])],  # d: sounding wins
    ], maps=[np.stack([m, m]), np.stack([m, m])])
    got = mod.peak_places(preds)
    assert got == {"sounding": 0.5, "silent": 0.25, "background": 0.25}


def test_predict_class_maps_are_probability_scaled_and_keep_the_probabilities() -> None:
    """The prediction layer stores ``localize_classes(...).scaled()`` (what the class-aware protocols score) and the
    probabilities; a silent class (low probability) is dark for DSOL's NSA, as in the two-stage bench."""
    from avloc.engine.evaluate import evaluate_predictions
    from avloc.engine.predict import predict

    torch.manual_seed(0)
    model = tiny(localization="cam").eval()  # an untrained Eq. 8 read-out is all zeros
    b = batch(4)
    ids = [f"s{i}" for i in range(4)]
    boxes = [[[0.1, 0.1, 0.5, 0.5]]] * 4
    box_labels = [[lab[0]] for lab in b["labels"]]
    data = [{"id": ids, "image": b["image"], "audio": b["audio"], "boxes": boxes, "box_labels": box_labels,
             "labels": b["labels"]}]
    preds = predict(model, data, outputs=("class_maps",))
    with torch.no_grad():
        cm = model.localize_classes(b["image"], b["audio"])
    want = (cm.maps * cm.probabilities[:, :, None, None]).numpy()
    np.testing.assert_allclose(preds.class_maps[0], want, rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(preds.class_probs[0], cm.probabilities.numpy(), rtol=1e-6)
    assert not np.allclose(preds.class_maps[0], cm.maps.numpy())  # the scaling is applied
    sub = preds.subset(lambda t: t.id != "s1")
    assert sub.ids == ["s0", "s2", "s3"] and sub.class_probs[0].shape == (3, model.cfg.num_classes)
    gts = [{"id": i, "boxes": bx, "box_labels": bl, "labels": lab}
           for i, bx, bl, lab in zip(ids, boxes, box_labels, b["labels"], strict=True)]
    ref = evaluate_predictions(dict(zip(ids, want, strict=True)), gts, "dsol-classaware")
    got = preds.score("dsol-classaware")
    assert got["nsa"] == pytest.approx(ref["nsa"]) and got["auc"] == pytest.approx(ref["auc"])
