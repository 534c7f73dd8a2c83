#!/usr/bin/env bash
# GPU check (issues 21, 29): the CUDA tests (every trainable method, FNAC, SLAVC and SSL-Alignment
# included, under fp16 / bf16 autocast), then training throughput of LVS, EZ-VSL, FNAC, SLAVC and
# SSL-Alignment (ResNet-18 at 224, batch 128, AMP off / fp16 / bf16) and `avloc localize` speed,
# printed as one summary table. Takes 5-10 minutes on one recent GPU (--methods lvs,ezvsl: under 5).
#
#   bench/gpu_check.sh                 # uses `python` (set PYTHON=... to choose another)
#   bench/gpu_check.sh --steps 20      # extra arguments go to bench/speed/gpu_throughput.py
#   bench/gpu_check.sh --methods fnac,slavc,sslalign   # only the issue-29 baselines
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-python}"

"$PY" -c 'import torch, sys; sys.exit(0 if torch.cuda.is_available() else "gpu_check: CUDA is not available on this machine")'

log="$(mktemp -t avloc-cuda-tests.XXXXXX)"
trap 'rm -f "$log"' EXIT
set +e
"$PY" -m pytest -q -m cuda -p no:cacheprovider tests/test_cuda.py 2>&1 | tee "$log"
status=${PIPESTATUS[0]}
set -e
summary="$(grep -E '(passed|failed|error|skipped)' "$log" | tail -n 1 | sed 's/=//g; s/^ *//; s/ *$//')"

"$PY" bench/speed/gpu_throughput.py --device cuda --tests "${summary:-no summary}" "$@"
exit "$status"
