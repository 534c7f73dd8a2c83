"""Property-based tests of every input boundary (issue 30): random and mutated configs, manifests, annotations
(each format), prediction archives and checkpoints to import give a clean ``AvlocError`` or a correct result,
never another exception.

Each property runs twice: a few examples by default (``make test``), many more under ``-m slow``. "Correct"
is checked, not assumed: a config that builds round-trips through its dict, a manifest that loads has no entry
problem, annotation records hold finite boxes, an archive's arrays are numeric with their header's shape, an
imported checkpoint loads back.
"""

from __future__ import annotations

import functools
import io
import json
import math
import tempfile
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from avloc.errors import AvlocError

FAST, SLOW = 12, 300
_HEALTH = [HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much]


def two_tests(strategy: st.SearchStrategy[Any], fast: int = FAST, slow: int = SLOW) -> Callable[..., Any]:
    """``body(example)`` as a fast test (``fast`` examples) and a ``@pytest.mark.slow`` one (``slow`` examples)."""

    def deco(body: Callable[[Any], None]) -> tuple[Any, Any]:
        def make(n: int) -> Any:
            @settings(max_examples=n, deadline=None, suppress_health_check=_HEALTH, derandomize=n == fast)
            @given(strategy)
            def test(example: Any) -> None:
                body(example)

            return test

        return make(fast), pytest.mark.slow(make(slow))

    return deco


# ----------------------------------------------------------------------------- plain-data mutations

EXTREMES = st.sampled_from([0, -1, 1, 2, 0.5, -0.5, 1e308, -1e308, 1e-320, 2**31, 2**63, -(2**63) - 1, 10**30,
                            10**400, True, False, None, "", "x", "-1", "1e999", [], {}, [0, 0, 1, 1], {"a": 1}])
LEAVES = st.one_of(EXTREMES, st.integers(), st.floats(), st.text(max_size=12))
VALUES = st.recursive(LEAVES, lambda c: st.lists(c, max_size=4) | st.dictionaries(st.text(max_size=6), c, max_size=4),
                      max_leaves=12)


@st.composite
def mutated(draw: st.DrawFn, base: Any, max_changes: int = 3) -> Any:
    """``base`` (plain data) with 1-``max_changes`` changes: a value replaced, a key dropped or added, an item removed."""
    out = json.loads(json.dumps(base))
    for _ in range(draw(st.integers(1, max_changes))):
        out = _mutate_once(draw, out)
    return out


def _mutate_once(draw: st.DrawFn, value: Any) -> Any:
    if isinstance(value, dict) and value and draw(st.booleans()):
        key = draw(st.sampled_from(sorted(value, key=str)))
        op = draw(st.sampled_from(["descend", "descend", "drop", "add"]))
        out = dict(value)
        if op == "descend":
            out[key] = _mutate_once(draw, value[key])
        elif op == "drop":
            del out[key]
        else:
            out[draw(st.text(min_size=1, max_size=6))] = draw(VALUES)
        return out
    if isinstance(value, list) and value and draw(st.booleans()):
        i = draw(st.integers(0, len(value) - 1))
        out = list(value)
        if draw(st.booleans()):
            out[i] = _mutate_once(draw, value[i])
        else:
            del out[i]
        return out
    return draw(st.one_of(VALUES, _similar(value)))


def _similar(value: Any) -> st.SearchStrategy[Any]:
    """A value of the same kind as ``value`` (so mutated documents are often still valid, and get checked)."""
    if isinstance(value, bool):
        return st.booleans()
    if isinstance(value, int):
        return st.integers(-2, 400)
    if isinstance(value, float):
        return st.floats(-0.5, 300.0)
    if isinstance(value, str):
        return st.text(min_size=1, max_size=8)
    return st.just(value)


@st.composite
def mutated_bytes(draw: st.DrawFn, base: bytes) -> bytes:
    """``base`` with a few bytes flipped, inserted or cut, or truncated."""
    data = bytearray(base)
    for _ in range(draw(st.integers(1, 4))):
        op = draw(st.sampled_from(["flip", "insert", "cut", "truncate"]))
        i = draw(st.integers(0, max(0, len(data) - 1)))
        if op == "flip" and data:
            data[i] ^= draw(st.integers(1, 255))
        elif op == "insert":
            data[i:i] = draw(st.binary(min_size=1, max_size=8))
        elif op == "cut":
            del data[i : i + draw(st.integers(1, 16))]
        else:
            del data[i:]
    return bytes(data)


