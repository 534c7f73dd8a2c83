"""Issue 18, items 10-13: checkpoints validated before use (method, config schema, tensors vs the config's
model, finite values), refused in ``localize`` and ``eval`` with one line per problem and no traceback."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from avloc.cli.main import main
from avloc.errors import CheckpointError
from avloc.methods.zoo import ZOO_DIR, load_model

ZOO = ZOO_DIR / "lvs-digitscenes.safetensors"


def _edit(tmp: Path, header_edit: Callable[[dict[str, Any]], None] | None = None,
          tensor_edit: Callable[[dict[str, torch.Tensor]], None] | None = None) -> Path:
    with safe_open(str(ZOO), framework="pt") as f:
        header = json.loads(f.metadata()["avloc"])
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    if header_edit:
        header_edit(header)
    if tensor_edit:
        tensor_edit(tensors)
    out = tmp / "bad.safetensors"
    save_file(tensors, str(out), metadata={"avloc": json.dumps(header)})
    return out


def _first(ts: dict[str, torch.Tensor]) -> str:
    return next(k for k, v in ts.items() if v.is_floating_point() and v.ndim >= 2)


def _nan(ts: dict[str, torch.Tensor]) -> None:
    k = _first(ts)
    ts[k] = ts[k].clone()
    ts[k].view(-1)[:3] = float("nan")


def _reshape(ts: dict[str, torch.Tensor]) -> None:
    k = _first(ts)
    ts[k] = torch.zeros(*ts[k].shape[:-1], ts[k].shape[-1] + 1)


def _retype(ts: dict[str, torch.Tensor]) -> None:
    k = _first(ts)
    ts[k] = ts[k].double()


def _rename(ts: dict[str, torch.Tensor]) -> None:
    k = _first(ts)
    ts[k.replace("model/", "model/renamed_")] = ts.pop(k)


CASES: dict[str, tuple[Any, Any, list[str]]] = {
    # name: (header edit, tensor edit, what the problem lines must say)
    "tensors-vs-config": (lambda h: h["config"].update(embed_dim=64), None, ["shape", "the config's model needs"]),
    "no-method": (lambda h: h.pop("method"), None, ["'method' is missing"]),
    "unknown-method": (lambda h: h.update(method="nope"), None, ["unknown method 'nope'"]),
    "image-size-0": (lambda h: h["config"]["image"].update(size=0), None, ["config.image.size must lie in [1, 4096], got 0"]),
    "nan-config": (lambda h: h["config"]["audio"].update(norm_std=float("nan")), None, ["config.audio.norm_std"]),
    "bad-config-type": (lambda h: h["config"].update(embed_dim="big"), None, ["config.embed_dim: expected an integer"]),
    "config-not-object": (lambda h: h.update(config=[1, 2]), None, ["'config' is missing or not an object"]),
    "nan-weights": (None, _nan, ["values are NaN or infinite"]),
    "wrong-shape": (None, _reshape, ["shape"]),
    "wrong-dtype": (None, _retype, ["dtype torch.float64"]),
    "renamed": (None, _rename, ["missing", "unexpected"]),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_load_model_refuses(tmp_path, case: str) -> None:
    he, te, says = CASES[case]
    p = _edit(tmp_path, he, te)
    with pytest.raises(CheckpointError) as ei:
        load_model(p)
    msg = str(ei.value)
    first, *problems = msg.splitlines()
    assert str(p) in first and "checkpoint refused" in first and "avloc train" in first
    assert problems and all(q.startswith("  - ") for q in problems)
    for s in says:
        assert s in msg, msg


@pytest.mark.parametrize("case", ["tensors-vs-config", "no-method", "image-size-0", "nan-weights"])
def test_localize_and_eval_refuse_cleanly(tmp_path, capsys, demo_clip_path, case: str) -> None:
    he, te, _ = CASES[case]
    p = _edit(tmp_path, he, te)
    for argv in (["localize", str(demo_clip_path), "--out", str(tmp_path / "o"), "--model", str(p), "--quiet"],
                 ["eval", "--model", str(p), "--manifest", str(tmp_path / "m.jsonl"), "--protocol", "lvs-flickr"]):
        rc = main(argv)
        err = capsys.readouterr().err
        assert rc == 2 and "Traceback" not in err, err
        assert err.startswith(f"avloc {argv[0]}: error: {p}: checkpoint refused")
    assert not (tmp_path / "o").exists()  # localize: no outputs (the model is loaded before any input)


def test_every_zoo_checkpoint_passes_the_checks_with_its_own_weights() -> None:
    """The checks refuse nothing that ships: every zoo model's config has no problem and the loaded model holds
    exactly the file's tensors (excluded frozen encoders aside), in eval mode."""
    from avloc.checkpoint import load_checkpoint
    from avloc.config import config_from_dict, config_to_dict
    from avloc.methods.zoo import list_zoo, resolve_model_path

    names = list_zoo()
    assert len(names) >= 5
    for name in names:
        path = resolve_model_path(name)
        assert path is not None
        ck = load_checkpoint(path)
        model = load_model(name)
        assert model.name == ck.method and not model.training
        assert config_from_dict(type(model.cfg), config_to_dict(model.cfg)) == model.cfg  # every range check passes
        state = model.state_dict()
        assert ck.state_dict and all(torch.equal(state[k], v) for k, v in ck.state_dict.items()), name
