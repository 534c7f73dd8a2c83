"""Informative moments (Sec. 5.1), pseudo boxes (Sec. 5.2), the box-supervision term and ``avloc pseudo-boxes``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from avloc.applications.pseudo_boxes import (
    BoxSupervised,
    PseudoBoxConfig,
    binarize,
    clip_pseudo_boxes,
    largest_component,
    mask_box,
    pseudo_box,
    semi_supervised,
    to_frame_pixels,
)
from avloc.data.moments import MomentFrames, middle_moments, select_moments, top_k_moments
from avloc.errors import ConfigError, DataError
from avloc.frontends.image import ImageConfig, transform_boxes
from avloc.methods.semisup import box_attention_loss, box_cell_mask
from avloc.metrics.ops import box_iou
from test_classif import SIZE, SR, tiny_classif_config

# ----------------------------------------------------------------------------- moments


def test_top_k_moments_order_and_ties() -> None:
    s = torch.tensor([0.1, 0.9, 0.3, 0.9, -1.0])
    assert top_k_moments(s, 1) == [1]  # tie 0.9 at steps 1 and 3: the earlier wins
    assert top_k_moments(s, 3) == [1, 3, 2]
    with pytest.raises(ConfigError):
        top_k_moments(s, 6)
    with pytest.raises(DataError):
        top_k_moments(torch.zeros(2, 2), 1)
    assert middle_moments(2, 5) == {0: [2], 1: [2]}
    assert middle_moments(1, 6, k=3) == {0: [3, 2, 4]}  # nearest the middle step 3, earlier first on ties
    assert middle_moments(1, 2, k=2) == {0: [1, 0]}
    with pytest.raises(ConfigError):
        middle_moments(1, 4, k=5)


class _Clips(torch.utils.data.Dataset):
    """Tiny clip source: clip c has T=4 frames whose brightness peaks at step c % 4."""

    steps = 4

    def __len__(self) -> int:
        return 3

    def __getitem__(self, c: int) -> dict[str, Any]:
        img = torch.zeros(self.steps, 3, 2, 2)
        img[c % self.steps] = 1.0
        return {"id": f"c{c}", "image": img, "audio": torch.zeros(SR)}

    def frame_sample(self, c: int, step: int, audio_cfg: Any = None) -> dict[str, Any]:
        return {"id": f"c{c}-s{step}", "image": self[c]["image"][step], "audio": torch.zeros(SR // 2), "boxes": torch.zeros(0, 4)}


def test_select_moments_and_moment_frames() -> None:
    def scorer(frames: torch.Tensor, audio: torch.Tensor) -> torch.Tensor:
        return frames.mean(dim=(2, 3, 4))  # (B, T)

    moments, scores, rate = select_moments(scorer, _Clips(), k=1, batch_size=2)
    assert moments == {0: [0], 1: [1], 2: [2]} and rate > 0
    assert scores[1] == pytest.approx([0.0, 1.0, 0.0, 0.0])
    mf = MomentFrames(_Clips(), moments)
    assert len(mf) == 3 and mf.feature_cache_keys() == ["0:0", "1:1", "2:2"]
    item = mf[2]
    assert item["id"] == "c2-s2" and float(item["image"].mean()) == 1.0 and item["scene_index"] == "2:2"
    with pytest.raises(DataError, match="outside"):
        MomentFrames(_Clips(), {0: [7]})


def test_moment_frames_preload_composes_once() -> None:
    class Counting(_Clips):
        calls = 0

        def frame_sample(self, c: int, step: int, audio_cfg: Any = None) -> dict[str, Any]:
            Counting.calls += 1
            return super().frame_sample(c, step, audio_cfg)

    lazy = MomentFrames(_Clips(), {0: [0], 1: [1, 3]})
    mf = MomentFrames(Counting(), {0: [0], 1: [1, 3]}, preload=True)
    assert Counting.calls == 3  # every item composed once, at construction
    for i in range(3):
        a, b = mf[i], lazy[i]
        assert a["id"] == b["id"] and a["scene_index"] == b["scene_index"] and torch.equal(a["image"], b["image"])
    mf[1]["boxes"] = torch.ones(1, 4)  # a caller replacing a field does not change the stored item
    assert mf[1]["boxes"].shape == (0, 4) and Counting.calls == 3


# ----------------------------------------------------------------------------- connected component and box


def test_largest_component_hand_worked_8_vs_4() -> None:
    m = np.array(
        [
            [1, 1, 0, 0, 0, 0],
            [1, 0, 0, 0, 1, 1],
            [0, 1, 0, 0, 1, 1],
            [0, 0, 1, 0, 0, 1],
        ],
        dtype=bool,
    )
    # 8-connectivity: left chain {(0,0),(0,1),(1,0),(2,1),(3,2)} = 5 pixels (diagonal steps), right blob
    # {(1,4),(1,5),(2,4),(2,5),(3,5)} = 5 -> a tie: the first component in raster order (the left chain)
    l8 = largest_component(m, 8)
    assert l8.sum() == 5 and l8[0, 0] and l8[3, 2] and not l8[1, 4]
    assert mask_box(l8) == [0, 0, 3, 4]
    # 4-connectivity: the left L is 3 pixels, (2,1) and (3,2) are alone, the right blob is 5 -> the right blob
    l4 = largest_component(m, 4)
    assert l4.sum() == 5 and l4[1, 4] and l4[3, 5] and not l4[0, 0]
    assert mask_box(l4) == [4, 1, 6, 4]
    # one more pixel (2, 3): beside (2, 4), diagonal to (3, 2) -> 8-connected it joins both (5 + 5 + 1),
    # 4-connected it only grows the right blob (5 + 1)
    m[2, 3] = True
    assert largest_component(m, 8).sum() == 11
    assert largest_component(m, 4).sum() == 6
    assert mask_box(np.zeros((3, 3), bool)) is None
    assert not largest_component(np.zeros((3, 3), bool)).any()
    with pytest.raises(ConfigError):
        largest_component(m, 6)


def test_binarize_and_pseudo_box() -> None:
    a = torch.tensor([[0.0, 0.0, 0.0, 0.0], [0.0, 4.0, 4.0, 0.0], [0.0, 4.0, 4.0, 0.0], [0.0, 0.0, 0.0, 1.0]])
    # at the map's own size no interpolation: threshold 0.5 keeps the 2x2 block (1.0 -> 0.25 is dropped)
    assert binarize(a, (4, 4), 0.5).sum() == 4
    assert pseudo_box(a, (4, 4), 0.5) == [1, 1, 3, 3]
    assert pseudo_box(a, (4, 4), 0.2) == [1, 1, 4, 4]  # 0.25 at (3, 3) touches the block diagonally: 8-connected
    assert pseudo_box(a, (4, 4), 0.2, connectivity=4) == [1, 1, 3, 3]  # ... not 4-connected: block is largest
    up = pseudo_box(a, (8, 8), 0.5)  # upsampled x2: the block's centre region
    assert up is not None and up[0] >= 2 and up[2] <= 6
    assert pseudo_box(torch.ones(3, 3), (6, 6)) is None  # flat map: no evidence
    assert box_iou([0, 0, 2, 2], [1, 1, 3, 3]) == pytest.approx(1 / 7)
    assert box_iou([0, 0, 1, 1], [2, 2, 3, 3]) == 0.0


@pytest.mark.parametrize("mode", ["squash", "crop"])
def test_to_frame_pixels_inverts_transform_boxes(mode: str) -> None:
    cfg = ImageConfig(size=32, resize=40, mode=mode)  # type: ignore[arg-type]
    box = torch.tensor([[30.0, 20.0, 70.0, 50.0]])  # pixels of a 100 x 60 (W x H) frame
    norm = transform_boxes(box, (60, 100), cfg)[0].tolist()
    back = to_frame_pixels(norm, (60, 100), cfg)
    assert back == pytest.approx(box[0].tolist(), abs=0.02)


def test_clip_pseudo_boxes_with_model() -> None:
    from avloc.methods import create_method
    from avloc.methods.classif import Classif

    m = create_method("classif", tiny_classif_config()).eval()
    assert isinstance(m, Classif)
    frames = torch.rand(8, 3, SIZE, SIZE)  # 2 s at 4 fps
    boxes = clip_pseudo_boxes(m, frames, 0.1 * torch.randn(2 * SR), PseudoBoxConfig(top_k=2))
    with torch.no_grad():
        s_av = m.moment_scores(frames[None], 0.1 * torch.randn(1, 2 * SR))
    assert len(boxes) == 2 and s_av.shape == (1, 8)
    assert boxes[0].score >= boxes[1].score
    for b in boxes:
        assert b.box is not None and 0 <= b.box[0] < b.box[2] <= 1 and 0 <= b.box[1] < b.box[3] <= 1


# ----------------------------------------------------------------------------- box supervision


def test_box_cell_mask_and_loss_by_hand() -> None:
    m = box_cell_mask(torch.tensor([[0.0, 0.0, 0.5, 0.5]]), 2, 2)
    torch.testing.assert_close(m, torch.tensor([[1.0, 0.0], [0.0, 0.0]]))
    tiny = box_cell_mask(torch.tensor([[0.6, 0.6, 0.7, 0.7]]), 2, 2)  # no cell centre inside: the centre's cell
    torch.testing.assert_close(tiny, torch.tensor([[0.0, 0.0], [0.0, 1.0]]))
    maps = torch.tensor([[[1.0, 0.0], [0.0, 0.0]], [[0.0, 0.0], [0.0, 0.0]]])
    batch = {"box_supervised": torch.tensor([True, False]), "sup_boxes": [torch.tensor([[0.0, 0.0, 1.0, 0.5]]), torch.zeros(0, 4)]}
    loss, n = box_attention_loss(maps, batch, temperature=1.0)
    # sample 0: q = (0.5, 0.5, 0, 0), p = softmax(1, 0, 0, 0)
    logz = float(np.log(np.e + 3))
    assert n == 1 and float(loss) == pytest.approx(-0.5 * (1 - logz) - 0.5 * (0 - logz), rel=1e-5)
    none, n0 = box_attention_loss(maps, {"box_supervised": torch.tensor([False, False]), "sup_boxes": [torch.zeros(0, 4)] * 2}, 1.0)
    assert n0 == 0 and float(none) == 0.0
    with pytest.raises(DataError, match="box_supervised"):
        box_attention_loss(maps, {}, 1.0)


def test_lvs_box_term_is_optional() -> None:
    import torch.nn.functional as F

    from avloc.methods.lvs import LVSConfig, LVSLoss

    g = torch.Generator().manual_seed(0)
    out = {"aemb": F.normalize(torch.randn(2, 4, generator=g), dim=1), "vmap": F.normalize(torch.randn(2, 4, 2, 2, generator=g), dim=1)}
    base = LVSLoss(LVSConfig())(out, {})  # default: no box term, batch keys not needed
    assert "box" not in base
    batch = {"box_supervised": torch.tensor([True, False]), "sup_boxes": [torch.tensor([[0.0, 0.0, 0.5, 0.5]]), torch.zeros(0, 4)]}
    with_box = LVSLoss(LVSConfig(box_weight=2.0, box_temperature=0.5))(out, batch)
    s_ii = torch.einsum("bc,bchw->bhw", out["aemb"], out["vmap"])
    ref, _ = box_attention_loss(s_ii, batch, 0.5)
    assert float(with_box["loss"]) == pytest.approx(float(base["loss"]) + 2.0 * float(ref), rel=1e-5)
    with pytest.raises(DataError):
        LVSLoss(LVSConfig(box_weight=1.0))(out, {})


def test_semi_supervised_dataset() -> None:
    class _DS(torch.utils.data.Dataset):
        def __init__(self, tag: str, n: int) -> None:
            self.tag, self.n = tag, n

        def __len__(self) -> int:
            return self.n

        def feature_cache_keys(self) -> list[int]:
            return list(range(self.n))

        def __getitem__(self, i: int) -> dict[str, Any]:
            return {"id": f"{self.tag}{i}", "image": torch.zeros(3, 2, 2), "audio": torch.zeros(4), "boxes": torch.tensor([[0.1, 0.1, 0.5, 0.5]]),
                    "box_labels": torch.tensor([-1]), "silent_boxes": torch.zeros(0, 4), "labels": [], "onscreen": True,
                    "audible": True, "extra": 1}

    ds = semi_supervised(_DS("u", 2), _DS("s", 1))
    assert len(ds) == 3
    assert ds.feature_cache_keys() == ["u:0", "u:1", "s:0"]  # type: ignore[attr-defined]
    u, s = ds[1], ds[2]
    assert not bool(u["box_supervised"]) and u["sup_boxes"].shape == (0, 4) and "extra" not in u
    assert bool(s["box_supervised"]) and s["sup_boxes"][0].tolist() == pytest.approx([0.1, 0.1, 0.5, 0.5])
    with pytest.raises(DataError, match="lacks"):
        BoxSupervised(_DS("x", 1), True, "x", keep=("nope",))[0]


# ----------------------------------------------------------------------------- CLI


def _tiny_media(tmp: Path, demo_clip: Path) -> Path:
    """A still (PNG + WAV) and a video entry in a manifest."""
    import soundfile as sf
    from PIL import Image

    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (40, 48, 3), dtype=np.uint8)).save(tmp / "a.png")
    sf.write(tmp / "a.wav", (0.1 * rng.standard_normal(SR)).astype(np.float32), SR)
    entries = [
        {"id": "still", "image": "a.png", "audio": "a.wav", "size": [48, 40], "labels": [3], "split": "train"},
        {"id": "vid", "video": str(demo_clip), "audio": str(demo_clip), "size": [160, 120], "labels": [1]},
    ]
    man = tmp / "in.jsonl"
    man.write_text("".join(json.dumps(e) + "\n" for e in entries))
    return man


def test_pseudo_boxes_cli(tmp_path: Path, demo_clip_path: Path) -> None:
    from avloc.cli.main import main
    from avloc.data.datasets import ManifestDataset
    from avloc.formats.manifest import read_manifest
    from avloc.methods import create_method
    from avloc.methods.zoo import save_model

    man = _tiny_media(tmp_path, demo_clip_path)
    ckpt = save_model(create_method("classif", tiny_classif_config()), tmp_path / "m.safetensors")
    out = tmp_path / "sub" / "pseudo.jsonl"
    args = ["pseudo-boxes", "--model", str(ckpt), "--manifest", str(man), "--out", str(out)]
    assert main(args) == 0
    rows = read_manifest(out)
    assert [r["id"] for r in rows] == ["still", "vid"]
    still, vid = rows
    assert still["pseudo_box"] and still["image"] == "../a.png" and "time" not in still
    x1, y1, x2, y2 = still["boxes"][0]
    assert 0 <= x1 < x2 <= 48 and 0 <= y1 < y2 <= 40
    assert vid["time"] == vid["moment_time"] and 0 <= vid["moment_step"] < 8
    assert (vid["moment_step"] + 0.5) / 4 == pytest.approx(vid["time"])
    ds = ManifestDataset(out, ImageConfig(size=SIZE, resize=SIZE))  # readable as a dataset
    assert ds[1]["boxes"].shape == (1, 4)
    before = out.read_bytes()
    assert main(args) == 2  # refuses to overwrite
    assert out.read_bytes() == before
    assert main([*args, "--force", "--top-k", "2"]) == 0
    assert [r["id"] for r in read_manifest(out)] == ["still-m0", "still-m1", "vid-m0", "vid-m1"]
    assert main(["pseudo-boxes", "--model", str(ckpt), "--manifest", str(man), "--out", str(tmp_path / "x.jsonl"), "--threshold", "0"]) == 2
