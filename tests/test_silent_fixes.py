"""Regression tests of the six behaviours issue 19 found wrong without a warning."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import pytest
import torch

from avloc.engine.train import BestTracker, train
from avloc.errors import ConfigError
from avloc.methods import create_method
from avloc.metrics.protocols import Protocol, create_protocol
from test_dnm import TINY as DNM_TINY
from test_engine import TinyAV, tiny_lvs_config, tiny_train_config

# ---- 1. val_metric=pnsr (lower is better) keeps the lowest score as best


def test_metric_directions() -> None:
    assert create_protocol("avsol").higher_is_better("pnsr") is False
    assert create_protocol("avsol").higher_is_better("pnsr_visible") is False
    assert create_protocol("avsol").higher_is_better("hmboxauc") is True
    assert create_protocol("sslalign-adaptive").higher_is_better("success") is True
    assert create_protocol("realclips").higher_is_better("onscreen_ece") is False
    with pytest.raises(ConfigError, match="not a score"):
        create_protocol("sslalign-adaptive").higher_is_better("n")


def test_best_tracker_follows_the_direction() -> None:
    low = BestTracker.for_protocol("avsol", "pnsr")
    assert [low.update({"pnsr": v}) for v in (3.0, 1.0, 2.0, float("nan"))] == [True, True, False, False]
    assert low.best == 1.0
    high = BestTracker.for_protocol("avsol", "hmboxauc")
    assert [high.update({"hmboxauc": v}) for v in (0.2, 0.1, 0.3)] == [True, False, True]
    with pytest.raises(ConfigError, match="val_metric"):
        BestTracker.for_protocol("avsol", "n_ave")


def test_train_keeps_the_lowest_pnsr(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    scores = iter([3.0, 1.0, 2.0])
    monkeypatch.setattr("avloc.engine.train.loop._validate", lambda *a: {"pnsr": next(scores)})
    cfg = tiny_train_config(steps=6, val_every=2, ckpt_every=0, val_protocol="avsol", val_metric="pnsr")
    res = train(create_method("lvs", tiny_lvs_config()), TinyAV(n=8), tmp_path / "run", cfg, TinyAV(n=4))
    assert res.best == 1.0
    from avloc.checkpoint import load_checkpoint

    assert load_checkpoint(tmp_path / "run" / "best.safetensors").meta["step"] == 4


# ---- 2. a manifest spec refuses keyword arguments it does not take


def test_manifest_spec_refuses_unknown_kwargs(tmp_path: Path) -> None:
    from avloc.data.datasets import dataset_from_spec

    man = tmp_path / "m.jsonl"
    man.write_text("".join(json.dumps({"id": f"c{i}", "image": "x.png", "audio": "x.wav"}) + "\n" for i in range(8)))
    with pytest.raises(ConfigError, match=r"unknown dataset arguments \['nonsense'\]"):
        dataset_from_spec(str(man), count=5, nonsense=1)
    assert len(dataset_from_spec(str(man), count=5)) == 5  # type: ignore[arg-type]
    assert len(dataset_from_spec(f"manifest:{man}")) == 8  # type: ignore[arg-type]


# ---- 3. building a DNM leaves the caller's RNG alone (its weights still come from init_seed)


def test_dnm_construction_keeps_the_global_rng() -> None:
    torch.manual_seed(11)
    before = torch.get_rng_state()
    a = create_method("dnm", {**DNM_TINY, "init_seed": 3})
    assert torch.equal(torch.get_rng_state(), before)
    torch.manual_seed(99)
    b = create_method("dnm", {**DNM_TINY, "init_seed": 3})
    for k, v in a.state_dict().items():
        assert torch.equal(v, b.state_dict()[k]), k
    torch.manual_seed(3)  # the weights are those drawn after torch.manual_seed(init_seed), as before
    with torch.random.fork_rng(devices=[]):
        c = create_method("dnm", {**DNM_TINY, "init_seed": None})
    for k, v in a.state_dict().items():
        assert torch.equal(v, c.state_dict()[k]), k


def test_loading_the_dnm_zoo_model_keeps_the_global_rng() -> None:
    from avloc.methods.zoo import load_model

    torch.manual_seed(5)
    before = torch.get_rng_state()
    load_model("dnm-digitscenes")
    assert torch.equal(torch.get_rng_state(), before)


# ---- 4. the shipped dnm-digitscenes config holds no temporary path; fine-tuning it works


def test_dnm_zoo_config_is_fine_tunable() -> None:
    from avloc.methods.zoo import load_model

    m = load_model("dnm-digitscenes")
    assert m.cfg.audio_init_from is None and m.cfg.audio_pretrain_steps == 0
    assert m.checkpoint_meta["audio_init"]["applied"] is True
    m.cfg.sound_draws, m.cfg.neg_other_time = 1, 0.0  # the data levers need DigitScenes video; not tested here
    ds: Any = TinyAV(n=4)
    assert m.prepare_training(ds, feature_cache=False) is ds  # no file looked for, nothing pretrained again


def test_applied_audio_init_is_cleared_from_the_saved_config(tmp_path: Path) -> None:
    from safetensors.torch import save_file

    src = create_method("dnm", DNM_TINY)
    enc = src.audio_module()
    assert enc is not None
    wpath = tmp_path / "audio_backbone.safetensors"
    save_file({k: v.contiguous() for k, v in enc.state_dict().items()}, str(wpath))
    m = create_method("dnm", {**DNM_TINY, "audio_init_from": str(wpath), "freeze_audio": True})
    m.prepare_training(TinyAV(n=4), feature_cache=False)
    assert m.cfg.audio_init_from is None  # the weights hold it now; a checkpoint must not point at the file
    new_enc = m.audio_module()
    assert new_enc is not None
    for k, v in enc.state_dict().items():
        assert torch.equal(v, new_enc.state_dict()[k]), k


# ---- 5. protocols carry no input settings that nothing applies


def test_protocol_has_no_unapplied_input_settings() -> None:
    names = {f.name for f in dataclasses.fields(Protocol)}
    assert not {"audio_window", "image_mode"} & names
    with pytest.raises(TypeError):
        Protocol(name="x", audio_window="10s-tiled")  # type: ignore[call-arg]
    assert "10 s tiled" in create_protocol("lvs-flickr").published_inputs  # recorded for the report only


# ---- 6. avloc localize --window changes DNM's frame span too


def test_window_changes_the_dnm_segment(monkeypatch: pytest.MonkeyPatch) -> None:
    import avloc.methods.dnm.method as dnm
    from avloc.inference.sources import ModelSource

    m = create_method("dnm", DNM_TINY).eval()  # own window 0.5 s
    assert ModelSource(m).context_seconds == pytest.approx(0.25)
    assert ModelSource(m, window_seconds=2.0).context_seconds == pytest.approx(1.0)
    spans: list[float] = []
    real = dnm.segment_times

    def spy(centre: float, span: float, frames: int) -> list[float]:
        spans.append(span)
        return real(centre, span, frames)  # type: ignore[no-any-return]

    monkeypatch.setattr(dnm, "segment_times", spy)
    frames, times = torch.rand(9, 3, 32, 32), torch.arange(9, dtype=torch.float32) * 0.25
    sr = m.cfg.audio.sample_rate
    with torch.no_grad():
        m.localize_clip(frames, torch.randn(9, sr // 2), times, keep=slice(4, 5))
        m.localize_clip(frames, torch.randn(9, 2 * sr), times, keep=slice(4, 5))
    assert spans == [pytest.approx(0.5), pytest.approx(2.0)]
