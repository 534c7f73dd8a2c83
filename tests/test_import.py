"""``avloc import``: published checkpoints (key layouts of the public model definitions) as avloc checkpoints."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from avloc.cli.import_ import FAMILIES
from avloc.cli.main import main
from avloc.errors import CheckpointError
from avloc.importers import get_family, import_checkpoint, list_families
from avloc.methods.zoo import load_model
from published_layouts import SHAPES, published_checkpoint, ref_map

SR = 16000


def _write(tmp_path: Path, family: str, obj: object | None = None) -> Path:
    p = tmp_path / f"{family}.pth"
    torch.save(published_checkpoint(family) if obj is None else obj, p)
    return p


def test_cli_choices_are_the_registered_families() -> None:
    assert sorted(FAMILIES) == list_families()


@pytest.mark.parametrize("family", sorted(SHAPES))
def test_imported_forward_equals_plain_rederivation(tmp_path: Path, family: str) -> None:
    """avloc's ``localize`` on the imported weights == the repo's forward pass written with functional ops."""
    src = _write(tmp_path, family)
    out = tmp_path / "m.safetensors"
    report = import_checkpoint(family, src, out)
    model = load_model(out)
    fam = get_family(family)
    assert model.name == fam.method and report.mapped == len(model.state_dict())
    assert model.checkpoint_meta["imported"]["family"] == family
    cfg = model.cfg
    assert cfg.image.size == 224 and tuple(cfg.image.mean) == (0.485, 0.456, 0.406)
    assert cfg.audio.kind == "lvs" and cfg.audio.nperseg == 512 and cfg.audio.sample_rate == SR
    assert cfg.image.mode == ("crop" if family in ("lvs", "sslalign") else "squash")
    g = torch.Generator().manual_seed(1)
    img = torch.rand(1, 3, 96, 128, generator=g)
    wav = (0.3 * torch.randn(1, SR, generator=g)).clamp(-1, 1)
    with torch.no_grad():
        got = model.localize(img, wav)[0]
        ref = ref_map(family, _plain_state(family), img, wav[0].numpy(), SR)
    assert got.shape == ref.shape == ((6, 8) if family in ("lvs", "sslalign") else (3, 4))
    torch.testing.assert_close(got, ref, atol=2e-4, rtol=1e-3)
    assert float(got.std()) > 1e-3  # not a degenerate constant map


def _plain_state(family: str) -> dict[str, torch.Tensor]:
    """The published state dict without its wrapper and ``module.`` prefix (what the repos load)."""
    ck = published_checkpoint(family)
    (inner,) = (v for k, v in ck.items() if k in ("model", "model_state_dict"))
    assert isinstance(inner, dict)
    return {k.removeprefix("module."): v for k, v in inner.items()}


def test_slavc_keeps_online_and_momentum_weights(tmp_path: Path) -> None:
    """Both SLAVC families keep every tensor (the imported model trains on); they differ in the map's encoders."""
    src = _write(tmp_path, "slavc")
    a_rep = import_checkpoint("slavc", src, tmp_path / "a.safetensors")
    b_rep = import_checkpoint("slavc-momentum", src, tmp_path / "b.safetensors")
    a, b = load_model(tmp_path / "a.safetensors"), load_model(tmp_path / "b.safetensors")
    sd = _plain_state("slavc")
    assert a_rep.mapped == b_rep.mapped == len(sd) and not a_rep.dropped
    for m in (a, b):
        torch.testing.assert_close(m.state_dict()["extra_audio_proj.0.weight"], sd["aud_proj2.weight"])
        torch.testing.assert_close(m.state_dict()["momentum.extra_audio_proj.0.weight"], sd["momentum_aud_proj2.weight"])
    assert not a.cfg.momentum_eval and b.cfg.momentum_eval


def test_bare_state_dict_and_sample_rate(tmp_path: Path) -> None:
    """A bare state dict (no wrapper, no prefix) imports too; --sample-rate lands in the config."""
    src = _write(tmp_path, "ezvsl", _plain_state("ezvsl"))
    out = tmp_path / "m.safetensors"
    assert main(["import", "--from", "ezvsl", str(src), "--out", str(out), "--sample-rate", "22050"]) == 0
    assert load_model(out).cfg.audio.sample_rate == 22050
    assert main(["import", "--from", "ezvsl", str(src), "--out", str(out)]) == 2  # exists, no --force


def _err(capsys: pytest.CaptureFixture[str], argv: list[str]) -> str:
    capsys.readouterr()
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    return err


