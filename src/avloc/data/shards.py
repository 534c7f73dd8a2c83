"""A shard set as a dataset: :class:`ShardDataset` (registered as ``shards``; ``--data shards:DIR``).

``avloc data extract --format shards`` stores each sample as the model input picture (JPEG, ``size x
size`` in the geometry given at extraction) and one int16 audio window, in tar shards
(:mod:`avloc.formats.shards`, :mod:`avloc.io.shards`). Reading a sample is therefore a JPEG decode and
a copy, nothing else: no video decoding, no resizing, no resampling -- the floor measured in
docs/BENCHMARKS.md ("Data loader").

Samples follow the contract of :mod:`avloc.data.datasets`. The image and audio configs must be those
the set was made for (same picture size and geometry, same rate, a window no longer than the stored
one; a shorter window is the centre of the stored one, as :func:`avloc.io.audio.window_at` would cut
it); anything else is a :class:`~avloc.errors.ConfigError` saying how to re-extract.

``compact=True`` gives ``image`` as uint8 (3, S, S) (a view of the decoded picture's HWC memory) and
``audio`` as int16 (N,): a quarter and a half of the bytes a DataLoader worker sends to the training
process. :func:`avloc.data.collate.expand_compact` turns a batch of them into the float contract,
``image / 255`` and ``audio / 32768``, exactly the values of ``compact=False``, on whichever device the
batch is (the training loop and ``predict`` do it on theirs).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from avloc.data.datasets import annotation_fields, class_labels
from avloc.errors import ConfigError, DataError
from avloc.formats.manifest import read_manifest
from avloc.formats.shards import AUDIO_EXT, IMAGE_EXT, INDEX_NAME, ShardSetIndex, read_shard_index, shard_ref_problems
from avloc.frontends.audio import AudioFrontendConfig
from avloc.frontends.image import ImageConfig, preprocess_image
from avloc.io.shards import AUDIO_SCALE, ShardReader, npy_member_bytes
from avloc.registry import DATASETS

#: at most this many problems of a manifest's shard references are listed in the error
SHOWN_PROBLEMS = 5


def set_folder(path: str | Path) -> Path:
    """The folder of a shard set given as the folder, its ``shards.json`` or its manifest."""
    p = Path(path)
    return p if p.is_dir() else p.parent


def check_configs(index: ShardSetIndex, image_cfg: ImageConfig, audio_cfg: AudioFrontendConfig, where: Path) -> int:
    """Refuse configs the set was not made for (module doc); returns the window's length in samples."""
    fix = f"re-extract with `avloc data extract --format shards` for this model ({where})"
    made = (index.image_size, index.image_mode, index.image_resize if index.image_mode == "crop" else None)
    want = (image_cfg.size, image_cfg.mode, image_cfg.resize if image_cfg.mode == "crop" else None)
    if made != want:
        raise ConfigError(f"the shard set holds {index.image_mode} {index.image_size} px pictures"
                          f"{f' (resize {index.image_resize})' if made[2] else ''}; the model wants {image_cfg.mode} "
                          f"{image_cfg.size} px{f' (resize {image_cfg.resize})' if want[2] else ''}: {fix}")
    if image_cfg.frames != 1:
        raise ConfigError(f"a shard set holds one picture per sample; image_cfg.frames={image_cfg.frames} needs "
                          f"video entries (extract with --format files or use the clips' manifest): {where}")
    if audio_cfg.sample_rate != index.sample_rate:
        raise ConfigError(f"the shard set's audio is at {index.sample_rate} Hz; the model wants "
                          f"{audio_cfg.sample_rate} Hz: {fix}")
    n = round(audio_cfg.window_seconds * audio_cfg.sample_rate)
    if n > index.window_samples:
        raise ConfigError(f"the shard set stores {index.window_samples / index.sample_rate:g} s windows; the model "
                          f"wants {audio_cfg.window_seconds:g} s: {fix}")
    return n


