"""YAMNet in torch (``avloc.methods.avsemantic.yamnet``) against the TFLite file and a NumPy re-derivation.

The TFLite comparisons need the shared data (``$AVLOC_DATA`` or ``../shared/data``: ``yamnet/yamnet.tflite``
and ``realclips_dev/*.mp4``) and ``ai_edge_litert``; they skip with the reason otherwise.
"""

from __future__ import annotations

import math
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from avloc.errors import CheckpointError, MediaError
from avloc.methods.avsemantic import yamnet as Y
from conftest import REPO, data_dir

#: clips and window centres (s) of the end-to-end comparison
CLIPS = ("baby_crying.mp4", "dog_pomeranian_bark.mp4", "speech_tedx_talk.mp4")
CENTRES = (0.0, 1.7, 3.4, 5.1)
NOISE_STD = 0.1


def _tflite_path() -> Path:
    pytest.importorskip("ai_edge_litert", reason="ai-edge-litert not installed (pip install 'avloc[tagger]')")
    d = data_dir()
    if d is None or not (d / "yamnet" / "yamnet.tflite").is_file():
        pytest.skip("yamnet/yamnet.tflite not found: set AVLOC_DATA or place the shared data at ../shared/data")
    return d / "yamnet" / "yamnet.tflite"


def _expose_intermediates(src: Path, dst: Path) -> dict[str, Any]:
    """Copy of the TFLite model whose outputs also include the log-mel, every conv output and the embedding.

    Returns the tensor indices: ``logmel``, ``convs`` (stem, then depthwise/pointwise per block), ``emb``, ``scores``.
    """
    import flatbuffers
    from ai_edge_litert import schema_py_generated as schema

    model = schema.ModelT.InitFromObj(schema.Model.GetRootAsModel(src.read_bytes(), 0))
    sg = model.subgraphs[0]
    B = schema.BuiltinOperator

    def code(op: Any) -> int:
        c = model.operatorCodes[op.opcodeIndex]
        return int(max(c.builtinCode, c.deprecatedBuiltinCode))

    convs = [int(op.outputs[0]) for op in sg.operators if code(op) in (B.CONV_2D, B.DEPTHWISE_CONV_2D)]
    (emb,) = [int(op.outputs[0]) for op in sg.operators if code(op) == B.MEAN]
    (logmel,) = [int(op.outputs[0]) for op in sg.operators if code(op) == B.LOG]
    scores = int(sg.outputs[0])
    sg.outputs = [*list(sg.outputs), *convs, emb]
    b = flatbuffers.Builder(0)
    b.Finish(model.Pack(b), file_identifier=b"TFL3")
    dst.write_bytes(b.Output())
    return {"logmel": logmel, "convs": convs, "emb": emb, "scores": scores}


@pytest.fixture(scope="module")
def tflite(tmp_path_factory: pytest.TempPathFactory) -> tuple[Any, dict[str, Any]]:
    """The TFLite interpreter (default CPU path, XNNPACK) on the model with intermediates exposed."""
    from ai_edge_litert.interpreter import Interpreter

    path = tmp_path_factory.mktemp("yamnet") / "yamnet_all.tflite"
    idx = _expose_intermediates(_tflite_path(), path)
    it = Interpreter(model_path=str(path))
    it.allocate_tensors()
    return it, idx


def _run_tflite(it: Any, idx: dict[str, Any], wav: np.ndarray) -> dict[str, Any]:
    it.set_tensor(it.get_input_details()[0]["index"], wav[None].astype(np.float32))
    it.invoke()
    return {
        "scores": it.get_tensor(idx["scores"])[0].copy(),  # (521,)
        "logmel": it.get_tensor(idx["logmel"]).copy(),  # (96, 64)
        "convs": [torch.from_numpy(it.get_tensor(i).copy()).permute(0, 3, 1, 2) for i in idx["convs"]],  # NCHW
        "emb": it.get_tensor(idx["emb"]).copy(),  # (1, 1024)
    }


