"""Convert MediaPipe's selfie segmentation and BlazePose TFLite files into the safetensors of ``avloc.vision``.

Usage::

    python tools/convert_mediapipe.py [--wheel mediapipe-0.10.21-*.whl] [--out-dir src/avloc/zoo]

Without ``--wheel`` the wheel is fetched with ``pip download mediapipe==0.10.21 --no-deps`` into a
temporary folder (the last version that ships the ``.tflite`` files). From the wheel: the licence
(``*.dist-info/LICENSE``, Apache-2.0, and ``License: Apache 2.0`` in its METADATA, both checked), and

==========================================================================  =================================================
path in the wheel                                                           written (``avloc/zoo``)
==========================================================================  =================================================
mediapipe/modules/selfie_segmentation/selfie_segmentation.tflite            mediapipe/selfie_segmentation.safetensors
mediapipe/modules/selfie_segmentation/selfie_segmentation_landscape.tflite  mediapipe/selfie_segmentation_landscape.safetensors
mediapipe/modules/pose_detection/pose_detection.tflite                      mediapipe/pose_detection.safetensors
mediapipe/modules/pose_landmark/pose_landmark_full.tflite                   mediapipe/pose_landmark_full.safetensors
==========================================================================  =================================================

plus ``LICENSE-mediapipe.txt`` (where each file came from: package==version, path, sha256; then the licence).
The weights sit in ``zoo/vision/`` (beside the other vision models), apart from the method checkpoints that ``avloc.methods.zoo`` lists.

The flatbuffers are read with the schema module of ``ai-edge-litert``; no interpreter is run. Every op of a
graph must be one the torch ports implement (:data:`SUPPORTED`), with the attributes they assume (2x
half-pixel bilinear resizes, 2x2 max pools, global average pools, depth-to-space by 2). The parameterised
ops (``CONV_2D``, ``DEPTHWISE_CONV_2D``, the custom ``Convolution2DTransposeBias``), in execution order,
are matched one to one with the port's layers in registration order (``avloc.vision._tflite.tflite_layers``);
for each the kind, weight shape, stride, padding (TensorFlow ``SAME``/``VALID`` or the explicit pads of
a preceding ``PAD`` op) and activation (fused, or the ``RELU``/``HARD_SWISH``/``LOGISTIC`` op that alone
consumes the output) must agree. Weights are float16 in the files (behind ``DEQUANTIZE``; some behind
``DENSIFY``, TFLite's sparse CSR format, densified here) and stay float16 (lossless). Layouts: conv
(O, kh, kw, I) -> (O, I, kh, kw); depthwise (1, kh, kw, C) -> (C, 1, kh, kw); transposed (O, kh, kw, I)
-> (I, O, kh, kw).
"""

from __future__ import annotations

import argparse
import hashlib
import logging
import subprocess
import sys
import tempfile
import zipfile
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
from avloc.vision._tflite import Act, TFConv2d, TransposeConvBias, load_zoo_weights, tflite_layers  # noqa: E402
from avloc.vision.pose import PoseDetectorNet, PoseLandmarkNet  # noqa: E402
from avloc.vision.segmentation import SelfieSegmentationNet  # noqa: E402

log = logging.getLogger("convert_mediapipe")

PACKAGE, VERSION = "mediapipe", "0.10.21"
TRANSPOSE_OP = "Convolution2DTransposeBias"


@dataclass(frozen=True)
class Source:
    """One model: where it is in the wheel, the file it becomes, the torch network it fills."""

    wheel_path: str
    out_name: str
    net: type[nn.Module]


