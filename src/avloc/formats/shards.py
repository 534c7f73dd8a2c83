"""Shard sets: the index ``DIR/shards.json`` and the ``shard`` reference of each manifest entry (torch-free).

``avloc data extract --format shards`` stores a training set as a few large tar files (WebDataset layout:
members ``<key>.jpg``, ``<key>.npy``, ``<key>.json`` in key order, so any tar or WebDataset reader opens
them) instead of two small files per sample. Three things describe a set:

* the shards, ``DIR/shards/000000.tar`` ... (written and read by :mod:`avloc.io.shards`);
* ``DIR/shards.json`` (:class:`ShardSetIndex`, schema ``shards_schema.json``): how every sample was made
  -- the frame is the model input picture of one geometry (``image``: size, mode, resize; JPEG), the
  audio one window of int16 samples -- and the byte size of every shard, so a reader refuses a set it
  would read wrongly and finds a truncated shard before reading it;
* the manifest it names (``manifest.jsonl``, :mod:`avloc.formats.manifest`): one entry per sample with the
  usual fields (``id``, ``size``, ``boxes`` in the stored frame's pixels, ``labels``, ``time`` ...) and a
  ``shard`` reference::

      "shard": {"path": "shards/000000.tar", "key": "000000017",
                "jpg": [OFFSET, BYTES, CRC32], "npy": [OFFSET, BYTES, CRC32]}

  ``OFFSET`` is where the member's data starts in the shard, ``BYTES`` its length and ``CRC32`` the
  ``zlib.crc32`` of those bytes. :func:`shard_ref_problems` checks a reference against the index: the
  shard is listed, the member lies inside it, its size is bounded (a JPEG at most
  :func:`max_jpeg_bytes`; the audio member exactly the ``.npy`` of the window).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from avloc.errors import DataError

FORMAT = "avloc-shards"
SCHEMA_VERSION = "1.0"
#: the index's file name inside the set's folder
INDEX_NAME = "shards.json"
#: the member extensions of one sample, in the order they are written (WebDataset's names)
IMAGE_EXT, AUDIO_EXT, META_EXT = "jpg", "npy", "json"
#: a JPEG of an S x S RGB picture is below its raw size (3 S^2 bytes) plus its markers and tables; this
#: allowance covers the quantisation and Huffman tables and the JFIF header (our writer adds no EXIF)
JPEG_MARKER_BYTES = 65_536
#: the largest CRC-32 value
CRC_MAX = 2**32 - 1


@dataclass(frozen=True)
class ShardFile:
    """One shard: its path relative to the set's folder, its sample count and byte size."""

    path: str
    samples: int
    bytes: int


@dataclass(frozen=True)
class ShardSetIndex:
    """The whole of ``shards.json`` (module doc)."""

    manifest: str
    image_size: int
    image_mode: str
    image_resize: int
    jpeg_quality: int
    sample_rate: int
    window_samples: int
    shards: tuple[ShardFile, ...]

    @property
    def samples(self) -> int:
        return sum(s.samples for s in self.shards)

    def to_dict(self) -> dict[str, Any]:
        return {
            "schema_version": SCHEMA_VERSION, "format": FORMAT, "manifest": self.manifest,
            "image": {"size": self.image_size, "mode": self.image_mode, "resize": self.image_resize, "codec": "jpeg",
                      "quality": self.jpeg_quality},
            "audio": {"sample_rate": self.sample_rate, "samples": self.window_samples, "dtype": "int16", "pad": "zero"},
            "samples": self.samples,
            "shards": [{"path": s.path, "samples": s.samples, "bytes": s.bytes} for s in self.shards],
        }

    @classmethod
    def from_dict(cls, doc: Any, where: str = INDEX_NAME) -> ShardSetIndex:
        """Check ``doc`` against ``shards_schema.json`` and the rules it cannot say; raises :class:`DataError`."""
        from avloc.formats.jsonschema import load_schema, validate

        errs = validate(doc, load_schema("avloc.formats", "shards_schema.json"))
        if not errs:
            paths = [s["path"] for s in doc["shards"]]
            if len(set(paths)) != len(paths):
                errs.append("$.shards: a shard is listed twice")
            if sum(s["samples"] for s in doc["shards"]) != doc["samples"]:
                errs.append(f"$.samples: {doc['samples']} is not the sum of the shards' samples")
        if errs:
            more = f" (and {len(errs) - 1} more problem(s))" if len(errs) > 1 else ""
            raise DataError(f"{where}: not a valid shard set index: {errs[0]}{more}")
        im, au = doc["image"], doc["audio"]
        return cls(manifest=doc["manifest"], image_size=im["size"], image_mode=im["mode"], image_resize=im["resize"],
                   jpeg_quality=im["quality"], sample_rate=au["sample_rate"], window_samples=au["samples"],
                   shards=tuple(ShardFile(s["path"], s["samples"], s["bytes"]) for s in doc["shards"]))

    def max_jpeg_bytes(self) -> int:
        """The largest JPEG member a sample may have (module doc)."""
        return 3 * self.image_size**2 + JPEG_MARKER_BYTES


