#!/usr/bin/env bash
# session 40 call B (tree 5da0c1b: bf16 features' table gradient by prefix): GPU tests of the contraction, both
# table-gradient kernels and the whole model on the triton backend; `lpmace bench --size medium --workloads
# infer,train --compare-mace-torch` (the README's medium rows).
set -uo pipefail
T0=$(date +%s); el() { echo "[$(( $(date +%s) - T0 )) s]"; }
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=$PWD/src:/tmp/site PYTHONUNBUFFERED=1 LPMACE_CACHE_DIR=/tmp/lpmace-cache
L=$OUT/run.log
timeout 170 python3 -m pytest -m gpu tests/kernels/test_table_gradient_dot.py tests/kernels/test_backend_model.py \
  tests/kernels/test_polynomial_contraction.py -p no:cacheprovider -q -rf > $OUT/pytest.log 2>&1
echo "pytest rc $? $(tail -1 $OUT/pytest.log) $(el)" | tee -a $L
grep -E "FAILED|Error" $OUT/pytest.log | head -10 | tee -a $L
BENCH_S=$(( 580 - $(date +%s) + T0 )) bash benchmarks/results/conv_split_h200_mp_2026-12-03/bench.sh medium infer,train
echo "done $(el)" | tee -a $L
