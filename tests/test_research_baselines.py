"""Issue 29's trainable baselines: FNAC, SLAVC (momentum encoders, dropout) and SSL-Alignment.

* each loss against an independent NumPy re-derivation on tiny tensors;
* SLAVC's momentum update by hand and through the training engine's hook, its dropout, its momentum map;
* SSL-Alignment's neighbour mining and pairing, and the views its loss sees;
* the batch augmentation: exact flip, crops inside the image with area and aspect in range, colours by formula;
* the recipes: paper settings and an augmentation in each, and a two-step dry run per recipe (slow).
(The shared contract test over every registered method is in ``tests/test_baselines.py``.)
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import pytest
import torch
from torch.utils.data import Dataset

from avloc.config import CONFIGS_DIR, ConfigError
from avloc.data.neighbours import NeighbourPairs, mine_neighbours, partners_by_key
from avloc.engine.train import TrainConfig, train
from avloc.frontends.augment import LUMA, AugmentConfig, augment_images, crop_affines, jitter_colours
from avloc.methods import create_method
from avloc.methods.fnac import FNACLoss
from avloc.methods.slavc import ema_update, slavc_loss
from avloc.methods.sslalign import SSLAlignLoss
from test_baselines import PRETRAINED, tiny_batch, tiny_config

RNG = np.random.default_rng(0)
TAU = 0.03


def _unit(x: np.ndarray, axis: int) -> np.ndarray:
    return x / np.linalg.norm(x, axis=axis, keepdims=True)


def _softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def _ce_diag(logits: np.ndarray) -> float:
    """Mean cross-entropy of each row against its diagonal entry."""
    z = logits - logits.max(axis=1, keepdims=True)
    return float(np.mean(np.log(np.exp(z).sum(axis=1)) - np.diag(z)))


def _t(x: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(x.astype(np.float64))


# ----------------------------------------------------------------------------- FNAC


def test_fnac_loss_matches_numpy_rederivation() -> None:
    """Each FNAC term from the paper's definitions, written with NumPy loops (module docstring of fnac.py)."""
    b, d, h, w = 4, 6, 3, 3
    audio = _unit(RNG.standard_normal((b, d)), 1)
    visual = _unit(RNG.standard_normal((b, d, h, w)), 1)
    sim = np.einsum("id,jdhw->ijhw", audio, visual)
    logits = sim.reshape(b, b, -1).max(-1) / TAU
    pair = np.stack([sim[i, i] for i in range(b)])
    cl = _ce_diag(logits) + _ce_diag(logits.T)
    a_adj = _softmax(audio @ audio.T / TAU)
    vbar = _unit(visual.mean(axis=(2, 3)), 1)
    v_adj = _softmax(vbar @ vbar.T / TAU)
    p = _softmax(logits)
    regions = []
    for i in range(b):
        m = _softmax(pair[i].reshape(1, -1) / TAU)[0]
        regions.append(sum(m[k] * visual[i].reshape(d, -1)[:, k] for k in range(h * w)))
    r = _unit(np.stack(regions), 1)
    fns_a, fns_v = np.abs(p - a_adj).mean(), np.abs(p - v_adj).mean()
    tne = np.abs(_softmax(r @ r.T / TAU) - a_adj).mean()
    out = FNACLoss(TAU, 100.0, 10.0, 1.0)(
        {"logits": _t(logits), "audio": _t(audio), "visual": _t(visual), "pair_maps": _t(pair)}, {})
    assert float(out["contrastive"]) == pytest.approx(cl, rel=1e-9)
    assert float(out["fns_audio"]) == pytest.approx(fns_a, rel=1e-9)
    assert float(out["fns_visual"]) == pytest.approx(fns_v, rel=1e-9)
    assert float(out["tne"]) == pytest.approx(tne, rel=1e-9)
    assert float(out["loss"]) == pytest.approx(cl + 100 * fns_a + 10 * fns_v + tne, rel=1e-9)


