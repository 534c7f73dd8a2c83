"""Classification-model localization ("Less can be more"): Eqs. 1-4 by hand, Table 2 head options, contract."""

from __future__ import annotations

from typing import Any

import pytest
import torch
import torch.nn.functional as F

from avloc.errors import ConfigError, DataError
from avloc.frontends.audio import AudioFrontendConfig
from avloc.frontends.image import ImageConfig
from avloc.methods import create_method
from avloc.methods.classif import (
    Classif,
    ClassifConfig,
    attention_maps,
    labels_to_targets,
    modality_features,
    window_average,
    window_steps,
)

SR = 8000
SIZE = 32


def tiny_classif_config(**kw: Any) -> ClassifConfig:
    """A few thousand parameters: small_cnn visual encoder (trainable), 1 s log-mel windows, 4 fps."""
    base: dict[str, Any] = {
        "audio": AudioFrontendConfig(sample_rate=SR, window_seconds=1.0, kind="logmel", n_fft=256, hop_length=80, n_mels=16),
        "image": ImageConfig(size=SIZE, resize=SIZE),
        "visual_encoder": "small_cnn",
        "visual_encoder_kwargs": {"channels": [4, 8], "out_stride": 4},
        "freeze_visual": False,
        "fps": 4.0,
        "embed_dim": 6,
        "video_reduce": 4,
        "audio_channels": (4, 4),
        "loc_window_seconds": 0.5,
    }
    return ClassifConfig(**{**base, **kw})


def _batch(b: int = 3, seconds: float = 1.0, clip: bool = False) -> dict[str, Any]:
    g = torch.Generator().manual_seed(0)
    t = round(seconds * 4)
    shape = (b, t, 3, SIZE, SIZE) if clip else (b, 3, SIZE, SIZE)
    return {
        "image": torch.rand(*shape, generator=g),
        "audio": 0.1 * torch.randn(b, round(seconds * SR), generator=g),
        "labels": [[i % 3] for i in range(b)],
    }


@pytest.mark.parametrize("heads", ["individual", "shared", "single"])
@pytest.mark.parametrize("clip", [False, True])
def test_forward_backward_shapes(heads: str, clip: bool) -> None:
    m = create_method("classif", tiny_classif_config(heads=heads))
    batch = _batch(clip=clip, seconds=2.0 if clip else 1.0)
    out = m(batch)
    expect = {"logits_av"} if heads == "single" else {"logits_av", "logits_vision", "logits_audio"}
    assert set(out) == expect
    assert all(v.shape == (3, 10) for v in out.values())
    losses = m.build_criterion()(out, batch)
    assert torch.isfinite(losses["loss"])
    losses["loss"].backward()
    grads = [p.grad for p in m.parameters() if p.requires_grad]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)


def test_heads_fc_layout_table2() -> None:
    ind = create_method("classif", tiny_classif_config(heads="individual"))
    sh = create_method("classif", tiny_classif_config(heads="shared"))
    si = create_method("classif", tiny_classif_config(heads="single"))
    assert isinstance(ind, Classif) and isinstance(sh, Classif) and isinstance(si, Classif)
    assert sorted(ind.heads.fc) == ["audio", "av", "vision"]
    assert list(sh.heads.fc) == ["av"] and sh.heads.active == ("vision", "audio", "av")
    assert list(si.heads.fc) == ["av"] and si.heads.active == ("av",)
    z = {k: torch.randn(2, 12) for k in ("av", "vision", "audio")}
    out = sh.heads(z)
    fc = sh.heads.fc["av"]
    for k in ("av", "vision", "audio"):  # one shared FC for every head
        torch.testing.assert_close(out[k], fc(z[k]))


@pytest.mark.parametrize("heads", ["individual", "shared", "single"])
def test_head_logits_all_three_heads(heads: str) -> None:
    m = create_method("classif", tiny_classif_config(heads=heads))
    assert isinstance(m, Classif)
    m.eval()
    batch = _batch()
    with torch.no_grad():
        all3 = m.head_logits(batch)
        own = m(batch)
        _, zv, za = m.encode(m.visual_features(batch), batch["audio"])
        z = modality_features(zv, za)
    assert set(all3) == {"vision", "audio", "av"} and all(v.shape == (3, 10) for v in all3.values())
    for k, v in own.items():  # the trained heads give exactly forward()'s logits
        torch.testing.assert_close(all3[k.removeprefix("logits_")], v)
    if heads == "single":  # the untrained modality inputs go through the one AV FC
        torch.testing.assert_close(all3["audio"], m.heads.fc["av"](z["audio"]))
        torch.testing.assert_close(all3["vision"], m.heads.fc["av"](z["vision"]))