@pytest.fixture(scope="module")
def model() -> Y.YAMNet:
    return Y.load_yamnet()


@pytest.fixture(scope="module")
def windows() -> np.ndarray:
    """(N, 15600): windows of real clips (decoded, resampled to 16 kHz), silence and white noise."""
    d = data_dir()
    if d is None or not (d / "realclips_dev").is_dir():
        pytest.skip("realclips_dev not found: set AVLOC_DATA or place the shared data at ../shared/data")
    from avloc.io.audio import resample, windows_at
    from avloc.io.media import decode_audio

    out = []
    for name in CLIPS:
        wav, sr = decode_audio(d / "realclips_dev" / name)
        out.append(windows_at(resample(wav, sr, Y.SAMPLE_RATE), Y.SAMPLE_RATE, list(CENTRES), Y.WINDOW_SAMPLES / Y.SAMPLE_RATE))
    rng = np.random.default_rng(0)
    out.append(np.zeros((1, Y.WINDOW_SAMPLES), np.float32))
    out.append((rng.standard_normal((2, Y.WINDOW_SAMPLES)) * NOISE_STD).astype(np.float32))
    return np.concatenate(out).astype(np.float32)


# --- (a) against the TFLite model ----------------------------------------------------------------


def test_each_stage_matches_tflite(model: Y.YAMNet, tflite: tuple[Any, dict[str, Any]], windows: np.ndarray) -> None:
    """Given the TFLite's own input tensor, every stage reproduces its output.

    The stem and depthwise convs (float ops) match bit for bit; the int8 stages match to 1e-5 except
    where an input lies on (or within an ulp of) an int8 rounding boundary, which TFLite rounds the
    other way: measured 5 of ~80,000 pointwise-conv pixels here, and 1 log-mel patch in 23.
    """
    it, idx = tflite
    logmel_bad = pixels = pixels_bad = 0
    for wav in windows:
        ref = _run_tflite(it, idx, wav)
        with torch.no_grad():
            lm = model.log_mel(torch.from_numpy(wav[None]))[0].numpy()
            logmel_bad += int(np.abs(lm - ref["logmel"]).max() > 1e-4)
            lm_ref = torch.from_numpy(ref["logmel"])[None, None]
            stem = torch.relu(Y.conv3x3_fma(lm_ref, model.stem, Y.STEM_STRIDE, Y.STEM_TAPS))
            assert torch.equal(stem, ref["convs"][0])
            for i, block in enumerate(model.blocks):
                assert isinstance(block, Y.SeparableBlock)
                hin, dw_ref, pw_ref = ref["convs"][2 * i], ref["convs"][2 * i + 1], ref["convs"][2 * i + 2]
                dw = torch.relu(Y.conv3x3_fma(hin, block.depthwise, block.stride, Y.DEPTHWISE_TAPS))
                assert torch.equal(dw, dw_ref), f"block {i} depthwise"
                pw = torch.relu(block.pointwise(dw_ref.permute(0, 2, 3, 1)))  # (1, H, W, C)
                err = (pw - pw_ref.permute(0, 2, 3, 1)).abs().amax(dim=-1)  # (1, H, W) per pixel
                pixels += err.numel()
                pixels_bad += int((err > 1e-5 * max(float(pw_ref.abs().max()), 1.0)).sum())
            emb = ref["convs"][-1].mean(dim=(2, 3))
            assert np.abs(emb.numpy() - ref["emb"]).max() < 1e-5
            scores = model.classify(torch.from_numpy(ref["emb"]))[0].numpy()
            assert np.abs(scores - ref["scores"]).max() < 1e-5
    assert logmel_bad <= 0.1 * len(windows), logmel_bad
    assert pixels_bad <= 1e-3 * pixels, (pixels_bad, pixels)


