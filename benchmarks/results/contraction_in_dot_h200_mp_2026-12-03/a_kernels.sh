#!/usr/bin/env bash
# session 39 call A (issues 17/18): the prefix kernel accumulating inside its products ((m_p·X) @ T_p into
# the accumulator, one chain of tensor-core products) against the kernel before (polynomial_dot_before.py:
# X @ T_p, then scaled by m_p and added); GPU tests of the contraction and the table gradient (whose tile
# constants and one-part return ran only in the interpreter so far); the W1 step (step_host.py); the table
# gradient's settings; the row kernel's and prefix kernel's tiles.
set -uo pipefail
T0=$(date +%s); el() { echo "[$(( $(date +%s) - T0 )) s]"; }
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=$PWD/src:/tmp/site PYTHONUNBUFFERED=1 LPMACE_CACHE_DIR=/tmp/lpmace-cache
D=benchmarks/results/contraction_in_dot_h200_mp_2026-12-03
L=$OUT/run.log
nvidia-smi --query-gpu=name,driver_version,clocks.max.sm --format=csv,noheader | tee -a $L
echo "$(date -u) torch $(python3 -c 'import torch, triton; print(torch.__version__, triton.__version__)')" | tee -a $L
timeout 200 python3 -m pytest -m gpu tests/kernels/test_polynomial_contraction.py tests/kernels/test_table_gradient.py \
  -p no:cacheprovider -q -rf > $OUT/pytest.log 2>&1
echo "pytest rc $? $(tail -1 $OUT/pytest.log) $(el)" | tee -a $L
grep -E "FAILED|Error" $OUT/pytest.log | head -10 | tee -a $L
timeout 90 python3 benchmarks/contraction_kernels.py --old $D/polynomial_dot_before.py --out $OUT/kernels 2>&1 | tee -a $L
echo "kernels $(el)" | tee -a $L
timeout 170 python3 benchmarks/step_host.py --out $OUT/host --size medium --precisions bf16-mixed,fp32 2>&1 | grep "^#" | tee -a $L
echo "step_host $(el)" | tee -a $L
timeout 80 python3 benchmarks/contraction_kernels.py --table-gradient 2>&1 | tee -a $L
echo "table gradient $(el)" | tee -a $L
timeout $(( 570 - $(date +%s) + T0 )) python3 benchmarks/contraction_kernels.py --sweep 2>&1 | tee -a $L
echo "done $(el)" | tee -a $L
