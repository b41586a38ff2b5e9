#!/usr/bin/env bash
# session 29 last call: W2 medium with mace-torch in the same run (message in the linear's dtype), then the
# conv GPU tests and the model-level kernel checks (fp64 now with exact tables). Usage: run28.sh COMMIT
set -uo pipefail
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
[ -d /tmp/site/cuequivariance_torch ] || tar xJf .whl/cueq.tar.xz -C /tmp/site || exit 1
export PYTHONPATH=$PWD/src:/tmp/site PYTHONUNBUFFERED=1 LPMACE_CACHE_DIR=/tmp/lpmace-cache PATH=/tmp/site/bin:$PATH
L=$OUT/run.log
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader | tee $L
echo "commit $1 $(date -u)" | tee -a $L
timeout 150 python3 -m lpmace bench --size medium --precisions fp32,bf16-mixed --backends compiled \
  --workloads infer --repeats 10 --compare-mace-torch --device cuda --no-progress --out $OUT/infer_medium > $OUT/bench_infer_medium.log 2>&1
echo "bench rc $? $(date -u)" | tee -a $L
python3 - "$OUT/infer_medium/results.json" <<'PY' | tee -a $L
import json, sys
r = json.load(open(sys.argv[1]))
for row in r["speed"]:
    print(row["workload"], row["code"], row["backend"], row["precision"], row.get("median_ms"), row.get("peak_memory_mb"), row.get("status"))
PY
cd $OUT && tar czf infer_medium.tgz infer_medium && rm -rf infer_medium && cd - >/dev/null
timeout 45 python3 -m pytest -m gpu tests/kernels/test_conv_tensor_product.py -p no:cacheprovider -rA -q > $OUT/pytest_conv.log 2>&1
echo "pytest rc $? $(tail -1 $OUT/pytest_conv.log) $(date -u)" | tee -a $L
timeout 80 python3 benchmarks/check_kernels_gpu.py --kernels-only > $OUT/check_kernels.log 2>&1
echo "check_kernels rc $? $(date -u)" | tee -a $L; grep -v Warn $OUT/check_kernels.log | tail -9 | cut -c1-220 | tee -a $L
