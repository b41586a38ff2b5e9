#!/usr/bin/env bash
# sessions 36-37 (issue 17): `lpmace bench --size SIZE --workloads WORKLOADS --compare-mace-torch` (fp32 and
# bf16-mixed, compiled, 10 repeats), medians printed into run.log, plots packed apart. Usage: bench.sh SIZE WORKLOADS
set -uo pipefail
S=$1; W=$2
T0=$(date +%s); el() { echo "[$(( $(date +%s) - T0 )) s]"; }
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
[ -d /tmp/site/cuequivariance_torch ] || tar xJf .whl/cueq.tar.xz -C /tmp/site || exit 1
export PYTHONPATH=$PWD/src:/tmp/site PYTHONUNBUFFERED=1 LPMACE_CACHE_DIR=/tmp/lpmace-cache PATH=/tmp/site/bin:$PATH
L=$OUT/run.log
nvidia-smi --query-gpu=name,driver_version,clocks.max.sm --format=csv,noheader | tee -a $L
echo "$(date -u) $S $W" | tee -a $L
timeout ${BENCH_S:-570} python3 -m lpmace bench --size $S --precisions fp32,bf16-mixed --backends compiled \
  --workloads $W --repeats 10 --compare-mace-torch --device cuda --no-progress \
  --out $OUT/bench_$S > $OUT/bench_$S.log 2>&1
echo "bench $S rc $? $(el)" | tee -a $L
python3 - "$OUT/bench_$S/results.json" <<'PY' | tee -a $L
import json, sys
r = json.load(open(sys.argv[1]))
for row in r["speed"]:
    print(row["workload"], row["code"], row["backend"], row["precision"], row.get("median_ms"), row.get("min_ms"),
          row.get("iqr_ms"), row.get("peak_memory_mb"), row.get("status"))
for row in r.get("accuracy", []):
    print("accuracy", {k: row[k] for k in row if not isinstance(row[k], (list, dict))})
PY
(cd $OUT && tar czf bench_$S.tgz bench_$S/*.png 2>/dev/null; rm -f bench_$S/*.png)
echo "done $(el)" | tee -a $L
