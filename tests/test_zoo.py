"""The shipped model zoo: every checkpoint loads and localizes an input of its own geometry."""

from __future__ import annotations

import pytest
import torch

from avloc.methods.zoo import list_zoo, load_model


def test_zoo_is_not_empty() -> None:
    assert {"dnm-digitscenes", "lvs-digitscenes", "classif-digitscenes"} <= set(list_zoo())


@pytest.mark.parametrize("name", list_zoo())
def test_zoo_model_loads_and_localizes(name: str) -> None:
    torch.manual_seed(0)
    model = load_model(name).eval()
    s = model.cfg.image.size
    images = torch.rand(2, 3, s, s)  # single frames (segment methods take them as still segments)
    audio = 0.1 * torch.randn(2, model.cfg.audio.num_samples)
    with torch.no_grad():
        maps = model.localize(images, audio)
    assert maps.dim() == 3 and maps.shape[0] == 2 and torch.isfinite(maps).all()
    # a different sound changes the map of every audio-visual model in the zoo
    with torch.no_grad():
        other = model.localize(images, audio.roll(1, dims=0) * 3.0 + 0.05 * torch.randn_like(audio))
    assert not torch.allclose(maps, other)


#: roots of machine-local paths a shipped header must not carry (tools/scrub_checkpoint_paths.py removes them)
MACHINE_ROOTS = ("/tmp", "/home", "/root", "/work")


@pytest.mark.parametrize("name", ["dnm", "twostage", "proposal", "lvs", "classif"])
def test_zoo_headers_hold_no_machine_path(name: str) -> None:
    """Each zoo checkpoint loads, and no string anywhere in its header is a path on the training machine."""
    import json

    from safetensors import safe_open

    from avloc.methods.zoo import ZOO_DIR

    path = ZOO_DIR / f"{name}-digitscenes.safetensors"
    assert load_model(path).name == name
    with safe_open(str(path), framework="pt") as f:
        header = json.dumps(f.metadata())

    def strings(obj: object) -> list[str]:
        if isinstance(obj, str):
            try:
                return strings(json.loads(obj)) if obj[:1] in "{[" else [obj]
            except json.JSONDecodeError:
                return [obj]
        if isinstance(obj, dict):
            return [s for v in obj.values() for s in strings(v)]
        if isinstance(obj, list):
            return [s for v in obj for s in strings(v)]
        return []

    found = [s for s in strings(json.loads(header)) if any(r in s for r in MACHINE_ROOTS)]
    assert not found, f"{path.name} header holds machine paths: {found}"
    assert len(strings(json.loads(header))) > 10  # the walk does reach into the JSON header
