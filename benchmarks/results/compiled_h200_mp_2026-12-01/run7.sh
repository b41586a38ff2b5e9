#!/usr/bin/env bash
# issue 17 run 7/8: GPU conv tests + kernels at the new tiles (mp only), then lpmace bench with the compiled
# backend: W2 inference against mace-torch (e3nn, cuEquivariance) and W1 training, as two runs. Usage: run7.sh COMMIT SIZE
set -uo pipefail
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
tar xJf .whl/cueq.tar.xz -C /tmp/site || exit 1
export PYTHONPATH=$PWD/src:/tmp/site PYTHONUNBUFFERED=1 LPMACE_CACHE_DIR=/tmp/lpmace-cache
S=$2
L=$OUT/run.log
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader | tee $L
echo "commit $1 size $S $(date -u)" | tee -a $L
if [ "$S" = mp ] && [ -z "${SKIP_KERNELS:-}" ]; then
  timeout 90 python3 -m pytest -m gpu tests/kernels/test_conv_tensor_product.py -p no:cacheprovider -rA -q -x > $OUT/pytest_conv.log 2>&1
  echo "pytest rc $? $(tail -1 $OUT/pytest_conv.log) $(date -u)" | tee -a $L
  timeout 60 python3 benchmarks/conv_kernels.py --out $OUT/kernels > $OUT/conv_kernels.log 2>&1
  echo "conv_kernels rc $? $(date -u)" | tee -a $L
fi
summary() {
python3 - "$1/results.json" <<'PY' | tee -a $L
import json, sys
r = json.load(open(sys.argv[1]))
for row in r["speed"]:
    print(row["workload"], row["code"], row["backend"], row["precision"], row.get("median_ms"), row.get("peak_memory_mb"), row.get("status"))
PY
}
timeout ${3:-250} python3 -m lpmace bench --size $S --precisions fp32,bf16-mixed --backends compiled \
  --workloads infer --repeats 10 --compare-mace-torch --device cuda --no-progress --out $OUT/infer_$S > $OUT/bench_infer_$S.log 2>&1
echo "bench infer rc $? $(date -u)" | tee -a $L
summary $OUT/infer_$S
timeout ${4:-280} python3 -m lpmace bench --size $S --precisions fp32,bf16-mixed --backends compiled \
  --workloads train --repeats 10 --device cuda --no-progress --out $OUT/train_$S > $OUT/bench_train_$S.log 2>&1
echo "bench train rc $? $(date -u)" | tee -a $L
summary $OUT/train_$S
tar czf $OUT/results_$S.tar.gz -C $OUT infer_$S train_$S && rm -rf $OUT/infer_$S $OUT/train_$S
