"""Benchmark the audio front-ends and EfficientNet-Lite0 on CPU.

* spectrograms/s for 3 s clips at 16 kHz: the LVS spectrogram and the DSOL-style
  64-band log-mel (:class:`avloc.frontends.audio.AudioFrontend`), batch 1 and 32;
* EfficientNet-Lite0 images/s at 224x224 (stride-16 map, and the full network
  with ImageNet logits), batch 1 and 32.

Usage::

    python bench/speed/frontends.py --threads 2 [--write-docs]

prints a markdown table; ``--write-docs`` replaces the section
``## Front-ends and encoders`` of ``docs/BENCHMARKS.md`` (creating the file if
needed) and leaves the other sections untouched.
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import sys
from functools import partial

import torch

from avloc.benchmarking import git_commit, rate_table, replace_section, repo_root, throughput
from avloc.encoders import create_encoder
from avloc.encoders.efficientnet_lite import EfficientNetLite0
from avloc.frontends.audio import AudioFrontend, AudioFrontendConfig

REPO = repo_root()

SECTION = "## Front-ends and encoders"


def run(threads: int, min_seconds: float) -> list[tuple[str, int, tuple[float, float]]]:
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    rows: list[tuple[str, int, tuple[float, float]]] = []
    fronts = {
        "LVS spectrogram (257 x 200)": AudioFrontendConfig(kind="lvs"),
        "log-mel 64 bands, hop 10 ms (64 x 301)": AudioFrontendConfig(
            kind="logmel", n_mels=64, hop_length=160, n_fft=512
        ),
    }
    with torch.inference_mode():
        for name, cfg in fronts.items():
            fe = AudioFrontend(cfg)
            for b in (1, 32):
                wav = torch.randn(b, cfg.num_samples) * 0.1  # (B, 48000): 3 s at 16 kHz
                rows.append((f"audio: {name}, 3 s at 16 kHz", b, throughput(partial(fe, wav), b, min_seconds)))
        enc = create_encoder("efficientnet_lite0").eval()
        assert isinstance(enc, EfficientNetLite0)
        for b in (1, 32):
            x = torch.rand(b, 3, 224, 224)
            rows.append(
                (
                    "EfficientNet-Lite0 224, stride-16 map (112 x 14 x 14)",
                    b,
                    throughput(partial(enc, x), b, min_seconds),
                )
            )
            rows.append(
                (
                    "EfficientNet-Lite0 224, full net + ImageNet logits",
                    b,
                    throughput(partial(enc.classify, x), b, min_seconds),
                )
            )
        # NHWC: faster depthwise convs on CPU at large batch (torch's stubs lack Module.to(memory_format=...))
        enc = enc.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
        for b in (1, 32):
            x = torch.rand(b, 3, 224, 224).contiguous(memory_format=torch.channels_last)
            rows.append(
                ("EfficientNet-Lite0 224, stride-16 map, channels_last", b, throughput(partial(enc, x), b, min_seconds))
            )
    return rows


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument("--threads", type=int, default=2, help="torch intra-op threads (default 2)")
    p.add_argument("--min-seconds", type=float, default=3.0, help="minimum timed seconds per row")
    p.add_argument("--write-docs", action="store_true", help="write the table into docs/BENCHMARKS.md")
    args = p.parse_args(argv)
    load_before = os.getloadavg()[0]
    rows = run(args.threads, args.min_seconds)
    load_after = os.getloadavg()[0]
    out = rate_table(rows, "spectrograms/s or images/s")
    print(out)
    if args.write_docs:
        cmd = "python bench/speed/frontends.py " + " ".join(sys.argv[1:] if argv is None else argv)
        cpu = platform.processor() or platform.machine()
        commit = git_commit()
        body = (
            f"Command: `{cmd.strip()}` (run {datetime.date.today().isoformat()}, commit {commit}, torch {torch.__version__}, "
            f"{args.threads} threads, CPU {cpu}, {os.cpu_count()} cores, 1-min load average {load_before:.1f} before / "
            f"{load_after:.1f} after: the machine is shared, so figures are indicative).\n\n"
            "Audio rows count spectrograms of 3 s clips at 16 kHz per second; encoder rows count 224x224 images per second. "
            "Best = fastest single call (least disturbed by other jobs on the machine), median = typical call.\n\n"
            + out
        )
        replace_section(REPO / "docs" / "BENCHMARKS.md", SECTION, body)
        print(f"wrote section '{SECTION}' of {REPO / 'docs' / 'BENCHMARKS.md'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
