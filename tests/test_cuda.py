"""The GPU path: every trainable method under AMP, Grad-CAM under the gradient scaler, CPU vs GPU parity.

Marked ``cuda``; skipped (with the reason) where CUDA is not available. On a GPU
machine run ``bench/gpu_check.sh`` (these tests, then the throughput table) or
``pytest -m cuda tests/test_cuda.py``.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import torch

from avloc.methods import create_method, list_methods
from avloc.registry import METHODS

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA is not available: run on a GPU (bench/gpu_check.sh)"),
]

from test_baselines import STACK, tiny_batch, tiny_config  # noqa: E402  (shared tiny configs)

TRAINABLE = [n for n in list_methods() if not METHODS.get(n).training_free]
AMP_DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16}
STEPS = 3


def _to(batch: dict[str, Any], device: str) -> dict[str, Any]:
    return {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}


@pytest.fixture
def no_tf32() -> Iterator[None]:
    """fp32 means fp32: TF32 matmuls / convolutions off for the parity checks."""
    old = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = old


def _amp_steps(name: str, dtype: torch.dtype, cfg: dict[str, Any] | None = None) -> list[float]:
    """``STEPS`` optimiser steps of method ``name`` under autocast ``dtype`` (GradScaler for fp16); the losses."""
    model = create_method(name, cfg or tiny_config(name)).cuda().train()
    crit = model.build_criterion()
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.Adam(params, lr=1e-4)
    scaler = torch.amp.GradScaler("cuda", enabled=dtype is torch.float16)
    losses = []
    for step in range(STEPS):
        batch = _to(tiny_batch(seed=step), "cuda")
        with torch.autocast("cuda", dtype=dtype):
            loss = crit(model(batch), batch)["loss"]
        losses.append(float(loss))
        opt.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()
    assert all(torch.isfinite(p).all() for p in params), f"{name}: non-finite weights after AMP steps"
    return losses


@pytest.mark.parametrize("amp", sorted(AMP_DTYPES))
@pytest.mark.parametrize("name", TRAINABLE)
def test_amp_training_steps_have_finite_losses(name: str, amp: str) -> None:
    losses = _amp_steps(name, AMP_DTYPES[amp])
    assert all(torch.isfinite(torch.tensor(losses))), f"{name} {amp}: losses {losses}"


@pytest.mark.parametrize("amp", sorted(AMP_DTYPES))
def test_twostage_grad_cam_under_the_gradient_scaler(amp: str) -> None:
    """Grad-CAM (autograd.grad inside forward) of the two-stage method under autocast + GradScaler."""
    losses = _amp_steps("twostage", AMP_DTYPES[amp])
    assert all(torch.isfinite(torch.tensor(losses)))
    model = create_method("twostage", tiny_config("twostage")).cuda().eval()
    batch = _to(tiny_batch(), "cuda")
    ref = model.localize(batch["image"], batch["audio"]).float()
    with torch.autocast("cuda", dtype=AMP_DTYPES[amp]):
        got = model.localize(batch["image"], batch["audio"]).float()
    assert torch.isfinite(got).all() and got.shape == ref.shape
    corr = torch.corrcoef(torch.stack([got.flatten(), ref.flatten()]))[0, 1]
    assert corr > 0.95, f"two-stage {amp} maps drift from fp32 (correlation {float(corr):.3f})"


@pytest.mark.usefixtures("no_tf32")
@pytest.mark.parametrize("name", list_methods())
def test_fp32_cpu_and_gpu_forward_agree(name: str) -> None:
    torch.manual_seed(0)
    model = create_method(name, tiny_config(name)).eval()
    batch = tiny_batch(frames=STACK if model.frame_stacks else 0)
    with torch.no_grad():
        cpu = model.localize(batch["image"], batch["audio"])
    model = model.cuda()
    gb = _to(batch, "cuda")
    with torch.no_grad():
        gpu = model.localize(gb["image"], gb["audio"]).cpu()
    scale = max(1.0, float(cpu.abs().max()))
    torch.testing.assert_close(gpu, cpu, atol=1e-4 * scale, rtol=1e-4)


@pytest.mark.usefixtures("no_tf32")
def test_paper_size_resnet18_parity() -> None:
    """The imported-checkpoint architecture (ResNet-18 image and audio at 224, 3 s at 16 kHz) on CPU and GPU."""
    from avloc.importers import get_family

    fam = get_family("ezvsl")
    cfg = fam.build_config({"img_proj.weight": torch.zeros(512, 512, 1, 1)}, 16000)
    model = create_method("ezvsl", cfg).eval()
    g = torch.Generator().manual_seed(0)
    img, wav = torch.rand(2, 3, 224, 224, generator=g), 0.1 * torch.randn(2, 48000, generator=g)
    with torch.no_grad():
        cpu = model.localize(img, wav)
        gpu = model.cuda().localize(img.cuda(), wav.cuda()).cpu()
    torch.testing.assert_close(gpu, cpu, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize(("amp_dtype", "used"), [("float16", "fp16"), ("bfloat16", "bf16")])
@pytest.mark.parametrize("channels_last", [False, True])
def test_train_engine_under_amp(tmp_path: Any, amp_dtype: str, used: str, channels_last: bool) -> None:
    """A few steps through the real train engine (avloc.engine.train.train) on CUDA, AMP as configured."""
    import json

    from avloc.engine.train import OptimConfig, TrainConfig, train
    from test_engine import TinyAV, tiny_lvs_config

    torch.manual_seed(0)
    m = create_method("lvs", tiny_lvs_config())
    cfg = TrainConfig(steps=STEPS, batch_size=4, optim=OptimConfig(lr=1e-3), val_every=0, ckpt_every=0, log_every=1,
                      progress=False, feature_cache=False, device="cuda", amp=True, amp_dtype=amp_dtype,  # type: ignore[arg-type]
                      channels_last=channels_last)
    res = train(m, TinyAV(n=16), tmp_path / "run", cfg)
    assert res.step == STEPS
    run_cfg = json.loads((tmp_path / "run" / "config.json").read_text())
    assert run_cfg["precision"]["used"] == used
    recs = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert len(recs) == STEPS and all(torch.isfinite(torch.tensor(r["loss"])) for r in recs)
