#!/usr/bin/env bash
# session 28 call B: why the contraction kernels are slow: ncu of both kernels per call, prefix tile sweep,
# the W1 trainer-step per-kernel profile (tables in a tar).
set -uo pipefail
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=$PWD/src:/tmp/site PYTHONUNBUFFERED=1
L=$OUT/run.log
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader | tee $L
echo "commit $1 $(date -u)" | tee -a $L
timeout 90 python3 .whl/diag_fp64.py > $OUT/diag_fp64.log 2>&1; echo "diag rc $?" | tee -a $L; cat $OUT/diag_fp64.log | tail -6 | tee -a $L
timeout 100 python3 benchmarks/contraction_kernels.py > $OUT/kernels_medium.log 2>&1
echo "kernels medium rc $? $(date -u)" | tee -a $L; tail -7 $OUT/kernels_medium.log | tee -a $L
timeout 120 python3 benchmarks/contraction_kernels.py --sweep > $OUT/sweep.log 2>&1
echo "sweep rc $? $(date -u)" | tee -a $L; cat $OUT/sweep.log | tee -a $L
NCU=$(command -v ncu || ls /opt/nvidia/nsight-compute/*/ncu 2>/dev/null | head -1)
timeout 170 $NCU --clock-control none -k regex:"contraction" \
  --section SpeedOfLight --section Occupancy --section LaunchStats --section ComputeWorkloadAnalysis --section WarpStateStats --section MemoryWorkloadAnalysis \
  python3 benchmarks/contraction_kernels.py --once > $OUT/ncu.log 2>&1
echo "ncu rc $? $(date -u)" | tee -a $L
grep -E "^  contraction|Duration|Achieved Occupancy|Registers Per|Theoretical Occupancy|Issue Slots Busy|Stall|Block Limit|Shared Memory Config|Dynamic Shared|L1/TEX Hit|Mem Busy|Local" $OUT/ncu.log | head -150 >> $L
timeout 150 python3 benchmarks/profile_step.py --trainer-step --workloads train --backends compiled --precisions bf16-mixed,fp32 \
  --size medium --rows 40 --out /tmp/profile > $OUT/profile.log 2>&1
echo "profile rc $? $(date -u)" | tee -a $L; grep "^# W1" $OUT/profile.log | tee -a $L
tar czf $OUT/profile.tgz -C /tmp profile