SOURCES = (
    Source("mediapipe/modules/selfie_segmentation/selfie_segmentation.tflite",
           "vision/selfie_segmentation.safetensors", SelfieSegmentationNet),
    Source("mediapipe/modules/selfie_segmentation/selfie_segmentation_landscape.tflite",
           "vision/selfie_segmentation_landscape.safetensors", SelfieSegmentationNet),
    Source("mediapipe/modules/pose_detection/pose_detection.tflite",
           "vision/pose_detection.safetensors", PoseDetectorNet),
    Source("mediapipe/modules/pose_landmark/pose_landmark_full.tflite",
           "vision/pose_landmark_full.safetensors", PoseLandmarkNet),
)  # fmt: skip
#: ops the torch ports implement (builtin names; the custom op by its custom code)
SUPPORTED = {
    "CONV_2D", "DEPTHWISE_CONV_2D", "DEQUANTIZE", "DENSIFY", "PAD", "ADD", "MUL", "RELU", "RELU6", "HARD_SWISH",
    "LOGISTIC", "AVERAGE_POOL_2D", "MEAN", "MAX_POOL_2D", "RESIZE_BILINEAR", "DEPTH_TO_SPACE", "RESHAPE",
    "CONCATENATION", TRANSPOSE_OP,
}  # fmt: skip
#: TFLite TensorType codes -> NumPy dtypes of the constants read
_DTYPES = {0: np.float32, 1: np.float16, 2: np.int32}
#: activation ops that may follow a layer, and fused activation codes (schema.fbs ActivationFunctionType)
_ACT_OPS = {"RELU": Act.RELU, "RELU6": Act.RELU6, "HARD_SWISH": Act.HARD_SWISH, "LOGISTIC": Act.SIGMOID}
_FUSED = {0: Act.NONE, 1: Act.RELU, 3: Act.RELU6}


class TFLiteGraph:
    """The single subgraph of a TFLite flatbuffer: ops in order, producers, consumers, constants."""

    def __init__(self, raw: bytes, where: str) -> None:
        from ai_edge_litert import schema_py_generated as schema

        self.schema, self.raw, self.where = schema, raw, where
        self.model = schema.ModelT.InitFromObj(schema.Model.GetRootAsModel(raw, 0))
        if len(self.model.subgraphs) != 1:
            raise CheckpointError(f"{where}: expected one subgraph, found {len(self.model.subgraphs)}")
        self.sg = self.model.subgraphs[0]
        self._names = {v: k for k, v in vars(schema.BuiltinOperator).items() if not k.startswith("_")}
        self.producer = {int(o): op for op in self.sg.operators for o in op.outputs}
        self.consumers: dict[int, list[Any]] = {}
        for op in self.sg.operators:
            for i in op.inputs:
                self.consumers.setdefault(int(i), []).append(op)

    def op_name(self, op: Any) -> str:
        code = self.model.operatorCodes[op.opcodeIndex]
        builtin = int(max(code.builtinCode, code.deprecatedBuiltinCode))
        if builtin == self.schema.BuiltinOperator.CUSTOM:
            return code.customCode.decode()
        return self._names.get(builtin, str(builtin))

    def shape(self, index: int) -> list[int]:
        return [int(s) for s in self.sg.tensors[index].shape]

    def const(self, index: int) -> np.ndarray:
        """A constant tensor's values (dense; sparse CSR tensors densified)."""
        t = self.sg.tensors[index]
        if t.type not in _DTYPES:
            raise CheckpointError(f"{self.where}: tensor {index} has unsupported type code {t.type}")
        buf = self.model.buffers[t.buffer]
        if buf.data is not None and len(buf.data):
            data = bytes(np.asarray(buf.data, dtype=np.uint8))
        elif getattr(buf, "offset", 0):
            data = self.raw[buf.offset : buf.offset + buf.size]
        else:
            raise CheckpointError(f"{self.where}: tensor {index} is not a constant")
        values = np.frombuffer(data, dtype=_DTYPES[t.type])
        if t.sparsity is not None:
            return densify(values, t.sparsity, self.shape(index), self.where)
        return values.reshape(self.shape(index)).copy()

    def weight(self, index: int) -> np.ndarray:
        """A layer's weight or bias: a constant, possibly behind ``DENSIFY`` and ``DEQUANTIZE`` (float16)."""
        op = self.producer.get(index)
        while op is not None:
            if self.op_name(op) not in ("DEQUANTIZE", "DENSIFY"):
                raise CheckpointError(f"{self.where}: weight tensor {index} is computed by {self.op_name(op)}")
            index = int(op.inputs[0])
            op = self.producer.get(index)
        arr = self.const(index)
        if arr.dtype != np.float16:
            raise CheckpointError(f"{self.where}: weight tensor {index} is {arr.dtype}, expected float16")
        return arr


