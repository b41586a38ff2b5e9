#!/usr/bin/env bash
# session 34 call A (issue 17): the conv kernels with edge indices loaded one loop step ahead (AHEAD), at
# 1 and 2 edges per step, layers 2 and 1 of the W2 `mp` box, bf16 and fp32; the GPU kernel tests; then
# AHEAD set (in the device's copy of the tree: ahead.diff) for each kernel key where it won by > 3 % at
# the default unroll on layer 2, and `lpmace bench --size mp --compare-mace-torch` on that tree.
set -uo pipefail
T0=$(date +%s); el() { echo "[$(( $(date +%s) - T0 )) s]"; }
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
[ -d /tmp/site/cuequivariance_torch ] || tar xJf .whl/cueq.tar.xz -C /tmp/site || exit 1
export PYTHONPATH=$PWD/src:/tmp/site PYTHONUNBUFFERED=1 LPMACE_CACHE_DIR=/tmp/lpmace-cache PATH=/tmp/site/bin:$PATH
L=$OUT/run.log
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader | tee -a $L
echo "$(date -u)" | tee -a $L
timeout 200 python3 benchmarks/conv_kernels.py --ahead --out $OUT > $OUT/ahead.log 2>&1
echo "ahead rc $? $(el)" | tee -a $L; grep -v "Warn\|warn" $OUT/ahead.log | cut -c1-230 | tee -a $L
timeout 100 python3 -m pytest -m gpu tests/kernels/test_conv_tensor_product.py -p no:cacheprovider -q > $OUT/pytest.log 2>&1
echo "pytest rc $? $(tail -1 $OUT/pytest.log) $(el)" | tee -a $L
python3 - $OUT/conv_ahead.json <<'PY' | tee -a $L
import json, re, sys
rows = json.load(open(sys.argv[1]))
default = {"message": 2, "grads": 1}
wins = []
for kind in default:
    for dtype, key in (("bfloat16", kind + " 16-bit"), ("float32", kind)):
        got = {r["ahead"]: r["ms"] for r in rows if r["layer"] == 2 and r["kernel"] == kind and r["dtype"] == dtype
               and r["unroll"] == default[kind] and "ms" in r}
        if len(got) == 2 and got[True] < 0.97 * got[False]:
            wins.append(key)
        print(key, got)
p = "src/lpmace/kernels/convolution_triton.py"
s = open(p).read()
s = s.replace("AHEAD: dict = {}", "AHEAD: dict = {" + ", ".join(f'"{k}": True' for k in wins) + "}")
open(p, "w").write(s)
print("AHEAD set for", wins)
PY
git diff src/lpmace/kernels/convolution_triton.py > $OUT/ahead.diff
if grep -q "True" $OUT/ahead.diff; then
  timeout ${BENCH_S:-330} python3 -m lpmace bench --size mp --precisions fp32,bf16-mixed --backends compiled \
    --workloads infer,train,accuracy --repeats 10 --compare-mace-torch --device cuda --no-progress \
    --out $OUT/bench_mp > $OUT/bench_mp.log 2>&1
  echo "bench rc $? $(el)" | tee -a $L
  python3 - "$OUT/bench_mp/results.json" <<'PY' | tee -a $L
import json, sys
r = json.load(open(sys.argv[1]))
for row in r["speed"]:
    print(row["workload"], row["code"], row["backend"], row["precision"], row.get("median_ms"), row.get("min_ms"), row.get("iqr_ms"), row.get("peak_memory_mb"), row.get("status"))
for row in r.get("accuracy", []):
    print("accuracy", {k: row[k] for k in row if k in ("code", "backend", "precision", "force_rel_rmse", "force_rmse_mev_per_A")})
PY
  cd $OUT && tar czf bench_mp.tgz bench_mp && rm -rf bench_mp
fi
echo "done $(el)" | tee -a $L