def test_errors_are_one_line_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = str(tmp_path / "o.safetensors")
    lvs = _write(tmp_path, "lvs")
    # wrong family: names the family the keys do match
    err = _err(capsys, ["import", "--from", "ezvsl", str(lvs), "--out", out])
    assert "not a ezvsl checkpoint" in err and "--from lvs" in err
    slavc = _write(tmp_path, "slavc")
    assert "--from slavc" in _err(capsys, ["import", "--from", "fnac", str(slavc), "--out", out])
    # missing keys
    sd = _plain_state("ezvsl")
    del sd["audnet.layer3.1.conv2.weight"]
    err = _err(capsys, ["import", "--from", "ezvsl", str(_write(tmp_path, "miss", sd)), "--out", out])
    assert "1 tensors missing" in err and "audnet.layer3.1.conv2.weight" in err
    # unexpected keys
    sd = {**_plain_state("ezvsl"), "extra_head.weight": torch.zeros(3)}
    assert "unexpected" in _err(capsys, ["import", "--from", "ezvsl", str(_write(tmp_path, "extra", sd)), "--out", out])
    # wrong shape (an embedding of 128 with a 512-d audio projection)
    sd = {**_plain_state("ezvsl"), "aud_proj.weight": torch.zeros(256, 512)}
    err = _err(capsys, ["import", "--from", "ezvsl", str(_write(tmp_path, "shape", sd)), "--out", out])
    assert "'aud_proj.weight' has shape (256, 512)" in err
    # NaN weights
    sd = _plain_state("ezvsl")
    sd["img_proj.bias"] = torch.full_like(sd["img_proj.bias"], float("nan"))
    assert "NaN" in _err(capsys, ["import", "--from", "ezvsl", str(_write(tmp_path, "nan", sd)), "--out", out])
    # a pickle with a non-tensor object: refused by weights_only, never executed
    evil = tmp_path / "evil.pth"
    torch.save({"model": _plain_state("ezvsl"), "args": Path("x")}, evil)
    assert "refused" in _err(capsys, ["import", "--from", "ezvsl", str(evil), "--out", out])
    # non-tensor values inside the state dict
    sd = {**_plain_state("ezvsl"), "img_proj.weight": [1.0, 2.0]}
    assert "non-tensor" in _err(capsys, ["import", "--from", "ezvsl", str(_write(tmp_path, "list", sd)), "--out", out])
    # not a checkpoint at all, a missing file, an unknown family
    junk = tmp_path / "junk.pth"
    junk.write_bytes(b"\x00" * 64)
    assert "junk.pth" in _err(capsys, ["import", "--from", "ezvsl", str(junk), "--out", out])
    assert "not found" in _err(capsys, ["import", "--from", "ezvsl", str(tmp_path / "nope.pth"), "--out", out])
    with pytest.raises(SystemExit):
        main(["import", "--from", "nosuch", str(junk), "--out", out])
    assert not Path(out).exists()


def _hostile(sd: dict[str, torch.Tensor], key: str, value: torch.Tensor | None) -> dict[str, torch.Tensor]:
    out = dict(sd)
    if value is None:
        del out[key]
    else:
        out[key] = value
    return out


WIDTH_KEY = "imgnet.layer4.1.bn2.weight"  # the LVS layout's embedding width is read from this tensor

#: published LVS state dicts damaged one way each -> what the one-line error must say
HOSTILE_LVS: dict[str, tuple[str, torch.Tensor | None, str]] = {
    "0-d width tensor": (WIDTH_KEY, torch.tensor(512.0), "has shape ()"),
    "missing width tensor": (WIDTH_KEY, None, "is missing"),
    "expanded 2^40 width": (WIDTH_KEY, torch.ones(1).expand(2**40), "expanded or overlapping"),
    "expanded weight": ("imgnet.conv1.weight", torch.ones(1, 1, 1, 1).expand(64, 3, 7, 7), "expanded or overlapping"),
    "sparse": ("imgnet.bn1.weight", torch.ones(64).to_sparse(), "sparse"),
    "meta": ("imgnet.bn1.weight", torch.empty(64, device="meta"), "meta tensor"),
    "complex": ("imgnet.bn1.weight", torch.ones(64, dtype=torch.complex64), "dtype torch.complex64"),
    "negative BN variance": ("imgnet.bn1.running_var", -torch.ones(64), "implausible BatchNorm statistics"),
    "NaN BN mean": ("audnet.layer1.0.bn1.running_mean", torch.full((64,), float("nan")), "NaN"),
}


