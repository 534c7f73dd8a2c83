"""Audio and image front-ends against independent computations (SciPy, NumPy, OpenCV)."""

from __future__ import annotations

import math

import cv2
import numpy as np
import pytest
import scipy.signal
import torch

from avloc.frontends.audio import AudioFrontend, AudioFrontendConfig, hz_to_mel, mel_filterbank, mel_to_hz
from avloc.frontends.image import (
    ImageConfig,
    apply_crop,
    crop_geometry,
    hflip,
    normalize,
    preprocess_image,
    random_resized_crop,
    resize,
    sample_resized_crop,
    transform_boxes,
)

# ---------------------------------------------------------------- audio: LVS


def _test_signal(n: int, sr: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    t = np.arange(n) / sr
    return (0.3 * np.sin(2 * np.pi * 440.0 * t) + 0.1 * rng.standard_normal(n) + 0.05).astype(np.float32)


@pytest.mark.parametrize("n", [48000, 16000, 512, 1000])
def test_lvs_spectrogram_matches_scipy(n: int) -> None:
    """LVS: scipy.signal.spectrogram(x, 16000, nperseg=512, noverlap=274), log(S + 1e-7) / 12."""
    x = _test_signal(n, 16000)
    _, _, s = scipy.signal.spectrogram(x.astype(np.float64), 16000, nperseg=512, noverlap=274)  # (F, T)
    expected = np.log(s + 1e-7) / 12.0
    fe = AudioFrontend(AudioFrontendConfig(kind="lvs"))
    got = fe(torch.from_numpy(x)[None])  # (1, 1, F, T)
    assert got.shape == (1, 1, 257, expected.shape[1])
    assert fe.num_frames(n) == expected.shape[1]
    np.testing.assert_allclose(got[0, 0].numpy(), expected, atol=2e-4, rtol=0)


def test_lvs_spectrogram_batch_and_short_input() -> None:
    x = np.stack([_test_signal(8000, 16000, seed) for seed in range(3)])
    fe = AudioFrontend(AudioFrontendConfig(kind="lvs"))
    batch = fe(torch.from_numpy(x))
    for i in range(3):
        torch.testing.assert_close(batch[i], fe(torch.from_numpy(x[i]))[0])
    with pytest.raises(Exception, match="shorter than nperseg"):
        fe(torch.zeros(1, 100))


# ---------------------------------------------------------------- audio: log-mel (independent NumPy)


def _np_hz_to_mel(f: np.ndarray, scale: str) -> np.ndarray:
    if scale == "htk":  # O'Shaughnessy 1987 / HTK book: 2595 log10(1 + f / 700)
        return 2595.0 * np.log10(1.0 + f / 700.0)
    # Slaney's Auditory Toolbox: 3 mels per 200 Hz below 1 kHz, 27 log-spaced steps per factor 6.4 above.
    lin = f * 3.0 / 200.0
    return np.where(f < 1000.0, lin, 15.0 + 27.0 * np.log(np.maximum(f, 1e-10) / 1000.0) / np.log(6.4))


def _np_mel_to_hz(m: np.ndarray, scale: str) -> np.ndarray:
    if scale == "htk":
        return 700.0 * (10.0 ** (m / 2595.0) - 1.0)
    return np.where(m < 15.0, m * 200.0 / 3.0, 1000.0 * np.exp((m - 15.0) * np.log(6.4) / 27.0))


def _np_filterbank(sr: int, n_fft: int, n_mels: int, fmin: float, fmax: float, scale: str) -> np.ndarray:
    """Triangles between consecutive mel-spaced edges, evaluated at the FFT bin frequencies."""
    lo_hi = _np_hz_to_mel(np.array([fmin, fmax], dtype=np.float64), scale)
    edges = _np_mel_to_hz(np.linspace(lo_hi[0], lo_hi[1], n_mels + 2), scale)
    bins = np.arange(n_fft // 2 + 1) * sr / n_fft
    fb = np.zeros((n_mels, bins.size))
    for m in range(n_mels):
        lo, c, hi = edges[m], edges[m + 1], edges[m + 2]
        for k, f in enumerate(bins):
            if lo < f <= c:
                fb[m, k] = (f - lo) / (c - lo)
            elif c < f < hi:
                fb[m, k] = (hi - f) / (hi - c)
        if scale == "slaney":  # unit area per triangle (Slaney's "norm='slaney'")
            fb[m] *= 2.0 / (hi - lo)
    return fb


def _np_logmel(x: np.ndarray, cfg: AudioFrontendConfig) -> np.ndarray:
    win = cfg.win_length or cfg.n_fft
    w = 0.5 - 0.5 * np.cos(2 * np.pi * np.arange(win) / win)  # periodic Hann
    lpad = (cfg.n_fft - win) // 2
    w = np.pad(w, (lpad, cfg.n_fft - win - lpad))  # centred in the n_fft frame, as torch.stft
    if cfg.center:
        x = np.pad(x, (cfg.n_fft // 2, cfg.n_fft // 2), mode="reflect")
    n_frames = 1 + (x.size - cfg.n_fft) // cfg.hop_length
    frames = np.stack([x[i * cfg.hop_length : i * cfg.hop_length + cfg.n_fft] for i in range(n_frames)])  # (T, n_fft)
    power = np.abs(np.fft.rfft(frames * w, axis=-1)) ** cfg.power  # (T, F)
    fmax = cfg.fmax if cfg.fmax is not None else cfg.sample_rate / 2
    mel = _np_filterbank(cfg.sample_rate, cfg.n_fft, cfg.n_mels, cfg.fmin, fmax, cfg.mel_scale) @ power.T  # (M, T)
    if cfg.log == "db":
        return 10.0 * np.log10(np.maximum(mel, cfg.mel_log_eps))
    return np.log(mel + cfg.mel_log_eps)


LOGMEL_SETTINGS = {
    "dsol_16k_64_htk": AudioFrontendConfig(
        kind="logmel", sample_rate=16000, n_fft=512, hop_length=160, n_mels=64, mel_scale="htk"
    ),
    "dsol_16k_64_slaney": AudioFrontendConfig(kind="logmel", sample_rate=16000, n_fft=512, hop_length=160, n_mels=64),
    "two_stage_22k": AudioFrontendConfig(
        kind="logmel", sample_rate=22050, n_fft=882, hop_length=441, n_mels=64, mel_scale="htk"
    ),
    "less_is_more_80": AudioFrontendConfig(
        kind="logmel",
        sample_rate=16000,
        n_fft=512,
        win_length=400,
        hop_length=160,
        n_mels=80,
        fmin=50.0,
        fmax=7600.0,
        log="db",
    ),
    "no_center_power1": AudioFrontendConfig(
        kind="logmel", sample_rate=16000, n_fft=400, hop_length=200, n_mels=40, center=False, power=1.0
    ),
}


@pytest.mark.parametrize("name", sorted(LOGMEL_SETTINGS))
def test_logmel_matches_numpy(name: str) -> None:
    cfg = LOGMEL_SETTINGS[name]
    x = _test_signal(cfg.sample_rate, cfg.sample_rate)  # 1 s
    expected = _np_logmel(x.astype(np.float64), cfg)  # (M, T)
    fe = AudioFrontend(cfg)
    got = fe(torch.from_numpy(x)[None])[0, 0].numpy()
    assert got.shape == expected.shape
    assert fe.num_frames(x.size) == expected.shape[1]
    scale = 10.0 / math.log(10) if cfg.log == "db" else 1.0  # compare in natural-log units
    np.testing.assert_allclose(got / scale, expected / scale, atol=2e-3, rtol=0)


@pytest.mark.parametrize("scale", ["htk", "slaney"])
def test_mel_filterbank_matches_numpy(scale: str) -> None:
    got = mel_filterbank(16000, 512, 64, 20.0, 8000.0, scale).numpy()
    np.testing.assert_allclose(got, _np_filterbank(16000, 512, 64, 20.0, 8000.0, scale), rtol=1e-5, atol=1e-7)


def test_mel_scale_hand_checked_values() -> None:
    # Slaney: linear 200/3 Hz per mel up to 1 kHz = 15 mel; 6.4x frequency = 27 mel above.
    np.testing.assert_allclose(
        hz_to_mel(np.array([0.0, 200.0 / 3, 1000.0, 6400.0]), "slaney"), [0.0, 1.0, 15.0, 42.0], atol=1e-9
    )
    # HTK: 1000 Hz ~ 1000 mel (by construction of 2595 log10(1 + f/700)).
    np.testing.assert_allclose(hz_to_mel(np.array([1000.0]), "htk"), [999.9855], atol=1e-3)
    f = np.array([30.0, 700.0, 1500.0, 7000.0])
    for s in ("htk", "slaney"):
        np.testing.assert_allclose(mel_to_hz(hz_to_mel(f, s), s), f, rtol=1e-9)
    # Slaney-normalised triangles have unit area (in Hz) when wider than a few bins.
    fb = mel_filterbank(16000, 4096, 40, 0.0, 8000.0, "slaney").numpy()
    area = fb.sum(axis=1) * (16000 / 4096)
    np.testing.assert_allclose(area[5:], 1.0, atol=0.02)
    # HTK triangles peak at 1 (a bin falls near each centre with this fine resolution).
    assert np.all(mel_filterbank(16000, 4096, 40, 0.0, 8000.0, "htk").numpy().max(axis=1)[5:] > 0.95)


# ---------------------------------------------------------------- image


def test_resize_upscale_matches_cv2() -> None:
    rng = np.random.default_rng(0)
    img = rng.random((37, 53, 3), dtype=np.float32)  # (H, W, 3)
    for out_hw in [(100, 120), (37, 200), (64, 64)]:
        ref = cv2.resize(img, (out_hw[1], out_hw[0]), interpolation=cv2.INTER_LINEAR)  # (H', W', 3)
        got = resize(torch.from_numpy(img).permute(2, 0, 1), out_hw).permute(1, 2, 0).numpy()
        np.testing.assert_allclose(got, ref, atol=1e-5)


def _box_image(h: int, w: int, box: tuple[int, int, int, int]) -> torch.Tensor:
    img = torch.zeros(3, h, w)
    x1, y1, x2, y2 = box
    img[:, y1:y2, x1:x2] = 1.0
    return img


def _bbox_of_mask(mask: torch.Tensor) -> tuple[int, int, int, int]:
    ys, xs = torch.nonzero(mask, as_tuple=True)
    return int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1


@pytest.mark.parametrize(
    ("hw", "box", "cfg"),
    [
        ((300, 401), (60, 40, 250, 200), ImageConfig(mode="crop", resize=256, size=224)),
        ((480, 640), (10, 100, 300, 470), ImageConfig(mode="crop", resize=224, size=224)),  # box cut by the crop
        ((401, 300), (30, 150, 280, 330), ImageConfig(mode="crop", resize=256, size=224)),
        ((240, 320), (50, 30, 200, 180), ImageConfig(mode="squash", size=224)),
        ((120, 90), (10, 20, 70, 100), ImageConfig(mode="crop", resize=256, size=224)),  # upscaling
    ],
)
def test_boxes_follow_preprocessing(hw: tuple[int, int], box: tuple[int, int, int, int], cfg: ImageConfig) -> None:
    """A box drawn in the original image lands where transform_boxes says after preprocess_image."""
    h, w = hw
    out = preprocess_image(_box_image(h, w, box), cfg)
    assert out.shape == (3, cfg.size, cfg.size)
    drawn = _bbox_of_mask(out[0] > 0.5)
    predicted = (transform_boxes(torch.tensor([box]), (h, w), cfg)[0] * cfg.size).tolist()
    np.testing.assert_allclose(drawn, predicted, atol=1.0)
    # crop_geometry describes the same mapping: input pixel = orig * scale - offset
    sx, sy, ox, oy = crop_geometry(h, w, cfg)
    x1, y1, x2, y2 = box
    mapped = np.clip([x1 * sx - ox, y1 * sy - oy, x2 * sx - ox, y2 * sy - oy], 0, cfg.size)
    np.testing.assert_allclose(mapped, predicted, atol=1e-4)


def test_preprocess_uint8_hwc_and_normalize() -> None:
    rng = np.random.default_rng(1)
    arr = rng.integers(0, 256, (50, 70, 3), dtype=np.uint8)
    cfg = ImageConfig(mode="squash", size=32)
    a = preprocess_image(torch.from_numpy(arr), cfg)
    b = preprocess_image(torch.from_numpy(arr).permute(2, 0, 1).float() / 255.0, cfg)
    torch.testing.assert_close(a, b)
    x = torch.rand(2, 3, 4, 4)
    n = normalize(x, (0.5, 0.25, 0.0), (0.5, 2.0, 1.0))
    torch.testing.assert_close(n[:, 1], (x[:, 1] - 0.25) / 2.0)


def test_hflip() -> None:
    x = torch.arange(2 * 3 * 4 * 5, dtype=torch.float32).reshape(2, 3, 4, 5)
    f = hflip(x)
    for j in range(5):
        torch.testing.assert_close(f[..., j], x[..., 4 - j])
    torch.testing.assert_close(hflip(f), x)


def test_random_resized_crop_deterministic_with_seed() -> None:
    img = torch.rand(3, 120, 160)
    outs = [random_resized_crop(img, 64, generator=torch.Generator().manual_seed(7)) for _ in range(2)]
    assert outs[0].shape == (3, 64, 64)
    torch.testing.assert_close(outs[0], outs[1])
    boxes = {
        sample_resized_crop(120, 160, (0.5, 1.0), (3 / 4, 4 / 3), torch.Generator().manual_seed(s)) for s in range(20)
    }
    assert len(boxes) > 10  # different seeds give different crops
    for x1, y1, x2, y2 in boxes:
        assert 0 <= x1 < x2 <= 160 and 0 <= y1 < y2 <= 120
        assert 0.5 * 120 * 160 * 0.95 <= (x2 - x1) * (y2 - y1) <= 120 * 160
        assert 3 / 4 - 0.05 <= (x2 - x1) / (y2 - y1) <= 4 / 3 + 0.05
    box = next(iter(boxes))
    torch.testing.assert_close(apply_crop(img, box, 64), resize(img[:, box[1] : box[3], box[0] : box[2]], (64, 64)))
