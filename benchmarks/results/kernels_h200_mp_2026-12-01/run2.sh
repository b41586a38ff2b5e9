#!/usr/bin/env bash
# issue 17 run 2: GPU kernel tests, conv kernels (new vs old), mp profile, bench --compare-mace-torch --size mp. Usage: run2.sh COMMIT
set -uo pipefail
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
tar xJf .whl/cueq.tar.xz -C /tmp/site || exit 1
export PYTHONPATH=$PWD/src:/tmp/site PYTHONUNBUFFERED=1 LPMACE_CACHE_DIR=/tmp/lpmace-cache
L=$OUT/run.log
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader | tee $L
python3 -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__)" | tee -a $L
echo "commit $1 $(date -u)" | tee -a $L
timeout 200 python3 -m pytest -m gpu tests/kernels -p no:cacheprovider -rA -q -x > $OUT/pytest_kernels.log 2>&1
echo "pytest rc $? $(tail -1 $OUT/pytest_kernels.log)" | tee -a $L
timeout 200 python3 benchmarks/conv_kernels.py --out $OUT --old .whl/old_conv.py --sweep > $OUT/conv_kernels.log 2>&1
echo "conv_kernels rc $? $(date -u)" | tee -a $L
mkdir -p /tmp/prof
timeout 100 python3 benchmarks/profile_step.py --precisions fp32,bf16-mixed --backends triton --size mp --rows 30 --out /tmp/prof/new > /tmp/prof/new.log 2>&1
echo "profile rc $? $(date -u)" | tee -a $L
tar czf $OUT/profiles.tar.gz -C /tmp prof
timeout 300 python3 -m lpmace bench --size mp --precisions fp32,bf16-mixed --backends triton \
  --workloads train,infer --repeats 10 --compare-mace-torch --device cuda --no-progress --out $OUT/compare_mp > $OUT/bench_mp.log 2>&1
echo "bench rc $? $(date -u)" | tee -a $L
python3 - "$OUT/compare_mp/results.json" <<'PY' | tee -a $L
import json, sys
r = json.load(open(sys.argv[1]))
for row in r["speed"]:
    print(row["workload"], row["code"], row["backend"], row["precision"], row.get("median_ms"), row.get("peak_memory_mb"), row.get("status"))
PY
tar czf $OUT/compare_mp.tar.gz -C $OUT compare_mp && rm -rf $OUT/compare_mp
