"""The CPU side of ``bench/gpu_check.sh``: its throughput script runs with ``--device cpu --steps 2``."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

BENCH = Path(__file__).resolve().parents[1] / "bench"
SMALL = ["--device", "cpu", "--steps", "2", "--warmup", "0", "--batch-size", "2", "--image-size", "32",
         "--audio-seconds", "0.5"]


def _script() -> ModuleType:
    spec = importlib.util.spec_from_file_location("gpu_throughput", BENCH / "speed" / "gpu_throughput.py")
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod  # dataclasses look their module up there
    spec.loader.exec_module(mod)
    return mod


def test_throughput_script_runs_on_cpu(capsys: pytest.CaptureFixture[str]) -> None:
    # AMP modes only in the slow test: once, in a full-suite run, EZ-VSL under CPU bf16 at this toy size (32 px,
    # batch 2, 1x1 maps) gave a NaN loss that did not reproduce in isolation (the script stops on it, as it should)
    text = _script().main([*SMALL, "--amp", "off", "--clip-seconds", "1"])
    rows = [r for r in text.splitlines() if r.startswith("| train") or r.startswith("| avloc")]
    assert len(rows) == 6 and "x real time" in rows[-1]
    for method in ("lvs", "ezvsl", "fnac", "slavc", "sslalign"):  # the default: LVS and the EZ-VSL family
        assert f"| train {method} (ResNet-18, 32px) | 2 | off |" in text


def test_throughput_configs_are_the_paper_methods() -> None:
    """Each timed method trains with its own loss and config: FNAC's terms, SLAVC's momentum and dropout, views."""
    mod = _script()
    fnac, slavc, ssl = (mod.paper_config(m, 224, 3.0) for m in ("fnac", "slavc", "sslalign"))
    assert fnac.tne_weight == fnac.fns_audio_weight == 100.0 and fnac.augment.hflip == 0.5
    assert slavc.heads == 2 and slavc.visual_dropout == 0.9 and slavc.momentum == 0.999
    assert ssl.augment.enabled and ssl.semantic_k == 0
    assert "--methods fnac,slavc,sslalign" in (BENCH / "gpu_check.sh").read_text()


def test_throughput_script_rejects_unknown_amp() -> None:
    with pytest.raises(SystemExit, match="unknown --amp"):
        _script().main([*SMALL, "--amp", "fp8"])


@pytest.mark.slow
def test_throughput_script_all_modes_on_cpu() -> None:
    text = _script().main([*SMALL, "--image-size", "64", "--clip-seconds", "0"])
    assert text.count("| train ") == 15  # 5 methods x 3 AMP modes


def test_gpu_check_sh_refuses_without_cuda() -> None:
    import torch

    if torch.cuda.is_available():
        pytest.skip("CUDA is available: the script would run the full check")

    r = subprocess.run(["bash", str(BENCH / "gpu_check.sh")], capture_output=True, text=True, env={"PYTHON": sys.executable,
                       "PATH": "/usr/bin:/bin", "PYTHONPATH": str(BENCH.parent / "src")})
    assert r.returncode != 0 and "CUDA is not available" in r.stderr


def test_loader_bench_runs_on_tiny_clips(tmp_path: Path) -> None:
    spec = importlib.util.spec_from_file_location("bench_loader", BENCH / "speed" / "loader.py")
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod
    spec.loader.exec_module(mod)
    text = mod.main(["--clips", "2", "--seconds", "1", "--width", "64", "--height", "48", "--workers", "0",
                     "--epochs", "1", "--keep", str(tmp_path)])
    assert "| mp4 clips | 0 |" in text and "| pre-extracted jpg + wav | 0 |" in text
