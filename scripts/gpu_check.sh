#!/usr/bin/env bash
# On one GPU, in under ten minutes: the scale check of the paper recipe in bf16, then in fp32, a few steps
# per stage, printing each stage's FLOPs, seconds per step (throughput), peak GPU memory and the projected
# hours of the whole run. Needs only this repository and `make setup`'s venv (.venv/bin/python with a CUDA
# build of torch). Results: runs/gpu_check/{bf16,fp32}/scale_check.{json,md}.
#
#   scripts/gpu_check.sh                     # RECIPE=recipes/e3d2.yaml STEPS=5 OUT=runs/gpu_check PYTHON=.venv/bin/python
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-.venv/bin/python}"
RECIPE="${RECIPE:-recipes/e3d2.yaml}"
STEPS="${STEPS:-5}"
OUT="${OUT:-runs/gpu_check}"
if [ ! -x "$PYTHON" ] && ! command -v "$PYTHON" >/dev/null 2>&1; then
  echo "gpu_check: $PYTHON not found; run \`make setup\` first (or set PYTHON=/path/to/python)" >&2
  exit 2
fi
if ! "$PYTHON" -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)' >/dev/null 2>&1; then
  echo "gpu_check: no CUDA GPU visible to $PYTHON (or no CUDA build of torch in it); run this on a machine with an NVIDIA GPU" >&2
  exit 2
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" OMP_NUM_THREADS="${OMP_NUM_THREADS:-4}"
"$PYTHON" -c 'import torch; print("gpu_check:", torch.cuda.get_device_name(0), "| torch", torch.__version__, "| CUDA", torch.version.cuda)'
status=0
for dtype in bf16 fp32; do  # 285 s each: both finish inside ten minutes
  echo "gpu_check: $RECIPE in $dtype, 1 warm-up + 1 counted + $STEPS timed steps per stage"
  if ! timeout 285 "$PYTHON" scripts/scale_check.py "$RECIPE" --device cuda --dtype "$dtype" --steps "$STEPS" --out "$OUT/$dtype"; then
    echo "gpu_check: the $dtype check did not finish (an error above, or its 285 s ran out: lower STEPS)" >&2
    status=1
  fi
done
if [ "$status" -eq 0 ]; then
  echo "gpu_check: done; compare $OUT/bf16/scale_check.md with $OUT/fp32/scale_check.md"
else
  echo "gpu_check: finished with a failed check (named above); the other's results are in $OUT" >&2
fi
exit $status