def test_fnac_forward_is_ezvsl_with_its_terms() -> None:
    """FNAC's logits and map are EZ-VSL's on the same weights; its loss has the three terms, weights 100."""
    fnac = create_method("fnac", tiny_config("fnac")).eval()
    ez = create_method("ezvsl", tiny_config("ezvsl")).eval()
    ez.load_state_dict(fnac.state_dict())
    batch = tiny_batch()
    with torch.no_grad():
        a, e = fnac(batch), ez(batch)
        torch.testing.assert_close(a["logits"], e["logits"])
        torch.testing.assert_close(fnac.localize(batch["image"], batch["audio"]), ez.localize(batch["image"], batch["audio"]))
    assert fnac.cfg.fns_audio_weight == fnac.cfg.fns_visual_weight == fnac.cfg.tne_weight == 100.0
    terms = fnac.build_criterion()(a, batch)
    assert {"contrastive", "fns_audio", "fns_visual", "tne"} <= set(terms)
    with pytest.raises(ConfigError, match="heads"):
        create_method("fnac", tiny_config("fnac", heads=2))


# ----------------------------------------------------------------------------- SLAVC


def test_slavc_loss_matches_numpy_rederivation() -> None:
    b = 5
    mats = [RNG.standard_normal((b, b)) * 3 for _ in range(4)]
    want_loc = _ce_diag(mats[0]) + _ce_diag(mats[1].T)
    want_avc = _ce_diag(mats[2]) + _ce_diag(mats[3].T)
    got = slavc_loss(*(_t(m) for m in mats))
    assert float(got["localization"]) == pytest.approx(want_loc, rel=1e-9)
    assert float(got["correspondence"]) == pytest.approx(want_avc, rel=1e-9)
    assert float(got["loss"]) == pytest.approx(want_loc + want_avc, rel=1e-9)


def test_slavc_logits_pair_online_and_momentum_branches() -> None:
    """loc_av = max_uv <a_online, V_momentum> / tau; avc_va = <a_momentum, mean V_online> / tau (by hand)."""
    m = create_method("slavc", tiny_config("slavc", visual_dropout=0.0)).train()
    with torch.no_grad():
        for p in m.momentum.parameters():
            p.add_(0.05 * torch.randn_like(p))  # momentum weights differ from the online ones
        batch = tiny_batch()
        out = m(batch)
        feat = m.encode_images(batch["image"])
        on = m.embed(feat, None, batch["audio"], momentum=False)
        mo = m.embed(feat, batch["image"], batch["audio"], momentum=True)
    a, v = on.audio[0].numpy(), mo.visual[0].numpy()
    want = np.einsum("id,jdhw->ijhw", a, v).reshape(len(a), len(a), -1).max(-1) / m.cfg.temperature
    np.testing.assert_allclose(out["loc_av"].numpy(), want, rtol=1e-5, atol=1e-4)
    vbar = _unit(on.visual[1].numpy().mean(axis=(2, 3)), 1)
    np.testing.assert_allclose(out["avc_va"].numpy(), mo.audio[1].numpy() @ vbar.T / m.cfg.temperature, rtol=1e-5, atol=1e-4)


def test_ema_update_by_hand() -> None:
    online, target = torch.nn.BatchNorm1d(3), torch.nn.BatchNorm1d(3)
    with torch.no_grad():
        online.weight.copy_(torch.tensor([1.0, 2.0, 3.0]))
        target.weight.copy_(torch.tensor([0.0, 0.0, 1.0]))
        online.running_mean.copy_(torch.tensor([5.0, 6.0, 7.0]))
    ema_update(target, online, 0.9)
    torch.testing.assert_close(target.weight.detach(), torch.tensor([0.1, 0.2, 1.2]))
    torch.testing.assert_close(target.running_mean, online.running_mean)


def test_slavc_dropout_only_while_training_and_only_online() -> None:
    m = create_method("slavc", tiny_config("slavc", visual_dropout=0.9)).eval()
    batch = tiny_batch()
    feat = m.encode_images(batch["image"]).detach()  # eval-mode BatchNorm, as the momentum encoder's
    m.train()
    on = m.embed(feat, None, batch["audio"], momentum=False)
    mo = m.embed(feat, batch["image"], batch["audio"], momentum=True)
    m.eval()
    on_eval = m.embed(feat, None, batch["audio"], momentum=False)
    assert not torch.allclose(on.visual[0], on_eval.visual[0])  # 90 % of the features dropped
    torch.testing.assert_close(mo.visual[0], on_eval.visual[0])  # momentum = online at init, never dropped