def read_shard_index(folder: str | Path) -> ShardSetIndex:
    """``folder/shards.json``, checked (:meth:`ShardSetIndex.from_dict`); :class:`DataError` if absent or invalid."""
    from avloc.formats.jsonschema import load_json_strict

    p = Path(folder) / INDEX_NAME
    if not p.is_file():
        raise DataError(f"{p}: no shard set index here (written by `avloc data extract --format shards`)")
    try:
        doc = load_json_strict(p)
    except (ValueError, UnicodeDecodeError, RecursionError) as e:  # json.JSONDecodeError is a ValueError
        raise DataError(f"{p}: not valid JSON ({str(e).splitlines()[0][:200]})") from None
    return ShardSetIndex.from_dict(doc, where=str(p))


def write_shard_index(folder: str | Path, index: ShardSetIndex) -> Path:
    """Write ``folder/shards.json`` atomically (never a record the reader would refuse)."""
    from avloc.formats.atomic import write_text_atomic

    ShardSetIndex.from_dict(index.to_dict())
    p = Path(folder) / INDEX_NAME
    write_text_atomic(p, json.dumps(index.to_dict(), indent=2) + "\n")
    return p


def is_shard_set(manifest: str | Path) -> bool:
    """Whether ``manifest`` is the manifest of a shard set (an index next to it names it)."""
    p = Path(manifest)
    idx = p.parent / INDEX_NAME
    if not idx.is_file():
        return False
    try:
        doc = json.loads(idx.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError, OSError):
        return True  # an index is there: the shard reader reports what is wrong with it
    return not isinstance(doc, dict) or doc.get("manifest") == p.name


def _member_problems(key: str, m: Any, shard: ShardFile, max_bytes: int, exact: int | None) -> list[str]:
    if not (isinstance(m, list) and len(m) == 3 and all(isinstance(v, int) and not isinstance(v, bool) for v in m)):
        return [f"shard.{key} must be [offset, bytes, crc32] (integers), got {json.dumps(m)[:80]}"]
    off, n, crc = m
    out = []
    if exact is not None and n != exact:
        out.append(f"shard.{key}: {n} bytes, the window's .npy is {exact}")
    elif not 0 < n <= max_bytes:
        out.append(f"shard.{key}: {n} bytes, outside (0, {max_bytes}]")
    if not 0 <= off <= shard.bytes - n:
        out.append(f"shard.{key}: bytes {off}..{off + n} lie outside {shard.path} ({shard.bytes} bytes)")
    if not 0 <= crc <= CRC_MAX:
        out.append(f"shard.{key}: crc32 {crc} out of range")
    return out


def shard_ref_problems(ref: Any, index: ShardSetIndex, shards: dict[str, ShardFile], npy_bytes: int) -> list[str]:
    """Every problem of one entry's ``shard`` reference (empty = valid); ``shards``: the index's, by path;
    ``npy_bytes``: the exact size of a window's ``.npy`` member."""
    if not isinstance(ref, dict) or set(ref) != {"path", "key", IMAGE_EXT, AUDIO_EXT}:
        return [f"'shard' must be an object with path, key, {IMAGE_EXT} and {AUDIO_EXT}, got {json.dumps(ref)[:120]}"]
    shard = shards.get(ref["path"]) if isinstance(ref["path"], str) else None
    if shard is None:
        return [f"shard.path {json.dumps(ref['path'])[:80]} is not a shard of the index"]
    if not (isinstance(ref["key"], str) and ref["key"].isalnum()):
        return [f"shard.key must be a non-empty alphanumeric string, got {json.dumps(ref['key'])[:40]}"]
    return [*_member_problems(IMAGE_EXT, ref[IMAGE_EXT], shard, index.max_jpeg_bytes(), None),
            *_member_problems(AUDIO_EXT, ref[AUDIO_EXT], shard, npy_bytes, npy_bytes)]
