"""Shared test fixtures: the real-data directory and tiny generated media."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]


def data_dir() -> Path | None:
    """``$AVLOC_DATA`` or ``../shared/data`` beside the repository, if present."""
    env = os.environ.get("AVLOC_DATA")
    for cand in ([Path(env)] if env else []) + [REPO.parent / "shared" / "data"]:
        if cand.is_dir():
            return cand
    return None


@pytest.fixture
def shared_data() -> Path:
    d = data_dir()
    if d is None:
        pytest.skip("shared data not found: set AVLOC_DATA or place it at ../shared/data")
    return d


@pytest.fixture(autouse=True)
def _small_torch() -> None:
    torch.manual_seed(0)
    torch.set_num_threads(1)


@pytest.fixture(scope="session")
def demo_clip_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from clips import write_clip

    return write_clip(tmp_path_factory.mktemp("media") / "demo.mp4", seconds=2.0, fps=10, size=(160, 120))