def test_scores_match_tflite_end_to_end(model: Y.YAMNet, tflite: tuple[Any, dict[str, Any]], windows: np.ndarray) -> None:
    """End to end the int8 roundings amplify ~1e-7 float differences (module doc): bounded, mostly exact."""
    it, idx = tflite
    ref = np.stack([_run_tflite(it, idx, w)["scores"] for w in windows])  # (N, 521)
    with torch.no_grad():
        ours = model(torch.from_numpy(windows)).numpy()
    diff = np.abs(ours - ref).max(axis=1)  # (N,)
    # bench/paper/avsemantic/compare_yamnet.py on 169 windows: max 0.032, median 0.0016, 30 % of windows < 1e-4, top-1 always agrees
    assert diff.max() < 0.05, diff
    assert np.median(diff) < 0.01, diff
    assert (ours.argmax(1) == ref.argmax(1)).mean() >= 0.9
    assert diff[-3] < 1e-6  # silence


# --- (b) the log-mel front end against NumPy -----------------------------------------------------


def _np_mel_matrix() -> np.ndarray:
    """TF ``linear_to_mel_weight_matrix`` (HTK mel, first bin zeroed), re-derived: (257, 64)."""

    def hz_to_mel(f: np.ndarray) -> np.ndarray:
        return 1127.0 * np.log1p(f / 700.0)

    bins = np.linspace(0.0, Y.SAMPLE_RATE / 2, Y.NUM_BINS)[1:]
    spec_mel = hz_to_mel(bins)[:, None]
    edges = np.linspace(hz_to_mel(np.array(Y.MEL_MIN_HZ)), hz_to_mel(np.array(Y.MEL_MAX_HZ)), Y.MEL_BANDS + 2)
    lower, centre, upper = edges[:-2], edges[1:-1], edges[2:]
    w = np.maximum(0.0, np.minimum((spec_mel - lower) / (centre - lower), (upper - spec_mel) / (upper - centre)))
    return np.pad(w, [[1, 0], [0, 0]])


def _np_dft() -> tuple[np.ndarray, np.ndarray]:
    """Real and imaginary parts of the first 257 rows of the 512-point DFT matrix ``exp(+2 pi i k n / N)``: (257, 512)."""
    k = np.arange(Y.NUM_BINS)[:, None]
    n = np.arange(Y.FFT_LENGTH)[None, :]
    ang = 2 * np.pi * k * n / Y.FFT_LENGTH
    return np.cos(ang), np.sin(ang)


def test_shipped_frontend_constants_are_yamnets(model: Y.YAMNet) -> None:
    """The shipped window, DFT and mel matrices are YAMNet's, the matrices rounded to int8 per tensor."""
    fe = model.frontend
    hann = 0.5 - 0.5 * np.cos(2 * np.pi * np.arange(Y.FRAME_SAMPLES) / Y.FRAME_SAMPLES)  # periodic
    assert np.abs(fe.window.numpy() - hann).max() < 1e-6
    for w, ref in zip((fe.dft_real, fe.dft_imag, fe.mel_matrix), (*_np_dft(), _np_mel_matrix().T)):
        scale = float(w.scale)
        assert math.isclose(scale, np.abs(ref).max() / 127, rel_tol=1e-3)
        assert np.abs(w.dequantized().numpy() - ref).max() <= scale / 2 + 1e-5


def _np_log_mel(wav: np.ndarray, window: np.ndarray, dft_r: np.ndarray, dft_i: np.ndarray, mel: np.ndarray) -> np.ndarray:
    """NumPy log-mel of one window (float64): framing, window, centred padding, DFT, magnitude, mel, log."""
    starts = np.arange(0, wav.size - Y.FRAME_SAMPLES + 1, Y.HOP_SAMPLES)
    frames = np.stack([wav[s : s + Y.FRAME_SAMPLES] for s in starts]) * window  # (96, 400)
    left = (Y.FFT_LENGTH - Y.FRAME_SAMPLES) // 2
    frames = np.pad(frames, [[0, 0], [left, Y.FFT_LENGTH - Y.FRAME_SAMPLES - left]])  # (96, 512)
    mag = np.hypot(frames @ dft_r.T, frames @ dft_i.T)  # (96, 257)
    return np.log(mag @ mel.T + Y.LOG_OFFSET)  # (96, 64)


