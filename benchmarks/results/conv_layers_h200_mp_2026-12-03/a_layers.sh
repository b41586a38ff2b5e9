#!/usr/bin/env bash
# session 36 call A (issue 17): the GPU conv kernel tests (the rounded-once test's GPU form first runs here),
# the 16-bit kernels at CANDIDATES' tiles per layer (`conv_kernels.py --layers`), and ncu of every conv
# kernel (layers 2 and 1, bf16 and fp32) at the defaults.
set -uo pipefail
T0=$(date +%s); el() { echo "[$(( $(date +%s) - T0 )) s]"; }
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=$PWD/src:/tmp/site PYTHONUNBUFFERED=1 LPMACE_CACHE_DIR=/tmp/lpmace-cache
L=$OUT/run.log
nvidia-smi --query-gpu=name,driver_version,clocks.max.sm --format=csv,noheader | tee -a $L
echo "$(date -u) torch $(python3 -c 'import torch, triton; print(torch.__version__, triton.__version__)')" | tee -a $L
timeout 130 python3 -m pytest -m gpu tests/kernels/test_conv_tensor_product.py -p no:cacheprovider -q -rf > $OUT/pytest.log 2>&1
echo "pytest rc $? $(tail -1 $OUT/pytest.log) $(el)" | tee -a $L
grep -E "FAILED|Error" $OUT/pytest.log | head -10 | tee -a $L
timeout 300 python3 benchmarks/conv_kernels.py --layers --out $OUT/conv > $OUT/layers.log 2>&1
echo "layers rc $? $(el)" | tee -a $L
python3 - $OUT/conv/conv_layers.json <<'PY' | tee -a $L
import json, sys
for r in json.load(open(sys.argv[1])):
    print(r["layer"], r["dtype"], r["kernel"], r.get("channels_per_program"), r.get("channels_per_lane"), r.get("unroll"),
          r.get("runs"), r.get("ahead"), round(r["ms"], 4) if "ms" in r else r.get("error"), r.get("registers_spills"),
          "%.1f%%" % (100 * r["bandwidth_tb_s"] / 4.3) if "bandwidth_tb_s" in r else "", r.get("check"))
PY
NCU=$(command -v ncu || ls /opt/nvidia/nsight-compute/*/ncu /usr/local/cuda*/bin/ncu 2>/dev/null | head -1)
echo "ncu: $NCU" | tee -a $L
LEFT=$(( 570 - $(date +%s) + T0 ))
[ -n "$NCU" ] && [ $LEFT -gt 60 ] && timeout $LEFT $NCU --clock-control none --launch-skip 0 --launch-count 16 \
  --kernel-name regex:"message|grads" --section SpeedOfLight --section ComputeWorkloadAnalysis --section Occupancy \
  --section LaunchStats --section WarpStateStats --section MemoryWorkloadAnalysis \
  python3 benchmarks/conv_kernels.py --once --out /tmp/once > $OUT/ncu_conv.log 2>&1
echo "ncu rc $? $(el)" | tee -a $L
grep -E "^  (message|grads)|Duration|Compute \(SM\)|Issue Slots|DRAM Throughput|Achieved Occupancy|Registers Per|highest-utilized|Stall|Warp Cycles Per Issued" $OUT/ncu_conv.log | head -150 >> $L
echo "done $(el)" | tee -a $L
