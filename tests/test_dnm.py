"""DNM (Nishikawa et al.) and its two baselines: shapes, gradients, the loss by hand, batch independence."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest
import torch

from avloc.errors import ConfigError, DataError
from avloc.methods import create_method
from avloc.methods.dnm import DNM, DNMLoss, SegmentMethod, derangement, dynamic_map, event_targets, static_map

T, S, K = 2, 32, 3
#: a tiny config: small visual CNN (stride 4 -> 8 x 8 maps), 0.5 s of audio, T = 2 frames, 3 classes
TINY: dict[str, Any] = {
    "image": {"size": S, "resize": S, "frames": T},
    "audio": {"window_seconds": 0.5},
    "visual_encoder": "small_cnn",
    "visual_encoder_kwargs": {"channels": [4, 8], "out_stride": 4},
    "freeze_visual": False,
    "audio_encoder_kwargs": {"channels": [4, 8], "time_stride": 4},
    "embed_dim": 8,
    "cls_dim": 6,
    "sub_hidden": 8,
    "num_classes": K,
}
VARIANTS = [
    ("dnm", {"fusion": "static", "tasks": "cls"}),
    ("dnm", {"fusion": "static", "tasks": "avc"}),
    ("dnm", {"fusion": "static", "tasks": "dnm"}),
    ("dnm", {"fusion": "cdf", "tasks": "dnm"}),
    ("dnm-cam", {}),
    ("dnm-tian", {}),
]
IDS = ["static-cls", "static-avc", "static-dnm", "cdf-dnm", "cam", "tian"]


def tiny(name: str, **over: Any) -> SegmentMethod:
    m = create_method(name, {**TINY, **over})
    assert isinstance(m, SegmentMethod)
    return m


def batch(b: int = 3) -> dict[str, Any]:
    return {
        "image": torch.rand(b, T, 3, S, S),
        "audio": 0.1 * torch.randn(b, 8000),
        "box_labels": [torch.tensor([i % K]) for i in range(b - 1)] + [torch.zeros(0, dtype=torch.long)],
    }


@pytest.mark.parametrize(("name", "over"), VARIANTS, ids=IDS)
def test_forward_backward_shapes(name: str, over: dict[str, Any]) -> None:
    m = tiny(name, **over)
    m.train()
    b = batch()
    out = m(b)
    losses = m.build_criterion()(out, b)
    assert losses["loss"].dim() == 0 and torch.isfinite(losses["loss"])
    losses["loss"].backward()
    grads = [p.grad for p in m.parameters() if p.requires_grad]
    assert grads and all(g is not None and torch.isfinite(g).all() for g in grads)
    assert sum(float(g.abs().sum()) for g in grads if g is not None) > 0
    m.eval()
    with torch.no_grad():
        maps = m.localize(b["image"], b["audio"])
        single = m.localize(b["image"][:, 0], b["audio"])  # single frames = still segments
    assert maps.shape == single.shape == (3, S // 4, S // 4)
    assert torch.isfinite(maps).all() and torch.isfinite(single).all()


@pytest.mark.parametrize(("name", "over"), VARIANTS, ids=IDS)
def test_localize_is_per_sample(name: str, over: dict[str, Any]) -> None:
    m = tiny(name, **over)
    m.train()
    b = batch(4)
    for _ in range(2):  # move BatchNorm statistics away from their initial values
        m.build_criterion()(m(b), b)["loss"].backward()
    m.eval()
    with torch.no_grad():
        alone = m.localize(b["image"][1:2], b["audio"][1:2])
        inside = m.localize(b["image"], b["audio"])[1:2]
        other = m.localize(torch.cat([b["image"][1:2], torch.rand(2, T, 3, S, S)]), torch.cat([b["audio"][1:2], torch.randn(2, 8000)]))[:1]
    torch.testing.assert_close(alone, inside, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(alone, other, atol=1e-5, rtol=1e-5)


def test_maps_by_hand() -> None:
    v = torch.tensor([[1.0, 2.0], [3.0, -1.0]]).view(1, 2, 2, 1, 1)  # (B=1, T=2, D=2, 1, 1)
    a = torch.tensor([[1.0, 0.0], [0.5, 2.0]]).view(1, 2, 2)  # (B, T, D)
    # t=0: 1*1 + 2*0 = 1; t=1: 3*0.5 + (-1)*2 = -0.5; average 0.25
    assert float(static_map(v, a)) == pytest.approx(0.25)
    assert float(dynamic_map(torch.tensor([2.0, -1.0]).view(1, 2, 1, 1), torch.tensor([[3.0, 4.0]]))) == pytest.approx(2.0)


def test_cdf_is_static_times_dynamic() -> None:
    m = tiny("dnm", fusion="cdf", tasks="dnm")
    assert isinstance(m, DNM)
    m.eval()
    b = batch(2)
    with torch.no_grad():
        st = m.streams(m.encode_images(b["image"]), b["audio"])
        expect = (static_map(st["v"], st["a"]) * m.scale) * (dynamic_map(st["v_last"], st["a_last"]) * m.scale)
        torch.testing.assert_close(m.avsm(st), expect)
        torch.testing.assert_close(m.localize(b["image"], b["audio"]), torch.sigmoid(expect))


def test_cls_only_localizes_with_the_attention() -> None:
    m = tiny("dnm", fusion="static", tasks="cls")
    m.eval()
    b = batch(2)
    with torch.no_grad():
        maps = m.localize(b["image"], b["audio"])
    torch.testing.assert_close(maps.flatten(1).sum(1), torch.ones(2))  # w_att = softmax over pixels


def test_loss_by_hand() -> None:
    cfg = tiny("dnm").cfg
    out = {
        "s": torch.zeros(2, 1, 1),
        "avc_pos": torch.tensor([2.0, 0.0]),
        "avc_neg": torch.tensor([-1.0, 1.0]),
        "cls_logits": torch.tensor([[0.0, 1.0, 0.0], [0.0, 0.0, 0.0]]),
    }
    b = {"box_labels": [torch.tensor([1]), torch.zeros(0, dtype=torch.long)]}
    sp = lambda x: math.log1p(math.exp(x))  # noqa: E731  BCE(logit x, 1) = softplus(-x); BCE(x, 0) = softplus(x)
    avc = (sp(-2.0) + sp(-0.0) + sp(-1.0) + sp(1.0)) / 4
    cls = (sp(0.0) + sp(-1.0) + sp(0.0) + 3 * sp(0.0)) / 6  # sample 0: class 1 positive; sample 1: background
    got = DNMLoss(cfg)(out, b)
    assert float(got["avc"]) == pytest.approx(avc, rel=1e-6)
    assert float(got["cls"]) == pytest.approx(cls, rel=1e-6)
    assert float(got["loss"]) == pytest.approx(avc + cls, rel=1e-6)
    assert float(got["avc_acc"]) == pytest.approx(2 / 4)  # 2 > 0 yes; 0 > 0 no; -1 no (right); 1 yes (wrong)
    # the paper's Eq. 7: z_avc = GMP(sigmoid(s)) = sigmoid(GMP(s)); the logit is the max of s
    m = tiny("dnm", tasks="avc")
    m.train()
    o = m(batch(2))
    s = o["s"]
    torch.testing.assert_close(torch.sigmoid(o["avc_pos"]), torch.sigmoid(s).flatten(1).amax(1))


def test_classification_only_on_positive_pairs() -> None:
    m = tiny("dnm", tasks="dnm")
    m.train()
    b = batch(3)
    out = m(b)
    assert out["cls_logits"].shape == (3, K) and out["avc_pos"].shape == out["avc_neg"].shape == (3,)


def test_event_targets_and_errors() -> None:
    y = event_targets({"labels": [[0, 2], []]}, "labels", 3, torch.device("cpu"))
    torch.testing.assert_close(y, torch.tensor([[1.0, 0.0, 1.0], [0.0, 0.0, 0.0]]))
    with pytest.raises(DataError, match="outside"):
        event_targets({"labels": [[5]]}, "labels", 3, torch.device("cpu"))
    with pytest.raises(DataError, match="needs batch"):
        event_targets({}, "box_labels", 3, torch.device("cpu"))


def test_derangement_has_no_fixed_point() -> None:
    for n in (2, 3, 7):
        for _ in range(20):
            p = derangement(n, torch.device("cpu"))
            assert sorted(p.tolist()) == list(range(n)) and not (p == torch.arange(n)).any()


def test_config_and_input_errors() -> None:
    with pytest.raises(ConfigError):
        tiny("dnm", fusion="late")
    m = tiny("dnm")
    m.train()
    with pytest.raises(ConfigError, match="at least 2"):
        m(batch(1))
    with pytest.raises(DataError, match="T=2"):
        m.eval().localize(torch.rand(1, 3, 3, S, S), torch.randn(1, 8000))


def test_localize_clip_builds_segments() -> None:
    m = tiny("dnm")
    m.eval()
    frames = torch.rand(5, 3, S, S)
    times = torch.tensor([0.0, 0.25, 0.5, 0.75, 1.0])
    audio = torch.randn(5, 8000)
    with torch.no_grad():
        got = m.localize_clip(frames, audio, times, keep=slice(2, 3))
        # window 0.5 s, T = 2: segment times 0.375 and 0.625, each the nearest frame of the run (ties: the earlier)
        idx = [int(torch.argmin((times - t).abs())) for t in (0.375, 0.625)]
        assert idx == [1, 2]
        want = m.localize(frames[idx][None], audio[2:3])
    torch.testing.assert_close(got, want)
    assert m.clip_context_seconds == pytest.approx(0.25)


def test_checkpoint_round_trip(tmp_path: Path) -> None:
    from avloc.methods.zoo import load_model, save_model

    m = tiny("dnm")
    m.eval()
    save_model(m, tmp_path / "m.safetensors")
    r = load_model(tmp_path / "m.safetensors")
    b = batch(1)
    with torch.no_grad():
        torch.testing.assert_close(m.localize(b["image"], b["audio"]), r.localize(b["image"], b["audio"]))


def test_video_dataset_gives_segments(shared_data: Path) -> None:
    from avloc.data.datasets import dataset_from_spec
    from avloc.frontends.audio import AudioFrontendConfig
    from avloc.frontends.image import ImageConfig

    ic, ac = ImageConfig(size=S, resize=S, frames=3), AudioFrontendConfig(window_seconds=1.0)
    ds = dataset_from_spec("digitscenes:video:test", raw=shared_data, image_cfg=ic, audio_cfg=ac, count=1)
    x = ds[1]
    assert x["image"].shape == (3, 3, S, S) and x["audio"].shape == (16000,)
    one = dataset_from_spec("digitscenes:video:test", raw=shared_data, image_cfg=ImageConfig(size=S, resize=S), audio_cfg=ac, count=1)
    # frame times 0.75 - 1/3, 0.75, 0.75 + 1/3 at 8 fps -> frames 3, 6, 9; the middle one is the annotated frame
    torch.testing.assert_close(x["image"][1], one[1]["image"])
    with pytest.raises(ConfigError, match="only the 'video' variant"):
        dataset_from_spec("digitscenes:single:test", raw=shared_data, image_cfg=ic, audio_cfg=AudioFrontendConfig(), count=1)


class _Frames(torch.utils.data.Dataset):  # type: ignore[type-arg]
    """Segments whose ``scene_index`` field names a shared clip (as DigitScenes video) while images differ."""

    def __init__(self, n: int) -> None:
        g = torch.Generator().manual_seed(1)
        self.images = torch.rand(n, T, 3, S, S, generator=g)
        self.audio = 0.1 * torch.randn(n, 8000, generator=g)

    def __len__(self) -> int:
        return len(self.images)

    def scene_index(self, i: int) -> int:  # the image key of draw i
        return i

    def __getitem__(self, i: int) -> dict[str, Any]:
        return {"id": f"s{i}", "image": self.images[i], "audio": self.audio[i], "box_labels": torch.tensor([i % K]), "scene_index": 0}


def test_engine_cache_rows_follow_the_sample(tmp_path: Path) -> None:
    """The training engine's cached features belong to each sample (regression: looked up by a clip-level field)."""
    from avloc.engine.train import TrainConfig, train

    m = tiny("dnm", visual_encoder="efficientnet_lite0", visual_encoder_kwargs={"out_stride": 16}, freeze_visual=True)
    assert m.visual_cacheable()
    ds = _Frames(6)
    seen: list[tuple[str, torch.Tensor]] = []
    forward = m.forward

    def spy(batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        seen.extend(zip(batch["id"], batch["vfeat"]))
        return forward(batch)

    m.forward = spy  # type: ignore[method-assign]
    res = train(m, ds, tmp_path / "run", TrainConfig(steps=3, batch_size=2, val_every=0, ckpt_every=0, progress=False))
    assert res.feature_cache and len(seen) == 6
    m.eval()
    with torch.no_grad():
        for sid, f in seen:
            torch.testing.assert_close(f, m.encode_images(ds.images[int(sid[1:])][None])[0])


def test_manifest_video_entries_give_segments(tmp_path: Path, demo_clip_path: Path) -> None:
    import json

    from avloc.data.datasets import ManifestDataset
    from avloc.frontends.audio import AudioFrontendConfig
    from avloc.frontends.image import ImageConfig

    man = tmp_path / "m.jsonl"
    entry = {"id": "demo", "video": str(demo_clip_path), "time": 1.0, "duration": 2.0, "fps": 10, "boxes": []}
    man.write_text(json.dumps(entry) + "\n")
    ac = AudioFrontendConfig(window_seconds=1.0)
    x = ManifestDataset(man, ImageConfig(size=S, resize=S, frames=3), ac)[0]
    one = ManifestDataset(man, ImageConfig(size=S, resize=S), ac)[0]
    assert x["image"].shape == (3, 3, S, S)
    torch.testing.assert_close(x["image"][1], one["image"])  # the middle frame is the entry's frame


def test_negatives_from_another_time_are_used() -> None:
    """neg_other_time=1: every AVC = no pair is the video with batch['neg_audio']; 0: another sample's audio."""
    m = tiny("dnm", fusion="cdf", tasks="dnm", neg_other_time=1.0)
    assert isinstance(m, DNM)
    m.eval()  # fixed BatchNorm statistics, so the maps can be recomputed by hand
    b = batch(3)
    b["neg_audio"] = 0.1 * torch.randn(3, 8000)
    with torch.no_grad():
        out = m(b)
        st = m.streams(m.encode_images(b["image"]), b["audio"])
        s_neg = m.avsm(st, audio=m.audio_streams(b["neg_audio"]))
    torch.testing.assert_close(out["avc_neg"], s_neg.flatten(1).amax(1))
    with pytest.raises(DataError, match="neg_audio"):
        m({k: v for k, v in b.items() if k != "neg_audio"})
    with pytest.raises(ConfigError, match="neg_other_time"):
        tiny("dnm", neg_other_time=1.5)
    m0 = tiny("dnm", tasks="avc")
    m0.load_state_dict(m.state_dict(), strict=False)
    m0.eval()
    with torch.no_grad():  # the default ignores neg_audio: negatives are other samples' audio
        neg0 = m0(b)["avc_neg"]
        st0 = m0.streams(m0.encode_images(b["image"]), b["audio"])
        by_perm = torch.stack([m0.avsm(st0, torch.tensor([j] * 3))[i].amax() for i in range(3) for j in range(3)]).view(3, 3)
    for i in range(3):  # each negative equals video i with some other sample's audio j != i
        assert any(torch.isclose(neg0[i], by_perm[i, j], atol=1e-5) for j in range(3) if j != i)


def test_other_time_negatives_dataset(shared_data: Path) -> None:
    """Same clip, an annotated time >= the window away, the clip's own track at that time; re-drawn per access."""
    from avloc.data.datasets import dataset_from_spec
    from avloc.data.digitscenes.wrappers import OtherTimeNegatives
    from avloc.frontends.audio import AudioFrontendConfig
    from avloc.frontends.image import ImageConfig
    from avloc.io.audio import window_at

    ac = AudioFrontendConfig(window_seconds=1.0)
    inner = dataset_from_spec("digitscenes:video:train", raw=shared_data, image_cfg=ImageConfig(size=S, resize=S), audio_cfg=ac,
                              count=2, seconds=3.0, n_utterances=(1, 2))
    ds = OtherTimeNegatives(inner)
    assert len(ds) == len(inner) and ds.scene_index(4) == inner.scene_index(4)
    per_clip = len(ds.times)
    seen = set()
    for i in (1, per_clip + 2):
        for _ in range(6):
            x = ds[i]
            assert abs(x["neg_time"] - x["time"]) >= 1.0 - 1e-6
            clip = inner.video_clip(i // per_clip)
            torch.testing.assert_close(x["neg_audio"], torch.from_numpy(window_at(clip.audio, clip.sample_rate, x["neg_time"], 1.0)))
            torch.testing.assert_close(x["audio"], torch.from_numpy(window_at(clip.audio, clip.sample_rate, x["time"], 1.0)))
            seen.add((i, x["neg_time"]))
    assert len(seen) > 2  # drawn anew, not fixed per item
    with pytest.raises(ConfigError, match="no other time"):
        OtherTimeNegatives(inner, min_sep=3.0)
    with pytest.raises(ConfigError, match="video dataset"):
        OtherTimeNegatives(dataset_from_spec("digitscenes:single:train", raw=shared_data, count=2))


def test_redrawn_sound_tracks(shared_data: Path) -> None:
    """Draw 0 is the dataset; draw k keeps the pictures (cache key) and brings clip(c, audio_draw=k)'s sound and labels."""
    from avloc.data.datasets import dataset_from_spec
    from avloc.data.digitscenes.wrappers import OtherTimeNegatives, RedrawnSoundTracks
    from avloc.frontends.audio import AudioFrontendConfig
    from avloc.frontends.image import ImageConfig
    from avloc.io.audio import window_at

    inner = dataset_from_spec("digitscenes:video:train", raw=shared_data, image_cfg=ImageConfig(size=S, resize=S),
                              audio_cfg=AudioFrontendConfig(window_seconds=1.0), count=2, seconds=3.0, n_utterances=(2, 3))
    ds = RedrawnSoundTracks(inner, draws=3)
    n, nf = len(inner), len(inner.config.annotated_frames())
    assert len(ds) == 3 * n and ds.scene_index(2 * n + 5) == 5
    torch.testing.assert_close(ds[4]["audio"], inner[4]["audio"])
    assert ds[4]["id"] == inner[4]["id"]
    orig = inner.sampler.clip(1)
    assert inner.sampler.clip(1, audio_draw=0).audio.tobytes() == orig.audio.tobytes()  # draw 0 = the clip as always
    new = inner.sampler.clip(1, audio_draw=2)
    assert new.audio.tobytes() != orig.audio.tobytes()
    assert (new.frame(5) == orig.frame(5)).all() and new.utterances != orig.utterances
    for f in range(nf):
        x, base = ds[2 * n + nf + f], inner[nf + f]
        torch.testing.assert_close(x["image"], base["image"])  # same pictures
        ann = new.annotation(inner.config.annotated_frames()[f])
        torch.testing.assert_close(x["audio"], torch.from_numpy(window_at(new.audio, new.sample_rate, ann["time"], 1.0)))
        assert x["box_labels"].tolist() == ann["box_labels"] and x["labels"] == ann["labels"]
        assert len(x["boxes"]) == len(ann["boxes"]) and x["id"].endswith("-a2")
        assert len(x["boxes"]) + len(x["silent_boxes"]) == len(base["boxes"]) + len(base["silent_boxes"])
    # composed with the other-time negatives: the negative comes from the redrawn track
    neg = OtherTimeNegatives(ds)[2 * n + nf]
    torch.testing.assert_close(neg["neg_audio"], torch.from_numpy(window_at(new.audio, new.sample_rate, neg["neg_time"], 1.0)))


def test_redrawn_sound_tracks_pixels_once(shared_data: Path) -> None:
    """pixels_once: the first read of an item of draw 0 has the pictures, later reads the same fields without them."""
    from avloc.data.datasets import dataset_from_spec
    from avloc.data.digitscenes.wrappers import RedrawnSoundTracks
    from avloc.frontends.audio import AudioFrontendConfig
    from avloc.frontends.image import ImageConfig

    inner = dataset_from_spec("digitscenes:video:train", raw=shared_data, image_cfg=ImageConfig(size=S, resize=S),
                              audio_cfg=AudioFrontendConfig(window_seconds=1.0), count=1, seconds=3.0)
    full = RedrawnSoundTracks(inner, draws=2)
    once = RedrawnSoundTracks(inner, draws=2, pixels_once=True)
    n = len(inner)
    for i in (2, 2, n + 2, 1):
        a, b = full[i], once[i]
        if i == 1 or (i == 2 and "image" in b):  # first reads of draw-0 items
            assert "image" in b
            continue
        assert set(b) == set(a) - {"image"}
        for key in b:
            if isinstance(a[key], torch.Tensor):
                torch.testing.assert_close(b[key], a[key])
            else:
                assert b[key] == a[key], key
    assert "image" not in once[2] and "image" not in once[n + 1]


def test_frozen_pretrained_audio_backbone(shared_data: Path) -> None:
    """pretrain_audio_backbone gives weights loadable into the DNM audio backbone; freeze_audio keeps them fixed."""
    from avloc.methods.dnm.pretrain import pretrain_audio_backbone

    m = tiny("dnm", tasks="dnm", freeze_audio=True)
    assert isinstance(m, DNM)
    weights, acc = pretrain_audio_backbone(shared_data, m.cfg, steps=2, batch_size=4, seed=0)
    assert 0.0 <= acc <= 1.0
    before = {k: v.clone() for k, v in m.audio_sub.encoder.state_dict().items()}
    assert any(not torch.equal(weights[k], before[k]) for k in before)  # trained, not the initial weights
    m.audio_sub.encoder.load_state_dict(weights)
    m.train()
    assert not m.audio_sub.encoder.training and m.audio_sub.sub.training  # BatchNorm statistics of the backbone stay
    opt = torch.optim.SGD([p for p in m.parameters() if p.requires_grad], lr=0.1)
    b = batch(3)
    m.build_criterion()(m(b), b)["loss"].backward()
    opt.step()
    for k, v in m.audio_sub.encoder.state_dict().items():
        torch.testing.assert_close(v, weights[k])
    assert all(not p.requires_grad for p in m.audio_sub.encoder.parameters())


def test_init_seed_fixes_the_weights() -> None:
    a, b = tiny("dnm", init_seed=3), tiny("dnm", init_seed=3)
    c = tiny("dnm")  # the process RNG, advanced by building a and b
    for k, v in a.state_dict().items():
        torch.testing.assert_close(v, b.state_dict()[k])
    assert any(not torch.equal(v, c.state_dict()[k]) for k, v in a.state_dict().items() if v.is_floating_point())


def test_prepare_training_wraps_as_configured(shared_data: Path) -> None:
    """The training-only levers are config fields: prepare_training wraps the set (pixels_once only with the cache)."""
    from avloc.data.datasets import dataset_from_spec
    from avloc.data.digitscenes.wrappers import OtherTimeNegatives, RedrawnSoundTracks
    from avloc.frontends.audio import AudioFrontendConfig
    from avloc.frontends.image import ImageConfig

    inner = dataset_from_spec("digitscenes:video:train", raw=shared_data, image_cfg=ImageConfig(size=S, resize=S, frames=T),
                              audio_cfg=AudioFrontendConfig(window_seconds=1.0), count=1, seconds=3.0)
    assert tiny("dnm").prepare_training(inner, feature_cache=True) is inner  # defaults: unchanged
    m = tiny("dnm", tasks="avc", sound_draws=3, pixels_once=True, neg_other_time=0.5)
    ds = m.prepare_training(inner, feature_cache=True)
    assert isinstance(ds, OtherTimeNegatives) and isinstance(ds.dataset, RedrawnSoundTracks)
    assert ds.dataset.draws == 3 and ds.dataset.pixels_once and len(ds) == 3 * len(inner)
    assert m.prepare_training(ds, feature_cache=True) is ds  # wrapped already (by a library caller): kept
    no_cache = m.prepare_training(inner, feature_cache=False)
    assert isinstance(no_cache, OtherTimeNegatives) and not no_cache.dataset.pixels_once
    cls = tiny("dnm", tasks="cls", neg_other_time=0.5).prepare_training(inner, feature_cache=True)  # no AVC: no negatives
    assert cls is inner
    with pytest.raises(ConfigError, match="no audio backbone"):
        tiny("dnm-cam", audio_pretrain_steps=2).prepare_training(inner, feature_cache=True)
    with pytest.raises(ConfigError, match="sound_draws"):
        tiny("dnm", sound_draws=0)


def test_audio_init_file_checkpoint_and_pretraining_agree(shared_data: Path, tmp_path: Path) -> None:
    """audio_pretrain_steps (in the run) = the same pretraining saved to a file = a checkpoint holding it; RNG untouched."""
    from safetensors.torch import save_file

    from avloc.data.datasets import dataset_from_spec
    from avloc.methods.dnm.pretrain import pretrain_audio_backbone
    from avloc.methods.zoo import save_model

    a = tiny("dnm", audio_pretrain_steps=2, audio_pretrain_seed=1, freeze_audio=True)
    inner = dataset_from_spec("digitscenes:video:train", raw=shared_data, image_cfg=a.cfg.image, audio_cfg=a.cfg.audio,
                              count=1, seconds=3.0)
    rng = torch.get_rng_state()
    a.prepare_training(inner, feature_cache=False)
    assert torch.equal(torch.get_rng_state(), rng)  # pretraining leaves the caller's torch RNG as it was
    weights, _ = pretrain_audio_backbone(shared_data, a.cfg, steps=2, seed=1)
    ea = a.audio_module()
    assert ea is not None
    for k, v in weights.items():
        torch.testing.assert_close(ea.state_dict()[k], v)
    save_file(weights, str(tmp_path / "audio.safetensors"))
    save_model(a, tmp_path / "a.safetensors")
    for src in (tmp_path / "audio.safetensors", tmp_path / "a.safetensors"):
        b = tiny("dnm", audio_init_from=str(src))
        b.prepare_training(inner, feature_cache=False)
        eb = b.audio_module()
        assert eb is not None
        for k, v in weights.items():
            torch.testing.assert_close(eb.state_dict()[k], v)


def test_cli_train_applies_the_levers(shared_data: Path, tmp_path: Path) -> None:
    """`avloc train --method dnm --config F key=value`: the levers reach training and are saved in the checkpoint."""
    import json

    from safetensors.torch import save_file

    from avloc.cli.main import main
    from avloc.methods.zoo import load_model

    enc = tiny("dnm", init_seed=9).audio_module()  # weights unlike those drawn from init_seed 5 below
    assert enc is not None
    audio = {k: v.clone() for k, v in enc.state_dict().items()}
    save_file(audio, str(tmp_path / "audio.safetensors"))
    method = {**TINY, "visual_encoder": "efficientnet_lite0", "visual_encoder_kwargs": {"out_stride": 16}, "freeze_visual": True,
              "fusion": "cdf", "tasks": "dnm"}
    cfg = {"method": method, "train": {"batch_size": 2, "val_every": 0, "ckpt_every": 0, "progress": False},
           "data": {"train_kwargs": {"count": 1, "seconds": 3.0, "n_visible": [1, 1]}}}
    (tmp_path / "c.json").write_text(json.dumps(cfg))
    run = tmp_path / "run"
    rc = main(["train", "--method", "dnm", "--train", "digitscenes:video:train", "--raw", str(shared_data), "--out", str(run),
               "--config", str(tmp_path / "c.json"), "method.sound_draws=2", "method.pixels_once=true",
               "method.neg_other_time=1.0", f"method.audio_init_from={tmp_path / 'audio.safetensors'}",
               "method.freeze_audio=true", "method.init_seed=5", "train.epochs=1"])
    assert rc == 0
    saved = json.loads((run / "config.json").read_text())
    assert saved["feature_cache"]["used"] and saved["total_steps"] == 2 * 6 // 2  # 6 frames x 2 sound tracks, batch 2
    m = load_model(run / "last.safetensors")
    assert (m.cfg.sound_draws, m.cfg.pixels_once, m.cfg.neg_other_time, m.cfg.init_seed) == (2, True, 1.0, 5)
    em = m.audio_module()
    assert em is not None
    for k, v in audio.items():  # loaded from the file, then frozen
        torch.testing.assert_close(em.state_dict()[k], v)
    assert any(not torch.equal(v, tiny("dnm", init_seed=5).audio_module().state_dict()[k])  # type: ignore[union-attr]
               for k, v in audio.items() if v.is_floating_point())