def _write(name: str, content: str | bytes) -> Path:
    d = Path(tempfile.mkdtemp(prefix="avloc-fuzz-"))
    p = d / name
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_bytes(content if isinstance(content, bytes) else content.encode("utf-8", "surrogatepass"))
    return p


# ----------------------------------------------------------------------------- configs


def _config_classes() -> list[type]:
    from avloc.applications.pseudo_boxes import PseudoBoxConfig
    from avloc.data.digitscenes.config import VARIANTS
    from avloc.frontends.audio import AudioFrontendConfig
    from avloc.frontends.image import ImageConfig
    from avloc.methods import list_methods
    from avloc.registry import METHODS

    return [*(METHODS.get(n).config_class for n in list_methods()), ImageConfig, AudioFrontendConfig,
            PseudoBoxConfig, *VARIANTS.values()]


CONFIG_CLASSES = _config_classes()


@st.composite
def config_cases(draw: st.DrawFn) -> tuple[type, Any]:
    from avloc.config import config_to_dict

    cls = draw(st.sampled_from(CONFIG_CLASSES))
    return cls, draw(st.one_of(mutated(config_to_dict(cls())), VALUES))


@two_tests(config_cases())
def _config_property(case: tuple[type, Any]) -> None:
    from avloc.config import config_from_dict, config_to_dict

    cls, data = case
    try:
        cfg = config_from_dict(cls, data)
    except AvlocError:
        return
    assert config_from_dict(cls, config_to_dict(cfg)) == cfg  # a config that builds is a plain, valid one


test_fuzz_configs, test_fuzz_configs_slow = _config_property


@st.composite
def config_files(draw: st.DrawFn) -> bytes:
    from avloc.config import read_config_file

    recipe = json.dumps(read_config_file("dnm-digitscenes")).encode()
    return draw(st.one_of(mutated_bytes(recipe), st.binary(max_size=64),
                          st.builds(lambda v: json.dumps(v).encode(), mutated(json.loads(recipe)))))


@two_tests(config_files())
def _config_file_property(raw: bytes) -> None:
    from avloc.config import config_from_dict, read_config_file
    from avloc.methods.dnm import DNMConfig

    p = _write("c.json", raw)
    try:
        data = read_config_file(p, sections=("method_name", "method", "train", "data"))
        config_from_dict(DNMConfig, data.get("method", {}), where="method")
    except AvlocError:
        return


test_fuzz_config_files, test_fuzz_config_files_slow = _config_file_property


# ----------------------------------------------------------------------------- manifests

MANIFEST_ENTRY = {"id": "a", "video": "a.mp4", "audio": "a.wav", "time": 1.5, "duration": 4.0, "fps": 25.0,
                  "size": [64, 48], "boxes": [[1, 2, 30, 40]], "silent_boxes": [[30, 2, 60, 20]], "labels": [3],
                  "box_labels": [3], "onscreen": True, "split": "test",
                  "frames": [{"time": 0.5, "boxes": [[1, 1, 8, 8]], "silent_boxes": []}]}


@st.composite
def manifests(draw: st.DrawFn) -> bytes:
    lines = [json.dumps(draw(mutated(MANIFEST_ENTRY))).encode() for _ in range(draw(st.integers(1, 3)))]
    text = b"\n".join(lines) + b"\n"
    return draw(st.one_of(st.just(text), st.just(text), mutated_bytes(text)))


@two_tests(manifests())
def _manifest_property(raw: bytes) -> None:
    from avloc.formats.manifest import entry_problems, read_manifest
    from avloc.metrics.groundtruth import manifest_targets

    p = _write("m.jsonl", raw)
    try:
        entries = read_manifest(p)
    except AvlocError:
        return
    assert all(entry_problems(e) == [] for e in entries)
    try:
        targets = manifest_targets(p)
    except AvlocError:  # e.g. boxes without a 'size' to normalise them: fine in a training manifest, not for eval
        return
    for t in targets:
        _assert_finite_boxes(t)