def densify(values: np.ndarray, sparsity: Any, shape: list[int], where: str) -> np.ndarray:
    """TFLite sparse tensor -> dense (``FormatConverter::SparseToDense`` without blocks): levels in traversal
    order, DENSE levels enumerate ``dense_size`` children, SPARSE_CSR levels the ``array_indices`` between
    ``array_segments[parent]`` and ``[parent + 1]``; values are consumed in that order."""
    order = [int(d) for d in sparsity.traversalOrder]
    if sparsity.blockMap is not None and len(sparsity.blockMap):
        raise CheckpointError(f"{where}: block-sparse tensors are not supported")
    if sorted(order) != list(range(len(shape))):
        raise CheckpointError(f"{where}: sparse traversal order {order} does not fit shape {shape}")
    dims = sparsity.dimMetadata
    out = np.zeros(shape, dtype=values.dtype)
    taken = 0

    def visit(level: int, parent: int, coords: list[int]) -> None:
        nonlocal taken
        if level == len(order):
            idx = [0] * len(order)
            for lv, c in zip(order, coords):
                idx[lv] = c
            out[tuple(idx)] = values[taken]
            taken += 1
            return
        d = dims[level]
        if d.format == 0:  # DENSE
            for i in range(int(d.denseSize)):
                visit(level + 1, parent * int(d.denseSize) + i, [*coords, i])
            return
        segs, inds = d.arraySegments.values, d.arrayIndices.values
        for p in range(int(segs[parent]), int(segs[parent + 1])):
            visit(level + 1, p, [*coords, int(inds[p])])

    visit(0, 0, [])
    if taken != values.size:
        raise CheckpointError(f"{where}: sparse tensor used {taken} of its {values.size} values")
    return out


def _activation(g: TFLiteGraph, op: Any) -> Act:
    """The op's fused activation, else the activation op that alone consumes its output."""
    fused = int(getattr(op.builtinOptions, "fusedActivationFunction", 0) or 0) if op.builtinOptions else 0
    if fused not in _FUSED:
        raise CheckpointError(f"{g.where}: fused activation code {fused} is not supported")
    if fused:
        return _FUSED[fused]
    users = g.consumers.get(int(op.outputs[0]), [])
    if len(users) == 1 and g.op_name(users[0]) in _ACT_OPS:
        return _ACT_OPS[g.op_name(users[0])]
    return Act.NONE


def _layer_attrs(g: TFLiteGraph, op: Any) -> tuple[str, int, str | tuple[int, ...]]:
    """(kind, stride, padding) of a parameterised op."""
    name = g.op_name(op)
    if name == TRANSPOSE_OP:  # custom options: TfLiteTransposeConvParams {padding, stride_w, stride_h}
        padding, sw, sh = np.frombuffer(bytes(op.customOptions), dtype=np.int32).tolist()
        if padding != 1 or sw != sh:  # kTfLitePaddingSame = 1
            raise CheckpointError(f"{g.where}: {TRANSPOSE_OP} with padding {padding}, strides {sw}, {sh}")
        return "transpose", sw, "same"
    o = op.builtinOptions
    if o.strideW != o.strideH or o.dilationWFactor != 1 or o.dilationHFactor != 1:
        raise CheckpointError(f"{g.where}: {name} with strides {o.strideW}, {o.strideH} or dilation is not ported")
    if name == "DEPTHWISE_CONV_2D" and o.depthMultiplier not in (0, 1):
        raise CheckpointError(f"{g.where}: depth multiplier {o.depthMultiplier} is not ported")
    padding: str | tuple[int, ...] = "same" if o.padding == g.schema.Padding.SAME else "valid"
    pad_op = g.producer.get(int(op.inputs[0]))
    if pad_op is not None and g.op_name(pad_op) == "PAD":
        pads = g.const(int(pad_op.inputs[1])).tolist()
        if padding != "valid" or pads[0] != [0, 0] or pads[3] != [0, 0]:
            raise CheckpointError(f"{g.where}: PAD {pads} before a {padding} {name} is not ported")
        padding = (*pads[1], *pads[2])
    return ("depthwise" if name == "DEPTHWISE_CONV_2D" else "conv"), int(o.strideW), padding


