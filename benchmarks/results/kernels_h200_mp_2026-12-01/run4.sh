#!/usr/bin/env bash
# issue 17 run 4: lpmace bench --compare-mace-torch, --size mp and --size medium (triton fp32/bf16-mixed). Usage: run4.sh COMMIT
set -uo pipefail
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
tar xJf .whl/cueq.tar.xz -C /tmp/site || exit 1
export PYTHONPATH=$PWD/src:/tmp/site PYTHONUNBUFFERED=1 LPMACE_CACHE_DIR=/tmp/lpmace-cache
L=$OUT/run.log
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader | tee $L
echo "commit $1 $(date -u)" | tee -a $L
for size in mp medium; do
  timeout 190 python3 -m lpmace bench --size $size --precisions fp32,bf16-mixed --backends triton \
    --workloads train,infer --repeats 10 --compare-mace-torch --device cuda --no-progress --out $OUT/compare_$size > $OUT/bench_$size.log 2>&1
  echo "bench $size rc $? $(date -u)" | tee -a $L
  python3 - "$OUT/compare_$size/results.json" <<'PY' | tee -a $L
import json, sys
r = json.load(open(sys.argv[1]))
for row in r["speed"]:
    print(row["workload"], row["code"], row["backend"], row["precision"], row.get("median_ms"), row.get("peak_memory_mb"), row.get("status"))
PY
  tar czf $OUT/compare_$size.tar.gz -C $OUT compare_$size && rm -rf $OUT/compare_$size
done
