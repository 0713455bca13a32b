#!/usr/bin/env bash
# One-call GPU check for a session with a lent GPU (device `run` tool), under 5 minutes:
#   bf16 training steps (default and a larger U-Net), guided sampling throughput, 2-GPU DDP smoke test
#   when two GPUs are present, then the ours-vs-diffusers throughput benchmark on the GPU.
# Results land in reports/ (and in $OUT when the device tool sets it).
#   bash benchmarks/gpu_check.sh            # on the GPU machine, from the repository root
#   bash benchmarks/gpu_check.sh --dry-run  # check the script on a CPU-only machine
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python3 )}
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
"$PY" -c "import torch, pydantic, yaml, safetensors, tqdm" 2>/dev/null || {
  echo "gpu_check: needs torch, pydantic, pyyaml, safetensors, tqdm (and diffusers for the peer benchmark) in $PY" >&2; exit 2; }
status=0
timeout 200 "$PY" -m benchmarks.gpu_check "$@" || status=$?
if [ "${1:-}" = "--dry-run" ]; then
  timeout 120 "$PY" -m benchmarks.throughput --repeats 1 --train-steps 2 --sample-n 8 --sample-steps 3 --out reports/benchmarks/throughput_dry_run.json || status=$?
elif "$PY" -c "import diffusers" 2>/dev/null; then
  timeout 80 "$PY" -m benchmarks.throughput --device cuda --batch 512 --train-steps 20 --sample-n 1000 --repeats 3 \
    --out reports/benchmarks/throughput_gpu.json || status=$?
  [ -n "${OUT:-}" ] && cp reports/benchmarks/throughput_gpu.json "$OUT/" || true
else
  echo "gpu_check: diffusers is not installed here; skipped the ours-vs-diffusers GPU benchmark" >&2
fi
exit $status