def _check_op(g: TFLiteGraph, op: Any) -> None:
    """Attributes of the non-parameterised ops that the ports assume."""
    name, o = g.op_name(op), op.builtinOptions
    if name not in SUPPORTED:
        raise CheckpointError(f"{g.where}: op {name} is not implemented by the torch port")
    ins, out = g.shape(int(op.inputs[0])), g.shape(int(op.outputs[0]))
    ok = True
    if name == "RESIZE_BILINEAR":
        ok = out[1:3] == [2 * ins[1], 2 * ins[2]] and bool(o.halfPixelCenters) and not o.alignCorners
    elif name == "MAX_POOL_2D":
        ok = (o.filterWidth, o.filterHeight, o.strideW, o.strideH, o.padding) == (2, 2, 2, 2, g.schema.Padding.VALID)
    elif name == "AVERAGE_POOL_2D":
        ok = (o.filterHeight, o.filterWidth) == tuple(ins[1:3]) and out[1:3] == [1, 1]
    elif name == "MEAN":
        ok = sorted(g.const(int(op.inputs[1])).tolist()) == [1, 2] and bool(o.keepDims)
    elif name == "DEPTH_TO_SPACE":
        ok = o.blockSize == 2
    elif name in ("ADD", "MUL"):
        ok = o.fusedActivationFunction in (0, 3)
    if not ok:
        raise CheckpointError(f"{g.where}: {name} {ins} -> {out} has attributes the port does not implement")


def convert(raw: bytes, net: nn.Module, where: str) -> dict[str, torch.Tensor]:
    """The float16 state dict of ``net`` from the TFLite flatbuffer ``raw`` (module doc)."""
    g = TFLiteGraph(raw, where)
    param_ops = []
    for op in g.sg.operators:
        _check_op(g, op)
        if g.op_name(op) in ("CONV_2D", "DEPTHWISE_CONV_2D", TRANSPOSE_OP):
            param_ops.append(op)
    layers = tflite_layers(net)
    if len(layers) != len(param_ops):
        raise CheckpointError(f"{where}: {len(param_ops)} parameterised ops, the port has {len(layers)} layers")
    state: dict[str, torch.Tensor] = {}
    for (name, layer), op in zip(layers, param_ops):
        _fill(g, op, name, layer, state)
    return state


def _fill(g: TFLiteGraph, op: Any, name: str, layer: TFConv2d | TransposeConvBias,
          state: dict[str, torch.Tensor]) -> None:  # fmt: skip
    """Check one op against its layer and store its weight and bias in torch layout."""
    kind, stride, padding = _layer_attrs(g, op)
    act = _activation(g, op)
    want = (layer.kind, layer.stride, layer.padding, layer.act)
    if (kind, stride, padding, act) != want:
        raise CheckpointError(f"{g.where}: op {g.op_name(op)} -> {name}: (kind, stride, padding, act) "
                              f"{(kind, stride, padding, act)} != the port's {want}")  # fmt: skip
    w, b = g.weight(int(op.inputs[1])), g.weight(int(op.inputs[2]))
    w = w.transpose(3, 0, 1, 2) if kind in ("depthwise", "transpose") else w.transpose(0, 3, 1, 2)
    for key, arr, param in ((f"{name}.weight", w, layer.weight), (f"{name}.bias", b, layer.bias)):
        if tuple(arr.shape) != tuple(param.shape):
            raise CheckpointError(f"{g.where}: {key} is {arr.shape} in the file, {tuple(param.shape)} in the port")
        state[key] = torch.from_numpy(np.ascontiguousarray(arr))


