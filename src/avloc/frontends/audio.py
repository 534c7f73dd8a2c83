"""Audio front-ends in torch: the LVS spectrogram and a configurable log-mel.

* ``lvs``: ``scipy.signal.spectrogram(x, fs, nperseg=512, noverlap=274)``
  (Tukey(0.25) window, per-segment mean removal, one-sided PSD density),
  then ``log(S + 1e-7)`` and ``(S - mean) / std`` with fixed mean 0, std 12
  (LVS's ``Normalize(mean=[0.0], std=[12.0])``), see docs/protocols.md.
* ``logmel``: STFT (centred, reflect padding optional) -> power -> mel filter
  bank (Slaney or HTK scale) -> ``log(M + eps)`` or dB; covers DSOL (16 kHz,
  64 bands), the two-stage paper (22.05 kHz, 64 bands, n_fft 0.04 sr, hop
  0.02 sr) and "Less can be more" (16 kHz, 80 bands, 100 Hz hop).

Both return ``(B, 1, F, T)`` so any audio encoder can consume them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
from torch import nn

from avloc.config import ConfigValueError, check_positive, check_range
from avloc.errors import ConfigError

#: highest sample rate a config may ask for: 384 kHz, the top rate of current audio interfaces and codecs
MAX_SAMPLE_RATE = 384_000
#: longest audio window (s): the field's longest is LVS's 10 s test window; a minute is generous
MAX_WINDOW_SECONDS = 60.0


@dataclass
class AudioFrontendConfig:
    """Waveform window and spectrogram settings (defaults: LVS, 16 kHz, 3 s)."""

    sample_rate: int = 16000
    window_seconds: float = 3.0
    kind: Literal["lvs", "logmel"] = "lvs"
    # lvs spectrogram (scipy.signal.spectrogram defaults otherwise)
    nperseg: int = 512
    noverlap: int = 274
    log_eps: float = 1e-7
    norm_mean: float = 0.0
    norm_std: float = 12.0
    # log-mel
    n_fft: int = 512
    win_length: int | None = None
    hop_length: int = 160
    n_mels: int = 64
    fmin: float = 0.0
    fmax: float | None = None
    mel_scale: Literal["slaney", "htk"] = "slaney"
    center: bool = True
    power: float = 2.0
    log: Literal["log", "db"] = "log"
    mel_log_eps: float = 1e-6

    def __post_init__(self) -> None:
        check_range("sample_rate", self.sample_rate, 1, MAX_SAMPLE_RATE)
        check_range("window_seconds", self.window_seconds, 0, MAX_WINDOW_SECONDS, low_open=True)
        if self.kind == "lvs":
            self._check_lvs()
        elif self.kind == "logmel":
            self._check_logmel()
        else:
            raise ConfigValueError("kind", f"must be lvs or logmel, got {self.kind!r}")

    def _check_lvs(self) -> None:
        check_range("nperseg", self.nperseg, 1, self.num_samples)
        check_range("noverlap", self.noverlap, 0, self.nperseg - 1)
        check_positive(log_eps=self.log_eps, norm_std=self.norm_std)
        check_range("norm_mean", self.norm_mean)

    def _check_logmel(self) -> None:
        check_range("n_fft", self.n_fft, 2, self.num_samples)
        check_range("win_length", self.win_length or self.n_fft, 1, self.n_fft)
        check_range("hop_length", self.hop_length, 1, self.num_samples)
        check_range("n_mels", self.n_mels, 1, self.n_fft // 2 + 1)
        nyquist = self.sample_rate / 2
        fmax = nyquist if self.fmax is None else self.fmax
        check_range("fmin", self.fmin, 0, nyquist)
        check_range("fmax", fmax, self.fmin, nyquist, low_open=True)
        check_positive(power=self.power, mel_log_eps=self.mel_log_eps)

    @property
    def num_samples(self) -> int:
        return round(self.sample_rate * self.window_seconds)


def _tukey(n: int, alpha: float = 0.25) -> torch.Tensor:
    """Periodic Tukey window, as ``scipy.signal.get_window(('tukey', alpha), n)``."""
    m = n + 1  # periodic: symmetric window of n+1 points, last dropped
    x = np.arange(m, dtype=np.float64)
    w = np.ones(m)
    width = int(np.floor(alpha * (m - 1) / 2.0))
    n1 = x[: width + 1]
    w[: width + 1] = 0.5 * (1 + np.cos(np.pi * (-1 + 2.0 * n1 / alpha / (m - 1))))
    n3 = x[m - width - 1 :]
    w[m - width - 1 :] = 0.5 * (1 + np.cos(np.pi * (-2.0 / alpha + 1 + 2.0 * n3 / alpha / (m - 1))))
    return torch.from_numpy(w[:-1].astype(np.float32))


def hz_to_mel(f: np.ndarray, scale: str) -> np.ndarray:
    f = np.asarray(f, dtype=np.float64)
    if scale == "htk":
        return 2595.0 * np.log10(1.0 + f / 700.0)
    f_sp, min_log_hz = 200.0 / 3, 1000.0
    min_log_mel, logstep = min_log_hz / f_sp, math.log(6.4) / 27.0
    return np.where(f >= min_log_hz, min_log_mel + np.log(np.maximum(f, 1e-10) / min_log_hz) / logstep, f / f_sp)


def mel_to_hz(m: np.ndarray, scale: str) -> np.ndarray:
    m = np.asarray(m, dtype=np.float64)
    if scale == "htk":
        return 700.0 * (10.0 ** (m / 2595.0) - 1.0)
    f_sp, min_log_hz = 200.0 / 3, 1000.0
    min_log_mel, logstep = min_log_hz / f_sp, math.log(6.4) / 27.0
    return np.where(m >= min_log_mel, min_log_hz * np.exp(logstep * (m - min_log_mel)), f_sp * m)


def mel_filterbank(sr: int, n_fft: int, n_mels: int, fmin: float, fmax: float, scale: str) -> torch.Tensor:
    """(n_mels, n_fft // 2 + 1) triangular filters; Slaney area normalisation for ``slaney``."""
    freqs = np.linspace(0, sr / 2, n_fft // 2 + 1)
    pts = mel_to_hz(np.linspace(hz_to_mel(np.array(fmin), scale), hz_to_mel(np.array(fmax), scale), n_mels + 2), scale)
    fdiff = np.diff(pts)
    ramps = pts[:, None] - freqs[None, :]
    lower = -ramps[:-2] / fdiff[:-1, None]
    upper = ramps[2:] / fdiff[1:, None]
    fb = np.maximum(0, np.minimum(lower, upper))
    if scale == "slaney":
        fb *= (2.0 / (pts[2 : n_mels + 2] - pts[:n_mels]))[:, None]
    return torch.from_numpy(fb.astype(np.float32))


class AudioFrontend(nn.Module):
    """Waveform (B, N) -> spectrogram (B, 1, F, T), per :class:`AudioFrontendConfig`."""

    window: torch.Tensor
    melfb: torch.Tensor

    def __init__(self, cfg: AudioFrontendConfig) -> None:
        super().__init__()
        self.cfg = cfg
        if cfg.kind == "lvs":  # the settings were checked by the config (AudioFrontendConfig.__post_init__)
            self.register_buffer("window", _tukey(cfg.nperseg), persistent=False)
        else:
            win = cfg.win_length or cfg.n_fft
            fmax = cfg.fmax if cfg.fmax is not None else cfg.sample_rate / 2
            self.register_buffer("window", torch.hann_window(win, periodic=True), persistent=False)
            self.register_buffer(
                "melfb", mel_filterbank(cfg.sample_rate, cfg.n_fft, cfg.n_mels, cfg.fmin, fmax, cfg.mel_scale), persistent=False
            )

    def forward(self, wav: torch.Tensor) -> torch.Tensor:
        if wav.dim() == 1:
            wav = wav[None]
        if self.cfg.kind == "lvs":
            return self._lvs(wav)
        return self._logmel(wav)

    def _lvs(self, wav: torch.Tensor) -> torch.Tensor:
        cfg = self.cfg
        step = cfg.nperseg - cfg.noverlap
        if wav.shape[-1] < cfg.nperseg:
            raise ConfigError(f"audio of {wav.shape[-1]} samples is shorter than nperseg={cfg.nperseg}")
        seg = wav.float().unfold(-1, cfg.nperseg, step)  # (B, T, nperseg)
        seg = seg - seg.mean(dim=-1, keepdim=True)  # detrend='constant'
        spec = torch.fft.rfft(seg * self.window, dim=-1)  # (B, T, F)
        psd = spec.real.square() + spec.imag.square()
        psd = psd / (cfg.sample_rate * self.window.square().sum())
        if cfg.nperseg % 2 == 0:
            psd[..., 1:-1] *= 2
        else:
            psd[..., 1:] *= 2
        out = torch.log(psd + cfg.log_eps)
        out = (out - cfg.norm_mean) / cfg.norm_std
        return out.transpose(-1, -2).unsqueeze(1)  # (B, 1, F, T)

    def _logmel(self, wav: torch.Tensor) -> torch.Tensor:
        cfg = self.cfg
        win = cfg.win_length or cfg.n_fft
        spec = torch.stft(
            wav.float(), n_fft=cfg.n_fft, hop_length=cfg.hop_length, win_length=win, window=self.window,
            center=cfg.center, pad_mode="reflect", return_complex=True,
        )  # (B, F, T)
        power = spec.abs().pow(cfg.power)
        mel = torch.matmul(self.melfb, power)  # (B, n_mels, T)
        if cfg.log == "db":
            out = 10.0 * torch.log10(mel.clamp_min(cfg.mel_log_eps))
        else:
            out = torch.log(mel + cfg.mel_log_eps)
        return out.unsqueeze(1)

    def num_frames(self, num_samples: int) -> int:
        cfg = self.cfg
        if cfg.kind == "lvs":
            return (num_samples - cfg.nperseg) // (cfg.nperseg - cfg.noverlap) + 1
        return num_samples // cfg.hop_length + 1 if cfg.center else (num_samples - cfg.n_fft) // cfg.hop_length + 1