test_fuzz_manifests, test_fuzz_manifests_slow = _manifest_property


# ----------------------------------------------------------------------------- annotations (each format)

ANNOTATIONS: dict[str, tuple[str, Any]] = {
    "vggss": ("g.json", [{"file": "a_000010", "class": "dog", "bbox": [[0.1, 0.2, 0.5, 0.6], [0.3, 0.3, 0.9, 0.8]]},
                         {"file": "b_000020", "class": "cat", "bbox": [[0.0, 0.0, 1.0, 1.0]]}]),
    "music": ("g.json", [{"id": "a", "boxes": [[4, 4, 40, 30]], "size": [64, 48], "box_labels": [2],
                          "sounding": [True]}]),
    "dsol": ("g.json", {"solo/1.jpg": {"bbox": [{"box": [1, 2, 3, 4], "normbox": [0.1, 0.2, 0.3, 0.4], "category_id": 2}],
                                       "wdith": 224, "height": 224}}),
    "qian": ("g.json", {"annotations": [{"image_id": 7, "category_id": 1, "bbox": [0.1, 0.1, 0.5, 0.5]},
                                        {"image_id": 7, "category_id": 3, "bbox": [0.6, 0.2, 0.3, 0.3]}]}),
    "avsol": ("g.json", {"videos": [{"id": "v", "fps": 10, "size": [64, 48], "frames": [
        {"index": 3, "objects": [{"box": [1, 1, 20, 20], "tag": "sounding"}, {"box": [30, 1, 60, 20], "tag": "silent"}]},
        {"time": 1.5, "objects": [{"tag": "out-of-view"}]}]}]}),
}
SLAVC = b"video,audio,label\nv1,a1,non-sounding\nv2,a2,sounding\n"
FLICKR = (b"<annotation><object><bbox><name>x</name><xmin>10</xmin><ymin>20</ymin><xmax>100</xmax><ymax>120</ymax>"
          b"</bbox></object><object><bbox><name>y</name><xmin>0</xmin><ymin>0</ymin><xmax>256</xmax><ymax>256</ymax>"
          b"</bbox></object></annotation>")


@st.composite
def annotation_files(draw: st.DrawFn) -> tuple[str, bytes]:
    fmt = draw(st.sampled_from([*ANNOTATIONS, "slavc", "flickr"]))
    if fmt == "slavc":
        return "s.csv", draw(mutated_bytes(SLAVC))
    if fmt == "flickr":
        return "flickr", draw(mutated_bytes(FLICKR))
    name, doc = ANNOTATIONS[fmt]
    text = json.dumps(draw(mutated(doc)), allow_nan=True).encode()
    return name, draw(st.one_of(st.just(text), st.just(text), mutated_bytes(text)))


def _assert_finite_boxes(record: dict[str, Any]) -> None:
    for key in ("boxes", "silent_boxes"):
        for b in record.get(key, []):
            assert len(b) == 4 and all(isinstance(v, float | int) and math.isfinite(v) for v in b), record


@two_tests(annotation_files())
def _annotation_property(case: tuple[str, bytes]) -> None:
    from avloc.metrics.groundtruth import load_gt

    name, raw = case
    if name == "flickr":
        p = _write("x/1.xml", raw).parent
    else:
        p = _write(name, raw)
    try:
        records = load_gt(p)
    except AvlocError:
        return
    for r in records:
        assert isinstance(r["id"], str) and r["id"]
        _assert_finite_boxes(r)


test_fuzz_annotations, test_fuzz_annotations_slow = _annotation_property


# ----------------------------------------------------------------------------- prediction archives


def _npz(arrays: dict[str, np.ndarray], compress: bool) -> bytes:
    buf = io.BytesIO()
    (np.savez_compressed if compress else np.savez)(buf, **arrays)  # type: ignore[operator]
    return buf.getvalue()


