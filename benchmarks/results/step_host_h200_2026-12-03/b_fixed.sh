#!/usr/bin/env bash
# session 38 call B (issue 18): the step after call A's findings — padding without a host copy (no sync per
# step), the recordings' key from the kept list of modules, one element order per model call: GPU tests of
# what changed, benchmarks/step_host.py (host pieces, pipelined and synchronised walls, kernel table), then
# `lpmace bench --size medium --workloads train --compare-mace-torch` (bench.sh medium train).
set -uo pipefail
T0=$(date +%s); el() { echo "[$(( $(date +%s) - T0 )) s]"; }
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=$PWD/src:/tmp/site PYTHONUNBUFFERED=1 LPMACE_CACHE_DIR=/tmp/lpmace-cache
L=$OUT/run.log
nvidia-smi --query-gpu=name,driver_version,clocks.max.sm --format=csv,noheader | tee -a $L
echo "$(date -u) torch $(python3 -c 'import torch, triton; print(torch.__version__, triton.__version__)')" | tee -a $L
timeout 200 python3 -m pytest -m gpu tests/kernels/test_polynomial_contraction.py tests/test_forward_graphs.py \
  tests/train/test_cuda_graphs.py -p no:cacheprovider -q -rf > $OUT/pytest.log 2>&1
echo "pytest rc $? $(tail -1 $OUT/pytest.log) $(el)" | tee -a $L
grep -E "FAILED|Error" $OUT/pytest.log | head -10 | tee -a $L
H="python3 benchmarks/step_host.py --out $OUT/host"
timeout 170 $H --size medium --precisions bf16-mixed,fp32 2>&1 | grep "^#" | tee -a $L; echo "medium $(el)" | tee -a $L
BENCH_S=$(( 560 - $(date +%s) + T0 )) bash benchmarks/results/conv_split_h200_mp_2026-12-03/bench.sh medium train  # ran as a byte-identical copy here
echo "done $(el)" | tee -a $L
