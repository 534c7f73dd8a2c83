"""The registries import a plugin only when it is asked for, and the tables agree with the registrations."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from avloc.registry import REGISTRIES, Registry, RegistryError

SRC = Path(__file__).resolve().parents[1] / "src"


def test_every_table_matches_its_registrations() -> None:
    for reg in REGISTRIES.values():
        reg.check()  # imports every listed module; each registers exactly its listed names
        listed = [n for names in reg.modules.values() for n in names]
        assert len(set(listed)) == len(listed) and set(listed) <= set(reg.names())


def test_avloc_module_registering_a_name_outside_the_table_fails() -> None:
    reg: Registry = Registry("thing", {"avloc.things.a": ("a",)})
    with pytest.raises(RegistryError, match=r"avloc.things.b registers thing 'b' but the table does not list it"):
        reg.register("b", module="avloc.things.b")(lambda: None)
    with pytest.raises(RegistryError, match=r"registers thing 'a' but the table lists it for avloc.things.a"):
        reg.register("a", module="avloc.things.other")(lambda: None)
    reg.register("a", module="avloc.things.a")(lambda: 1)
    with pytest.raises(RegistryError, match="duplicate thing name 'a'"):
        reg.register("a", module="avloc.things.a")(lambda: 2)


def test_table_naming_a_module_that_does_not_register_fails() -> None:
    reg: Registry = Registry("thing", {"avloc.errors": ("ghost",)})
    assert reg.names() == ["ghost"]  # listed without importing anything
    with pytest.raises(RegistryError, match=r"lists 'ghost' for avloc\.errors, which does not register it"):
        reg.get("ghost")
    with pytest.raises(RegistryError, match=r"lists \['ghost'\] for avloc.errors"):
        reg.check()
    with pytest.raises(RegistryError, match=r"listed for avloc\.a and avloc\.b"):
        Registry("thing", {"avloc.a": ("x",), "avloc.b": ("x",)})


def test_unknown_name_lists_the_valid_ones_and_outside_plugins_register() -> None:
    reg: Registry = Registry("thing", {"avloc.errors": ("listed",)})
    reg.register("extra", module="user_plugin")(lambda k=1: k * 3)  # code outside avloc may add names
    assert reg.names() == ["extra", "listed"] and "extra" in reg and reg.create("extra", k=2) == 6
    assert reg.module_of("extra") == "user_plugin" and reg.module_of("listed") == "avloc.errors"
    with pytest.raises(RegistryError, match=r"unknown thing 'nope'; valid names: extra, listed"):
        reg.get("nope")


def _modules_after(code: str) -> set[str]:
    """The modules a fresh interpreter holds after running ``code`` (which may print to stdout)."""
    probe = f"{code}\nimport sys, json\nprint('\\n@@' + json.dumps(sorted(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True,
                         env={"PYTHONPATH": str(SRC), "PATH": "/usr/bin:/bin"})
    return set(json.loads(out.stdout.rsplit("@@", 1)[1]))


def _plugins(mods: set[str]) -> set[str]:
    listed = {m for reg in REGISTRIES.values() for m in reg.modules}
    return mods & listed


def test_listing_names_imports_no_plugin_and_not_torch() -> None:
    mods = _modules_after(
        "from avloc.cli.main import main; main(['info', '--json']); import sys; "
        "assert 'torch' not in sys.modules, 'avloc info imported torch'; "
        "from avloc.methods import list_methods; from avloc.encoders import list_encoders; "
        "from avloc.importers import list_families; import avloc.data.digitscenes, avloc.metrics; "
        "assert len(list_methods()) > 10 and list_encoders() and list_families()"
    )
    assert not _plugins(mods)  # neither avloc info nor importing the packages loads a plugin


def test_eval_of_saved_maps_imports_only_its_protocol(tmp_path: Path) -> None:
    gt = tmp_path / "gt.json"
    gt.write_text(json.dumps([{"file": f"c{i}", "bbox": [[0.1, 0.2, 0.6, 0.7]]} for i in range(3)]))
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "p.npz", **{f"c{i}": rng.standard_normal((7, 7)).astype(np.float32) for i in range(3)})
    mods = _modules_after(
        f"from avloc.cli.main import main; main(['eval', '--gt', {str(gt)!r}, '--pred', {str(tmp_path / 'p.npz')!r}, "
        "'--protocol', 'ezvsl-vggss', '--json'])"
    )
    assert "torch" not in mods
    assert _plugins(mods) == {REGISTRIES["protocols"].module_of("ezvsl-vggss")}