def test_eq1_modality_features_by_hand() -> None:
    zv = torch.tensor([[[1.0, 2.0], [3.0, 4.0]]])  # (1, T=2, D=2)
    za = torch.tensor([[[10.0, 0.0], [0.0, 20.0]]])
    z = modality_features(zv, za)
    torch.testing.assert_close(z["av"], torch.tensor([[2.0, 3.0, 5.0, 10.0]]))
    torch.testing.assert_close(z["vision"], torch.tensor([[2.0, 3.0, 0.0, 0.0]]))
    torch.testing.assert_close(z["audio"], torch.tensor([[0.0, 0.0, 5.0, 10.0]]))


def test_eq3_loss_is_sum_of_cross_entropies() -> None:
    cfg = tiny_classif_config()
    m = create_method("classif", cfg)
    crit = m.build_criterion()
    g = torch.Generator().manual_seed(3)
    out = {f"logits_{k}": torch.randn(2, 10, generator=g) for k in ("vision", "audio", "av")}
    batch = {"labels": [[4], [1, 7]]}
    y = torch.zeros(2, 10)
    y[0, 4] = 1.0
    y[1, 1] = y[1, 7] = 0.5
    ref = 0.0
    for k in ("vision", "audio", "av"):
        logp = F.log_softmax(out[f"logits_{k}"], dim=1)
        ref += float(-(y * logp).sum(dim=1).mean())
    assert float(crit(out, batch)["loss"]) == pytest.approx(ref, rel=1e-5)
    single = create_method("classif", tiny_classif_config(heads="single")).build_criterion()
    logp = F.log_softmax(out["logits_av"], dim=1)
    assert float(single(out, batch)["loss"]) == pytest.approx(float(-(y * logp).sum(dim=1).mean()), rel=1e-5)


def test_labels_to_targets() -> None:
    y = labels_to_targets([[2], [0, 3, 3]], 4, torch.device("cpu"))
    torch.testing.assert_close(y, torch.tensor([[0, 0, 1, 0], [0.5, 0, 0, 0.5]]))
    with pytest.raises(DataError, match="no class label"):
        labels_to_targets([[]], 4, torch.device("cpu"))
    with pytest.raises(DataError, match="num_classes"):
        labels_to_targets([[5]], 4, torch.device("cpu"))


def test_eq4_attention_and_window_by_hand() -> None:
    vmap = torch.zeros(1, 3, 2, 1, 2)  # (B, T, D, h, w)
    vmap[0, :, 0, 0, 0] = torch.tensor([1.0, 2.0, 3.0])
    vmap[0, :, 1, 0, 1] = torch.tensor([4.0, 5.0, 6.0])
    za = torch.tensor([[[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]]])  # (B, T, D)
    alpha = attention_maps(vmap, za)  # (1, 3, 1, 2)
    torch.testing.assert_close(alpha[0, :, 0], torch.tensor([[1.0, 0.0], [0.0, 5.0], [3.0, 6.0]]))
    torch.testing.assert_close(window_average(alpha, 1, 2)[0, 0], torch.tensor([0.5, 2.5]))  # steps 0-1
    assert window_steps(0, 3, 10) == (0, 3)
    assert window_steps(5, 3, 10) == (4, 7)
    assert window_steps(9, 4, 10) == (6, 10)
    assert window_steps(1, 30, 5) == (0, 5)
    with pytest.raises(DataError):
        window_steps(5, 3, 5)


def test_localize_is_eq4_over_window_and_batch_independent() -> None:
    m = create_method("classif", tiny_classif_config()).eval()
    assert isinstance(m, Classif)
    batch = _batch(b=3)
    with torch.no_grad():
        full = m.localize(batch["image"], batch["audio"])  # (3, h, w)
        one = m.localize(batch["image"][1:2], batch["audio"][1:2])
        alpha, s_av = m.clip_attention(batch["image"], batch["audio"])  # (3, T=4, h, w)
    assert full.shape == (3, 8, 8) and alpha.shape == (3, 4, 8, 8) and s_av.shape == (3, 4)
    torch.testing.assert_close(one[0], full[1])
    # d = 0.5 s x 4 fps = 2 steps around the middle step 2 -> steps 1 and 2
    torch.testing.assert_close(full, alpha[:, 1:3].mean(dim=1))


