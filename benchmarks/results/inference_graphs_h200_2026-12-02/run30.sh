#!/usr/bin/env bash
# session 30, call 1: (A) bisect the W2 medium slowdown e214a9b..f780804 (lpmace only, one process per commit,
# source trees in .whl/bisect/COMMIT/src, one shared inductor cache), (B) torch.profiler of W2 medium bf16 at
# both ends, (C) GPU tests: conv on main, table-gradient branch (tg.patch), device-neighbours branch (dn.patch).
set -uo pipefail
T0=$(date +%s); el() { echo $(( $(date +%s) - T0 )); }
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
export PYTHONUNBUFFERED=1 LPMACE_CACHE_DIR=/tmp/lpmace-cache PATH=/tmp/site/bin:$PATH
L=$OUT/run.log
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader | tee $L
bench() {  # commit round
  local c=$1 r=$2 t=$(date +%s)
  PYTHONPATH=$PWD/.whl/bisect/$c/src:/tmp/site timeout 120 python3 -m lpmace bench --size medium --precisions fp32,bf16-mixed \
    --backends compiled --workloads infer --repeats 30 --device cuda --no-progress --out $OUT/b_${c}_$r > $OUT/bench_${c}_$r.log 2>&1
  echo "rc $? $(( $(date +%s) - t )) s" >> $OUT/bench_${c}_$r.log
  python3 - "$c" "$r" "$OUT/b_${c}_$r/results.json" <<'PY' | tee -a $L
import json, sys
try:
    r = json.load(open(sys.argv[3]))
except OSError:
    print(sys.argv[1], "round", sys.argv[2], "no results"); raise SystemExit
for row in r["speed"]:
    print(sys.argv[1], "round", sys.argv[2], row["precision"], "median %.2f min %.2f iqr %.2f mem %.0f" % (
        row["median_ms"], row["min_ms"], row["iqr_ms"], row["peak_memory_mb"]))
PY
  echo "  [$(el) s]" | tee -a $L
}
for c in f780804 e214a9b 9d9598d 4a1c0b1; do bench $c 1; done
for c in f780804 e214a9b 9d9598d 4a1c0b1; do [ $(el) -lt 300 ] && bench $c 2; done
for c in e214a9b f780804; do
  [ $(el) -lt 420 ] || break
  PYTHONPATH=$PWD/.whl/bisect/$c/src:/tmp/site timeout 60 python3 benchmarks/profile_step.py --precisions bf16-mixed \
    --backends triton --workloads infer --size medium --rows 25 --out $OUT/prof_$c > $OUT/prof_$c.log 2>&1
  echo "profile $c rc $? [$(el) s]" | tee -a $L
done
PYTHONPATH=$PWD/src:/tmp/site timeout 60 python3 -m pytest -q -m gpu tests/kernels/test_conv_tensor_product.py -p no:cacheprovider > $OUT/pytest_conv.log 2>&1
echo "pytest conv rc $? $(tail -1 $OUT/pytest_conv.log) [$(el) s]" | tee -a $L
for b in tg dn; do
  rm -rf /tmp/$b && mkdir -p /tmp/$b && cp -r src tests pyproject.toml /tmp/$b/ && (cd /tmp/$b && patch -s -p1 < $OLDPWD/.whl/$b.patch) || { echo "patch $b failed" | tee -a $L; continue; }
done
(cd /tmp/tg && PYTHONPATH=/tmp/tg/src:/tmp/site timeout 90 python3 -m pytest -q -m gpu tests/kernels/test_polynomial_contraction.py -p no:cacheprovider > $OUT/pytest_tg.log 2>&1; echo "pytest tg rc $? $(tail -1 $OUT/pytest_tg.log) [$(el) s]" | tee -a $L)
(cd /tmp/dn && PYTHONPATH=/tmp/dn/src:/tmp/site timeout 60 python3 -m pytest -q tests/data/test_device_neighbours.py -p no:cacheprovider > $OUT/pytest_dn.log 2>&1; echo "pytest dn rc $? $(tail -1 $OUT/pytest_dn.log) [$(el) s]" | tee -a $L)
echo "done [$(el) s]" | tee -a $L