@pytest.mark.parametrize("case", sorted(HOSTILE_LVS))
def test_hostile_tensors_are_refused_before_use(tmp_path: Path, capsys: pytest.CaptureFixture[str], case: str) -> None:
    """Layout, widths and BatchNorm statistics are checked before any size is used or value computed (issue 30)."""
    key, value, says = HOSTILE_LVS[case]
    src = _write(tmp_path, "hostile", _hostile(_plain_state("lvs"), key, value))
    out = tmp_path / "o.safetensors"
    err = _err(capsys, ["import", "--from", "lvs", str(src), "--out", str(out)])
    assert says in err and "hostile.pth" in err
    assert not out.exists()


def test_empty_file_and_out_of_range_options(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    empty = tmp_path / "empty.pth"
    empty.write_bytes(b"")
    out = str(tmp_path / "o.safetensors")
    assert "empty file (0 bytes)" in _err(capsys, ["import", "--from", "lvs", str(empty), "--out", out])
    src = str(_write(tmp_path, "lvs"))
    for rate in ("2000000000", "0", "-16000"):
        assert "--sample-rate must lie in [1, 384000]" in _err(
            capsys, ["import", "--from", "lvs", src, "--out", out, "--sample-rate", rate])
    assert not Path(out).exists()


def test_safetensors_input_is_refused(tmp_path: Path) -> None:
    src = _write(tmp_path, "fnac")
    out = tmp_path / "m.safetensors"
    import_checkpoint("fnac", src, out)
    with pytest.raises(CheckpointError, match="safetensors"):
        import_checkpoint("fnac", out, tmp_path / "again.safetensors")


def test_imported_model_localizes_and_evaluates(
    tmp_path: Path, demo_clip_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`avloc localize --model` on a generated clip and `avloc eval --model` on a prepared Flickr-layout set."""
    import cv2
    import soundfile as sf

    model = tmp_path / "ezvsl.safetensors"
    assert main(["import", "--from", "ezvsl", str(_write(tmp_path, "ezvsl")), "--out", str(model)]) == 0
    out = tmp_path / "loc"
    assert main(["localize", str(demo_clip_path), "--model", str(model), "--out", str(out), "--fps", "2",
                 "--no-overlay", "--quiet"]) == 0
    assert any(out.iterdir())
    # a two-image Flickr-SoundNet layout: frames/, audio/, Annotations/
    root = tmp_path / "flickr"
    rng = np.random.default_rng(0)
    for sid in ("11", "12"):
        (root / "frames").mkdir(parents=True, exist_ok=True)
        (root / "audio").mkdir(parents=True, exist_ok=True)
        (root / "Annotations").mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(root / "frames" / f"{sid}.jpg"), rng.integers(0, 255, (240, 320, 3), dtype=np.uint8))
        sf.write(str(root / "audio" / f"{sid}.wav"), (0.1 * rng.standard_normal(3 * SR)).astype(np.float32), SR)
        box = "<bbox><annotator>0</annotator><xmin>40</xmin><ymin>40</ymin><xmax>200</xmax><ymax>200</ymax></bbox>"
        (root / "Annotations" / f"{sid}.xml").write_text(f"<annotation><object>{box}</object></annotation>")
    man = tmp_path / "flickr.jsonl"
    assert main(["data", "prepare", "flickr", "--root", str(root), "--out", str(man)]) == 0
    capsys.readouterr()
    assert main(["eval", "--model", str(model), "--manifest", str(man), "--protocol", "ezvsl-flickr", "--json"]) == 0
    res = json.loads(capsys.readouterr().out)
    assert res["n"] == 2 and 0.0 <= res["auc"] <= 1.0


def test_ezvsl_two_heads_train_and_localize_per_sample() -> None:
    """``heads=2`` (SLAVC's layout): forward, loss, backward reach both heads; localize is the mean of the heads' maps."""
    from avloc.methods import create_method
    from avloc.methods.blocks import cosine_map
    from test_baselines import assert_batch_independent, tiny_batch, tiny_config

    model = create_method("ezvsl", tiny_config("ezvsl", heads=2)).train()
    batch = tiny_batch()
    loss = model.build_criterion()(model(batch), batch)["loss"]
    loss.backward()
    assert torch.isfinite(loss)
    assert model.extra_visual_proj[0].proj.weight.grad is not None and model.extra_audio_proj[0].weight.grad is not None
    model.eval()
    heat = assert_batch_independent(model, batch["image"], batch["audio"])
    with torch.no_grad():
        feat = model.encode_images(batch["image"])
        h = model.audio_path.encoder(model.audio_path.frontend(batch["audio"]))
        m1 = cosine_map(model.audio_path.proj(h), model.visual_proj(feat))
        m2 = cosine_map(model.extra_audio_proj[0](h), model.extra_visual_proj[0](feat))
    torch.testing.assert_close(heat, (m1 + m2) / 2)
