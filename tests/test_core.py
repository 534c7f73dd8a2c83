"""Registries, typed configs, checkpoints (incl. refusing pickles) and atomic writes."""

from __future__ import annotations

import json
import pickle
from dataclasses import dataclass, field

import pytest
import torch

from avloc.checkpoint import Checkpoint, load_checkpoint, save_checkpoint
from avloc.config import apply_overrides, config_from_dict, config_to_dict, load_config_file
from avloc.errors import CheckpointError, ConfigError, OutputExistsError
from avloc.formats.atomic import atomic_path, check_writable, write_text_atomic
from avloc.registry import Registry, RegistryError


def test_registry_create_list_unknown_duplicate() -> None:
    reg: Registry = Registry("thing")

    @reg.register("b")
    def make_b(x: int = 1) -> int:
        return x * 2

    reg.register("a")(lambda: "a")
    assert reg.names() == ["a", "b"]
    assert reg.create("b", x=4) == 8
    with pytest.raises(RegistryError, match=r"unknown thing 'c'; valid names: a, b"):
        reg.get("c")
    with pytest.raises(RegistryError, match="duplicate thing name 'a'"):
        reg.register("a")(lambda: None)


@dataclass
class Inner:
    lr: float = 1e-4
    sizes: tuple[int, ...] = (1, 2)


@dataclass
class Outer:
    name: str = "lvs"
    steps: int = 10
    flag: bool = False
    inner: Inner = field(default_factory=Inner)
    maybe: float | None = None


def test_config_roundtrip_and_overrides(tmp_path) -> None:
    cfg = Outer()
    d = config_to_dict(cfg)
    assert d == {"name": "lvs", "steps": 10, "flag": False, "inner": {"lr": 1e-4, "sizes": [1, 2]}, "maybe": None}
    assert config_from_dict(Outer, json.loads(json.dumps(d))) == cfg
    cfg2 = apply_overrides(cfg, ["inner.lr=3e-3", "steps=5", "flag=true", "name=ezvsl", "inner.sizes=[4,5,6]", "maybe=0.5"])
    assert cfg2.inner.lr == 3e-3 and cfg2.steps == 5 and cfg2.flag is True and cfg2.name == "ezvsl"
    assert cfg2.inner.sizes == (4, 5, 6) and cfg2.maybe == 0.5
    with pytest.raises(ConfigError, match="unknown key 'nope'"):
        apply_overrides(cfg, ["inner.nope=1"])
    with pytest.raises(ConfigError, match="expected an integer"):
        apply_overrides(cfg, ["steps=1.5"])
    with pytest.raises(ConfigError, match="key=value"):
        apply_overrides(cfg, ["steps"])
    with pytest.raises(ConfigError, match="unknown keys"):
        config_from_dict(Outer, {"bogus": 1})
    p = tmp_path / "c.json"
    p.write_text(json.dumps({"steps": 3}))
    assert load_config_file(Outer, p).steps == 3


def test_checkpoint_roundtrip(tmp_path) -> None:
    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.ReLU(), torch.nn.Linear(4, 2))
    ck = Checkpoint(method="toy", config={"a": 1, "b": [1, 2]}, state_dict=model.state_dict(), meta={"note": "x"})
    path = save_checkpoint(tmp_path / "m.safetensors", ck)
    back = load_checkpoint(path)
    assert back.method == "toy" and back.config == {"a": 1, "b": [1, 2]} and back.meta["note"] == "x"
    assert "torch" in back.meta["versions"]
    model2 = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.ReLU(), torch.nn.Linear(4, 2))
    model2.load_state_dict(back.state_dict)
    x = torch.randn(5, 3)
    assert torch.equal(model(x), model2(x))


class _Exploit:
    def __reduce__(self):  # runs os.system on unpickling
        import os

        return (os.system, ("touch /tmp/avloc_pwned",))


def test_malicious_pickle_is_refused(tmp_path) -> None:
    import os

    if os.path.exists("/tmp/avloc_pwned"):
        os.remove("/tmp/avloc_pwned")
    bad = tmp_path / "evil.pt"
    with bad.open("wb") as f:
        pickle.dump({"state_dict": _Exploit()}, f)
    with pytest.raises(CheckpointError, match="pickled checkpoints"):
        load_checkpoint(bad)
    torch.save({"x": _Exploit()}, tmp_path / "evil2.pt")  # torch's zip format
    with pytest.raises(CheckpointError, match="refused"):
        load_checkpoint(tmp_path / "evil2.pt")
    assert not os.path.exists("/tmp/avloc_pwned")


