"""Convert YAMNet's TFLite file into the safetensors weights of :class:`avloc.methods.avsemantic.yamnet.YAMNet`.

Usage::

    python tools/convert_yamnet.py --tflite PATH/yamnet.tflite --out src/avloc/zoo/yamnet.safetensors

The TFLite flatbuffer is parsed with the schema module that ships with
``ai-edge-litert`` (``ai_edge_litert.schema_py_generated``, over ``flatbuffers``);
no interpreter is run. Constants are mapped to our parameter names by walking
the graph in execution order and checking each op's type, shapes and tensor
names (``yamnet_frames/layerN/...``):

* ``MUL`` by a (1, 400) constant -> ``frontend.window``; ``PAD`` must pad 56 + 56;
* the three ``FULLY_CONNECTED`` ops before the body -> ``frontend.dft_real``,
  ``frontend.dft_imag``, ``frontend.mel_matrix`` (its bias must be 0.001 everywhere,
  the log offset);
* ``CONV_2D`` layer1 -> ``stem``; then per layer 2-14 ``DEPTHWISE_CONV_2D`` ->
  ``blocks.i.depthwise`` (weights behind a ``DEQUANTIZE`` op are taken from its
  int8 input) and ``CONV_2D`` -> ``blocks.i.pointwise``;
* the last ``FULLY_CONNECTED`` -> ``classifier``.

Storage is lossless: the file is exactly the model's state dict. Weights of the
hybrid ops (DFT, mel, 1x1 convs, classifier: int8, one scale per tensor, zero
point 0) stay int8 as ``KEY.int8`` plus ``KEY.scale`` (float32, one element);
int8 depthwise weights, which the graph dequantises before a float op, are
stored dequantised (``int8 * scale`` in float32, what ``DEQUANTIZE`` computes);
float32 tensors as float32. The file has no float16 tensors.
Layouts: TFLite conv (O, H, W, I) -> torch (O, I, H, W); depthwise (1, H, W, C)
-> (C, 1, H, W); fully connected (out, in) unchanged.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

from avloc.errors import CheckpointError  # noqa: E402
from avloc.methods.avsemantic.yamnet import (  # noqa: E402
    BLOCKS,
    FFT_LENGTH,
    FRAME_SAMPLES,
    LOG_OFFSET,
    YAMNet,
    load_yamnet,
)

log = logging.getLogger("convert_yamnet")

#: TFLite TensorType codes (schema.fbs) -> NumPy dtypes of the constants we read
_DTYPES = {0: np.float32, 1: np.float16, 2: np.int32, 9: np.int8}


class TFLiteGraph:
    """The first subgraph of a TFLite flatbuffer: ops in order, tensors, constant buffers."""

    def __init__(self, path: Path) -> None:
        from ai_edge_litert import schema_py_generated as schema

        self.schema = schema
        self.raw = path.read_bytes()
        model = schema.ModelT.InitFromObj(schema.Model.GetRootAsModel(self.raw, 0))
        if len(model.subgraphs) != 1:
            raise CheckpointError(f"{path}: expected one subgraph, found {len(model.subgraphs)}")
        self.model = model
        self.sg = model.subgraphs[0]
        self.path = path
        self.producer = {int(o): op for op in self.sg.operators for o in op.outputs}

    def op_code(self, op: Any) -> int:
        code = self.model.operatorCodes[op.opcodeIndex]
        return int(max(code.builtinCode, code.deprecatedBuiltinCode))

    def name(self, index: int) -> str:
        n = self.sg.tensors[index].name
        return n.decode() if isinstance(n, bytes) else str(n)

    def const(self, index: int) -> tuple[np.ndarray, float | None]:
        """A constant tensor's data and its per-tensor int8 scale (``None`` for float tensors)."""
        t = self.sg.tensors[index]
        if t.type not in _DTYPES:
            raise CheckpointError(f"{self.path}: tensor {self.name(index)} has unsupported type code {t.type}")
        buf = self.model.buffers[t.buffer]
        if buf.data is not None and len(buf.data):
            data = bytes(np.asarray(buf.data, dtype=np.uint8))
        elif getattr(buf, "offset", 0):
            data = self.raw[buf.offset : buf.offset + buf.size]
        else:
            raise CheckpointError(f"{self.path}: tensor {self.name(index)} is not a constant")
        arr = np.frombuffer(data, dtype=_DTYPES[t.type]).reshape([int(s) for s in t.shape]).copy()
        if t.type != 9:
            return arr, None
        q = t.quantization
        scales = list(q.scale) if q is not None and q.scale is not None else []
        zps = list(q.zeroPoint) if q is not None and q.zeroPoint is not None else []
        if len(scales) != 1 or any(int(z) != 0 for z in zps):
            raise CheckpointError(
                f"{self.path}: {self.name(index)}: expected one per-tensor scale with zero point 0, "
                f"got {len(scales)} scales, zero points {zps[:4]}"
            )
        return arr, float(scales[0])

    def weight(self, index: int) -> tuple[np.ndarray, float | None]:
        """A weight input: a constant, or the int8 constant behind a ``DEQUANTIZE`` op."""
        op = self.producer.get(index)
        if op is not None:
            if self.op_code(op) != self.schema.BuiltinOperator.DEQUANTIZE:
                raise CheckpointError(f"{self.path}: weight {self.name(index)} is computed by op {self.op_code(op)}")
            return self.const(int(op.inputs[0]))
        return self.const(index)


