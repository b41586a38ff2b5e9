#!/usr/bin/env bash
# issue 17 run 5: lpmace bench --compare-mace-torch --size L2 (W2 inference, triton fp32/bf16-mixed). Usage: run5.sh COMMIT
set -uo pipefail
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
tar xJf .whl/cueq.tar.xz -C /tmp/site || exit 1
export PYTHONPATH=$PWD/src:/tmp/site PYTHONUNBUFFERED=1 LPMACE_CACHE_DIR=/tmp/lpmace-cache
L=$OUT/run.log
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader | tee $L
echo "commit $1 $(date -u)" | tee -a $L
timeout 180 python3 -m lpmace bench --size L2 --precisions fp32,bf16-mixed --backends triton \
  --workloads infer --repeats 10 --compare-mace-torch --device cuda --no-progress --out $OUT/compare_L2 > $OUT/bench_L2.log 2>&1
echo "bench L2 rc $? $(date -u)" | tee -a $L
python3 - "$OUT/compare_L2/results.json" <<'PY' | tee -a $L
import json, sys
r = json.load(open(sys.argv[1]))
for row in r["speed"]:
    print(row["workload"], row["code"], row["backend"], row["precision"], row.get("median_ms"), row.get("peak_memory_mb"), row.get("status"))
PY
tar czf $OUT/compare_L2.tar.gz -C $OUT compare_L2 && rm -rf $OUT/compare_L2