def test_log_mel_against_numpy() -> None:
    """Float path of the front end against a NumPy re-derivation; exact DFT equals ``np.fft.rfft``."""
    model = Y.load_yamnet(match_tflite=False)
    fe = model.frontend
    rng = np.random.default_rng(1)
    wav = (rng.standard_normal(Y.WINDOW_SAMPLES) * NOISE_STD).astype(np.float32)
    wav += 0.5 * np.sin(2 * np.pi * 440 * np.arange(Y.WINDOW_SAMPLES) / Y.SAMPLE_RATE).astype(np.float32)
    deq = [w.dequantized().double().numpy() for w in (fe.dft_real, fe.dft_imag, fe.mel_matrix)]
    ref = _np_log_mel(wav.astype(np.float64), fe.window.double().numpy(), *deq)
    with torch.no_grad():
        ours = model.log_mel(torch.from_numpy(wav[None]))[0].numpy()
    assert ours.shape == (Y.PATCH_FRAMES, Y.MEL_BANDS)
    assert np.abs(ours - ref).max() < 1e-3  # float32 vs float64, |d log| <= |d mel| / 0.001
    # the exact DFT matrices of the re-derivation are the FFT (|X_k| is conjugation-invariant)
    dft_r, dft_i = _np_dft()
    frame = np.pad(wav[: Y.FRAME_SAMPLES].astype(np.float64), (56, 56))
    assert np.allclose(np.hypot(dft_r @ frame, dft_i @ frame), np.abs(np.fft.rfft(frame)), atol=1e-8)


def test_quantize_int8_roundtrip() -> None:
    x = torch.tensor([[-1.0, 0.0, 0.5, 2.0], [0.0, 0.0, 0.0, 0.0], [0.1, 0.2, 0.3, 0.4]])
    q, s = Y.quantize_int8(x)
    assert torch.equal(q, q.round()) and float(q.abs().max()) <= Y.QMAX - Y.QMIN
    assert torch.allclose(q * s, x, atol=float(s.max()) / 2 + 1e-7)
    assert torch.equal(q[1], torch.zeros(4))  # an all-zero row stays zero


# --- (c) batching ---------------------------------------------------------------------------------


def test_batched_equals_one_by_one(model: Y.YAMNet) -> None:
    rng = np.random.default_rng(2)
    x = torch.from_numpy((rng.standard_normal((4, Y.WINDOW_SAMPLES)) * NOISE_STD).astype(np.float32))
    with torch.no_grad():
        batched = model(x)
        single = torch.cat([model(x[i : i + 1]) for i in range(4)])
        assert model.embeddings(x).shape == (4, Y.EMBEDDING_DIM)
        assert model.log_mel(x).shape == (4, Y.PATCH_FRAMES, Y.MEL_BANDS)
    assert batched.shape == (4, Y.NUM_CLASSES)
    assert torch.allclose(batched, single, atol=1e-5, rtol=0)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_cuda_matches_cpu(model: Y.YAMNet) -> None:
    """Same module on CUDA: float ops may differ by an ulp there, so int8 flips bound it like TFLite (module doc)."""
    rng = np.random.default_rng(4)
    x = torch.from_numpy((rng.standard_normal((8, Y.WINDOW_SAMPLES)) * NOISE_STD).astype(np.float32))
    gpu = Y.load_yamnet("cuda")
    with torch.no_grad():
        cpu_s, cuda_s = model(x), gpu(x.cuda()).cpu()
        assert gpu.log_mel(x.cuda()).is_cuda
    assert float((cpu_s - cuda_s).abs().max()) < 0.05
    assert Y.scores_at(gpu, x[0].numpy(), [0.5]).shape == (1, Y.NUM_CLASSES)