class _Pairs(Dataset):
    """Random images and noise, enough for a few optimiser steps."""

    def __init__(self, n: int = 8) -> None:
        self.batch = tiny_batch(n, seed=4)

    def __len__(self) -> int:
        return len(self.batch["audio"])

    def __getitem__(self, i: int) -> dict[str, Any]:
        return {"id": f"s{i}", "image": self.batch["image"][i], "audio": self.batch["audio"][i]}


def _engine(tmp_path: Any, model: Any, steps: int = 2) -> None:
    cfg = TrainConfig(steps=steps, batch_size=4, val_every=0, ckpt_every=0, log_every=1, progress=False,
                      device="cpu", feature_cache=False)
    train(model, _Pairs(), tmp_path / "run", cfg)


def test_engine_calls_the_momentum_hook_after_each_step(tmp_path: Any) -> None:
    """With m = 0 the momentum encoders equal the online ones after training; with m = 1 their weights never move
    (their BatchNorm statistics are copied from the online encoders)."""
    follow = create_method("slavc", tiny_config("slavc", momentum=0.0))
    _engine(tmp_path / "a", follow)
    for key, online in follow._online_modules().items():
        for (name, want), got in zip(online.state_dict().items(), follow.momentum[key].state_dict().values(), strict=True):
            torch.testing.assert_close(got, want, msg=f"{key}.{name}")
    still = create_method("slavc", tiny_config("slavc", momentum=1.0))
    before = [p.detach().clone() for p in still.momentum.parameters()]
    trained = [p.detach().clone() for p in still._online_modules()["audio_proj"].parameters()]
    _engine(tmp_path / "b", still)
    for b, a in zip(before, still.momentum.parameters(), strict=True):
        assert torch.equal(b, a)
    assert any(not torch.equal(t, p) for t, p in zip(trained, still.audio_path.proj.parameters(), strict=True))


def test_slavc_momentum_eval_maps_with_the_momentum_encoders() -> None:
    cfg = tiny_config("slavc")
    online = create_method("slavc", cfg).eval()
    mom = create_method("slavc", {**cfg, "momentum_eval": True}).eval()
    mom.load_state_dict(online.state_dict())
    batch = tiny_batch()
    with torch.no_grad():
        torch.testing.assert_close(mom.localize(batch["image"], batch["audio"]), online.localize(batch["image"], batch["audio"]))
        for p in mom.momentum.parameters():
            p.add_(0.1 * torch.randn_like(p))
        assert not torch.allclose(mom.localize(batch["image"], batch["audio"]), online.localize(batch["image"], batch["audio"]))


@pytest.mark.parametrize(("key", "value"), [("heads", 1), ("visual_dropout", 1.0), ("momentum", 1.5)])
def test_slavc_config_refuses(key: str, value: float) -> None:
    with pytest.raises(ConfigError, match=key.split("_")[0]):
        create_method("slavc", tiny_config("slavc", **{key: value}))


# ----------------------------------------------------------------------------- SSL-Alignment


def test_sslalign_loss_matches_numpy_rederivation() -> None:
    """Mean over the P x Q view pairs of the MIL and the global InfoNCE, each symmetric."""
    p_views, q_views, b, d = 3, 2, 4, 5
    visual = _unit(RNG.standard_normal((p_views, b, d, 2, 2)), 2)
    audio = _unit(RNG.standard_normal((q_views, b, d)), 2)
    loc, align = [], []
    for v in visual:
        for a in audio:
            mil = np.einsum("id,jdhw->ijhw", a, v).reshape(b, b, -1).max(-1) / TAU
            glob = a @ _unit(v.mean(axis=(2, 3)), 1).T / TAU
            loc.append(_ce_diag(mil) + _ce_diag(mil.T))
            align.append(_ce_diag(glob) + _ce_diag(glob.T))
    got = SSLAlignLoss(TAU, 0.5)({"visual": _t(visual), "audio": _t(audio)}, {})
    assert float(got["localization"]) == pytest.approx(np.mean(loc), rel=1e-9)
    assert float(got["alignment"]) == pytest.approx(np.mean(align), rel=1e-9)
    assert float(got["loss"]) == pytest.approx(np.mean(loc) + 0.5 * np.mean(align), rel=1e-9)


