"""Proposal-based method (issue 5): ops against naive references, losses by hand, model contract."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from avloc.errors import CheckpointError, ConfigError, DataError
from avloc.methods import create_method
from avloc.methods.proposal_mil import (
    ProposalMILLoss,
    audio_guided_attention,
    distance_ratio_loss,
    euclidean_loss,
    global_response_map,
    pad_proposals,
    proposal_confidence,
    proposal_level_feature,
    proposal_similarity,
    select_top_k,
)
from avloc.methods.proposals import (
    ProposalCache,
    ProposalCacheError,
    ProposalConfig,
    box_pixel_bounds,
    box_sums,
    spp_bins,
    spp_pool,
)
from avloc.metrics.ops import box_iou, nms


@pytest.fixture(autouse=True)
def _cache_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AVLOC_CACHE", str(tmp_path / "cache"))


def random_boxes(n: int, gen: torch.Generator, min_side: float = 0.02) -> torch.Tensor:
    a = torch.rand(n, 2, generator=gen) * (1 - min_side)
    wh = min_side + torch.rand(n, 2, generator=gen) * (1 - min_side - a)
    return torch.cat([a, a + wh], dim=1)  # (n, 4)


def scene_image(size: int = 96) -> torch.Tensor:
    """Two flat coloured rectangles on a grey background, (3, H, W) in [0, 1]."""
    img = torch.full((3, size, size), 0.5)
    img[:, 10:50, 8:40] = torch.tensor([0.9, 0.1, 0.1])[:, None, None]
    img[:, 55:90, 50:88] = torch.tensor([0.1, 0.2, 0.9])[:, None, None]
    return img


# ----------------------------------------------------------------------------- ops


def test_spp_pool_matches_naive_loop() -> None:
    gen = torch.Generator().manual_seed(1)
    feat = torch.randn(2, 3, 7, 5, generator=gen)
    boxes = torch.stack([random_boxes(9, gen), random_boxes(9, gen)])  # (2, 9, 4)
    boxes[0, 0] = torch.tensor([0.0, 0.0, 1.0, 1.0])
    boxes[1, 0] = torch.tensor([0.41, 0.42, 0.43, 0.44])  # smaller than a cell
    out = spp_pool(feat, boxes)  # (2, 9, 21 * 3)
    assert out.shape == (2, 9, 21 * 3)
    h, w = feat.shape[-2:]
    for b in range(2):
        for r in range(9):
            x0, y0, x1, y1 = (boxes[b, r] * torch.tensor([w, h, w, h])).tolist()
            ref = []
            for n in (1, 2, 4):
                for i in range(n):  # rows
                    for j in range(n):  # cols
                        ys = min(max(math.floor(y0 + i * (y1 - y0) / n), 0), h - 1)
                        ye = max(min(math.ceil(y0 + (i + 1) * (y1 - y0) / n) - 1, h - 1), ys)
                        xs = min(max(math.floor(x0 + j * (x1 - x0) / n), 0), w - 1)
                        xe = max(min(math.ceil(x0 + (j + 1) * (x1 - x0) / n) - 1, w - 1), xs)
                        ref.append(feat[b, :, ys : ye + 1, xs : xe + 1].amax(dim=(1, 2)))
            torch.testing.assert_close(out[b, r], torch.cat(ref))
    # full-frame box, level 1 = global max pool
    torch.testing.assert_close(out[0, 0, :3], feat[0].amax(dim=(1, 2)))


def test_spp_pool_gradient_reaches_argmax_only() -> None:
    feat = torch.zeros(1, 1, 4, 4, requires_grad=True)
    with torch.no_grad():
        feat[0, 0, 1, 2] = 5.0
    out = spp_pool(feat, torch.tensor([[[0.0, 0.0, 1.0, 1.0]]]), levels=(1,))
    out.sum().backward()
    assert feat.grad is not None and feat.grad[0, 0, 1, 2] == 1.0 and feat.grad.sum() == 1.0
    bins = spp_bins(torch.tensor([[0.0, 0.0, 1.0, 1.0]]), 4, 4, (2,))
    assert bins.tolist() == [[[0, 0, 1, 1], [2, 0, 3, 1], [0, 2, 1, 3], [2, 2, 3, 3]]]


def test_spp_pool_gradient_matches_naive_max() -> None:
    gen = torch.Generator().manual_seed(3)
    feat = torch.randn(2, 4, 6, 5, generator=gen, requires_grad=True)
    boxes = torch.stack([random_boxes(5, gen), random_boxes(5, gen)])  # (2, 5, 4)
    up = torch.randn(2, 5, 21 * 4, generator=gen)
    (spp_pool(feat, boxes) * up).sum().backward()
    fast = feat.grad.clone()
    feat.grad = None
    h, w = feat.shape[-2:]
    bins = spp_bins(boxes, h, w)  # (2, 5, 21, 4) inclusive cell ranges
    ref = torch.stack(
        [
            torch.stack(
                [
                    torch.cat(
                        [
                            feat[b, :, y0 : y1 + 1, x0 : x1 + 1].amax(dim=(1, 2))
                            for x0, y0, x1, y1 in bins[b, r].tolist()
                        ]
                    )
                    for r in range(5)
                ]
            )
            for b in range(2)
        ]
    )  # (2, 5, 21 * C), bin-major like spp_pool
    (ref * up).sum().backward()
    torch.testing.assert_close(fast, feat.grad)


def nms_numpy(boxes: np.ndarray, scores: np.ndarray, thr: float) -> list[int]:
    order = np.argsort(-scores, kind="stable")
    keep: list[int] = []
    for i in order:
        ok = True
        for j in keep:
            lt = np.maximum(boxes[i, :2], boxes[j, :2])
            rb = np.minimum(boxes[i, 2:], boxes[j, 2:])
            inter = np.prod(np.clip(rb - lt, 0, None))
            area = lambda b: (b[2] - b[0]) * (b[3] - b[1])  # noqa: E731
            if inter / (area(boxes[i]) + area(boxes[j]) - inter) > thr:
                ok = False
                break
        if ok:
            keep.append(int(i))
    return keep


@pytest.mark.parametrize("thr", [0.0, 0.3, 0.7])
def test_nms_matches_numpy_reference(thr: float) -> None:
    gen = torch.Generator().manual_seed(2)
    boxes = random_boxes(60, gen, 0.05).double()
    scores = torch.rand(60, generator=gen, dtype=torch.float64)
    keep = nms(boxes, scores, thr)
    assert keep.tolist() == nms_numpy(boxes.numpy(), scores.numpy(), thr)
    assert nms(boxes, scores, thr, max_keep=2).tolist() == keep[:2].tolist()
    if thr == 0.0:  # kept boxes do not overlap at all
        iou = box_iou(boxes[keep], boxes[keep])
        assert (iou - torch.eye(len(keep), dtype=iou.dtype)).abs().max() == 0


def test_box_sums_match_pixel_loop() -> None:
    gen = torch.Generator().manual_seed(3)
    maps = torch.rand(2, 13, 11, generator=gen)
    boxes = torch.stack([random_boxes(7, gen), random_boxes(7, gen)])
    sums = box_sums(maps, boxes)
    px = box_pixel_bounds(boxes, 13, 11)
    for b in range(2):
        for r in range(7):
            x0, y0, x1, y1 = px[b, r].tolist()
            torch.testing.assert_close(sums[b, r], maps[b, y0:y1, x0:x1].sum())


def test_proposal_confidence_sum_prefers_size_centred_prefers_fit() -> None:
    # a 10x10 GRM: 1 on the 2x2 block at rows/cols 2-3, 0.1 elsewhere (mean 0.136)
    g = torch.full((1, 10, 10), 0.1)
    g[0, 2:4, 2:4] = 1.0
    boxes = torch.tensor([[[0.0, 0.0, 1.0, 1.0], [0.2, 0.2, 0.4, 0.4], [0.6, 0.6, 1.0, 1.0]]])
    total, tight, off = proposal_confidence(g, boxes, "sum")[0].tolist()
    assert (total, tight, off) == pytest.approx((4 + 96 * 0.1, 4.0, 16 * 0.1))  # the whole frame wins by size
    mean = float(g.mean())
    total, tight, off = proposal_confidence(g, boxes, "centred")[0].tolist()
    assert (total, tight, off) == pytest.approx((0.0, 4 * (1 - mean), 16 * (0.1 - mean)), abs=1e-5)
    assert tight > total > off  # the box that fits the response wins; the whole frame sums to zero
    with pytest.raises(ConfigError, match="selection_score"):
        proposal_confidence(g, boxes, "mean")  # type: ignore[arg-type]


# ----------------------------------------------------------------------------- selective search + cache


def test_selective_search_valid_boxes_and_cache_hits(tmp_path: Path) -> None:
    cfg = ProposalConfig(max_proposals=100)
    cache = ProposalCache(cfg, root=tmp_path / "props", memory_items=0)
    img = scene_image()
    boxes = cache.get(img)
    assert boxes.dtype == np.float32 and boxes.ndim == 2 and boxes.shape[1] == 4 and 1 <= len(boxes) <= 100
    assert (boxes >= 0).all() and (boxes <= 1).all()
    assert (boxes[:, 2] - boxes[:, 0] >= cfg.min_size).all() and (boxes[:, 3] - boxes[:, 1] >= cfg.min_size).all()
    assert len(np.unique(boxes, axis=0)) == len(boxes)
    # the red rectangle (x 8..40, y 10..50 of 96) is found
    red = torch.tensor([[8 / 96, 10 / 96, 40 / 96, 50 / 96]])
    assert box_iou(torch.from_numpy(boxes), red).max() > 0.7
    assert (cache.hits, cache.misses) == (0, 1)
    files = list(cache.dir.glob("*/*.npy"))
    assert len(files) == 1
    # a second cache (new process) reads the file: same boxes, a hit
    again = ProposalCache(cfg, root=tmp_path / "props", memory_items=0)
    np.testing.assert_array_equal(again.get(img), boxes)
    assert (again.hits, again.misses) == (1, 0)
    # other parameters -> another namespace, recomputed
    other = ProposalCache(ProposalConfig(max_proposals=5), root=tmp_path / "props")
    assert other.dir != cache.dir and len(other.get(img)) <= 5 and other.misses == 1
    # a corrupt file raises and names itself
    files[0].write_bytes(b"garbage")
    with pytest.raises(ProposalCacheError, match=str(files[0].name)):
        ProposalCache(cfg, root=tmp_path / "props", memory_items=0).get(img)


# ----------------------------------------------------------------------------- equations by hand


def test_distance_ratio_and_euclidean_losses_by_hand() -> None:
    f_v = torch.tensor([[0.0, 0.0]])
    pos = torch.tensor([[3.0, 4.0]])  # D+ = 5
    neg = torch.tensor([[6.0, 8.0]])  # D- = 10
    rp = math.exp(5) / (math.exp(5) + math.exp(10))
    rn = math.exp(10) / (math.exp(5) + math.exp(10))
    torch.testing.assert_close(distance_ratio_loss(f_v, pos, neg), torch.tensor([rp**2 + (rn - 1) ** 2]))
    torch.testing.assert_close(
        euclidean_loss(torch.tensor([[1.0, 2.0]]), torch.tensor([[0.0, 4.0]])), torch.tensor([5.0])
    )
    # the criterion: negative = next video's audio, L = mean(tri + 0.5 edu)
    out = {
        "f_v": torch.tensor([[1.0, 0.0], [0.0, 1.0]]),
        "f_s": torch.tensor([[1.0, 0.0], [1.0, 1.0]]),
        "f_att": torch.tensor([[0.0, 0.0], [0.0, 3.0]]),
        "sim": torch.zeros(2, 3),
    }
    res = ProposalMILLoss(0.5)(out)
    d = [(0.0, 1.0), (1.0, math.sqrt(2.0))]  # (D+, D-) per frame: negatives are the next frame's audio (rolled)
    tri = [
        (math.exp(a) / (math.exp(a) + math.exp(b))) ** 2 + (math.exp(b) / (math.exp(a) + math.exp(b)) - 1) ** 2
        for a, b in d
    ]
    edu = [1.0, 4.0]
    torch.testing.assert_close(res["loss"], torch.tensor(sum(t + 0.5 * e for t, e in zip(tri, edu)) / 2))
    torch.testing.assert_close(res["tri"], torch.tensor(sum(tri) / 2))


def test_similarity_weighting_and_attention_by_hand() -> None:
    f_s = torch.tensor([[1.0, 0.0]])
    f_box = torch.tensor([[[2.0, 0.0], [1.0, 1.0], [-1.0, 0.0], [0.0, 5.0]]])
    e = torch.tensor([[1.0, 1.0, 1.0, 0.0]])
    d = proposal_similarity(f_s, f_box, e)  # Eq. 3
    torch.testing.assert_close(d, torch.tensor([[1.0, 1 / math.sqrt(2), 0.0, 0.0]]))
    f_v, alpha = proposal_level_feature(d, f_box)
    a = torch.tensor([1.0, 1 / math.sqrt(2)]) / (1 + 1 / math.sqrt(2))
    torch.testing.assert_close(alpha, torch.tensor([[a[0], a[1], 0.0, 0.0]]))
    torch.testing.assert_close(f_v, (a[0] * f_box[0, 0] + a[1] * f_box[0, 1])[None])
    # all similarities zero -> alpha = 0, f_v = 0 (no NaN)
    f_v0, alpha0 = proposal_level_feature(torch.zeros(1, 4), f_box)
    assert alpha0.abs().sum() == 0 and f_v0.abs().sum() == 0
    # attention: w = phi(U_v v)^T phi(U_s s), a weighted average over locations
    uv = torch.tensor([[[[0.0, 1.0]], [[2.0, 0.0]]]])  # (1, a=2, h=1, w=2)
    us = torch.tensor([[0.0, math.log(3.0)]])  # softmax -> (1/4, 3/4)
    w = audio_guided_attention(uv, us)
    p0 = torch.tensor([1.0, math.e]) / (1 + math.e)
    p1 = torch.tensor([math.e**2, 1.0]) / (1 + math.e**2)
    torch.testing.assert_close(w, (0.25 * p0 + 0.75 * p1).view(1, 1, 2))
    torch.testing.assert_close(w.sum(), torch.tensor(1.0))
    # GRM: (m - min) / max
    m = torch.tensor([[[1.0, 2.0], [3.0, 4.0]]])
    torch.testing.assert_close(global_response_map(m), torch.tensor([[[0.0, 0.25], [0.5, 0.75]]]))


def test_bag_masks_frames_with_fewer_than_k_proposals() -> None:
    props = [
        torch.tensor([[0.0, 0.0, 0.5, 0.5], [0.5, 0.5, 1.0, 1.0], [0.0, 0.0, 1.0, 1.0]]),
        torch.tensor([[0.2, 0.2, 0.4, 0.4]]),
    ]
    boxes, valid = pad_proposals(props, min_slots=4)  # (2, 4, 4)
    scores = torch.tensor([[0.3, 0.2, 0.9, 0.0], [0.1, 5.0, 5.0, 5.0]])  # padding scores must not matter
    sel, e, idx = select_top_k(scores, boxes, valid, 4)
    assert e.tolist() == [[1, 1, 1, 0], [1, 0, 0, 0]]
    assert idx[0, :3].tolist() == [2, 0, 1]
    torch.testing.assert_close(sel[1], props[1].expand(4, 4))  # padding repeats the frame's best box
    d = proposal_similarity(torch.ones(2, 3), torch.ones(2, 4, 3), e)
    torch.testing.assert_close(d, e)  # cos = 1 on valid slots; masked slots contribute nothing (Eq. 3)
    with pytest.raises(DataError):
        select_top_k(scores, boxes, torch.zeros_like(valid), 4)


# ----------------------------------------------------------------------------- the model


def tiny(**over: Any) -> Any:
    cfg: dict[str, Any] = {
        "visual_encoder": "small_cnn",
        "visual_encoder_kwargs": {"channels": [8, 16, 16], "out_stride": 8},
        "audio_encoder": "small_cnn_audio",
        "audio_encoder_kwargs": {"channels": [8, 16], "time_stride": 2},
        "freeze_visual": False,
        "image": {"size": 64, "resize": 64},
        "audio": {"window_seconds": 0.25},
        "embed_dim": 16,
        "att_dim": 8,
        "visual_adapter_dim": 8,
        "top_k": 6,
        "proposals": {"max_proposals": 40},
    }
    cfg.update(over)
    return create_method("proposal", cfg)


def tiny_batch(b: int = 3, t: int | None = None) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(4)
    shape = (b, 3, 64, 64) if t is None else (b, t, 3, 64, 64)
    wav = (b, 4000) if t is None else (b, t, 4000)
    return {"image": torch.rand(shape, generator=gen), "audio": torch.randn(wav, generator=gen) * 0.1}


@pytest.mark.parametrize(
    "over", [{}, {"proposal_selection": False}, {"temporal_lstm": True}, {"selection_score": "centred"}]
)
def test_forward_backward_no_nan(over: dict[str, Any]) -> None:
    model = tiny(**over).train()
    batch = tiny_batch(3, t=2 if over.get("temporal_lstm") else None)
    out = model(batch)
    n = 6 if over.get("temporal_lstm") else 3
    assert out["f_v"].shape == (n, 16) and out["location_map"].shape == (n, 64, 64)
    if over.get("proposal_selection") is False:
        assert out["sim"].shape[1] >= 6
    else:
        assert out["sim"].shape == (n, 6)
    losses = model.build_criterion()(out, batch)
    losses["loss"].backward()
    assert torch.isfinite(losses["loss"])
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)
    assert model.audio_path.encoder.blocks[0][0].weight.grad is not None  # the audio stream learns
    if over.get("proposal_selection") is False:
        assert losses["edu"] >= 0 and model.build_criterion().edu_weight == 0.0  # type: ignore[union-attr]


def test_distance_scale_sharpens_the_ratio_by_hand() -> None:
    f_v, pos, neg = torch.tensor([[0.0, 0.0]]), torch.tensor([[0.3, 0.4]]), torch.tensor([[0.6, 0.8]])  # D = 0.5, 1
    rp = math.exp(10 * 0.5) / (math.exp(10 * 0.5) + math.exp(10 * 1.0))
    torch.testing.assert_close(distance_ratio_loss(f_v, pos, neg, scale=10.0), torch.tensor([2 * rp**2]))
    with pytest.raises(ConfigError, match="distance_scale"):
        tiny(distance_scale=0.0)


def test_embedding_relu_keeps_similarities_and_bags_alive() -> None:
    torch.manual_seed(0)
    batch = tiny_batch(4)
    with torch.no_grad():
        out = tiny(embedding_relu=True).eval().infer(batch["image"], batch["audio"])
    assert (out["f_s"] >= 0).all() and (out["f_att"] >= 0).all()
    # cos of non-negative vectors is >= 0, so Eq. 3's ReLU never zeroes a bag whose embeddings are non-zero
    assert (out["alpha"].sum(1) > 0.99).all()


def test_audio_init_from_copies_weights_and_freezes(tmp_path: Path) -> None:
    from avloc.methods.zoo import save_model

    src = tiny()
    with torch.no_grad():
        for p in src.audio_path.encoder.parameters():
            p.add_(1.0)
    save_model(src, tmp_path / "src.safetensors")
    model = tiny(audio_init_from=str(tmp_path / "src.safetensors"), freeze_audio=True)
    same = [torch.equal(a, b) for a, b in zip(model.audio_path.encoder.state_dict().values(),
                                               src.audio_path.encoder.state_dict().values(), strict=True)]
    assert not all(same)  # construction (also: loading a trained checkpoint) does not read the source
    data = [0, 1]
    assert model.prepare_training(data, feature_cache=False) is data  # the engine's hook, before training
    for a, b in zip(model.audio_path.encoder.state_dict().values(), src.audio_path.encoder.state_dict().values()):
        torch.testing.assert_close(a, b)
    assert model.cfg.audio_init_from == str(tmp_path / "src.safetensors")  # the provenance stays in the config
    model.train()
    assert not model.audio_path.encoder.training  # frozen BatchNorm statistics
    assert not any(p.requires_grad for p in model.audio_path.encoder.parameters())
    out = model(tiny_batch(3))
    model.build_criterion()(out, tiny_batch(3))["loss"].backward()
    assert model.audio_path.proj.weight.grad is not None
    with pytest.raises(CheckpointError, match="audio_encoder_kwargs differs"):
        tiny(
            audio_init_from=str(tmp_path / "src.safetensors"),
            audio_encoder_kwargs={"channels": [8, 8], "time_stride": 2},
        ).prepare_training([], feature_cache=False)


def test_fewer_proposals_than_k_through_the_model() -> None:
    model = tiny(top_k=200).eval()
    batch = tiny_batch(2)
    with torch.no_grad():
        out = model.infer(batch["image"], batch["audio"])
    n = out["n_proposals"]
    assert (n < 200).all()
    assert out["mask"].sum(1).tolist() == n.float().tolist()
    assert (out["sim"][out["mask"] == 0] == 0).all()


def test_localize_boxes_onscreen_batch_independent(tmp_path: Path) -> None:
    from avloc.methods.zoo import load_model, save_model

    model = tiny().eval()
    batch = tiny_batch(3)
    with torch.no_grad():
        maps = model.localize(batch["image"], batch["audio"])
        one = torch.cat([model.localize(batch["image"][i : i + 1], batch["audio"][i : i + 1]) for i in range(3)])
        torch.testing.assert_close(maps, one)
        assert maps.shape == (3, 64, 64)
        single = model.boxes(batch["image"], batch["audio"], max_sources=1)
        multi = model.boxes(batch["image"], batch["audio"], max_sources=2)
    for one_box, two in zip(single, multi):  # (n, 5): model-input pixels and d_n^k
        assert one_box.shape == (1, 5) and 1 <= len(two) <= 2
        assert (one_box[:, :4] >= 0).all() and (one_box[:, :4] <= 64).all()
        torch.testing.assert_close(one_box[0], two[0])
        assert one_box[0, 4].item() == two[:, 4].max().item()
        if len(two) == 2:
            assert box_iou(two[:1, :4], two[1:, :4]).item() == 0.0
    # on-screen: d_on works uncalibrated, m_on needs calibration (stored in the checkpoint)
    with pytest.raises(ConfigError, match="calibrat"):
        model.onscreen(batch["image"], batch["audio"])
    m = model.calibrate_onscreen([batch])
    assert math.isfinite(m) and float(model.m_on_threshold) == pytest.approx(m)
    on = model.onscreen(batch["image"], batch["audio"])
    assert on.shape == (3,) and set(on.tolist()) <= {0.0, 1.0}
    save_model(model, tmp_path / "p.safetensors")
    back = load_model(tmp_path / "p.safetensors")
    assert float(back.state_dict()["m_on_threshold"]) == pytest.approx(m)
    with torch.no_grad():
        torch.testing.assert_close(back.localize(batch["image"], batch["audio"]), maps)
    boxed = tiny(localize_output="boxes", localize_max_sources=2).eval()
    with torch.no_grad():
        rendered = boxed.localize(batch["image"], batch["audio"])
    assert (
        rendered.shape == (3, 64, 64)
        and set(rendered.unique().tolist()) <= {0.0, 1.0}
        and (rendered.sum((1, 2)) > 0).all()
    )


def test_forward_requires_image_for_proposals() -> None:
    model = tiny()
    with pytest.raises(DataError, match="image"):
        model({"vfeat": torch.zeros(2, 16, 8, 8), "audio": torch.zeros(2, 4000)})
    assert model.visual_cacheable() is False


def test_localize_pipeline_takes_the_proposal_boxes() -> None:
    """``avloc localize`` reads ``boxes()`` as (n, 5) model-input pixel boxes with scores (the source contract)."""
    from avloc.inference.sources import ModelSource

    model = tiny(localize_max_sources=2).eval()
    batch = tiny_batch(3)
    model.calibrate_onscreen([batch])
    out = ModelSource(model).maps(batch["image"], batch["audio"], torch.zeros(3))
    assert out.maps.shape == (3, 64, 64) and len(out.boxes) == 3
    for b in out.boxes:
        assert b is not None and b.shape[1] == 5 and 1 <= len(b) <= 2
        assert (b[:, 0] < b[:, 2]).all() and (b[:, 1] < b[:, 3]).all() and (b[:, :4] <= 64).all()
