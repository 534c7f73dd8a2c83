"""Baselines of issue 10: Attention10k, Objects-that-sound, EZ-VSL and the training-free maps.

* one parametrised contract test over every registered method (tiny CPU inputs:
  forward, criterion, backward, shapes, no NaN, batch independence of ``localize``);
* each loss against a hand computation on tiny tensors;
* the synchrony baseline finds the pulsing disc of the synthetic demo clip.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import numpy as np
import pytest
import torch

from avloc.data.synthetic import DemoClipConfig, make_demo_clip
from avloc.errors import CheckpointError, ConfigError
from avloc.methods import create_method, list_methods
from avloc.methods.attention10k import attended_vectors, attention_maps, distance_ratio_loss
from avloc.methods.avenet import correspondence_loss
from avloc.methods.base import (
    CAPABILITY_MEMBERS,
    Capability,
    CapabilityError,
    ClassMaps,
    ClipAnalysis,
    DetectedClasses,
    LocalizationMethod,
    supports,
)
from avloc.methods.blocks import cosine_map, cross_cosine_maps, minmax_per_sample, object_prior
from avloc.methods.ezvsl import mil_contrastive_loss, object_guided_map
from avloc.methods.priors import gaussian_centre_map
from avloc.methods.synchrony import windowed_correlation
from avloc.methods.zoo import load_model, save_model
from avloc.registry import METHODS

MINE_TRAINABLE = ["attention10k", "ots", "ezvsl"]
MINE_TRAINING_FREE = ["random", "centre", "objectness", "synchrony"]
#: training-free methods whose map comes from an ImageNet-pretrained encoder (tested with it, at 64 px)
NEEDS_PRETRAINED = {"objectness", "avsync-objectness"}
#: frames per stack for methods declaring ``frame_stacks`` (localize takes (B, T, 3, H, W))
STACK = 8

SIZE, SECONDS, SR, BATCH = 64, 0.5, 16000, 3
TINY_CH = [8, 16, 16, 16]
TINY: dict[str, Any] = {
    "image": {"size": SIZE, "resize": SIZE},
    "audio": {"window_seconds": SECONDS, "sample_rate": SR},
    "visual_encoder": "small_cnn",
    "visual_encoder_kwargs": {"channels": TINY_CH},
    "freeze_visual": False,
    "audio_encoder": "small_cnn_audio",
    "audio_encoder_kwargs": {"channels": TINY_CH},
    "embed_dim": 16,
    "onscreen_criterion": "d_on",  # proposal: the criterion that needs no calibration pass
}
PRETRAINED: dict[str, Any] = {
    "image": {"size": SIZE, "resize": SIZE},
    "audio": {"window_seconds": SECONDS, "sample_rate": SR},
    "visual_encoder": "efficientnet_lite0",
    "visual_encoder_kwargs": {"out_stride": 16},
    "freeze_visual": True,
}


def tiny_config(name: str, **extra: Any) -> dict[str, Any]:
    """The tiny overrides that ``name``'s config class has fields for (plus ``extra``)."""
    fields = {f.name for f in dataclasses.fields(METHODS.get(name).config_class)}
    base = PRETRAINED if name in NEEDS_PRETRAINED else TINY
    return {k: v for k, v in {**base, **extra}.items() if k in fields}


def tiny_batch(b: int = BATCH, seed: int = 0, frames: int = 0) -> dict[str, Any]:
    """Images (frame stacks of ``frames`` when > 0), waveforms and (as the dataset schema has them) class lists."""
    g = torch.Generator().manual_seed(seed)
    shape = (b, frames, 3, SIZE, SIZE) if frames else (b, 3, SIZE, SIZE)
    return {
        "image": torch.rand(*shape, generator=g),
        "audio": 0.1 * torch.randn(b, round(SECONDS * SR), generator=g),
        "labels": [[i % 2] for i in range(b)],
        "box_labels": [torch.tensor([i % 2]) for i in range(b)],  # classes of the visible sounding objects
        "visible_labels": [sorted({i % 2, 2}) for i in range(b)],  # classes in view, sounding or silent
    }