def test_sslalign_views() -> None:
    """Two augmented views of the clip's image; with semantic_k the partner's image and sound join them."""
    m = create_method("sslalign", tiny_config("sslalign")).train()
    batch = tiny_batch()
    out = m(batch)
    assert out["visual"].shape[:2] == (2, 3) and out["audio"].shape[:2] == (1, 3)
    assert not torch.allclose(out["visual"][0], out["visual"][1])  # independent draws
    paired = create_method("sslalign", tiny_config("sslalign", semantic_k=1)).train()
    with pytest.raises(ConfigError, match="pair_image"):
        paired(batch)
    other = tiny_batch(seed=9)
    out = paired({**batch, "pair_image": other["image"], "pair_audio": other["audio"]})
    assert out["visual"].shape[0] == 3 and out["audio"].shape[0] == 2
    with pytest.raises(ConfigError, match="identity"):
        create_method("sslalign", tiny_config("sslalign", augment={}))


def test_mine_neighbours_and_partners_by_hand() -> None:
    feats = torch.tensor([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0], [0.1, 0.9], [-1.0, 0.0]])
    nb = mine_neighbours(feats, 2, chunk=2)
    assert nb[:, 0].tolist() == [1, 0, 3, 2, 2]  # most similar other row (cosine), itself excluded
    assert nb[4].tolist() == [2, 3]  # cosines 0 and -0.11
    keys = ["a", "b", "a", "c"]  # samples 0 and 2 show image "a"
    got = partners_by_key(keys, torch.tensor([[1], [0], [1]]), ["a", "b", "c"])
    assert got == [[1], [0], [1], [1]]  # a -> b (sample 1), b -> a (first sample showing a: 0), c -> b
    with pytest.raises(ConfigError, match="neighbours"):
        mine_neighbours(feats, 5)


def test_sslalign_prepare_training_mines_with_the_pretrained_encoder() -> None:
    """prepare_training pairs each sample with its nearest neighbour in EfficientNet-Lite0's pooled features."""
    from avloc.encoders import create_encoder

    m = create_method("sslalign", tiny_config("sslalign", semantic_k=1))
    base = _Pairs(6)
    paired = m.prepare_training(base, feature_cache=False)
    assert isinstance(paired, NeighbourPairs)
    enc = create_encoder("efficientnet_lite0").eval()
    with torch.no_grad():
        f = torch.nn.functional.normalize(enc(base.batch["image"]).mean(dim=(2, 3)), dim=1)
    sim = f @ f.t()
    sim.fill_diagonal_(-2.0)
    assert [p[0] for p in paired.partners] == sim.argmax(dim=1).tolist()
    with pytest.raises(ConfigError, match="pretrained"):
        create_method("sslalign", tiny_config("sslalign", semantic_k=1, semantic_encoder="small_cnn")).prepare_training(
            base, feature_cache=False)


def test_neighbour_pairs_carry_a_partner() -> None:
    base = _Pairs(4)
    ds = NeighbourPairs(base, [[1], [2], [3], [0]])
    s = ds[2]
    torch.testing.assert_close(s["pair_image"], base[3]["image"])
    torch.testing.assert_close(s["pair_audio"], base[3]["audio"])
    assert s["id"] == "s2"


# ----------------------------------------------------------------------------- augmentation


def test_flip_is_exact_and_identity_is_untouched() -> None:
    x = torch.rand(2, 3, 8, 10, generator=torch.Generator().manual_seed(0))
    assert augment_images(x, AugmentConfig()) is x
    torch.testing.assert_close(augment_images(x, AugmentConfig(hflip=1.0)), x.flip(-1), atol=1e-6, rtol=0)