def test_scores_at_uses_window_at(model: Y.YAMNet) -> None:
    from avloc.io.audio import window_at

    rng = np.random.default_rng(3)
    wav = (rng.standard_normal(2 * Y.SAMPLE_RATE) * NOISE_STD).astype(np.float32)
    times = [0.0, 0.7, 2.0]
    s = Y.scores_at(model, wav, times, batch_size=2)
    assert s.shape == (3, Y.NUM_CLASSES)
    with torch.no_grad():
        ref = model(torch.from_numpy(window_at(wav, Y.SAMPLE_RATE, 0.7, Y.WINDOW_SAMPLES / Y.SAMPLE_RATE))[None])
    assert torch.allclose(s[1], ref[0], atol=1e-5, rtol=0)
    assert Y.scores_at(model, torch.from_numpy(wav), [], batch_size=2).shape == (0, Y.NUM_CLASSES)
    with pytest.raises(MediaError):
        Y.scores_at(model, wav[None], times)
    with pytest.raises(MediaError):
        model(torch.zeros(1, 16000))


# --- (d) class names, (e) packaged files ----------------------------------------------------------


def test_class_names() -> None:
    names = Y.yamnet_class_names()
    assert len(names) == Y.NUM_CLASSES == 521
    assert names[0] == "Speech"


def test_load_errors(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="not found"):
        Y.load_yamnet(path=tmp_path / "missing.safetensors")
    from safetensors.torch import load_file, save_file

    state = load_file(str(Y.WEIGHTS_FILE))
    state["classifier.bias"] = torch.zeros(3)
    bad = tmp_path / "bad.safetensors"
    save_file(state, str(bad))
    with pytest.raises(CheckpointError, match=r"classifier\.bias"):
        Y.load_yamnet(path=bad)
    del state["classifier.bias"]
    save_file(state, str(bad))
    with pytest.raises(CheckpointError, match="missing"):
        Y.load_yamnet(path=bad)
    (tmp_path / "junk.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(CheckpointError):
        Y.load_yamnet(path=tmp_path / "junk.safetensors")


_OPENED: list[str] = []
_WATCH: list[bool] = []


def _audit(event: str, args: tuple[Any, ...]) -> None:
    if _WATCH and event == "open" and isinstance(args[0], str | Path):
        _OPENED.append(str(args[0]))


def test_loads_from_package_files_only() -> None:
    """Weights and class names come from the package: no file outside it is opened (modules aside)."""
    pkg = Path(Y.__file__).resolve().parents[2]
    assert Y.WEIGHTS_FILE.parent == Y.CLASS_MAP_FILE.parent == pkg / "zoo"
    if not any(h is _audit for h in getattr(sys, "_audit_hooks", [])):
        sys.addaudithook(_audit)  # inert unless _WATCH is set; audit hooks cannot be removed
    _OPENED.clear()
    _WATCH.append(True)
    try:
        m = Y.load_yamnet()
        names = Y.yamnet_class_names()
    finally:
        _WATCH.clear()
    assert len(names) == Y.NUM_CLASSES and isinstance(m, Y.YAMNet)
    code = (".py", ".pyc", ".so")  # modules imported on first use
    outside = [p for p in _OPENED if not p.endswith(code) and not Path(p).resolve().is_relative_to(pkg)]
    assert not outside, outside
    assert any(p.endswith("yamnet_class_map.csv") for p in _OPENED)  # (safetensors opens from Rust, unaudited)


@pytest.mark.slow
def test_loads_in_a_clean_process_without_shared_data(tmp_path: Path) -> None:
    """The same in a fresh interpreter without ``AVLOC_DATA``, refusing any path with 'shared' in it."""
    code = (
        "import sys\n"
        "def hook(event, args):\n"
        "    if event == 'open' and isinstance(args[0], str) and 'shared' in args[0]:\n"
        "        raise RuntimeError('opened ' + args[0])\n"
        "sys.addaudithook(hook)\n"
        "import torch\n"
        "from avloc.methods.avsemantic.yamnet import load_yamnet, yamnet_class_names\n"
        "m = load_yamnet()\n"
        "assert m(torch.zeros(1, 15600)).shape == (1, 521)\n"
        "assert len(yamnet_class_names()) == 521\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "AVLOC_DATA"}
    env["PYTHONPATH"] = str(REPO / "src")
    r = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