def _put(out: dict[str, torch.Tensor], expected: dict[str, torch.Tensor], key: str, arr: np.ndarray,
         scale: float | None) -> None:
    """Store ``arr`` under ``key`` the way the model holds it (module doc, "Storage")."""
    if key + ".int8" in expected:  # a hybrid layer: int8 weights + scale, as in the TFLite file
        if scale is None:
            raise CheckpointError(f"{key}: the model expects int8 weights, the TFLite tensor is float")
        shape = expected[key + ".int8"].shape
        out[key + ".int8"] = torch.from_numpy(np.ascontiguousarray(arr)).reshape(shape).to(torch.int8)
        out[key + ".scale"] = torch.tensor([scale], dtype=torch.float32)
        return
    if key not in expected:
        raise CheckpointError(f"{key}: not a tensor of the torch YAMNet")
    t = torch.from_numpy(np.ascontiguousarray(arr)).to(torch.float32)
    if scale is not None:  # int8 weights that the TFLite graph DEQUANTIZEs before a float op
        t = t * torch.tensor(scale, dtype=torch.float32)
    out[key] = t.reshape(expected[key].shape)


def convert(tflite: Path) -> dict[str, torch.Tensor]:
    """The safetensors dict (module doc) of the YAMNet TFLite file ``tflite``."""
    g = TFLiteGraph(tflite)
    B = g.schema.BuiltinOperator
    out: dict[str, torch.Tensor] = {}
    expected = YAMNet().state_dict()
    fcs: list[Any] = []
    convs: list[Any] = []  # (op code, op) of CONV_2D / DEPTHWISE_CONV_2D in order
    for op in g.sg.operators:
        code = g.op_code(op)
        ins = [int(i) for i in op.inputs]
        if code == B.MUL and "window" not in out:
            for i in ins:
                if g.producer.get(i) is None and list(g.sg.tensors[i].shape) == [1, FRAME_SAMPLES]:
                    arr, _ = g.const(i)
                    out["frontend.window"] = torch.from_numpy(arr.reshape(FRAME_SAMPLES).astype(np.float32))
        elif code == B.PAD:
            pads, _ = g.const(ins[1])
            half = (FFT_LENGTH - FRAME_SAMPLES) // 2
            if pads.tolist() != [[0, 0], [half, FFT_LENGTH - FRAME_SAMPLES - half]]:
                raise CheckpointError(f"{tflite}: frame padding {pads.tolist()} is not YAMNet's centred 56 + 56")
        elif code == B.FULLY_CONNECTED:
            fcs.append(op)
        elif code in (B.CONV_2D, B.DEPTHWISE_CONV_2D):
            convs.append((code, op))
    if "frontend.window" not in out:
        raise CheckpointError(f"{tflite}: no (1, {FRAME_SAMPLES}) window constant found")
    if len(fcs) != 4 or len(convs) != 1 + 2 * len(BLOCKS):
        raise CheckpointError(f"{tflite}: expected 4 fully connected and {1 + 2 * len(BLOCKS)} conv ops, "
                              f"found {len(fcs)} and {len(convs)}")  # fmt: skip
    # front end: DFT real, DFT imaginary, mel (+ log offset as bias)
    for key, op in zip(("frontend.dft_real", "frontend.dft_imag", "frontend.mel_matrix"), fcs[:3]):
        arr, scale = g.weight(int(op.inputs[1]))
        _put(out, expected, key, arr, scale)
    bias, _ = g.const(int(fcs[2].inputs[2]))
    if not np.allclose(bias, LOG_OFFSET, rtol=0, atol=1e-9):
        raise CheckpointError(f"{tflite}: mel bias is not the log offset {LOG_OFFSET}")
    # body
    names = ["stem"] + [f"blocks.{i}.{part}" for i in range(len(BLOCKS)) for part in ("depthwise", "pointwise")]
    for key, (code, op) in zip(names, convs):
        want = B.DEPTHWISE_CONV_2D if key.endswith("depthwise") else B.CONV_2D
        layer = 1 if key == "stem" else int(key.split(".")[1]) + 2
        wname = g.name(int(op.inputs[1]))
        if code != want or f"layer{layer}/" not in wname:
            raise CheckpointError(f"{tflite}: op for {key} is {code} with weights {wname!r}, expected layer{layer}")
        w, scale = g.weight(int(op.inputs[1]))
        b, _ = g.const(int(op.inputs[2]))
        w = w.transpose(3, 0, 1, 2) if code == B.DEPTHWISE_CONV_2D else w.transpose(0, 3, 1, 2)
        _put(out, expected, key + ".weight", w, scale)
        _put(out, expected, key + ".bias", b, None)
    w, scale = g.weight(int(fcs[3].inputs[1]))
    b, _ = g.const(int(fcs[3].inputs[2]))
    _put(out, expected, "classifier.weight", w, scale)
    _put(out, expected, "classifier.bias", b, None)
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--tflite", type=Path, required=True, help="YAMNet .tflite file")
    ap.add_argument("--out", type=Path, required=True, help="output .safetensors")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    from safetensors.torch import save_file

    tensors = convert(args.tflite)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(args.out), metadata={"source": args.tflite.name, "converter": "tools/convert_yamnet.py"})
    model = load_yamnet(path=args.out)  # strict key/shape check of what was written
    n = sum(p.numel() for p in model.state_dict().values())
    assert isinstance(model, YAMNet)
    log.info("wrote %s: %d tensors, %d values, %.2f MB", args.out, len(tensors), n, args.out.stat().st_size / 1e6)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
