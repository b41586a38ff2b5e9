#!/usr/bin/env bash
# issue 17 run 10: W1 training step, compiled backend with CUDA graphs (LPMACE_COMPILE_MODE=reduce-overhead), medium. Usage: run10.sh COMMIT
set -uo pipefail
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=$PWD/src:/tmp/site PYTHONUNBUFFERED=1 LPMACE_CACHE_DIR=/tmp/lpmace-cache LPMACE_COMPILE_MODE=reduce-overhead
L=$OUT/run.log
echo "commit $1 $(date -u)" | tee -a $L
timeout 220 python3 -m lpmace bench --size medium --precisions bf16-mixed,fp32 --backends compiled \
  --workloads train --repeats 10 --device cuda --no-progress --out $OUT/train_medium_ro > $OUT/bench_train_medium_ro.log 2>&1
echo "bench rc $? $(date -u)" | tee -a $L
python3 -c "
import json; r=json.load(open('$OUT/train_medium_ro/results.json'))
[print(x['workload'], x['backend'], x['precision'], x['median_ms'], x['iqr_ms'], x['peak_memory_mb'], x['status']) for x in r['speed']]" | tee -a $L
