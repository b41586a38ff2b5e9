#!/usr/bin/env bash
# session 36 call C (issues 17, 18): the GPU conv tests at real size, L = 0 and 1 features (the layer-1 tiles),
# the conv kernels at the defaults, then `lpmace bench --size medium --workloads infer,train --compare-mace-torch` and, as far as the call's
# time allows (DEADLINE s), `lpmace bench --size mp --workloads infer --compare-mace-torch`, on commit d3a2548.
set -uo pipefail
T0=$(date +%s); el() { echo "[$(( $(date +%s) - T0 )) s]"; }
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
[ -d /tmp/site/cuequivariance_torch ] || tar xJf .whl/cueq.tar.xz -C /tmp/site || exit 1
export PYTHONPATH=$PWD/src:/tmp/site PYTHONUNBUFFERED=1 LPMACE_CACHE_DIR=/tmp/lpmace-cache PATH=/tmp/site/bin:$PATH
L=$OUT/run.log
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader | tee -a $L
echo "$(date -u)" | tee -a $L
timeout 60 python3 -m pytest -m gpu tests/kernels/test_conv_tensor_product.py -k "real_size and not ahead" -p no:cacheprovider -q > $OUT/pytest.log 2>&1
echo "pytest rc $? $(tail -1 $OUT/pytest.log) $(el)" | tee -a $L
timeout 60 python3 benchmarks/conv_kernels.py --out $OUT/conv > $OUT/defaults.log 2>&1
echo "conv kernels at the defaults rc $? $(el)" | tee -a $L
python3 - $OUT/conv/conv_kernels.json <<'PY' | tee -a $L
import json, sys
for r in json.load(open(sys.argv[1])):
    print(r["layer"], r["dtype"], r["kernel"], round(r["ms"], 4), "%.1f%%" % (100 * r["bandwidth_tb_s"] / 4.3), r["check"])
PY
for S in medium mp; do
  W=$([ $S = medium ] && echo infer,train || echo infer)
  LEFT=$(( ${DEADLINE:-585} - $(date +%s) + T0 ))
  [ $LEFT -gt 60 ] || break
  timeout $LEFT python3 -m lpmace bench --size $S --precisions fp32,bf16-mixed --backends compiled \
    --workloads $W --repeats 10 --compare-mace-torch --device cuda --no-progress \
    --out $OUT/bench_$S > $OUT/bench_$S.log 2>&1
  echo "bench $S rc $? $(el)" | tee -a $L
  python3 - "$OUT/bench_$S/results.json" <<'PY' | tee -a $L
import json, sys
r = json.load(open(sys.argv[1]))
for row in r["speed"]:
    print(row["workload"], row["code"], row["backend"], row["precision"], row.get("median_ms"), row.get("min_ms"), row.get("iqr_ms"), row.get("peak_memory_mb"), row.get("status"))
PY
  (cd $OUT && tar czf bench_$S.tgz bench_$S/*.png 2>/dev/null; rm -f bench_$S/*.png)
done
echo "done $(el)" | tee -a $L
