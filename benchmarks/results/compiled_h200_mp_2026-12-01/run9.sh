#!/usr/bin/env bash
# issue 17 run 9: torch.profiler of the W1 training step, compiled backend, medium, fp32 and bf16-mixed. Usage: run9.sh COMMIT
set -uo pipefail
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=$PWD/src:/tmp/site PYTHONUNBUFFERED=1 LPMACE_CACHE_DIR=/tmp/lpmace-cache
L=$OUT/run.log
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader | tee $L
echo "commit $1 $(date -u)" | tee -a $L
timeout 420 python3 benchmarks/profile_step.py --backends compiled --precisions bf16-mixed,fp32 --workloads train --size medium \
  --rows 30 --out $OUT/profile > $OUT/profile.log 2>&1
echo "profile rc $? $(date -u)" | tee -a $L
