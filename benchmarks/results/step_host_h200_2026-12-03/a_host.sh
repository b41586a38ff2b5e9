#!/usr/bin/env bash
# session 38 call A (issue 18): why `lpmace bench`'s W1 step (synchronised per step) is 2.7 ms slower in bf16-mixed than
# profile_step's (steps back to back), and what the counting sort and the table gradient's runs of nodes cost:
# GPU tests of the table-gradient kernel and the whole model, then benchmarks/step_host.py per setting.
set -uo pipefail
T0=$(date +%s); el() { echo "[$(( $(date +%s) - T0 )) s]"; }
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=$PWD/src:/tmp/site PYTHONUNBUFFERED=1 LPMACE_CACHE_DIR=/tmp/lpmace-cache
L=$OUT/run.log
nvidia-smi --query-gpu=name,driver_version,clocks.max.sm --format=csv,noheader | tee -a $L
echo "$(date -u) torch $(python3 -c 'import torch, triton; print(torch.__version__, triton.__version__)') cpu $(nproc) $(grep -m1 'model name' /proc/cpuinfo)" | tee -a $L
timeout 150 python3 -m pytest -m gpu tests/kernels/test_table_gradient.py tests/kernels/test_backend_model.py \
  -p no:cacheprovider -q -rf > $OUT/pytest.log 2>&1
echo "pytest rc $? $(tail -1 $OUT/pytest.log) $(el)" | tee -a $L
grep -E "FAILED|Error" $OUT/pytest.log | head -10 | tee -a $L
H="python3 benchmarks/step_host.py --out $OUT/host"
timeout 170 $H --size medium --precisions bf16-mixed,fp32 2>&1 | grep -v Warning | tee -a $L; echo "medium defaults $(el)" | tee -a $L
timeout 70 $H --size medium --precisions bf16-mixed --set lpmace.kernels.launch.COUNTING_SORT=1048576 2>&1 | grep "^#" | tee -a $L
timeout 70 $H --size medium --precisions bf16-mixed --set lpmace.kernels.table_gradient.PROGRAMS=0 2>&1 | grep "^#" | tee -a $L
echo "medium A/B $(el)" | tee -a $L
timeout $(( 560 - $(date +%s) + T0 )) $H --size mp --precisions bf16-mixed,fp32 2>&1 | grep "^#" | tee -a $L
echo "done $(el)" | tee -a $L
