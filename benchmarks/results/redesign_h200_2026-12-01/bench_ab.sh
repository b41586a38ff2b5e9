#!/usr/bin/env bash
# Same bench before (96d6a36, .whl/base_src) and after (this checkout) the redesign, one process each, same GPU.
set -uo pipefail
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader | tee $OUT/bench_ab.log
echo "after: commit $1; before: 96d6a36" | tee -a $OUT/bench_ab.log
ARGS="bench --size medium --precisions fp32,bf16-mixed --backends triton --workloads train,infer --repeats 10 --device cuda --no-progress"
for side in before after; do
  src=$PWD/src; [ $side = before ] && src=$PWD/.whl/base_src/src
  echo "== $side" | tee -a $OUT/bench_ab.log
  PYTHONPATH=$src:/tmp/site PYTHONUNBUFFERED=1 timeout 250 python3 -m lpmace $ARGS --out $OUT/$side >> $OUT/bench_ab.log 2>&1
  python3 - "$OUT/$side/results.json" <<'PY' | tee -a $OUT/bench_ab.log
import json, sys
r = json.load(open(sys.argv[1]))
for row in r["speed"]:
    print(row["workload"], row["backend"], row["precision"], row.get("median_ms"), row.get("peak_memory_mb"), row.get("status"))
PY
done