# ----------------------------------------------------------------------------- the wheel
def fetch_wheel(dest: Path) -> Path:
    """``pip download mediapipe==VERSION --no-deps`` into ``dest``; the wheel's path."""
    cmd = [sys.executable, "-m", "pip", "download", f"{PACKAGE}=={VERSION}", "--no-deps", "-d", str(dest)]
    log.info("%s", " ".join(cmd))
    subprocess.run(cmd, check=True)
    wheels = sorted(dest.glob(f"{PACKAGE}-{VERSION}-*.whl"))
    if not wheels:
        raise CheckpointError(f"pip download left no {PACKAGE}-{VERSION} wheel in {dest}")
    return wheels[0]


def read_licence(wheel: zipfile.ZipFile, where: str) -> str:
    """The wheel's LICENSE text, after checking it and the METADATA licence field say Apache 2.0."""
    info = f"{PACKAGE}-{VERSION}.dist-info"
    try:
        text = wheel.read(f"{info}/LICENSE").decode()
        meta = wheel.read(f"{info}/METADATA").decode()
    except KeyError as e:
        raise CheckpointError(f"{where}: {e.args[0]} (not a {PACKAGE} {VERSION} wheel?)") from None
    if "Apache License" not in text or "Version 2.0" not in text or "License: Apache 2.0" not in meta:
        raise CheckpointError(f"{where}: the LICENSE / METADATA do not state Apache 2.0")
    return text


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--wheel", type=Path, default=None, help=f"{PACKAGE}-{VERSION} wheel (default: pip download)")
    ap.add_argument("--out-dir", type=Path, default=REPO / "src" / "avloc" / "zoo")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    from safetensors.torch import save_file

    with tempfile.TemporaryDirectory() as tmp:
        wheel_path = args.wheel or fetch_wheel(Path(tmp))
        wheel_sha = hashlib.sha256(wheel_path.read_bytes()).hexdigest()
        lines = []
        with zipfile.ZipFile(wheel_path) as wheel:
            licence = read_licence(wheel, str(wheel_path))
            for src in SOURCES:
                raw = wheel.read(src.wheel_path)
                sha = hashlib.sha256(raw).hexdigest()
                net = src.net()
                state = convert(raw, net, f"{wheel_path.name}:{src.wheel_path}")
                origin = f"{PACKAGE}=={VERSION} {src.wheel_path} sha256:{sha}"
                out = args.out_dir / src.out_name
                with atomic_path(out) as tmp_out:
                    save_file(state, str(tmp_out), metadata={"source": origin, "converter": "tools/convert_mediapipe.py"})
                load_zoo_weights(net, src.out_name, out)  # strict key / shape / dtype check of what was written
                n = sum(t.numel() for t in state.values())
                log.info("wrote %s: %d tensors, %d values, %.2f MB", out, len(state), n, out.stat().st_size / 1e6)
                lines.append(f"- {src.out_name}: from {origin}")
    header = [
        "MediaPipe models: weights shipped in avloc",
        "==========================================",
        "",
        "Selfie Segmentation and BlazePose (pose detection, pose landmark full) by Google, from the",
        f"PyPI wheel {PACKAGE}=={VERSION} ({wheel_path.name}, sha256:{wheel_sha}), licensed under the",
        "Apache License, Version 2.0 (the wheel's LICENSE, reproduced below; METADATA: License: Apache 2.0).",
        "",
        "Modified from the original: converted by tools/convert_mediapipe.py from TFLite to safetensors,",
        "tensors renamed and transposed to the PyTorch layout, sparse tensors densified; values unchanged",
        "(float16).",
        "",
        *lines,
        "",
        "-" * 78,
        "",
    ]
    write_text_atomic(args.out_dir / "vision" / "LICENSE-mediapipe.txt", "\n".join(header) + licence)
    log.info("wrote %s", args.out_dir / "vision" / "LICENSE-mediapipe.txt")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