def test_checkpoint_corrupt_and_missing(tmp_path) -> None:
    with pytest.raises(CheckpointError, match="not found"):
        load_checkpoint(tmp_path / "none.safetensors")
    path = save_checkpoint(tmp_path / "m.safetensors", Checkpoint("toy", {}, {"w": torch.ones(100)}))
    data = path.read_bytes()
    (tmp_path / "cut.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="corrupt or truncated"):
        load_checkpoint(tmp_path / "cut.safetensors")


def test_atomic_write_and_no_overwrite(tmp_path) -> None:
    p = tmp_path / "out.json"
    write_text_atomic(p, "one")
    with pytest.raises(OutputExistsError, match="--force"):
        check_writable(p, force=False)
    assert check_writable(p, force=True) == p
    with pytest.raises(RuntimeError), atomic_path(p) as tmp:
        tmp.write_text("half")
        raise RuntimeError("crash mid-write")
    assert p.read_text() == "one"
    assert [x.name for x in tmp_path.iterdir()] == ["out.json"]


def test_atomic_write_gets_ordinary_file_permissions(tmp_path) -> None:
    """The result is readable like any new file (0o666 minus the umask), not mkstemp's private 0o600."""
    import os
    import stat

    mask = os.umask(0o022)
    try:
        import importlib

        import avloc.formats.atomic as atomic

        importlib.reload(atomic)  # the module reads the umask once, at import
        atomic.write_text_atomic(tmp_path / "a.txt", "x")
        assert stat.S_IMODE((tmp_path / "a.txt").stat().st_mode) == 0o644
    finally:
        os.umask(mask)
        importlib.reload(atomic)


def test_named_configs_resolve_and_list() -> None:
    """``avloc train --config NAME``: shipped configs by name; an unknown name lists the valid ones."""
    from avloc.config import list_configs, read_config_file
    from avloc.errors import ConfigError

    assert {"dnm-digitscenes", "proposal-digitscenes"} <= set(list_configs())
    cfg = read_config_file("dnm-digitscenes", sections=("method", "train", "data"))
    assert cfg["method"]["fusion"] == "cdf" and "description" not in cfg
    with pytest.raises(ConfigError, match="named configs"):
        read_config_file("no-such-recipe")


def test_named_configs_build() -> None:
    """Every shipped config naming its method (``method_name``, e.g. the DNM Table 2 rows) builds typed configs."""
    from avloc.config import config_from_dict, list_configs, read_config_file
    from avloc.engine.train import DataConfig, TrainConfig
    from avloc.methods import list_methods
    from avloc.registry import METHODS

    assert list_methods()  # fills the registry
    named = {n: read_config_file(n) for n in list_configs() if "method_name" in read_config_file(n)}
    assert {f"dnm-table2-{r}" for r in ("cam", "tian", "static-cls", "static-avc", "static-dnm", "cdf-dnm")} <= set(named)
    for cfg in named.values():
        config_from_dict(METHODS.get(cfg["method_name"]).config_class, cfg.get("method", {}))
        config_from_dict(TrainConfig, cfg.get("train", {}))
        config_from_dict(DataConfig, cfg.get("data", {}))


def test_config_types_are_strict_and_numbers_finite() -> None:
    """Issue 30: each value checked against its field's annotation; one ConfigError naming the setting."""
    from avloc.methods.lvs import LVSConfig

    cases = {
        "embed_dim: expected an integer, got true/false": {"embed_dim": True},
        "image: expected a section (mapping) for ImageConfig, got a list": {"image": [224]},
        "visual_encoder: expected a string, got a list": {"visual_encoder": ["resnet18"]},
        "tau: expected a finite number, got inf": {"tau": float("inf")},
        "tau: expected a finite number, got nan": {"tau": float("nan")},
        "tau: 10000": {"tau": 10**400},  # too large for a float: refused, not an OverflowError
        "embed_dim: 1000": {"embed_dim": 10**30},  # beyond 64 bits
        "image.mean[1]: expected a number": {"image": {"mean": [0.5, "x", 0.5]}},
        "image.mean: expected a list of 3 values, got 2": {"image": {"mean": [0.5, 0.5]}},
        "image.mode: 'crop ' is not one of": {"image": {"mode": "crop "}},
        "image.size must lie in [1, 4096], got -5": {"image": {"size": -5}},
        "audio.sample_rate must lie in [1, 384000], got 0": {"audio": {"sample_rate": 0}},
        "unknown keys ['embed_dimm']; valid keys: [": {"embed_dimm": 3},
    }
    for says, data in cases.items():
        with pytest.raises(ConfigError) as info:
            config_from_dict(LVSConfig, data)
        assert says in str(info.value) and "\n" not in str(info.value), (says, str(info.value))


def test_a_combination_is_checked_on_the_combined_config() -> None:
    """Fields valid alone but not together are refused; overrides are checked once, all applied."""
    from avloc.methods.lvs import LVSConfig

    cfg = LVSConfig()
    with pytest.raises(ConfigError, match="eps_n < eps_p"):
        apply_overrides(cfg, ["eps_n=0.7"])  # above the default eps_p 0.65
    assert apply_overrides(cfg, ["eps_n=0.7", "eps_p=0.9"]).eps_n == 0.7  # valid together
    with pytest.raises(ConfigError, match="eps_n < eps_p"):
        LVSConfig(eps_n=0.9, eps_p=0.5)  # built directly: the same check (__post_init__)
    from avloc.frontends.audio import AudioFrontendConfig

    with pytest.raises(ConfigError, match=r"audio.noverlap must lie in \[0, 255\]"):
        config_from_dict(LVSConfig, {"audio": {"nperseg": 256}})  # the default noverlap 274 no longer fits
    assert AudioFrontendConfig(nperseg=256, noverlap=100).noverlap == 100