NPZ_STORED = _npz({"a": np.arange(16, dtype=np.float32).reshape(4, 4), "b": np.ones((3, 2, 2))}, False)
NPZ_DEFLATED = _npz({"a": np.arange(16, dtype=np.float32).reshape(4, 4), "b": np.ones((3, 2, 2))}, True)
DTYPES = ["<f4", ">f8", "|b1", "<i8", "|u1", "<c8", "|O", "<U3", "|S2", "|V4", "<M8[s]", "[('x', '<f4')]", "<f2"]


@st.composite
def npy_members(draw: st.DrawFn) -> bytes:
    """A ``.npy`` member with a random (possibly lying) header and random data."""
    descr = draw(st.sampled_from(DTYPES))
    shape = tuple(draw(st.lists(st.integers(-2, 6), max_size=3)))
    header = f"{{'descr': {descr if descr.startswith('[') else repr(descr)}, 'fortran_order': {draw(st.booleans())}, " \
             f"'shape': {shape!r}, }}"
    text = header.encode("latin1")
    text += b" " * ((-(11 + len(text))) % 64) + b"\n"
    head = b"\x93NUMPY\x01\x00" + len(text).to_bytes(2, "little") + text
    return head + draw(st.binary(max_size=64))


@st.composite
def archives(draw: st.DrawFn) -> bytes:
    kind = draw(st.sampled_from(["mutated", "members"]))
    if kind == "mutated":
        return draw(mutated_bytes(draw(st.sampled_from([NPZ_STORED, NPZ_DEFLATED]))))
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", draw(st.sampled_from([zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED]))) as z:
        for i in range(draw(st.integers(1, 3))):
            z.writestr(f"m{i}.npy", draw(npy_members()))
    return buf.getvalue()


@two_tests(archives())
def _archive_property(raw: bytes) -> None:
    from avloc.io.arrays import NUMERIC_KINDS, NpzArchive

    p = _write("p.npz", raw)
    try:
        with NpzArchive(p) as archive:
            arrays = {k: archive[k] for k in archive}
            shapes = {k: archive.shape(k) for k in archive}
    except AvlocError:
        return
    for k, a in arrays.items():
        assert a.dtype.kind in NUMERIC_KINDS and a.shape == shapes[k]


test_fuzz_prediction_archives, test_fuzz_prediction_archives_slow = _archive_property


# ----------------------------------------------------------------------------- checkpoints to import


@functools.cache
def _published_lvs() -> dict[str, torch.Tensor]:
    """The published LVS state dict (built on first use, not at collection)."""
    from published_layouts import published_checkpoint

    (inner,) = (v for k, v in published_checkpoint("lvs").items() if k == "model_state_dict")
    return dict(inner)  # type: ignore[arg-type]


@st.composite
def tensors_(draw: st.DrawFn) -> torch.Tensor:
    """A tensor that is wrong in one way or another: dtype, shape, values, layout, device."""
    kind = draw(st.sampled_from(["dense", "expanded", "strided", "sparse", "meta", "scalar", "nonfinite"]))
    shape = tuple(draw(st.lists(st.integers(0, 5), max_size=4)))
    dtype = draw(st.sampled_from([torch.float32, torch.float16, torch.float64, torch.int64, torch.bool,
                                  torch.complex64, torch.uint8]))
    t = torch.zeros(shape, dtype=dtype)
    if kind == "expanded":
        return torch.ones(1).expand(draw(st.sampled_from([2**40, 64, 3])))
    if kind == "strided":
        return torch.arange(64.0).reshape(8, 8)[::2, ::3]
    if kind == "sparse":
        return torch.ones(4).to_sparse()
    if kind == "meta":
        return torch.empty(shape, device="meta")
    if kind == "scalar":
        return torch.tensor(draw(st.floats(allow_nan=True, allow_infinity=True)))
    if kind == "nonfinite":
        return torch.full((64,), draw(st.sampled_from([float("nan"), float("inf"), -1.0])))
    return t


