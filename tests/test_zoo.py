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
