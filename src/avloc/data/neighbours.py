"""Training samples paired with a semantically similar partner (nearest neighbours in a pretrained feature space).

Senocak et al. (ICCV 2023, "Sound Source Localization is All about Cross-Modal
Alignment"; earlier ICASSP 2022) take, for every training clip, clips that a
pretrained encoder finds similar and use them as extra positives.
:func:`mine_neighbours` finds the ``k`` nearest neighbours of every feature row
by cosine similarity (itself excluded); :func:`partners_by_key` turns
neighbours between image keys into candidate sample indices; and
:class:`NeighbourPairs` wraps a dataset so that each sample also carries the
image and audio of one partner drawn at random (``pair_image``,
``pair_audio``), as a loader reads it.
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from typing import Any

import torch
from torch.utils.data import Dataset

from avloc.errors import ConfigError, DataError

#: rows of the similarity matrix computed at once when mining (bounds the memory: chunk x N floats)
MINE_CHUNK = 4096


def mine_neighbours(features: torch.Tensor, k: int, chunk: int = MINE_CHUNK) -> torch.Tensor:
    """Features (N, C) -> the indices (N, k) of each row's ``k`` most cosine-similar other rows, most similar first."""
    n = features.shape[0]
    if features.dim() != 2:
        raise DataError(f"neighbour mining expects features (N, C), got {tuple(features.shape)}")
    if not 1 <= k < n:
        raise ConfigError(f"cannot mine {k} neighbours among {n} distinct images: need 1 <= k < {n}")
    f = torch.nn.functional.normalize(features.float(), dim=1)  # (N, C)
    out = []
    for lo in range(0, n, chunk):
        sim = f[lo : lo + chunk] @ f.t()  # (c, N)
        rows = torch.arange(lo, min(lo + chunk, n), device=f.device)
        sim[rows - lo, rows] = float("-inf")  # never one's own neighbour
        out.append(sim.topk(k, dim=1).indices)  # (c, k)
    return torch.cat(out)


def partners_by_key(keys: Sequence[Hashable], neighbours: torch.Tensor, key_order: Sequence[Hashable]) -> list[list[int]]:
    """Per sample, the indices of samples showing its image's neighbours.

    ``keys[i]``: sample i's image key; ``key_order[r]``: the key of row r of ``neighbours`` (R, k). A
    neighbour key stands for the first sample carrying it.
    """
    first: dict[Hashable, int] = {}
    for i, key in enumerate(keys):
        first.setdefault(key, i)
    row = {key: r for r, key in enumerate(key_order)}
    rep = [first[key] for key in key_order]  # (R,) sample standing for each key
    nb = neighbours.tolist()
    return [[rep[j] for j in nb[row[key]]] for key in keys]


class NeighbourPairs(Dataset):
    """``dataset[i]`` plus ``pair_image`` / ``pair_audio``: those of a random one of ``partners[i]``."""

    def __init__(self, dataset: Dataset, partners: list[list[int]]) -> None:
        if len(partners) != len(dataset):  # type: ignore[arg-type]
            raise DataError(f"{len(partners)} partner lists for {len(dataset)} samples")  # type: ignore[arg-type]
        if any(not p for p in partners):
            raise DataError("every sample needs at least one partner")
        self.dataset = dataset
        self.partners = partners

    def __len__(self) -> int:
        return len(self.partners)

    def __getitem__(self, i: int) -> dict[str, Any]:
        sample = dict(self.dataset[i])
        cand = self.partners[i]
        other = self.dataset[cand[int(torch.randint(len(cand), (1,)))]]
        sample["pair_image"] = other["image"]
        sample["pair_audio"] = other["audio"]
        return sample

    def feature_cache_keys(self) -> list[Any] | None:
        """The wrapped set's image keys (the pair is not part of the key: the engine caches ``image`` only)."""
        from avloc.data.datasets import dataset_image_keys

        return dataset_image_keys(self.dataset)