@st.composite
def published_edits(draw: st.DrawFn) -> tuple[list[tuple[str, str, Any]], bool, int]:
    """How to damage the published LVS file: tensor edits, then (maybe) byte edits at its head and tail.

    Only the small recipe goes through Hypothesis; :func:`_published_file` builds the ~90 MB file in the test
    (Hypothesis holding several such examples at once took gigabytes).
    """
    keys = sorted(_published_lvs())
    edits = []
    for _ in range(draw(st.integers(1, 3))):
        op = draw(st.sampled_from(["replace", "drop", "add"]))
        key = draw(st.sampled_from(keys)) if op != "add" else draw(st.text(min_size=1, max_size=8))
        edits.append((op, key, draw(tensors_()) if op != "drop" else None))
    return edits, draw(st.booleans()), draw(st.integers(0, 2**32 - 1))


def _published_file(recipe: tuple[list[tuple[str, str, Any]], bool, int]) -> bytes:
    edits, damage_bytes, seed = recipe
    state = dict(_published_lvs())
    for op, key, tensor in edits:
        if op == "drop":
            state.pop(key, None)
        else:
            state[key] = tensor
    buf = io.BytesIO()
    torch.save({"model_state_dict": state}, buf)
    raw = bytearray(buf.getvalue())
    if damage_bytes:  # the pickle and first records, and the zip directory at the end
        rng = np.random.default_rng(seed)
        for _ in range(int(rng.integers(1, 5))):
            i = int(rng.choice([rng.integers(0, 8192), len(raw) - 1 - rng.integers(0, 8192)]))
            op = int(rng.integers(0, 3))
            if op == 0:
                raw[i] ^= int(rng.integers(1, 256))
            elif op == 1:
                del raw[i : i + int(rng.integers(1, 16))]
            else:
                raw[i:i] = rng.bytes(int(rng.integers(1, 8)))
    return bytes(raw)


@two_tests(published_edits(), fast=4, slow=60)
def _import_property(recipe: tuple[list[tuple[str, str, Any]], bool, int]) -> None:
    from avloc.importers import import_checkpoint
    from avloc.methods.zoo import load_model

    src = _write("lvs.pth", _published_file(recipe))
    out = src.with_name("m.safetensors")
    try:
        import_checkpoint("lvs", src, out)
    except AvlocError:
        assert not out.exists()
        return
    model = load_model(str(out))  # an import that succeeds writes a checkpoint that loads and checks
    assert all(bool(torch.isfinite(v).all()) for v in model.state_dict().values() if v.is_floating_point())


test_fuzz_imports, test_fuzz_imports_slow = _import_property


# ----------------------------------------------------------------------------- avloc checkpoints (--model)


@functools.cache
def _zoo_checkpoint() -> tuple[dict[str, Any], dict[str, torch.Tensor], bytes]:
    from safetensors import safe_open

    from avloc.methods.zoo import ZOO_DIR

    path = ZOO_DIR / "lvs-digitscenes.safetensors"
    with safe_open(str(path), framework="pt") as f:
        header = json.loads(f.metadata()["avloc"])
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    return header, tensors, path.read_bytes()


@st.composite
def avloc_checkpoints(draw: st.DrawFn) -> bytes:
    from safetensors.torch import save

    header, tensors, raw = _zoo_checkpoint()
    kind = draw(st.sampled_from(["header", "tensor", "bytes"]))
    if kind == "bytes":
        return draw(mutated_bytes(raw[:4096])) + raw[4096:]  # the header and the first tensors
    tensors = dict(tensors)
    if kind == "tensor":
        key = draw(st.sampled_from(sorted(tensors)))
        t = draw(tensors_())
        tensors[key] = t.contiguous() if t.layout == torch.strided and not t.is_meta and t.numel() < 2**20 \
            else torch.zeros(3)
    meta = json.dumps(draw(mutated(header)) if kind == "header" else header, allow_nan=True)
    return save(tensors, metadata={"avloc": meta})


@two_tests(avloc_checkpoints(), fast=4, slow=60)
def _checkpoint_property(raw: bytes) -> None:
    from avloc.methods.zoo import load_model

    p = _write("m.safetensors", raw)
    try:
        model = load_model(str(p))
    except AvlocError:
        return
    assert all(bool(torch.isfinite(v).all()) for v in model.state_dict().values() if v.is_floating_point())


test_fuzz_avloc_checkpoints, test_fuzz_avloc_checkpoints_slow = _checkpoint_property
