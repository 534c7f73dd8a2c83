"""LVS (Chen et al. 2021): loss terms by hand, Table-4 variants, batch-independent localize."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from avloc.errors import ConfigError
from avloc.methods import create_method
from avloc.methods.lvs import LVSConfig, LVSLoss, cosine_maps
from test_engine import tiny_lvs_config


def _sig(x: float) -> float:
    return 1 / (1 + math.exp(-x))


def _hand_terms(s: torch.Tensor, cfg: LVSConfig) -> tuple[list[float], list[float], list[list[float]]]:
    """Plain-python P_i, H_i, E_ij of Section 3.4 for maps s (B, B, h, w)."""
    b = s.shape[0]
    vals = s.tolist()
    pos, hard, easy = [], [], []
    for i in range(b):
        cells = [v for row in vals[i][i] for v in row]
        mp = [_sig((v - cfg.eps_p) / cfg.tau) for v in cells]
        eps_neg = cfg.eps_n if cfg.variant == "trimap" else cfg.eps_p
        mn = [1 - _sig((v - eps_neg) / cfg.tau) for v in cells]
        pos.append(sum(m * v for m, v in zip(mp, cells)) / sum(mp))
        hard.append(sum(m * v for m, v in zip(mn, cells)) / sum(mn))
        row_e = []
        for j in range(b):
            if j == i:
                continue
            cj = [v for row in vals[i][j] for v in row]
            if cfg.easy_pool == "mean":
                row_e.append(sum(cj) / len(cj))
            else:  # public code: pooled with the positive soft mask of S_{i->j}
                mj = [_sig((v - cfg.eps_p) / cfg.tau) for v in cj]
                row_e.append(sum(m * v for m, v in zip(mj, cj)) / sum(mj))
        easy.append(row_e)
    return pos, hard, easy


def _tiny_outputs(b: int = 3, c: int = 4, h: int = 2, w: int = 3) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    return {
        "aemb": F.normalize(torch.randn(b, c, generator=g, dtype=torch.float64), dim=1),
        "vmap": F.normalize(torch.randn(b, c, h, w, generator=g, dtype=torch.float64), dim=1),
    }


def test_cosine_maps_match_definition() -> None:
    out = _tiny_outputs()
    s = cosine_maps(out["aemb"], out["vmap"])
    a, v = out["aemb"], out["vmap"]
    for i in range(3):
        for j in range(3):
            ref = torch.nn.functional.cosine_similarity(a[i][:, None, None].expand_as(v[j]), v[j], dim=0)
            torch.testing.assert_close(s[i, j], ref)


@pytest.mark.parametrize("easy_pool", ["positive", "mean"])
@pytest.mark.parametrize("variant", ["positives", "complementary", "trimap"])
def test_loss_matches_hand_computation(variant: str, easy_pool: str) -> None:
    cfg = LVSConfig(variant=variant, easy_pool=easy_pool)  # type: ignore[arg-type]
    out = _tiny_outputs()
    loss_fn = LVSLoss(cfg)
    s = cosine_maps(out["aemb"], out["vmap"])
    pos, hard, easy = _hand_terms(s, cfg)
    terms = loss_fn.terms(s)
    torch.testing.assert_close(terms["pos"], torch.tensor(pos, dtype=torch.float64))
    torch.testing.assert_close(terms["easy"], torch.tensor(easy, dtype=torch.float64))
    if variant != "positives":
        torch.testing.assert_close(terms["hard"], torch.tensor(hard, dtype=torch.float64))
    # InfoNCE over [P_i, E_ij (j != i), H_i] / T, target P_i (public-code form)
    total = 0.0
    for i in range(3):
        logits = [pos[i], *easy[i]] + ([hard[i]] if variant != "positives" else [])
        z = [x / cfg.logit_temperature for x in logits]
        total += -(z[0] - math.log(sum(math.exp(x) for x in z)))
    got = loss_fn(out)["loss"]
    assert float(got) == pytest.approx(total / 3, rel=1e-9)


def test_summed_negatives_follow_the_paper_equation() -> None:
    cfg = LVSConfig(negatives="summed")
    out = _tiny_outputs()
    s = cosine_maps(out["aemb"], out["vmap"])
    pos, hard, easy = _hand_terms(s, cfg)
    t = cfg.logit_temperature
    ref = sum(-math.log(math.exp(pos[i] / t) / (math.exp(pos[i] / t) + math.exp((hard[i] + sum(easy[i])) / t))) for i in range(3)) / 3
    assert float(LVSLoss(cfg)(out)["loss"]) == pytest.approx(ref, rel=1e-9)


def test_trimap_ignores_the_uncertain_band() -> None:
    """A cell scored between eps_n and eps_p counts as neither positive nor (tri-map) negative."""
    cfg = LVSConfig()
    loss = LVSLoss(cfg)
    s = torch.tensor([0.9, 0.5, 0.1])
    m_p = loss.soft_mask(s, cfg.eps_p)
    m_n = 1 - loss.soft_mask(s, cfg.eps_n)
    assert m_p[0] > 0.99 and m_p[1] < 0.01 and m_p[2] < 1e-6
    assert m_n[0] < 1e-6 and m_n[1] < 0.05 and m_n[2] > 0.99
    # complementary variant (b) would count the 0.5 cell as a negative
    assert 1 - m_p[1] > 0.99


def test_variants_differ_and_train_signal_flows() -> None:
    torch.manual_seed(0)
    model = create_method("lvs", tiny_lvs_config())
    batch = {"image": torch.rand(4, 3, 32, 32), "audio": torch.randn(4, 4000)}
    crafted = _tiny_outputs()
    distinct = {v: float(LVSLoss(tiny_lvs_config(variant=v))(crafted)["loss"]) for v in ("positives", "complementary", "trimap")}
    assert len({round(v, 9) for v in distinct.values()}) == 3
    out = model(batch)
    LVSLoss(tiny_lvs_config())(out)["loss"].backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert any(g.abs().sum() > 0 for g in grads if g is not None)


def test_localize_is_batch_independent_and_shaped() -> None:
    torch.manual_seed(0)
    model = create_method("lvs", tiny_lvs_config()).eval()
    images, audio = torch.rand(5, 3, 32, 32), torch.randn(5, 4000)
    with torch.no_grad():
        full = model.localize(images, audio)
        singles = torch.cat([model.localize(images[i : i + 1], audio[i : i + 1]) for i in range(5)])
    assert full.shape == (5, 8, 8)
    assert full.abs().max() <= 1 + 1e-5
    torch.testing.assert_close(full, singles, rtol=1e-5, atol=1e-5)


def test_forward_accepts_cached_features() -> None:
    torch.manual_seed(0)
    model = create_method("lvs", tiny_lvs_config(freeze_visual=True)).eval()
    images, audio = torch.rand(2, 3, 32, 32), torch.randn(2, 4000)
    with torch.no_grad():
        a = model({"image": images, "audio": audio})
        b = model({"vfeat": model.encode_images(images), "audio": audio})
    torch.testing.assert_close(a["vmap"], b["vmap"])


def test_bad_config_fails_early() -> None:
    with pytest.raises(ConfigError, match="eps_n < eps_p"):
        create_method("lvs", tiny_lvs_config(eps_p=0.3, eps_n=0.4))
    with pytest.raises(ConfigError, match="visual_proj"):
        create_method("lvs", tiny_lvs_config(visual_proj="none"))
