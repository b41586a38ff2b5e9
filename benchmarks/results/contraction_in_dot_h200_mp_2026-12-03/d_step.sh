#!/usr/bin/env bash
# session 39 call D: the defaults chosen from call C (prefix loop unrolled by 2; table gradient SUMS 4096): GPU
# tests of the contraction, the table gradient and the whole model on the triton backend; the W1 step
# (step_host.py, medium, both precisions); `lpmace bench --size medium --workloads train --compare-mace-torch`.
set -uo pipefail
T0=$(date +%s); el() { echo "[$(( $(date +%s) - T0 )) s]"; }
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=$PWD/src:/tmp/site PYTHONUNBUFFERED=1 LPMACE_CACHE_DIR=/tmp/lpmace-cache
L=$OUT/run.log
nvidia-smi --query-gpu=name,driver_version,clocks.max.sm --format=csv,noheader | tee -a $L
timeout 150 python3 -m pytest -m gpu tests/kernels/test_polynomial_contraction.py tests/kernels/test_table_gradient.py \
  tests/kernels/test_backend_model.py -p no:cacheprovider -q -rf > $OUT/pytest.log 2>&1
echo "pytest rc $? $(tail -1 $OUT/pytest.log) $(el)" | tee -a $L
grep -E "FAILED|Error" $OUT/pytest.log | head -10 | tee -a $L
timeout 170 python3 benchmarks/step_host.py --out $OUT/host --size medium --precisions bf16-mixed,fp32 2>&1 | grep "^#" | tee -a $L
echo "step_host $(el)" | tee -a $L
BENCH_S=$(( 575 - $(date +%s) + T0 )) bash benchmarks/results/conv_split_h200_mp_2026-12-03/bench.sh medium train
echo "done $(el)" | tee -a $L
