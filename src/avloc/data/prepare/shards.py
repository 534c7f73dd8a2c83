"""``avloc data extract --format shards``: a manifest -> a shard set (:mod:`avloc.formats.shards`).

Each sample is read once through :class:`~avloc.data.datasets.ManifestDataset` with the model's image
and audio configs -- so video entries, still images, ``audio_time`` and the zero-padded window behave
exactly as when training on the manifest itself -- and stored as what the model will be fed: the
``size x size`` input picture (JPEG, quality :data:`~avloc.data.prepare.extract.JPEG_QUALITY`) and the
audio window (int16), with its entry (boxes in the stored picture's pixels). Loading it back
(:class:`avloc.data.shards.ShardDataset`) is a JPEG decode and a copy per sample.

Samples go to the shards in manifest order whatever ``workers`` is (the same manifest gives the same
bytes). Entries that cannot be read are reported in ``manifest.jsonl.report.txt``, never skipped
silently. ``shards.json`` is written last: a set without it is incomplete.
"""

from __future__ import annotations

import io
import logging
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

from avloc.config import ConfigValueError, check_range
from avloc.data.prepare.extract import JPEG_QUALITY, ExtractResult, decode_pool
from avloc.errors import DataError, MediaError, describe_error
from avloc.formats.atomic import check_writable, write_text_atomic
from avloc.formats.manifest import Entry, manifest_line, read_manifest, write_manifest
from avloc.formats.shards import AUDIO_EXT, IMAGE_EXT, INDEX_NAME, META_EXT, ShardSetIndex, write_shard_index

log = logging.getLogger(__name__)
#: entry fields that describe the source media or its pixels; the stored sample replaces them
SOURCE_KEYS = ("video", "image", "audio", "size", "frames", "boxes", "silent_boxes", "box_labels", "box_annotator")
#: decimals kept of box coordinates in the stored picture's pixels (as the files format)
BOX_DECIMALS = 3


@dataclass
class ShardConfig:
    """What a shard set stores besides ``--size`` and ``--sample-rate`` (docs/data.md)."""

    #: the pictures' model geometry (avloc.frontends.image.ImageConfig.mode): EZ-VSL and SLAVC squash to 224
    mode: Literal["crop", "squash", "pad"] = "squash"
    #: ``crop`` only: the short side before the centre crop (ImageConfig.resize; LVS: 224); None: ``--size``
    resize: int | None = None
    #: the stored audio window (s): LVS, EZ-VSL, SLAVC, FNAC and SSL-Alignment train on 3 s at 16 kHz
    window_seconds: float = 3.0
    #: samples per shard: ~0.45 GB at 224 px and 3 s at 16 kHz (~111 kB a sample, docs/BENCHMARKS.md), inside
    #: WebDataset's advice of 100 MB - 1 GB shards (large sequential files, few of them)
    samples_per_shard: int = 4096
    #: JPEG quality of the pictures: the files format's
    jpeg_quality: int = JPEG_QUALITY

    def __post_init__(self) -> None:
        if self.mode not in ("crop", "squash", "pad"):
            raise ConfigValueError("mode", f"must be crop, squash or pad, got {self.mode!r}")
        if self.resize is not None:
            check_range("resize", self.resize, 1)
        check_range("window_seconds", self.window_seconds, 0, low_open=True)
        check_range("samples_per_shard", self.samples_per_shard, 1)
        check_range("jpeg_quality", self.jpeg_quality, 1, 100)


_SOURCE: Any = None  # the process's (ManifestDataset, ShardConfig), set by _open_source


def _open_source(manifest: str, size: int, rate: int, cfg: ShardConfig) -> None:
    """Pool initializer (and the serial path): the manifest read with the model's configs."""
    global _SOURCE
    from avloc.data.datasets import ManifestDataset
    from avloc.frontends.audio import AudioFrontendConfig
    from avloc.frontends.image import ImageConfig

    _SOURCE = (ManifestDataset(manifest, ImageConfig(size=size, resize=cfg.resize or size, mode=cfg.mode),
                               AudioFrontendConfig(sample_rate=rate, window_seconds=cfg.window_seconds)), cfg)