def assert_batch_independent(model: Any, images: torch.Tensor, audio: torch.Tensor) -> torch.Tensor:
    """``localize`` of a batch of 3 equals, row by row, ``localize`` of each sample alone."""
    with torch.no_grad():
        full = model.localize(images, audio)
        assert full.dim() == 3 and full.shape[0] == images.shape[0]
        assert torch.isfinite(full).all()
        # float32 noise of batched convolutions (amplified by min-max normalised maps); real
        # batch dependence (in-batch terms, train-mode BatchNorm) gives O(1) differences
        tol = 1e-4 * max(1.0, float(full.abs().max()))
        for i in range(images.shape[0]):
            one = model.localize(images[i : i + 1], audio[i : i + 1])
            torch.testing.assert_close(one[0], full[i], atol=tol, rtol=1e-5)
    return full


# ----------------------------------------------------------------------------- the contract, every method


def test_my_methods_are_registered() -> None:
    names = set(list_methods())
    assert set(MINE_TRAINABLE + MINE_TRAINING_FREE) <= names
    for n in MINE_TRAINING_FREE:
        assert METHODS.get(n).training_free
    for n in MINE_TRAINABLE:
        assert not METHODS.get(n).training_free


@pytest.mark.parametrize("name", list_methods())
def test_method_contract(name: str) -> None:
    """Every registered method: forward, criterion, backward (trainable), shapes, no NaN, batch-independent
    localize, and each declared capability with its one signature and return type."""
    model = create_method(name, tiny_config(name))
    batch = tiny_batch(frames=STACK if model.frame_stacks else 0)
    if not model.training_free:
        model.train()
        outputs = model(batch)
        losses = model.build_criterion()(outputs, batch)
        loss = losses["loss"]
        assert loss.dim() == 0 and torch.isfinite(loss), f"{name}: loss {loss}"
        loss.backward()
        grads = [p.grad for p in model.parameters() if p.requires_grad]
        assert grads and all(g is not None and torch.isfinite(g).all() for g in grads if g is not None)
        assert any(g is not None and g.abs().sum() > 0 for g in grads), f"{name}: no gradient reaches the parameters"
    else:
        out = model(batch)
        assert out["heatmap"].shape[0] == BATCH
        with pytest.raises(ConfigError, match="training-free"):
            model.build_criterion()
    model.eval()
    heat = assert_batch_independent(model, batch["image"], batch["audio"])
    assert heat.shape[1] >= 1 and heat.shape[2] >= 1
    assert_capabilities(model, batch)


def assert_capabilities(model: Any, batch: dict[str, Any]) -> None:
    """Each declared capability returns its documented type and shapes; undeclared ones raise CapabilityError."""
    images, audio = batch["image"], batch["audio"]
    b = images.shape[0]
    for cap in Capability:
        if not supports(model, cap) and cap not in (Capability.CLIP, Capability.SOURCES):  # per-frame members
            with pytest.raises(CapabilityError):
                getattr(model, CAPABILITY_MEMBERS[cap][0])(images, audio)
    if not supports(model, Capability.CLIP):
        with pytest.raises(CapabilityError):
            _ = model.clip_context_seconds
    with torch.no_grad():
        if supports(model, Capability.CLIP):
            assert model.clip_context_seconds >= 0
            t = 6
            frames = torch.rand(t, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(3))
            windows = audio[:1].expand(t, -1).contiguous()  # (T, N) one window per frame
            times = torch.arange(t, dtype=torch.float32) * 0.2
            whole = model.localize_clip(frames, windows, times)
            assert whole.dim() == 3 and whole.shape[0] == t and torch.isfinite(whole).all()
            part = model.localize_clip(frames, windows, times, keep=slice(2, 4))
            assert part.shape == (2, *whole.shape[1:])
            if supports(model, Capability.SOURCES):
                res = model.analyse_clip(frames, windows, times, keep=slice(2, 4))
                assert isinstance(res, ClipAnalysis) and res.maps.shape[0] == 2 and len(res.sources) == 2
        if supports(model, Capability.BOXES):
            boxes = model.boxes(images, audio)
            assert len(boxes) == b and all(x.dim() == 2 and x.shape[1] == 5 for x in boxes)
        if supports(model, Capability.CLASSES):
            cm = model.localize_classes(images, audio)
            assert isinstance(cm, ClassMaps) and cm.maps.dim() == 4 and cm.probabilities.shape == cm.maps.shape[:2]
        if supports(model, Capability.DETECTED):
            det = model.localize_detected(images, audio)
            assert isinstance(det, DetectedClasses) and det.detected.dtype == torch.bool
            torch.testing.assert_close(det.combined, model.localize(images, audio))
        if supports(model, Capability.ONSCREEN):
            on = model.onscreen(images, audio)
            assert on.shape == (b,) and bool(((on >= 0) & (on <= 1)).all())


