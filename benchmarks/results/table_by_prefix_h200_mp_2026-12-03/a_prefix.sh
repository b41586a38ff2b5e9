#!/usr/bin/env bash
# session 40 call A: GPU tests of the contraction and both table-gradient kernels (the bf16 bound tests and
# table_gradient_dot's GPU test for the first time on a GPU); the table gradient's calls and settings per call
# (contraction_kernels.py --table-gradient); the medium W1 step (step_host.py) with the table gradient row by
# row (default) and by prefix (BY_PREFIX=1), and with the prefix kernel's BLOCK_N 128 (bf16).
set -uo pipefail
T0=$(date +%s); el() { echo "[$(( $(date +%s) - T0 )) s]"; }
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=$PWD/src:/tmp/site PYTHONUNBUFFERED=1 LPMACE_CACHE_DIR=/tmp/lpmace-cache
L=$OUT/run.log
nvidia-smi --query-gpu=name,driver_version,clocks.max.sm --format=csv,noheader | tee -a $L
timeout 200 python3 -m pytest -m gpu tests/kernels/test_polynomial_contraction.py tests/kernels/test_table_gradient.py \
  tests/kernels/test_table_gradient_dot.py -p no:cacheprovider -q -rf > $OUT/pytest.log 2>&1
echo "pytest rc $? $(tail -1 $OUT/pytest.log) $(el)" | tee -a $L
grep -E "FAILED|Error" $OUT/pytest.log | head -10 | tee -a $L
timeout 120 python3 benchmarks/contraction_kernels.py --table-gradient --out $OUT/kernels > $OUT/kernels.log 2>&1
echo "table gradient rc $? $(el)" | tee -a $L
tail -30 $OUT/kernels.log | tee -a $L
S=lpmace.kernels.table_gradient.BY_PREFIX=1
timeout 150 python3 benchmarks/step_host.py --out $OUT/host --size medium --precisions bf16-mixed,fp32 --set $S 2>&1 | grep "^#" | tee -a $L
echo "step_host by prefix $(el)" | tee -a $L
timeout 150 python3 benchmarks/step_host.py --out $OUT/host --size medium --precisions bf16-mixed,fp32 2>&1 | grep "^#" | tee -a $L
echo "step_host defaults $(el)" | tee -a $L
timeout 100 python3 benchmarks/step_host.py --out $OUT/host --size medium --precisions bf16-mixed --set $S \
  --set lpmace.kernels.polynomial_dot.BLOCK_N=128 2>&1 | grep "^#" | tee -a $L
echo "done $(el)" | tee -a $L
