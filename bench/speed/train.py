"""Benchmark LVS training and evaluation throughput on CPU.

Rows (samples per second, default LVS config: frozen EfficientNet-Lite0 stride 16 at
224 + trainable projection, ``small_cnn_audio`` on the 3 s LVS spectrogram):

* training step with cached visual features (``batch["vfeat"]``, what ``avloc train``
  does when the frozen encoder's features can be cached): forward, loss, backward, Adam;
* training step end to end (the frozen encoder runs on the images every step);
* evaluation (``localize`` on images + audio, no grad), the cost of ``avloc eval``;
* with ``--raw DIR``: DigitScenes ``single`` samples composed per second in one process
  (the data-loading ceiling; ``num_workers`` processes scale it).

Usage::

    python bench/speed/train.py --threads 2 [--raw ../shared/data] [--write-docs]

``--write-docs`` replaces the section ``## Training`` of ``docs/BENCHMARKS.md`` and
leaves the other sections untouched.
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import sys

import torch

from avloc.benchmarking import git_commit, rate_table, replace_section, repo_root, throughput
from avloc.methods import create_method
from avloc.methods.lvs import LVSConfig

REPO = repo_root()

SECTION = "## Training"


def run(threads: int, min_seconds: float, batch: int, raw: str | None) -> list[tuple[str, int, tuple[float, float]]]:
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    cfg = LVSConfig()
    model = create_method("lvs", cfg)
    assert model.name == "lvs"
    crit = model.build_criterion()
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    images = torch.rand(batch, 3, cfg.image.size, cfg.image.size)  # (B, 3, 224, 224)
    audio = torch.randn(batch, cfg.audio.num_samples) * 0.1  # (B, 48000)
    with torch.no_grad():
        vfeat = model.encode_images(images)  # (B, 112, 14, 14)

    def step(b: dict[str, torch.Tensor]) -> None:
        model.train()
        loss = crit(model(b), b)["loss"]
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    rows: list[tuple[str, int, tuple[float, float]]] = []
    rows.append(
        (
            "LVS train step, cached visual features",
            batch,
            throughput(lambda: step({"vfeat": vfeat, "audio": audio}), batch, min_seconds),
        )
    )
    rows.append(
        (
            "LVS train step, end to end (frozen encoder run every step)",
            batch,
            throughput(lambda: step({"image": images, "audio": audio}), batch, min_seconds),
        )
    )
    model.eval()

    def evaluate() -> None:
        with torch.no_grad():
            model.localize(images, audio)

    rows.append(("LVS evaluation (localize on images)", batch, throughput(evaluate, batch, min_seconds)))
    if raw is not None:
        from avloc.data.datasets import dataset_from_spec

        ds = dataset_from_spec(
            "digitscenes:single:train", raw=raw, image_cfg=cfg.image, audio_cfg=cfg.audio, pool=500, count=100_000
        )
        counter = iter(range(10**9))

        def load() -> None:
            for _ in range(batch):
                ds[next(counter)]

        rows.append(("DigitScenes single: compose samples (1 process)", batch, throughput(load, batch, min_seconds)))
    return rows


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument("--threads", type=int, default=2, help="torch intra-op threads (default 2)")
    p.add_argument("--batch", type=int, default=32, help="batch size (default 32)")
    p.add_argument("--min-seconds", type=float, default=5.0, help="minimum timed seconds per row")
    p.add_argument("--raw", help="DigitScenes raw sources: also time sample composition")
    p.add_argument("--write-docs", action="store_true", help="write the table into docs/BENCHMARKS.md")
    args = p.parse_args(argv)
    load_before = os.getloadavg()[0]
    rows = run(args.threads, args.min_seconds, args.batch, args.raw)
    load_after = os.getloadavg()[0]
    out = rate_table(rows, "samples/s")
    print(out)
    if args.write_docs:
        cmd = "python bench/speed/train.py " + " ".join(sys.argv[1:] if argv is None else argv)
        commit = git_commit()
        body = (
            f"Command: `{cmd.strip()}` (run {datetime.date.today().isoformat()}, commit {commit}, torch {torch.__version__}, "
            f"{args.threads} threads, CPU {platform.processor() or platform.machine()}, {os.cpu_count()} cores, 1-min load average "
            f"{load_before:.1f} before / {load_after:.1f} after: the machine is shared, so figures are indicative).\n\n"
            "Default LVS config (frozen ImageNet EfficientNet-Lite0 stride 16 at 224 + 3x3/1x1 projection, small_cnn_audio "
            'on the 3 s LVS spectrogram, c = 128). A training step is forward + loss + backward + Adam. "Cached" feeds the '
            'frozen encoder\'s features (`batch["vfeat"]`) as `avloc train` does when they can be cached; "end to end" '
            "runs the frozen encoder on the images every step. Best = fastest call, median = typical call.\n\n" + out
        )
        replace_section(REPO / "docs" / "BENCHMARKS.md", SECTION, body)
        print(f"wrote section '{SECTION}' of {REPO / 'docs' / 'BENCHMARKS.md'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
