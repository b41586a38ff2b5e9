#!/usr/bin/env bash
# session 26 call B: GPU tests of the sync-free and CUDA-graph training steps, then W1 (medium, compiled, fp32 +
# bf16-mixed) with mace-torch in the same run. Usage: run12.sh COMMIT [SIZE]
set -uo pipefail
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
tar xJf .whl/cueq.tar.xz -C /tmp/site || exit 1
export PYTHONPATH=$PWD/src:/tmp/site PYTHONUNBUFFERED=1 LPMACE_CACHE_DIR=/tmp/lpmace-cache
S=${2:-medium}
L=$OUT/run.log
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader | tee $L
echo "commit $1 $(date -u)" | tee -a $L
timeout ${PYTEST_S:-200} python3 -m pytest -m gpu tests/train/test_sync_free_step.py tests/train/test_cuda_graphs.py \
  -p no:cacheprovider -rA -q --durations=10 > $OUT/pytest_train_gpu.log 2>&1
echo "pytest rc $? $(tail -1 $OUT/pytest_train_gpu.log) $(date -u)" | tee -a $L
grep -E "^(PASSED|FAILED|ERROR)" $OUT/pytest_train_gpu.log | tee -a $L
timeout 90 python3 .whl/${DIAG:-diag2.py} > $OUT/diag.log 2>&1; echo "diag rc $?" | tee -a $L; grep -v Warn $OUT/diag.log | tail -24 | cut -c1-300 | tee -a $L
[ -n "${SKIP_BENCH:-}" ] && exit 0
timeout ${BENCH_S:-330} python3 -m lpmace bench --size $S --precisions fp32,bf16-mixed --backends compiled \
  --workloads train --repeats 10 ${COMPARE---compare-mace-torch} --device cuda --no-progress --out $OUT/train_$S > $OUT/bench_train_$S.log 2>&1
echo "bench train rc $? $(date -u)" | tee -a $L
python3 - "$OUT/train_$S/results.json" <<'PY' | tee -a $L
import json, sys
r = json.load(open(sys.argv[1]))
for row in r["speed"]:
    print(row["workload"], row["code"], row["backend"], row["precision"], row.get("median_ms"), row.get("peak_memory_mb"), row.get("status"))
PY
