#!/usr/bin/env bash
# session 39 call C: the tiles call B found faster made the defaults (prefix kernel without software pipelining,
# row kernel 16 channels / 2 warps, table gradient 16 channels); the prefix loop's unroll factor swept; GPU tests
# of the three kernels; every call's time against the kernel before; the W1 step (step_host.py).
set -uo pipefail
T0=$(date +%s); el() { echo "[$(( $(date +%s) - T0 )) s]"; }
export PYTHONPATH=$PWD/src PYTHONUNBUFFERED=1 LPMACE_CACHE_DIR=/tmp/lpmace-cache
D=benchmarks/results/contraction_in_dot_h200_mp_2026-12-03
L=$OUT/run.log
nvidia-smi --query-gpu=name,driver_version,clocks.max.sm --format=csv,noheader | tee -a $L
timeout 150 python3 -m pytest -m gpu tests/kernels/test_polynomial_contraction.py tests/kernels/test_table_gradient.py \
  tests/kernels/test_backend_model.py -p no:cacheprovider -q -rf > $OUT/pytest.log 2>&1
echo "pytest rc $? $(tail -1 $OUT/pytest.log) $(el)" | tee -a $L
grep -E "FAILED|Error" $OUT/pytest.log | head -10 | tee -a $L
timeout 100 python3 benchmarks/contraction_kernels.py --old $D/polynomial_dot_before.py --out $OUT/kernels 2>&1 | tee -a $L
echo "kernels $(el)" | tee -a $L
timeout 150 python3 benchmarks/step_host.py --out $OUT/host --size medium --precisions bf16-mixed,fp32 2>&1 | grep "^#" | tee -a $L
echo "step_host $(el)" | tee -a $L
timeout 60 python3 benchmarks/contraction_kernels.py --table-gradient 2>&1 | tee -a $L
echo "table gradient $(el)" | tee -a $L
timeout $(( 575 - $(date +%s) + T0 )) python3 benchmarks/contraction_kernels.py --sweep 2>&1 | tee -a $L
echo "done $(el)" | tee -a $L
