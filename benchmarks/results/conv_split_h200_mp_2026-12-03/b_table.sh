#!/usr/bin/env bash
# session 37 call B (issues 17, 18): ∂T of the symmetric contraction as a kernel (lpmace.kernels.table_gradient) and
# layer 1's float32 grads at 128 channels per program: the GPU tests of both, then the W1 trainer step's profile,
# `mp` (89 elements) and `medium`, bf16-mixed and fp32.
set -uo pipefail
T0=$(date +%s); el() { echo "[$(( $(date +%s) - T0 )) s]"; }
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=$PWD/src:/tmp/site PYTHONUNBUFFERED=1 LPMACE_CACHE_DIR=/tmp/lpmace-cache
L=$OUT/run.log
nvidia-smi --query-gpu=name,driver_version,clocks.max.sm --format=csv,noheader | tee -a $L
echo "$(date -u) torch $(python3 -c 'import torch, triton; print(torch.__version__, triton.__version__)')" | tee -a $L
timeout 150 python3 -m pytest -m gpu tests/kernels/test_table_gradient.py tests/kernels/test_polynomial_contraction.py \
  -p no:cacheprovider -q -rf > $OUT/pytest_table.log 2>&1
echo "pytest table rc $? $(tail -1 $OUT/pytest_table.log) $(el)" | tee -a $L
grep -E "FAILED|Error" $OUT/pytest_table.log | head -10 | tee -a $L
timeout 90 python3 -m pytest -m gpu tests/kernels/test_conv_tensor_product.py -k "real_size and not ahead" -p no:cacheprovider -q -rf > $OUT/pytest_conv.log 2>&1
echo "pytest conv rc $? $(tail -1 $OUT/pytest_conv.log) $(el)" | tee -a $L
grep -E "FAILED|Error" $OUT/pytest_conv.log | head -10 | tee -a $L
for S in mp medium; do
  timeout 240 python3 benchmarks/profile_step.py --trainer-step --workloads train --backends compiled --precisions bf16-mixed,fp32 \
    --size $S --rows 45 --out $OUT/prof_$S > $OUT/prof_$S.log 2>&1
  echo "$S W1 profile rc $? $(el)" | tee -a $L
  head -qn1 $OUT/prof_$S/*.txt | tee -a $L
done
echo "done $(el)" | tee -a $L