def reference_table(entries: list[dict[str, Any]], index: ShardSetIndex, where: Path) -> tuple[np.ndarray, list[str]]:
    """(N, 7) int64 rows ``shard, jpg offset, bytes, crc, npy offset, bytes, crc`` and the member keys, after
    checking every entry's ``shard`` reference (:func:`avloc.formats.shards.shard_ref_problems`)."""
    by_path = {s.path: s for s in index.shards}
    number = {s.path: k for k, s in enumerate(index.shards)}
    npy = npy_member_bytes(index.window_samples)
    problems: list[str] = []
    rows: list[list[int]] = []
    for k, e in enumerate(entries):
        found = shard_ref_problems(e.get("shard"), index, by_path, npy)
        if found:
            problems += [f"{where}:{k + 1} (id {e.get('id')!r}): {p}" for p in found]
            continue
        ref = e["shard"]
        rows.append([number[ref["path"]], *ref[IMAGE_EXT], *ref[AUDIO_EXT]])
    if problems:
        more = f" (+{len(problems) - SHOWN_PROBLEMS} more)" if len(problems) > SHOWN_PROBLEMS else ""
        raise DataError("invalid shard references: " + "; ".join(problems[:SHOWN_PROBLEMS]) + more)
    return np.asarray(rows, dtype=np.int64).reshape(-1, 7), [e["shard"]["key"] for e in entries]


class ShardDataset(Dataset):  # type: ignore[type-arg]
    """Samples of a shard set (module doc); ``path``: its folder, ``shards.json`` or manifest."""

    def __init__(
        self,
        path: str | Path,
        image_cfg: ImageConfig | None = None,
        audio_cfg: AudioFrontendConfig | None = None,
        audio_pad: str = "zero",
        count: int | None = None,
        classes: list[str] | str | None = None,
        compact: bool = False,
        verify: bool = False,
    ) -> None:
        self.folder = set_folder(path)
        self.index = read_shard_index(self.folder)
        self.image_cfg = image_cfg or ImageConfig()
        self.audio_cfg = audio_cfg or AudioFrontendConfig()
        if audio_pad != "zero":
            raise ConfigError(f"a shard set's windows were cut with zero padding; audio_pad={audio_pad!r} cannot be "
                              f"applied to them ({self.folder / INDEX_NAME})")
        n = check_configs(self.index, self.image_cfg, self.audio_cfg, self.folder)
        self.path = self.folder / self.index.manifest
        self.entries = read_manifest(self.path)
        if len(self.entries) != self.index.samples:
            raise DataError(f"{self.path}: {len(self.entries)} entries, the shard index says {self.index.samples}")
        if classes is not None:
            self.classes = class_labels(self.entries, classes, self.path)
        if count is not None:
            if count < 1:
                raise ConfigError(f"{self.path}: count must be >= 1, got {count}")
            self.entries = self.entries[:count]
        refs, keys = reference_table(self.entries, self.index, self.path)
        self.reader = ShardReader(self.folder, self.index, refs, keys, verify=verify)
        start = self.index.window_samples // 2 - n // 2  # the same centre sample as the stored window
        self.cut = slice(start, start + n)
        self.compact = compact
        self.hw = (self.index.image_size, self.index.image_size)

    def __len__(self) -> int:
        return len(self.entries)

    def feature_cache_keys(self) -> list[str]:
        """Stable image keys (the training loop's frozen-feature cache): the entry ids."""
        return [str(e["id"]) for e in self.entries]

    def __getitem__(self, i: int) -> dict[str, Any]:
        e = self.entries[i]
        picture, window = self.reader.sample(i)
        img = torch.from_numpy(picture).permute(2, 0, 1)  # (3, S, S) uint8, HWC memory
        pcm = torch.from_numpy(window[self.cut])  # (N,) int16
        if not self.compact:
            img = preprocess_image(img, self.image_cfg)  # (3, S, S) float in [0, 1]: already the model's geometry
            pcm = pcm.float().mul_(1.0 / AUDIO_SCALE)
        return {"id": e["id"], "image": img, "audio": pcm, **annotation_fields(e, self.hw, self.image_cfg)}


@DATASETS.register("shards")
def shards_dataset(
    path: str, image_cfg: ImageConfig | None = None, audio_cfg: AudioFrontendConfig | None = None, **kwargs: Any
) -> ShardDataset:
    """A :class:`ShardDataset` (``--data shards:DIR``)."""
    return ShardDataset(path, image_cfg, audio_cfg, **kwargs)
