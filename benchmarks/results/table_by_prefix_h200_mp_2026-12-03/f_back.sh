#!/usr/bin/env bash
# session 40 call F (tree dddd5bb): `lpmace bench --size medium --workloads train` for lpmace alone (the rest of
# the session's device time): the training rows' new back-to-back column on a GPU.
set -uo pipefail
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=$PWD/src:/tmp/site PYTHONUNBUFFERED=1 LPMACE_CACHE_DIR=/tmp/lpmace-cache
timeout ${BENCH_S:-200} python3 -m lpmace bench --size medium --precisions fp32,bf16-mixed --backends compiled \
  --workloads train --repeats 10 --device cuda --no-progress --out $OUT/bench_medium > $OUT/bench.log 2>&1
echo "bench rc $?"
python3 - "$OUT/bench_medium/results.json" <<'PY'
import json, sys
for row in json.load(open(sys.argv[1]))["speed"]:
    print(row["workload"], row["code"], row["precision"], row["median_ms"], row["min_ms"], row["back_to_back_ms"])
PY
rm -f $OUT/bench_medium/*.png