def test_crops_stay_inside_with_area_and_aspect_in_range() -> None:
    cfg = AugmentConfig(crop_scale=(0.3, 0.8), crop_ratio=(0.5, 2.0), hflip=0.5)
    th = crop_affines(4000, cfg, torch.Generator().manual_seed(1))
    w, h, cx, cy = th[:, 0, 0].abs(), th[:, 1, 1], th[:, 0, 2], th[:, 1, 2]
    assert bool((cx.abs() + w <= 1 + 1e-6).all() and (cy.abs() + h <= 1 + 1e-6).all())
    area, ratio = w * h, w / h
    assert float(area.max()) <= 0.8 + 1e-6 and float(ratio.min()) >= 0.5 - 1e-6 and float(ratio.max()) <= 2 + 1e-6
    unclipped = (w < 1) & (h < 1)
    assert float(area[unclipped].min()) >= 0.3 - 1e-6
    assert abs(float((th[:, 0, 0] < 0).float().mean()) - 0.5) < 0.05
    ez = crop_affines(10, AugmentConfig(crop_scale=(1 / 1.21, 1 / 1.21)), torch.Generator().manual_seed(2))
    torch.testing.assert_close(ez[:, 0, 0], torch.full((10,), 1 / 1.1))  # EZ-VSL: a 224 crop of 1.1 x 224


def test_colour_jitter_by_formula() -> None:
    x = torch.rand(3, 3, 4, 4, generator=torch.Generator().manual_seed(5))
    cfg = AugmentConfig(brightness=0.5)
    got = jitter_colours(x, cfg, torch.Generator().manual_seed(7))
    f = 0.5 + torch.rand(3, generator=torch.Generator().manual_seed(7))  # U(1 - 0.5, 1 + 0.5)
    torch.testing.assert_close(got, (x * f.view(3, 1, 1, 1)).clamp(0, 1))
    gray = jitter_colours(x, AugmentConfig(grayscale=1.0))
    luma = sum(c * x[:, i] for i, c in enumerate(LUMA))
    for ch in range(3):
        torch.testing.assert_close(gray[:, ch], luma)


@pytest.mark.parametrize(("field", "value"), [("crop_scale", (0.0, 1.0)), ("crop_scale", (0.9, 0.5)),
                                              ("crop_ratio", (2.0, 1.0)), ("hflip", 1.5), ("brightness", -0.1)])
def test_augment_config_refuses(field: str, value: Any) -> None:
    with pytest.raises(ConfigError, match=field):
        AugmentConfig(**{field: value})


def test_augmented_ezvsl_encodes_images_and_refuses_cached_features() -> None:
    """With augment the engine may not cache frozen features; a flip-always augmentation = flipping by hand."""
    pretrained = {**PRETRAINED, "embed_dim": 16}
    assert create_method("ezvsl", pretrained).visual_cacheable()
    assert not create_method("ezvsl", {**pretrained, "augment": {"hflip": 0.5}}).visual_cacheable()
    m = create_method("ezvsl", tiny_config("ezvsl", freeze_visual=True, augment={"hflip": 1.0})).train()
    plain = create_method("ezvsl", tiny_config("ezvsl", freeze_visual=True)).train()
    plain.load_state_dict(m.state_dict())
    batch = tiny_batch()
    with pytest.raises(ConfigError, match="feature_cache"):
        m({"vfeat": m.encode_images(batch["image"]), "audio": batch["audio"]})
    with torch.no_grad():
        out = m(batch)
        ref = plain({**batch, "image": batch["image"].flip(-1)})  # the flip by hand, same (train) mode
    torch.testing.assert_close(out["logits"], ref["logits"], atol=1e-4, rtol=1e-4)


# ----------------------------------------------------------------------------- recipes

RECIPES = {"fnac-vggsound144k": "fnac", "slavc-vggsound144k": "slavc", "sslalign-vggsound144k": "sslalign",
           "ezvsl-vggsound144k": "ezvsl"}


@pytest.mark.parametrize(("recipe", "method"), sorted(RECIPES.items()))
def test_recipes_name_their_method_and_augment(recipe: str, method: str) -> None:
    """Each paper recipe builds its method with the paper's augmentation, Adam 1e-4 and batch 128, and names
    its published target as a target."""
    raw = json.loads((CONFIGS_DIR / f"{recipe}.json").read_text())
    assert raw["method_name"] == method and len(raw["notes"]) >= 3
    assert "target" in raw["description"].lower() and "not reproduced" in raw["description"].lower()
    m = create_method(method, {**raw["method"], "visual_encoder_kwargs": {}})  # no ImageNet file needed
    assert m.cfg.augment.enabled and m.cfg.augment.hflip == 0.5
    assert raw["train"]["optim"]["lr"] == 1e-4 and raw["train"]["batch_size"] == 128
    assert raw["train"]["feature_cache"] is False
