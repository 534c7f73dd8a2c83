"""The frozen-backbone feature cache: hits are identical, any config change misses, corruption is loud."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

import numpy as np
import pytest
import torch

from avloc.encoders import create_encoder, freeze
from avloc.encoders.cache import FeatureCache, FeatureCacheError, content_key, weights_fingerprint
from avloc.frontends.image import ImageConfig

KW = {"channels": (4, 8), "out_stride": 4}


@pytest.fixture()
def setup(tmp_path: Path) -> tuple[torch.nn.Module, torch.Tensor, list[str], dict]:
    torch.manual_seed(0)
    enc = freeze(create_encoder("small_cnn", **KW))
    images = torch.rand(5, 3, 32, 32)
    keys = [content_key(im) for im in images]
    return enc, images, keys, asdict(ImageConfig(size=32))


def _cache(root: Path, enc: torch.nn.Module, prep: dict, **kw: object) -> FeatureCache:
    return FeatureCache.for_encoder(root, "small_cnn", dict(KW), enc, prep, **kw)  # type: ignore[arg-type]


@pytest.mark.parametrize("memory_items", [0, 2])
def test_hit_returns_identical_features(tmp_path: Path, setup: tuple, memory_items: int) -> None:
    enc, images, keys, prep = setup
    calls: list[list[int]] = []

    def compute(idx: list[int]) -> torch.Tensor:
        calls.append(idx)
        with torch.no_grad():
            return enc(images[idx])  # (n, C, h, w)

    cache = _cache(tmp_path, enc, prep, memory_items=memory_items)
    first = cache.get_or_compute(keys[:3], compute)
    assert calls == [[0, 1, 2]] and first.shape == (3, 8, 8, 8)
    with torch.no_grad():
        direct = enc(images[:3])
    torch.testing.assert_close(first, direct.half().float())  # stored as float16
    # a fresh cache object (new process) sees the files; only the new items are computed
    again = _cache(tmp_path, enc, prep).get_or_compute(keys, compute)
    assert calls[1] == [3, 4]
    assert torch.equal(again[:3], first)
    assert torch.equal(_cache(tmp_path, enc, prep).get_or_compute(keys, compute), again)
    assert len(calls) == 2 and len(cache) == 5
    found, _ = cache.lookup(["unknown", keys[0]])
    assert found.tolist() == [False, True]


def test_config_changes_miss(tmp_path: Path, setup: tuple) -> None:
    enc, _, keys, prep = setup
    base = _cache(tmp_path, enc, prep)
    base.store(keys[:1], torch.ones(1, 8, 8, 8))
    assert base.lookup(keys[:1])[0].item()
    other_prep = asdict(ImageConfig(size=32, mode="crop"))
    other_kwargs = FeatureCache(
        tmp_path, "small_cnn", {"channels": (4, 8), "out_stride": 2}, weights_fingerprint(enc), prep
    )
    other_name = FeatureCache(tmp_path, "small_cnn_v2", dict(KW), weights_fingerprint(enc), prep)
    enc2 = create_encoder("small_cnn", **KW)  # same architecture, other random weights
    assert weights_fingerprint(enc2) != weights_fingerprint(enc)
    for c in (
        _cache(tmp_path, enc, other_prep),
        other_kwargs,
        other_name,
        _cache(tmp_path, enc2, prep),
        _cache(tmp_path, enc, prep, dtype="float32"),
    ):
        assert c.namespace != base.namespace
        assert not c.lookup(keys[:1])[0].item()
    assert _cache(tmp_path, enc, dict(prep)).namespace == base.namespace  # equal config -> same namespace


def test_weights_fingerprint_memoised_and_refreshable(setup: tuple) -> None:
    enc = create_encoder("small_cnn", **KW)
    fp = weights_fingerprint(enc)
    with torch.no_grad():
        next(enc.parameters()).add_(1.0)
    assert weights_fingerprint(enc) == fp  # memoised: frozen weights assumed
    assert weights_fingerprint(enc, refresh=True) != fp


def test_corrupted_file_raises_naming_it(tmp_path: Path, setup: tuple) -> None:
    enc, _, keys, prep = setup
    cache = _cache(tmp_path, enc, prep)
    cache.store(keys[:2], torch.rand(2, 8, 8, 8))
    path = cache.path(keys[0])
    path.write_bytes(b"\x93NUMPY garbage")
    with pytest.raises(FeatureCacheError, match=f"{path}.*delete the cache directory"):
        cache.get_or_compute(keys[:2], lambda idx: torch.zeros(len(idx), 8, 8, 8))
    np.save(cache.path(keys[1]), np.zeros((8, 8, 8), dtype=np.float64))
    with pytest.raises(FeatureCacheError, match="dtype float64"):
        cache.lookup(keys[1:2])


def test_store_rejects_float16_overflow_and_bad_counts(tmp_path: Path, setup: tuple) -> None:
    enc, _, keys, prep = setup
    cache = _cache(tmp_path, enc, prep)
    with pytest.raises(FeatureCacheError, match="float16 range"):
        cache.store(keys[:1], torch.full((1, 2), 1e6))
    assert not cache.lookup(keys[:1])[0].item()  # nothing written
    with pytest.raises(Exception, match="2 keys for 1 feature rows"):
        cache.store(keys[:2], torch.zeros(1, 2))
    assert cache.meta["preprocessing"]["size"] == 32 and (cache.dir / "meta.json").is_file()
