#!/usr/bin/env bash
# session 35 call B (issues 17, 18): grads with each edge's ∂Y summed over channels in one warp butterfly
# (BUTTERFLY) against one tl.sum per harmonic (benchmarks/conv_kernels.py --butterfly), the GPU conv kernel
# tests, every conv kernel at its defaults (benchmarks/conv_kernels.py: the per-kernel table), then, if the
# tests passed, `lpmace bench --size medium --workloads infer,train --compare-mace-torch`.
set -uo pipefail
T0=$(date +%s); el() { echo "[$(( $(date +%s) - T0 )) s]"; }
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
[ -d /tmp/site/cuequivariance_torch ] || tar xJf .whl/cueq.tar.xz -C /tmp/site || exit 1
export PYTHONPATH=$PWD/src:/tmp/site PYTHONUNBUFFERED=1 LPMACE_CACHE_DIR=/tmp/lpmace-cache PATH=/tmp/site/bin:$PATH
L=$OUT/run.log
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader | tee -a $L
echo "$(date -u)" | tee -a $L
timeout 130 python3 -m pytest -m gpu tests/kernels/test_conv_tensor_product.py -p no:cacheprovider -q > $OUT/pytest.log 2>&1
RC=$?
echo "pytest rc $RC $(tail -1 $OUT/pytest.log) $(el)" | tee -a $L
timeout 90 python3 benchmarks/conv_kernels.py --butterfly --out $OUT > $OUT/butterfly.log 2>&1
echo "butterfly rc $? $(el)" | tee -a $L
timeout 90 python3 benchmarks/conv_kernels.py --out $OUT > $OUT/kernels.log 2>&1
echo "kernels rc $? $(el)" | tee -a $L
python3 - $OUT/conv_butterfly.json $OUT/conv_kernels.json <<'PY' | tee -a $L
import json, sys
for path in sys.argv[1:]:
    try:
        rows = json.load(open(path))
    except (OSError, ValueError) as err:
        print(path, err)
        continue
    for r in rows:
        print(r["layer"], r["dtype"], r["kernel"], "butterfly", r.get("butterfly", "default"), round(r["ms"], 4),
              round(r["bandwidth_tb_s"] / 4.3 * 100, 1), "%", f'{r["check"]:.1e}')
PY
if [ $RC -eq 0 ]; then
  timeout $(( 585 - $(date +%s) + T0 )) python3 -m lpmace bench --size medium --precisions fp32,bf16-mixed --backends compiled \
    --workloads infer,train --repeats 10 --compare-mace-torch --device cuda --no-progress \
    --out $OUT/bench_medium > $OUT/bench_medium.log 2>&1
  echo "bench rc $? $(el)" | tee -a $L
  python3 - "$OUT/bench_medium/results.json" <<'PY' | tee -a $L
import json, sys
r = json.load(open(sys.argv[1]))
for row in r["speed"]:
    print(row["workload"], row["code"], row["backend"], row["precision"], row.get("median_ms"), row.get("min_ms"), row.get("iqr_ms"), row.get("peak_memory_mb"), row.get("status"))
PY
fi
echo "done $(el)" | tee -a $L
