#!/usr/bin/env bash
# session 35 call A (issue 17): grads walking the receivers (grads_in + sum_shares; RECEIVER_GRADS) against
# the senders' walk (benchmarks/conv_kernels.py --walk), the GPU conv kernel tests (the receiver walk's
# included); then the fastest layer-2 receiver setting per operand width written into the device's copy
# (walk.diff) and `lpmace bench --size mp --workloads infer` on it, as far as the time allows.
set -uo pipefail
T0=$(date +%s); el() { echo "[$(( $(date +%s) - T0 )) s]"; }
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
[ -d /tmp/site/cuequivariance_torch ] || tar xJf .whl/cueq.tar.xz -C /tmp/site || exit 1
export PYTHONPATH=$PWD/src:/tmp/site PYTHONUNBUFFERED=1 LPMACE_CACHE_DIR=/tmp/lpmace-cache PATH=/tmp/site/bin:$PATH
L=$OUT/run.log
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader | tee -a $L
echo "$(date -u)" | tee -a $L
timeout 300 python3 benchmarks/conv_kernels.py --walk --out $OUT > $OUT/walk.log 2>&1
echo "walk rc $? $(el)" | tee -a $L
python3 - $OUT/conv_walk.json <<'PY' | tee -a $L
import json, sys
for r in json.load(open(sys.argv[1])):
    print(r["layer"], r["dtype"], r["walk"], r.get("shares", ""), r.get("channels_per_program", ""), r.get("channels_per_lane", ""),
          "unroll", r.get("unroll", ""), "ahead", r.get("ahead", ""), round(r.get("ms", -1), 4),
          round(r.get("bandwidth_tb_s", 0) / 4.3 * 100, 1), "%", r.get("registers_spills"), r.get("error", "")[:160], f'{r.get("check", -1):.1e}')
PY
timeout 150 python3 -m pytest -m gpu tests/kernels/test_conv_tensor_product.py -p no:cacheprovider -q > $OUT/pytest.log 2>&1
echo "pytest rc $? $(tail -1 $OUT/pytest.log) $(el)" | tee -a $L
python3 - $OUT/conv_walk.json <<'PY' | tee -a $L
import json, re, sys
rows = [r for r in json.load(open(sys.argv[1])) if "ms" in r and r["layer"] == 2 and r.get("check", 1) < 2e-2]
p = "src/lpmace/kernels/convolution_triton.py"
s = open(p).read()
for dtype, key in (("bfloat16", "grads 16-bit"), ("float32", "grads")):
    base = [r["ms"] for r in rows if r["dtype"] == dtype and r["walk"] == "senders"]
    best = min((r for r in rows if r["dtype"] == dtype and r["walk"] == "receivers"), key=lambda r: r["ms"], default=None)
    print(key, base, best)
    if best and base and best["ms"] < 0.95 * base[0]:
        s = s.replace("RECEIVER_GRADS: dict = {}", f"RECEIVER_GRADS: dict = {{}}\nRECEIVER_GRADS[{key!r}] = {best['shares']!r}")
        s = re.sub(rf'"{key}": \([^)]*\)', f'"{key}": ({best["channels_per_program"]}, 1, {best["unroll"]}, {best["channels_per_lane"]}, 1)', s, count=1)
        s = s.replace('AHEAD: dict = {', f'AHEAD: dict = {{"{key}": {best["ahead"]}, ')
open(p, "w").write(s)
PY
git diff src/lpmace/kernels/convolution_triton.py > $OUT/walk.diff
LEFT=$(( 570 - $(date +%s) + T0 ))
if grep -q "^+RECEIVER_GRADS" $OUT/walk.diff && [ $LEFT -gt 150 ]; then
  timeout $LEFT python3 -m lpmace bench --size mp --precisions fp32,bf16-mixed --backends compiled \
    --workloads infer --repeats 10 --compare-mace-torch --device cuda --no-progress \
    --out $OUT/bench_mp > $OUT/bench_mp.log 2>&1
  echo "bench rc $? $(el)" | tee -a $L
  grep -h "W2" $OUT/bench_mp/report.md 2>/dev/null | head -12 | tee -a $L
fi
echo "done $(el)" | tee -a $L
