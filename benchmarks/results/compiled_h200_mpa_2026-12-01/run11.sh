#!/usr/bin/env bash
# session 26 call A: GPU tests of the sync-free step, then issue 19's mpa W2 row (compiled, fp32 + bf16, mace-torch and
# cuEquivariance in the same run). Usage: run11.sh COMMIT
set -uo pipefail
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
tar xJf .whl/cueq.tar.xz -C /tmp/site || exit 1
export PYTHONPATH=$PWD/src:/tmp/site PYTHONUNBUFFERED=1 LPMACE_CACHE_DIR=/tmp/lpmace-cache
L=$OUT/run.log
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader | tee $L
python3 -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__)" | tee -a $L
echo "commit $1 $(date -u)" | tee -a $L
timeout 100 python3 -m pytest -m gpu tests/train -p no:cacheprovider -rA -q -x > $OUT/pytest_train_gpu.log 2>&1
echo "pytest rc $? $(tail -1 $OUT/pytest_train_gpu.log) $(date -u)" | tee -a $L
timeout 400 python3 -m lpmace bench --size mpa --precisions fp32,bf16-mixed --backends compiled \
  --workloads infer --repeats 10 --compare-mace-torch --device cuda --no-progress --out $OUT/infer_mpa > $OUT/bench_infer_mpa.log 2>&1
echo "bench infer rc $? $(date -u)" | tee -a $L
python3 - "$OUT/infer_mpa/results.json" <<'PY' | tee -a $L
import json, sys
r = json.load(open(sys.argv[1]))
for row in r["speed"]:
    print(row["workload"], row["code"], row["backend"], row["precision"], row.get("median_ms"), row.get("peak_memory_mb"), row.get("status"))
PY
