#!/usr/bin/env bash
# session 29 call A: conv kernels (CG products shared through s[i,b,p], channels per lane) on the GPU:
# tests at real size, kernels vs floor, tile sweep, ncu instruction mix. Usage: run26.sh COMMIT
set -uo pipefail
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=$PWD/src:/tmp/site PYTHONUNBUFFERED=1 LPMACE_CACHE_DIR=/tmp/lpmace-cache
L=$OUT/run.log
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader | tee $L
echo "commit $1 $(date -u)" | tee -a $L
timeout 150 python3 -m pytest -m gpu tests/kernels/test_conv_tensor_product.py -p no:cacheprovider -rA -q > $OUT/pytest_conv.log 2>&1
echo "pytest rc $? $(tail -1 $OUT/pytest_conv.log) $(date -u)" | tee -a $L
timeout 280 python3 benchmarks/conv_kernels.py --out $OUT/conv --sweep > $OUT/conv_kernels.log 2>&1
echo "conv_kernels rc $? $(date -u)" | tee -a $L
NCU=$(command -v ncu || ls /opt/nvidia/nsight-compute/*/ncu 2>/dev/null | head -1)
timeout 120 $NCU --clock-control none --launch-skip 2 --launch-count 4 -k regex:"message|grads" \
  --section SpeedOfLight --section Occupancy --section LaunchStats --section InstructionStats \
  --section ComputeWorkloadAnalysis --section WarpStateStats --section MemoryWorkloadAnalysis \
  python3 benchmarks/conv_kernels.py --once --out /tmp/once > $OUT/ncu_conv.log 2>&1
echo "ncu rc $? $(date -u)" | tee -a $L