def test_capability_declarations_are_checked() -> None:
    """Defining a capability member without declaring it (or the reverse) is refused at class creation."""
    with pytest.raises(TypeError, match=r"does not declare Capability\.BOXES"):
        type("Undeclared", (LocalizationMethod,), {"boxes": lambda self, i, a: []})
    with pytest.raises(TypeError, match=r"declares Capability\.ONSCREEN but does not define"):
        type("Unimplemented", (LocalizationMethod,), {"capabilities": frozenset({Capability.ONSCREEN})})
    with pytest.raises(TypeError, match=r"needs Capability\.CLASSES"):
        type("Half", (LocalizationMethod,), {"capabilities": frozenset({Capability.DETECTED}),
                                             "localize_detected": lambda self, i, a: None})


@pytest.mark.parametrize("name", MINE_TRAINABLE)
def test_trainable_baselines_shapes_cache_path_and_checkpoint(name: str, tmp_path: Any) -> None:
    """Heatmap at the encoder stride; cached ``vfeat`` gives the same outputs; a checkpoint rebuilds the model."""
    model = create_method(name, tiny_config(name, freeze_visual=True)).eval()
    batch = tiny_batch()
    heat = model.localize(batch["image"], batch["audio"])
    assert heat.shape == (BATCH, SIZE // 16, SIZE // 16)
    with torch.no_grad():
        out_img = model(batch)
        out_cached = model({"vfeat": model.encode_images(batch["image"]), "audio": batch["audio"]})
    assert out_img.keys() == out_cached.keys()
    for k in out_img:
        torch.testing.assert_close(out_img[k], out_cached[k])
    path = save_model(model, tmp_path / f"{name}.safetensors")
    again = load_model(path)
    torch.testing.assert_close(again.localize(batch["image"], batch["audio"]), heat)
    with pytest.raises(CheckpointError, match="needs trained weights"):
        load_model(name)


def test_training_free_models_load_by_name() -> None:
    for name in ("random", "centre", "synchrony"):
        assert load_model(name).training_free


# ----------------------------------------------------------------------------- shared blocks


def test_cosine_maps_match_definition() -> None:
    g = torch.Generator().manual_seed(1)
    a, v = torch.randn(2, 5, generator=g), torch.randn(3, 5, 2, 2, generator=g)
    s = cross_cosine_maps(a, v)
    an, vn = a.numpy(), v.numpy()
    for i in range(2):
        for j in range(3):
            for y in range(2):
                for x in range(2):
                    want = an[i] @ vn[j, :, y, x] / (np.linalg.norm(an[i]) * np.linalg.norm(vn[j, :, y, x]))
                    assert abs(float(s[i, j, y, x]) - want) < 1e-5
    torch.testing.assert_close(cosine_map(a, v[:2]), torch.stack([s[0, 0], s[1, 1]]))


def test_object_prior_and_minmax_by_hand() -> None:
    feat = torch.tensor([[[[1.0, -2.0]], [[3.0, 0.0]]]])  # (1, 2, 1, 2)
    torch.testing.assert_close(object_prior(feat, "l1"), torch.tensor([[[2.0, 1.0]]]))
    torch.testing.assert_close(object_prior(feat, "l2"), torch.tensor([[[math.sqrt(10.0), 2.0]]]))
    torch.testing.assert_close(
        minmax_per_sample(torch.tensor([[[1.0, 3.0], [2.0, 5.0]]])), torch.tensor([[[0.0, 0.5], [0.25, 1.0]]])
    )


# ----------------------------------------------------------------------------- Attention10k


def test_attention_and_attended_vector_by_hand() -> None:
    scores = torch.tensor([[[[0.0, 0.3]]]])  # (1, 1, 1, 2)
    attn = attention_maps(scores, temperature=0.1)
    e = math.exp(3.0)
    torch.testing.assert_close(attn, torch.tensor([[[[1 / (1 + e), e / (1 + e)]]]]))
    v = torch.tensor([[[[1.0, 3.0]], [[0.0, 2.0]]]])  # (1, D=2, 1, 2)
    z = attended_vectors(attn, v)  # (1, 1, 2)
    w1 = e / (1 + e)
    torch.testing.assert_close(z, torch.tensor([[[(1 - w1) * 1 + w1 * 3, w1 * 2]]]))


def test_distance_ratio_loss_by_hand() -> None:
    d = torch.tensor([[0.5, 1.5, 1.0], [2.0, 0.2, 0.7], [0.9, 1.1, 1.3]])

    def term(dp: float, dn: float) -> float:
        rp = math.exp(dp) / (math.exp(dp) + math.exp(dn))
        rn = math.exp(dn) / (math.exp(dp) + math.exp(dn))
        return rp**2 + (rn - 1) ** 2

    want_all = np.mean([term(0.5, 1.5), term(0.5, 1.0), term(0.2, 2.0), term(0.2, 0.7), term(1.3, 0.9), term(1.3, 1.1)])
    assert abs(float(distance_ratio_loss(d, "all")) - want_all) < 1e-6
    want_roll = np.mean([term(0.5, 1.5), term(0.2, 0.7), term(1.3, 0.9)])
    assert abs(float(distance_ratio_loss(d, "roll")) - want_roll) < 1e-6
    with pytest.raises(ConfigError, match="at least 2"):
        distance_ratio_loss(d[:1, :1])


def test_attention10k_forward_distances_follow_the_definition() -> None:
    model = create_method("attention10k", tiny_config("attention10k")).eval()
    batch = tiny_batch()
    with torch.no_grad():
        out = model(batch)
        v = model.embed_visual(model.encode_images(batch["image"]))
        h = model.embed_audio(batch["audio"])
        fs = torch.nn.functional.normalize(model.audio_head(h), dim=-1)
        for i in range(BATCH):
            for j in range(BATCH):
                a = attention_maps(cosine_map(h[i : i + 1], v[j : j + 1]), model.cfg.attention_temperature)[0]  # (h, w)
                z = (a[None] * v[j]).sum(dim=(1, 2))  # (D,)
                fv = torch.nn.functional.normalize(model.visual_head(z), dim=-1)
                assert abs(float((fs[i] - fv).norm()) - float(out["dist"][i, j])) < 1e-5
        torch.testing.assert_close(out["heatmap"].sum(dim=(1, 2)), torch.ones(BATCH))


# ----------------------------------------------------------------------------- Objects that sound


def test_correspondence_losses_by_hand() -> None:
    s = torch.tensor([[2.0, -1.0, 0.5], [0.0, 1.0, 3.0], [-2.0, 0.4, 0.1]])

    def softplus(x: float) -> float:
        return math.log1p(math.exp(x))

    # BCE: positives s_ii (label 1), negatives s_{i,(i+1) mod 3} (label 0)
    want = np.mean([softplus(-2.0), softplus(-1.0), softplus(-0.1), softplus(-1.0), softplus(3.0), softplus(-2.0)])
    assert abs(float(correspondence_loss(s, "bce")) - want) < 1e-6
    want_c = np.mean([-s[i, i].item() + math.log(sum(math.exp(x) for x in s[i].tolist())) for i in range(3)])
    assert abs(float(correspondence_loss(s, "contrastive")) - want_c) < 1e-6


def test_ots_scores_are_calibrated_max_pooled_cosines() -> None:
    model = create_method("ots", tiny_config("ots")).eval()
    batch = tiny_batch()
    with torch.no_grad():
        out = model(batch)
        s = cross_cosine_maps(
            model.embed_audio(batch["audio"]), model.embed_visual(model.encode_images(batch["image"]))
        )
        cal = model.calibration
        torch.testing.assert_close(out["scores"], (cal.scale * s + cal.bias).flatten(2).amax(-1))
        torch.testing.assert_close(out["heatmap"], model.localize(batch["image"], batch["audio"]))
        assert float(out["heatmap"].min()) >= 0 and float(out["heatmap"].max()) <= 1


# ----------------------------------------------------------------------------- EZ-VSL


def test_mil_contrastive_loss_by_hand() -> None:
    lg = torch.tensor([[3.0, 1.0, 0.0], [0.5, 2.0, -1.0], [1.0, 1.0, 1.0]])

    def ce(row: list[float], k: int) -> float:
        return -row[k] + math.log(sum(math.exp(x) for x in row))

    a2v = np.mean([ce(lg[i].tolist(), i) for i in range(3)])
    v2a = np.mean([ce(lg[:, j].tolist(), j) for j in range(3)])
    assert abs(float(mil_contrastive_loss(lg)) - (a2v + v2a)) < 1e-6


def test_ezvsl_logits_are_max_over_locations_over_tau() -> None:
    model = create_method("ezvsl", tiny_config("ezvsl")).eval()
    batch = tiny_batch()
    with torch.no_grad():
        out = model(batch)
        s = cross_cosine_maps(
            model.embed_audio(batch["audio"]), model.embed_visual(model.encode_images(batch["image"]))
        )
    torch.testing.assert_close(out["logits"], s.flatten(2).amax(-1) / 0.03)


def test_object_guided_localization_by_hand_and_in_the_model() -> None:
    av = torch.tensor([[[0.0, 1.0], [0.5, 0.25]]])
    prior = torch.tensor([[[4.0, 0.0], [2.0, 2.0]]])  # min-max -> [[1, 0], [0.5, 0.5]]
    mix = 0.4 * torch.tensor([[[0.0, 1.0], [0.5, 0.25]]]) + 0.6 * torch.tensor([[[1.0, 0.0], [0.5, 0.5]]])
    torch.testing.assert_close(object_guided_map(av, prior, 0.4), minmax_per_sample(mix))

    model = create_method(
        "ezvsl", tiny_config("ezvsl", **PRETRAINED, audio_encoder_kwargs={"channels": TINY_CH}, ogl=True)
    )
    model.eval()
    batch = tiny_batch()
    heat = assert_batch_independent(model, batch["image"], batch["audio"])
    with torch.no_grad():
        feat = model.encode_images(batch["image"])
        av_map = cosine_map(model.embed_audio(batch["audio"]), model.embed_visual(feat))
    torch.testing.assert_close(heat, object_guided_map(av_map, object_prior(feat, "l1"), 0.4))
    with pytest.raises(ConfigError, match="pretrained"):
        create_method("ezvsl", tiny_config("ezvsl", ogl=True))


# ----------------------------------------------------------------------------- training-free priors


def test_random_map_is_deterministic_per_sample() -> None:
    batch = tiny_batch()
    m = create_method("random")
    a = m.localize(batch["image"], batch["audio"])
    torch.testing.assert_close(a, create_method("random").localize(batch["image"], batch["audio"]))
    assert not torch.equal(a[0], a[1])
    other = create_method("random", {"seed": 1}).localize(batch["image"], batch["audio"])
    assert not torch.equal(a, other)
    assert a.shape == (BATCH, 14, 14) and float(a.min()) >= 0 and float(a.max()) < 1


def test_centre_prior_formula() -> None:
    g = gaussian_centre_map(4, 0.25)
    # cell centres at -3/8, -1/8, 1/8, 3/8 of the side from the middle
    want = math.exp(-((1 / 8) ** 2 + (3 / 8) ** 2) / (2 * 0.25**2))
    assert abs(float(g[1, 3]) - want) < 1e-6
    torch.testing.assert_close(g, g.flip(0))
    torch.testing.assert_close(g, g.t())
    batch = tiny_batch()
    heat = create_method("centre", {"map_size": 5}).localize(batch["image"], batch["audio"])
    assert heat.shape == (BATCH, 5, 5) and int(heat[0].argmax()) == 12


def test_objectness_ignores_audio() -> None:
    model = create_method("objectness", tiny_config("objectness"))
    batch = tiny_batch()
    a = model.localize(batch["image"], batch["audio"])
    b = model.localize(batch["image"], torch.zeros_like(batch["audio"]))
    torch.testing.assert_close(a, b)
    assert model.checkpoint_exclude_prefixes() == ["visual_encoder."]
    with pytest.raises(ConfigError, match="pretrained"):
        create_method("objectness", {"visual_encoder": "small_cnn"})


# ----------------------------------------------------------------------------- synchrony


def test_windowed_correlation_matches_numpy() -> None:
    g = torch.Generator().manual_seed(3)
    motion, energy = (
        torch.rand(9, 2, 3, generator=g, dtype=torch.float64),
        torch.rand(9, generator=g, dtype=torch.float64),
    )
    weights = torch.zeros(2, 9, dtype=torch.float64)
    weights[0, :5] = 1
    weights[1] = 1
    rho = windowed_correlation(motion, energy, weights, eps=0.0)
    for t, sel in ((0, slice(0, 5)), (1, slice(0, 9))):
        for y in range(2):
            for x in range(3):
                want = np.corrcoef(motion[sel, y, x].numpy(), energy[sel].numpy())[0, 1]
                assert abs(float(rho[t, y, x]) - want) < 1e-9


def _peak_xy(m: torch.Tensor, stride: int) -> tuple[float, float]:
    y, x = divmod(int(m.flatten().argmax()), m.shape[-1])
    return (x + 0.5) * stride, (y + 0.5) * stride


def _inside(p: tuple[float, float], box: np.ndarray) -> bool:
    return bool(box[0] <= p[0] <= box[2] and box[1] <= p[1] <= box[3])


@pytest.mark.parametrize("seed", [0, 1])
def test_synchrony_finds_the_pulsing_disc(seed: int) -> None:
    """The peak of every frame's map lies inside the sounding disc's boxes, never on the silent square.

    The disc's *rim* moves with the sound, so the peak sits where the rim is when
    the disc is large; the per-frame box tracks the current (possibly small)
    radius, so the check uses the union of the clip's sounding boxes (the disc
    drifts by 5% of the width) and, on the loudest frame, that frame's own box.
    """
    clip = make_demo_clip(DemoClipConfig(seconds=3.0, seed=seed))
    model = load_model("synchrony")
    frames = torch.from_numpy(clip.frames).permute(0, 3, 1, 2)  # (T, 3, H, W) uint8
    maps = model.localize_track(frames, torch.from_numpy(clip.audio), torch.from_numpy(clip.times))
    s = model.cfg.stride
    assert maps.shape == (len(clip.times), clip.cfg.height // s, clip.cfg.width // s)
    assert torch.isfinite(maps).all()
    sb, qb = clip.sounding_boxes, clip.silent_boxes
    union_s = np.array([sb[:, 0].min(), sb[:, 1].min(), sb[:, 2].max(), sb[:, 3].max()])
    union_q = np.array([qb[:, 0].min(), qb[:, 1].min(), qb[:, 2].max(), qb[:, 3].max()])
    peaks = [_peak_xy(m, s) for m in maps]
    assert all(_inside(p, union_s) for p in peaks)
    assert not any(_inside(p, union_q) for p in peaks)
    loud = int(np.argmax(clip.envelope))
    assert _inside(peaks[loud], sb[loud])


def test_synchrony_single_frames_raise_and_stacks_work() -> None:
    model = load_model("synchrony")
    batch = tiny_batch()
    with pytest.raises(ConfigError, match="localize_track"):
        model.localize(batch["image"], batch["audio"])
    clip = make_demo_clip(DemoClipConfig(seconds=2.0, width=96, height=64, seed=0))
    frames = torch.from_numpy(clip.frames).permute(0, 3, 1, 2).float() / 255  # (T, 3, H, W)
    stack = torch.stack([frames, frames.flip(-1), frames])  # (3, T, 3, H, W)
    audio = torch.from_numpy(clip.audio).expand(3, -1)
    heat = assert_batch_independent(model, stack, audio)
    assert heat.shape == (3, 64 // 8, 96 // 8)
    torch.testing.assert_close(heat[1], heat[0].flip(-1))
