"""YAMNet in torch: 16 kHz waveform -> 521 AudioSet scores, with converted weights shipped in the package.

YAMNet (Plakal & Ellis, 2020, ``tensorflow/models`` ``research/audioset/yamnet``)
is MobileNet-v1 (Howard et al., 2017, "MobileNets", Sec. 3.1 and Table 1: a
3x3 conv then 13 depthwise-separable blocks, BN + ReLU after each conv) on one
patch of 96 frames x 64 log-mel bands (0.96 s), global average pooling to a
1024-d embedding, and a 521-way logistic classifier over the AudioSet ontology
(Gemmeke et al., ICASSP 2017).

This module reproduces the TFLite file the project uses (``yamnet.tflite``, see
``src/avloc/zoo/LICENSE-yamnet.txt``; weights converted by
``tools/convert_yamnet.py``) op for op:

* **Front end** (YAMNet ``features.py``, its TFLite-compatible path, which the
  TFLite graph contains): the 15,600 samples are cut into 96 frames of 400
  samples (25 ms) every 160 (10 ms), no padding; times a periodic Hann window;
  each frame zero-padded *on both sides* to 512 (56 + 56, the graph's ``PAD``,
  not ``tf.signal.stft``'s end padding); real DFT as two matmuls with the
  cos/sin matrices (257 bins); magnitude ``sqrt(re^2 + im^2)``; 64 mel bands
  (125-7500 Hz, HTK mel, TF ``linear_to_mel_weight_matrix``) by a matmul; and
  ``log(mel + 0.001)``. The DFT and mel matrices are the graph's constants.
* **Body**: BN is folded into every conv's weight and bias (as in the TFLite
  file), convs use TF ``SAME`` padding (one extra row/column at the bottom/right
  for the stride-2 3x3 convs).
* **Dynamic-range quantisation**: the TFLite file stores the DFT, mel,
  pointwise-conv, classifier and the depthwise weights of blocks 3-13 as int8
  with one scale per tensor (zero point 0). The depthwise weights are
  dequantised by the graph and used in float (stored here dequantised). The
  other int8 layers are *hybrid* ops: at run time their float input is
  quantised to int8 (asymmetric, one scale and zero point per row of a matmul
  and per pixel of a 1x1 conv: XNNPACK's ``qd8`` scheme, which the default
  TFLite CPU interpreter uses) and multiplied with the int8 weights (kept as
  int8 here). ``match_tflite=True`` (default) reproduces that arithmetic: the
  same input rounding, integer products, and the float ops in XNNPACK's order
  (3x3 convs accumulate tap by tap from the bias with fused multiply-adds, found
  by matching the TFLite's intermediate tensors bit for bit). With ``False``
  the dequantised weights see float inputs and the convs are plain
  ``conv2d`` (2-5x faster on CPU; a different function, see below).

How close this is (``tests/test_yamnet.py``; ``docs/localize.md`` has the
numbers): given the TFLite's own input tensors, the stem and every depthwise
conv match bit for bit, the log-mel and the int8 stages to ~1e-6 except for
inputs lying on an int8 rounding boundary (5 pixels in ~80,000). End to end such
a boundary case flips one int8 value and the difference grows through the 14
quantised layers: on 169 windows (``bench/paper/avsemantic/compare_yamnet.py``: 13 real clips,
silence, noise) the 521 scores match to < 1e-4 on 30 % of windows, the median
window differs by 0.0016 and the worst by 0.032, and the top-1 class always
agrees. This is the resolution the quantised model itself has: the same TFLite
file run with TFLite's reference kernels instead of XNNPACK differs from XNNPACK
by up to 1.0 (median 0.048) on the same windows; ``match_tflite=False`` by up
to 0.56 (median 0.014).

Inference only: rounding has no useful gradient.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from avloc.errors import CheckpointError, MediaError

# --- constants (YAMNet ``params.py``) ------------------------------------------------------------

SAMPLE_RATE = 16000
#: the TFLite model's fixed input: 15,600 samples (0.975 s) = one patch of 96 frames
WINDOW_SAMPLES = 15600
NUM_CLASSES = 521
#: stft_window_seconds = 0.025, stft_hop_seconds = 0.010 at 16 kHz
FRAME_SAMPLES = 400
HOP_SAMPLES = 160
#: FFT length: the next power of two >= 400
FFT_LENGTH = 512
NUM_BINS = FFT_LENGTH // 2 + 1
#: mel_bands = 64, mel_min_hz = 125, mel_max_hz = 7500, log_offset = 0.001
MEL_BANDS = 64
MEL_MIN_HZ = 125.0
MEL_MAX_HZ = 7500.0
LOG_OFFSET = 0.001
#: patch_window_seconds = 0.96 -> 96 frames
PATCH_FRAMES = 96
EMBEDDING_DIM = 1024
STEM_CHANNELS = 32
#: YAMNet ``yamnet.py`` ``_YAMNET_LAYER_DEFS`` after the stem: (stride, output channels) of each
#: depthwise-separable block (3x3 depthwise, then 1x1 pointwise).
BLOCKS: tuple[tuple[int, int], ...] = (
    (1, 64), (2, 128), (1, 128), (2, 256), (1, 256), (2, 512),
    (1, 512), (1, 512), (1, 512), (1, 512), (1, 512), (2, 1024), (1, 1024),
)  # fmt: skip
KERNEL = 3
STEM_STRIDE = 2
#: int8 range of XNNPACK's dynamically quantised inputs (signed, asymmetric)
QMIN, QMAX = -128, 127

PACKAGE_ZOO = Path(__file__).resolve().parents[2] / "zoo"
WEIGHTS_FILE = PACKAGE_ZOO / "yamnet.safetensors"
CLASS_MAP_FILE = PACKAGE_ZOO / "yamnet_class_map.csv"
#: inputs per float32 partial sum of an int8 x int8 matmul: 255 * 127 * 512 < 2^24 keeps it exact
EXACT_CHUNK = 512


# --- building blocks ------------------------------------------------------------------------------


def quantize_int8(x: Tensor) -> tuple[Tensor, Tensor]:
    """Dynamic int8 quantisation of the last dim of ``x``, one asymmetric scale/zero point per row.

    XNNPACK's ``f32 -> qd8`` conversion (TFLite's dynamic-range path): with ``lo = min(x, 0)`` and
    ``hi = max(x, 0)``, ``m = 255 / (hi - lo)``; the zero point is ``-128 - lo m`` or ``127 - hi m``
    (whichever end has the smaller rounding error), rounded and clamped to [-128, 127];
    ``q = clamp(round(x m) + zp)``, rounding half to even. Returns ``(q - zp, 1 / m)``: integers in
    [-255, 255] as floats (same shape as ``x``) and the dequantisation scales (..., 1).
    """
    lo = x.amin(dim=-1, keepdim=True).clamp(max=0)
    hi = x.amax(dim=-1, keepdim=True).clamp(min=0)
    # an all-zero row quantises to zeros with any scale; XNNPACK takes 1
    m = torch.where(hi > lo, (QMAX - QMIN) / (hi - lo), torch.ones_like(hi))
    lo_m, hi_m = lo * m, hi * m
    zp = torch.where((QMIN + lo_m) + (QMAX + hi_m) > 0, QMIN - lo_m, QMAX - hi_m)
    zp = torch.round(zp.clamp(QMIN, QMAX))
    q = (torch.round(x * m) + zp).clamp(QMIN, QMAX)
    return q - zp, 1.0 / m


class Int8Weight(nn.Module):
    """An int8 weight with one scale (``int8`` (out, in), ``scale`` (1,)), as the TFLite file stores it."""

    int8: Tensor
    scale: Tensor

    def __init__(self, out_features: int, in_features: int) -> None:
        super().__init__()
        self.register_buffer("int8", torch.zeros(out_features, in_features, dtype=torch.int8))
        self.register_buffer("scale", torch.zeros(1))

    def dequantized(self) -> Tensor:
        return self.int8.to(torch.float32) * self.scale  # (out, in)


def hybrid_matmul(x: Tensor, w: Int8Weight, bias: Tensor | None, match_tflite: bool) -> Tensor:
    """``x (..., in) @ W^T + bias -> (..., out)`` as TFLite's hybrid (float input, int8 weight) ops.

    With ``match_tflite``: ``x`` is quantised per row (:func:`quantize_int8`), multiplied with the
    int8 weights in integer arithmetic, then ``fma(acc * input_scale, weight_scale, bias)`` (the
    order of XNNPACK's ``qd8-f32-qc8w`` kernels). Integer products are summed in float32 over
    chunks of ``EXACT_CHUNK`` inputs, where every partial sum is an exact integer
    (|sum| <= 255 * 127 * 512 < 2^24), also under TF32 (integers < 2^11 are exact); for
    in <= 1024 the one final float32 add equals converting the exact int32 sum to float.
    Otherwise: ``x`` times the dequantised weights, all in float.
    """
    if not match_tflite:
        y = x @ w.dequantized().T
        return y if bias is None else y + bias
    lead = x.shape[:-1]
    q, s = quantize_int8(x.reshape(-1, x.shape[-1]))  # (R, in), (R, 1): 2-D keeps it one mm
    wi = w.int8.to(x.dtype).T  # (in, out)
    acc = q[:, :EXACT_CHUNK] @ wi[:EXACT_CHUNK]  # (R, out)
    for k in range(EXACT_CHUNK, wi.shape[0], EXACT_CHUNK):
        acc = acc + q[:, k : k + EXACT_CHUNK] @ wi[k : k + EXACT_CHUNK]
    out = _fma(acc * s, w.scale, bias if bias is not None else torch.zeros_like(w.scale))
    return out.reshape(*lead, out.shape[-1])  # (..., out)


def same_pad(x: Tensor, kernel: int, stride: int) -> Tensor:
    """TF ``SAME`` padding of the last two dims: total ``max((ceil(n/s) - 1) s + k - n, 0)``, extra at the end."""
    pads: list[int] = []
    for n in (x.shape[-1], x.shape[-2]):  # F.pad order: last dim first
        total = max((math.ceil(n / stride) - 1) * stride + kernel - n, 0)
        pads += [total // 2, total - total // 2]
    return F.pad(x, pads)


def _fma(a: Tensor, b: Tensor, c: Tensor) -> Tensor:
    """float32 ``a * b + c`` rounded once, as a fused multiply-add (the product is exact in float64)."""
    return (a.double() * b.double() + c.double()).to(a.dtype)


def conv3x3_fma(x: Tensor, conv: nn.Conv2d, stride: int, taps: Sequence[tuple[int, int]]) -> Tensor:
    """A 3x3 conv with one input channel per output (the stem, or a depthwise conv) in XNNPACK's order.

    ``x`` (B, 1 or C, H, W) unpadded -> (B, C, H/s, W/s): the accumulator starts at the bias and adds
    one kernel tap after the other with a fused multiply-add, in the order ``taps`` ((row, col) pairs).
    This reproduces the TFLite CPU interpreter's float32 results bit for bit (checked layer by
    layer in ``tests/test_yamnet.py``), which keeps the following int8 roundings identical.
    """
    xp = same_pad(x, KERNEL, stride).double()  # (B, Cin, H + p, W + p); float32 products are exact in float64
    ho, wo = -(-x.shape[-2] // stride), -(-x.shape[-1] // stride)
    w = conv.weight[:, 0].double()  # (C, 3, 3)
    bias = conv.bias
    if bias is None:
        raise ValueError("conv3x3_fma needs a conv with a bias (BN folded)")
    acc = bias.view(1, -1, 1, 1).expand(x.shape[0], -1, ho, wo).to(x.dtype)  # (B, C, ho, wo)
    for i, j in taps:
        tap = xp[:, :, i : i + stride * ho : stride, j : j + stride * wo : stride]  # (B, Cin, ho, wo)
        # acc + tap * w in float64, rounded once to float32: a fused multiply-add
        acc = torch.addcmul(acc.double(), tap, w[:, i, j].view(1, -1, 1, 1)).to(x.dtype)
    return acc


#: XNNPACK's tap orders (found by matching the TFLite's intermediate tensors bit for bit):
#: the stem conv goes row by row, the depthwise kernels column by column.
STEM_TAPS = tuple((i, j) for i in range(KERNEL) for j in range(KERNEL))
DEPTHWISE_TAPS = tuple((i, j) for j in range(KERNEL) for i in range(KERNEL))


class LogMelFrontEnd(nn.Module):
    """YAMNet's TFLite log-mel: (B, 15600) -> (B, 96, 64) (module doc, "Front end").

    The TFLite graph's constants: ``window`` (400,) float; ``dft_real`` / ``dft_imag`` (257, 512) and
    ``mel_matrix`` (64, 257) int8, laid out as matmul weights (out, in).
    """

    window: Tensor

    def __init__(self, match_tflite: bool = True) -> None:
        super().__init__()
        self.match_tflite = match_tflite
        self.register_buffer("window", torch.zeros(FRAME_SAMPLES))
        self.dft_real = Int8Weight(NUM_BINS, FFT_LENGTH)
        self.dft_imag = Int8Weight(NUM_BINS, FFT_LENGTH)
        self.mel_matrix = Int8Weight(MEL_BANDS, NUM_BINS)

    def forward(self, wav: Tensor) -> Tensor:
        frames = wav.unfold(-1, FRAME_SAMPLES, HOP_SAMPLES) * self.window  # (B, 96, 400)
        half = (FFT_LENGTH - FRAME_SAMPLES) // 2
        frames = F.pad(frames, (half, FFT_LENGTH - FRAME_SAMPLES - half))  # (B, 96, 512), centred
        q = self.match_tflite
        re = hybrid_matmul(frames, self.dft_real, None, q)  # (B, 96, 257)
        im = hybrid_matmul(frames, self.dft_imag, None, q)
        mag = torch.sqrt(re * re + im * im)  # (B, 96, 257)
        offset = torch.full((MEL_BANDS,), LOG_OFFSET, dtype=mag.dtype, device=mag.device)
        mel = hybrid_matmul(mag, self.mel_matrix, offset, q)  # (B, 96, 64) + log offset (the graph's bias)
        return torch.log(mel)


class HybridLinear(nn.Module):
    """A fully connected / 1x1 conv layer with int8 weights (``weight``) and a float ``bias``: (..., in) -> (..., out)."""

    def __init__(self, in_features: int, out_features: int, match_tflite: bool = True) -> None:
        super().__init__()
        self.match_tflite = match_tflite
        self.weight = Int8Weight(out_features, in_features)
        self.bias = nn.Parameter(torch.zeros(out_features))

    def forward(self, x: Tensor) -> Tensor:
        return hybrid_matmul(x, self.weight, self.bias, self.match_tflite)


class SeparableBlock(nn.Module):
    """MobileNet-v1 block (Howard et al. 2017, Fig. 3): 3x3 depthwise + ReLU, 1x1 pointwise + ReLU (BN folded).

    The depthwise weights are float (the TFLite file dequantises them before a float op); the 1x1
    conv is a hybrid op, its input quantised per pixel (one row of its matmul).
    """

    def __init__(self, cin: int, cout: int, stride: int, match_tflite: bool = True) -> None:
        super().__init__()
        self.stride = stride
        self.match_tflite = match_tflite
        self.depthwise = nn.Conv2d(cin, cin, KERNEL, stride=stride, groups=cin)
        self.pointwise = HybridLinear(cin, cout, match_tflite)

    def forward(self, x: Tensor) -> Tensor:
        if self.match_tflite:
            x = F.relu(conv3x3_fma(x, self.depthwise, self.stride, DEPTHWISE_TAPS))  # (B, cin, H/s, W/s)
        else:
            x = F.relu(self.depthwise(same_pad(x, KERNEL, self.stride)))
        x = F.relu(self.pointwise(x.permute(0, 2, 3, 1)))  # (B, H/s, W/s, cout)
        return x.permute(0, 3, 1, 2)  # (B, cout, H/s, W/s)


# --- the model ------------------------------------------------------------------------------------


class YAMNet(nn.Module):
    """YAMNet (module doc): ``forward`` (B, 15600) at 16 kHz -> (B, 521) sigmoid scores.

    Build with :func:`load_yamnet` for the shipped weights; a bare ``YAMNet()`` has zero weights.
    """

    def __init__(self, match_tflite: bool = True) -> None:
        super().__init__()
        self.match_tflite = match_tflite
        self.frontend = LogMelFrontEnd(match_tflite)
        self.stem = nn.Conv2d(1, STEM_CHANNELS, KERNEL, stride=STEM_STRIDE)
        blocks: list[nn.Module] = []
        cin = STEM_CHANNELS
        for stride, cout in BLOCKS:
            blocks.append(SeparableBlock(cin, cout, stride, match_tflite))
            cin = cout
        self.blocks = nn.ModuleList(blocks)
        self.classifier = HybridLinear(EMBEDDING_DIM, NUM_CLASSES, match_tflite)

    @staticmethod
    def _check(wav: Tensor) -> None:
        if wav.ndim != 2 or wav.shape[1] != WINDOW_SAMPLES:
            raise MediaError(
                f"YAMNet takes (B, {WINDOW_SAMPLES}) waveforms at {SAMPLE_RATE} Hz, got shape {tuple(wav.shape)}; "
                "cut windows with avloc.methods.avsemantic.yamnet.scores_at or avloc.io.audio.windows_at"
            )

    def log_mel(self, wav: Tensor) -> Tensor:
        """(B, 15600) -> (B, 96, 64) log-mel patch."""
        self._check(wav)
        return self.frontend(wav)

    def embeddings(self, wav: Tensor) -> Tensor:
        """(B, 15600) -> (B, 1024): the globally average-pooled output of the last block."""
        x = self.log_mel(wav)[:, None]  # (B, 1, 96, 64)
        if self.match_tflite:
            x = F.relu(conv3x3_fma(x, self.stem, STEM_STRIDE, STEM_TAPS))  # (B, 32, 48, 32)
        else:
            x = F.relu(self.stem(same_pad(x, KERNEL, STEM_STRIDE)))
        for block in self.blocks:
            x = block(x)  # ... -> (B, 1024, 3, 2)
        return x.mean(dim=(2, 3))  # (B, 1024)

    def classify(self, emb: Tensor) -> Tensor:
        """(B, 1024) embeddings -> (B, 521) sigmoid scores."""
        return torch.sigmoid(self.classifier(emb))

    def forward(self, wav: Tensor) -> Tensor:
        return self.classify(self.embeddings(wav))


# --- weights and class names ----------------------------------------------------------------------


def load_yamnet(
    device: str | torch.device = "cpu", match_tflite: bool = True, path: str | Path = WEIGHTS_FILE
) -> YAMNet:
    """YAMNet with the shipped weights (``avloc/zoo/yamnet.safetensors``), in eval mode on ``device``.

    The file holds exactly the model's state dict (int8 weights as int8, the rest float32); keys,
    shapes and dtypes are checked strictly. Raises :class:`CheckpointError` if the file is missing,
    unreadable or does not match the architecture.
    """
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    p = Path(path)
    if not p.is_file():
        raise CheckpointError(
            f"YAMNet weights not found at {p}: the package ships them; regenerate with "
            "tools/convert_yamnet.py --tflite yamnet.tflite --out src/avloc/zoo/yamnet.safetensors"
        )
    try:
        state = load_file(str(p))
    except (SafetensorError, OSError) as e:
        raise CheckpointError(f"{p}: not a readable safetensors file ({e})") from None
    model = YAMNet(match_tflite)
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    wrong = [f"{k}: file {tuple(state[k].shape)} {state[k].dtype} vs model {tuple(v.shape)} {v.dtype}"
             for k, v in expected.items() if k in state and (state[k].shape != v.shape or state[k].dtype != v.dtype)]  # fmt: skip
    if missing or unexpected or wrong:
        raise CheckpointError(
            f"{p} does not match YAMNet: missing {missing or 'none'}, unexpected {unexpected or 'none'}, "
            f"mismatches {wrong or 'none'}"
        )
    model.load_state_dict(state, strict=True)
    return model.to(device).eval()


def yamnet_class_names(path: str | Path = CLASS_MAP_FILE) -> list[str]:
    """The 521 AudioSet display names, in score order (shipped ``yamnet_class_map.csv``)."""
    p = Path(path)
    if not p.is_file():
        raise CheckpointError(f"YAMNet class map not found at {p} (shipped with the package as zoo/yamnet_class_map.csv)")
    with open(p, newline="") as f:
        rows = list(csv.DictReader(f))
    if len(rows) != NUM_CLASSES or any("display_name" not in r for r in rows):
        raise CheckpointError(f"{p}: expected {NUM_CLASSES} rows with a display_name column, got {len(rows)}")
    return [r["display_name"] for r in rows]


# --- windows over a recording ---------------------------------------------------------------------


def scores_at(
    model: YAMNet, wav16k: np.ndarray | Tensor, times: Sequence[float] | np.ndarray, batch_size: int = 64
) -> Tensor:
    """Scores (T, 521) of the 0.975 s windows centred on ``times`` (seconds) of a 16 kHz signal (N,).

    Windows follow :func:`avloc.io.audio.windows_at` (centre sample ``round(t * 16000)``, zero padding
    past the ends); they run through ``model`` ``batch_size`` at a time on the model's device.
    """
    from avloc.io.audio import windows_at

    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    sig = wav16k.detach().cpu().numpy() if isinstance(wav16k, Tensor) else np.asarray(wav16k)
    if sig.ndim != 1:
        raise MediaError(f"scores_at takes a mono signal (N,) at {SAMPLE_RATE} Hz, got shape {sig.shape}")
    win = windows_at(sig.astype(np.float32, copy=False), SAMPLE_RATE, list(times), WINDOW_SAMPLES / SAMPLE_RATE)
    device = next(model.parameters()).device
    out: list[Tensor] = []
    with torch.inference_mode():
        for i in range(0, win.shape[0], batch_size):
            chunk = torch.from_numpy(win[i : i + batch_size]).to(device)  # (b, 15600)
            out.append(model(chunk).float().cpu())  # (b, 521)
    return torch.cat(out) if out else torch.zeros(0, NUM_CLASSES)
