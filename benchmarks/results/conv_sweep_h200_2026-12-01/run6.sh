#!/usr/bin/env bash
# issue 17 run 6: GPU conv tests, conv kernels with the unroll sweep, ncu of layer 2's kernels. Usage: run6.sh COMMIT
set -uo pipefail
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=$PWD/src:/tmp/site PYTHONUNBUFFERED=1 LPMACE_CACHE_DIR=/tmp/lpmace-cache
L=$OUT/run.log
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader | tee $L
python3 -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__)" | tee -a $L
echo "commit $1 $(date -u)" | tee -a $L
timeout 120 python3 -m pytest -m gpu tests/kernels/test_conv_tensor_product.py -p no:cacheprovider -rA -q -x > $OUT/pytest_conv.log 2>&1
echo "pytest rc $? $(tail -1 $OUT/pytest_conv.log) $(date -u)" | tee -a $L
timeout 240 python3 benchmarks/conv_kernels.py --sweep --out $OUT > $OUT/conv_kernels.log 2>&1
echo "conv_kernels rc $? $(date -u)" | tee -a $L
NCU=$(command -v ncu || ls /opt/nvidia/nsight-compute/*/ncu 2>/dev/null | head -1)
echo "ncu: $NCU" | tee -a $L
timeout 150 $NCU --clock-control none --launch-skip 2 --launch-count 8 -k regex:"message|grads" \
  --section SpeedOfLight --section Occupancy --section LaunchStats --section ComputeWorkloadAnalysis --section MemoryWorkloadAnalysis \
  python3 benchmarks/conv_kernels.py --once --out /tmp/once > $OUT/ncu_conv.log 2>&1
echo "ncu rc $? $(date -u)" | tee -a $L
grep -E "message|grads|Throughput|Duration|Achieved Occupancy|Registers Per|Theoretical Occupancy|Executed Ipc|Issue Slots|Block Limit Reg" $OUT/ncu_conv.log | head -120 >> $L