def _stored_entry(e: Entry, sample: dict[str, Any], side: int) -> Entry:
    """The entry of a stored sample: the source's fields, boxes in the stored picture's pixels."""
    new = {k: v for k, v in e.items() if k not in SOURCE_KEYS}
    new["size"] = [side, side]
    n = len(e.get("boxes") or [])
    for key, labels in (("boxes", ("box_labels", "box_annotator")), ("silent_boxes", ())):
        if key not in e:
            continue
        px = np.round(sample[key].numpy().astype(np.float64) * side, BOX_DECIMALS)  # (K, 4) stored pixels
        keep = (px[:, 2] > px[:, 0]) & (px[:, 3] > px[:, 1])  # a box the crop cut away is dropped
        new[key] = px[keep].tolist()
        for lab in labels:
            if lab in e:
                new[lab] = [v for v, k in zip(e[lab], keep, strict=True) if k]
    if "onscreen" not in e and len(new.get("boxes", [])) != n:
        new["onscreen"] = n > 0  # what the source entry said by having boxes
    return new


def _encode(i: int) -> tuple[str, Entry | None, bytes, bytes, str]:
    """Read and encode sample ``i`` (in a worker): (id, entry or None, jpg, npy, problem)."""
    import torch
    from PIL import Image

    from avloc.io.shards import npy_header, to_pcm16

    ds, cfg = _SOURCE
    e = ds.entries[i]
    try:
        s = ds[i]
    except (MediaError, DataError, OSError) as err:
        return str(e["id"]), None, b"", b"", describe_error(err) or str(err)
    pic = s["image"].mul(255.0).round_().clamp_(0, 255).to(torch.uint8).permute(1, 2, 0).contiguous().numpy()
    buf = io.BytesIO()
    Image.fromarray(pic).save(buf, format="JPEG", quality=cfg.jpeg_quality)  # (S, S, 3) RGB
    pcm = to_pcm16(s["audio"].numpy())
    return str(e["id"]), _stored_entry(e, s, pic.shape[0]), buf.getvalue(), npy_header(pcm.size) + pcm.tobytes(), ""


def _encoded(manifest: Path, n: int, size: int, rate: int, workers: int, cfg: ShardConfig) -> Iterator[Any]:
    """:func:`_encode` of every entry, in manifest order."""
    args = (str(manifest), size, rate, cfg)
    if workers > 1:
        with decode_pool(workers, initializer=_open_source, initargs=args) as pool:
            yield from pool.map(_encode, range(n), chunksize=8)
        return
    _open_source(*args)
    yield from map(_encode, range(n))


def extract_shards(manifest: str | Path, out_dir: str | Path, *, size: int, sample_rate: int, workers: int,
                   force: bool, cfg: ShardConfig) -> ExtractResult:
    """Write ``out_dir/shards/*.tar``, ``manifest.jsonl``, its report and ``shards.json`` (module doc)."""
    from avloc.io.shards import ShardWriter

    out = Path(out_dir)
    out_man, report, index_path = out / "manifest.jsonl", out / "manifest.jsonl.report.txt", out / INDEX_NAME
    for p in (out_man, report, index_path):
        check_writable(p, force)
    n = len(read_manifest(manifest))
    good: list[Entry] = []
    problems: dict[str, str] = {}
    with ShardWriter(out, cfg.samples_per_shard) as writer:
        for sid, entry, jpg, npy, problem in _encoded(Path(manifest), n, size, sample_rate, workers, cfg):
            if entry is None:
                problems[sid] = problem
                continue
            entry["shard"] = writer.add({IMAGE_EXT: jpg, AUDIO_EXT: npy, META_EXT: manifest_line(entry).encode()})
            good.append(entry)
        files = writer.close()
    if not good:
        raise DataError(f"no entry of {manifest} could be extracted; first problem: {next(iter(problems.values()), '-')}")
    write_manifest(out_man, good)
    write_text_atomic(report, f"{len(problems)} bad entries\n" + "".join(f"{k}: unreadable: {v}\n" for k, v in problems.items()))
    index = ShardSetIndex(manifest=out_man.name, image_size=size, image_mode=cfg.mode, image_resize=cfg.resize or size,
                          jpeg_quality=cfg.jpeg_quality, sample_rate=sample_rate,
                          window_samples=round(cfg.window_seconds * sample_rate), shards=files)
    write_shard_index(out, index)
    _remove_stale(out, {f.path for f in files})
    log.info("extracted %d entries (%d unreadable) into %d shards in %s", len(good), len(problems), len(files), out)
    return ExtractResult(out_man, report, len(good), problems)


def _remove_stale(out: Path, keep: set[str]) -> None:
    """Remove numbered shards of an earlier extraction into ``out`` that the new index does not list."""
    for p in sorted((out / "shards").glob("*.tar")):
        rel = f"shards/{p.name}"
        if re.fullmatch(r"[0-9]+\.tar", p.name) and rel not in keep:
            p.unlink()
