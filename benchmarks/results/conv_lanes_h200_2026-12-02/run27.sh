#!/usr/bin/env bash
# session 29: kernel checks, then one `lpmace bench --compare-mace-torch` run of a size (infer, train,
# accuracy). Usage: run27.sh COMMIT SIZE [KERNELS=1 runs the kernel checks first]
set -uo pipefail
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
[ -d /tmp/site/cuequivariance_torch ] || tar xJf .whl/cueq.tar.xz -C /tmp/site || exit 1
export PYTHONPATH=$PWD/src:/tmp/site PYTHONUNBUFFERED=1 LPMACE_CACHE_DIR=/tmp/lpmace-cache PATH=/tmp/site/bin:$PATH
S=$2
L=$OUT/run.log
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader | tee $L
echo "commit $1 size $S $(date -u)" | tee -a $L
if [ -n "${KERNELS:-}" ]; then
  timeout 70 python3 -m pytest -m gpu tests/kernels/test_conv_tensor_product.py -p no:cacheprovider -rA -q > $OUT/pytest_conv.log 2>&1
  echo "pytest rc $? $(tail -1 $OUT/pytest_conv.log) $(date -u)" | tee -a $L
  timeout 60 python3 benchmarks/conv_kernels.py --out $OUT/kernels > $OUT/conv_kernels.log 2>&1
  echo "conv_kernels rc $? $(date -u)" | tee -a $L
  NCU=$(command -v ncu || ls /opt/nvidia/nsight-compute/*/ncu 2>/dev/null | head -1)
  timeout 60 $NCU --clock-control none --launch-skip 2 --launch-count 4 -k regex:"message|grads" \
    --section SpeedOfLight --section Occupancy --section LaunchStats --section InstructionStats \
    --section ComputeWorkloadAnalysis --section WarpStateStats --section MemoryWorkloadAnalysis \
    python3 benchmarks/conv_kernels.py --once --out /tmp/once > $OUT/ncu_conv.log 2>&1
  echo "ncu rc $? $(date -u)" | tee -a $L
  [ -n "${CHECK:-}" ] && timeout 100 python3 benchmarks/check_kernels_gpu.py --kernels-only > $OUT/check_kernels.log 2>&1
  echo "check_kernels rc $? $(date -u)" | tee -a $L; grep -v Warn $OUT/check_kernels.log | tail -9 | cut -c1-220 | tee -a $L
fi
timeout ${BENCH_S:-420} python3 -m lpmace bench --size $S --precisions fp32,bf16-mixed --backends compiled \
  --workloads ${WORKLOADS:-infer,train,accuracy} --repeats 10 --compare-mace-torch --device cuda --no-progress \
  --out $OUT/bench_$S > $OUT/bench_$S.log 2>&1
echo "bench rc $? $(date -u)" | tee -a $L
python3 - "$OUT/bench_$S/results.json" <<'PY' | tee -a $L
import json, sys
r = json.load(open(sys.argv[1]))
for row in r["speed"]:
    print(row["workload"], row["code"], row["backend"], row["precision"], row.get("median_ms"), row.get("peak_memory_mb"), row.get("status"))
PY
tail -5 $OUT/bench_$S.log | tee -a $L
cd $OUT && tar czf bench_$S.tgz bench_$S && rm -rf bench_$S
