#!/usr/bin/env bash
# lpmace bench --compare-mace-torch at commit $1 (mace-torch 0.3.16 + cuEquivariance 0.13 carried in .whl)
set -uo pipefail
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
tar xJf .whl/cueq.tar.xz -C /tmp/site || exit 1
export PYTHONPATH=$PWD/src:/tmp/site PYTHONUNBUFFERED=1
L=$OUT/bench_compare.log
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader | tee $L
echo "commit $1" | tee -a $L
timeout 420 python3 -m lpmace bench --size medium --precisions fp32,bf16-mixed --backends triton \
  --workloads train,infer --repeats 10 --compare-mace-torch --device cuda --no-progress --out $OUT/compare >> $L 2>&1
echo "rc $?" | tee -a $L
python3 - "$OUT/compare/results.json" <<'PY' | tee -a $L
import json, sys
r = json.load(open(sys.argv[1]))
for row in r["speed"]:
    print(row["workload"], row["code"], row["backend"], row["precision"], row.get("median_ms"), row.get("peak_memory_mb"), row.get("status"))
PY