def test_still_is_a_fixed_frame_clip_and_cached_features_match() -> None:
    m = create_method("classif", tiny_classif_config()).eval()
    assert isinstance(m, Classif)
    b = _batch(b=2)
    clip = b["image"][:, None].expand(-1, 4, -1, -1, -1)  # (2, T, 3, H, W)
    with torch.no_grad():
        a_still, s_still = m.clip_attention(b["image"], b["audio"])
        a_clip, s_clip = m.clip_attention(clip, b["audio"])
        torch.testing.assert_close(a_still, a_clip)
        torch.testing.assert_close(s_still, s_clip)
        # S_av[t] = z^V_t . z^A_t
        _, zv, za = m.encode(m.encode_images(b["image"]), b["audio"])
        torch.testing.assert_close(m.moment_scores(b["image"], b["audio"]), (zv * za).sum(-1))
        out_img = m({"image": b["image"], "audio": b["audio"]})
        out_feat = m({"vfeat": m.encode_images(b["image"]), "audio": b["audio"]})
    torch.testing.assert_close(out_img["logits_av"], out_feat["logits_av"])


def test_clip_steps_must_match_audio() -> None:
    m = create_method("classif", tiny_classif_config())
    b = _batch(clip=True, seconds=2.0)
    with pytest.raises(DataError, match="steps"):
        m({"image": b["image"], "audio": b["audio"][:, : SR]})


def test_config_checks() -> None:
    with pytest.raises(ConfigError, match="fps"):
        create_method("classif", tiny_classif_config(fps=0.0))
    short = tiny_classif_config(fps=100.0)  # 100 steps per second from 100 Hz mel frames pooled 4x: too few
    with pytest.raises(ConfigError, match="lower fps"):
        create_method("classif", short)(_batch())
    with pytest.raises(ConfigError, match="heads"):
        create_method("classif", tiny_classif_config(heads="two"))  # type: ignore[arg-type]
    cfg = ClassifConfig()
    assert cfg.audio.n_mels == 80 and cfg.audio.hop_length == 160 and cfg.audio.sample_rate == 16000  # Sec. 4.2
    assert cfg.image.size == 112 and cfg.loc_window_seconds == 3.0


def test_checkpoint_roundtrip(tmp_path: Any) -> None:
    from avloc.methods.zoo import load_model, save_model

    m = create_method("classif", tiny_classif_config(heads="shared"))
    p = save_model(m, tmp_path / "c.safetensors")
    m2 = load_model(p)
    assert isinstance(m2, Classif) and m2.cfg.heads == "shared"
    b = _batch(b=1)
    m.eval()
    with torch.no_grad():
        torch.testing.assert_close(m.localize(b["image"], b["audio"]), m2.localize(b["image"], b["audio"]))


def test_lvs_apps_train_end(tmp_path: Any) -> None:
    """The memorisation check of bench/paper/classif/lvs_apps.py (avloc.engine.train.train_end with its keys)
    averages the last 100 logged training steps, validation rows aside."""
    import json

    from avloc.engine.train import METRICS_FILE, train_end

    rows = [{"step": s, "split": "train", "loss": 4.0 - s / 100, "acc": s / 200} for s in range(20, 201, 20)]
    rows.insert(3, {"step": 60, "split": "val", "loss": 99.0})  # validation rows are not training batches
    rows[-1]["box"] = 3.0  # the box term, when logged
    (tmp_path / METRICS_FILE).write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    got = train_end(tmp_path, last=100, keys=("loss", "acc", "box"))
    # steps 120, 140, 160, 180, 200 fall in 101-200; quarters of 200 are 50 / 100 / 150 / 200 (logged: 100, 200)
    assert got["steps"] == "101-200" and got["logged"] == 5 and got["box"] == 3.0
    assert got["loss"] == pytest.approx(2.4) and got["acc"] == pytest.approx(0.8)
    assert got["loss_at"] == pytest.approx({"100": 3.0, "200": 2.0})
