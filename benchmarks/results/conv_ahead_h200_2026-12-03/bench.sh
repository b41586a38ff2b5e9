#!/usr/bin/env bash
# session 31 (as run33.sh), reused in session 34. Usage: bench.sh SIZE WORKLOADS BENCH_S [PROFILE=1 adds the W1 trainer-step profile; TESTS=1 the GPU forward-graph tests]
set -uo pipefail
T0=$(date +%s); el() { echo "[$(( $(date +%s) - T0 )) s]"; }
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
[ -d /tmp/site/cuequivariance_torch ] || tar xJf .whl/cueq.tar.xz -C /tmp/site || exit 1
export PYTHONPATH=$PWD/src:/tmp/site PYTHONUNBUFFERED=1 LPMACE_CACHE_DIR=/tmp/lpmace-cache PATH=/tmp/site/bin:$PATH
S=$1; W=$2; L=$OUT/run.log
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader | tee $L
echo "commit $(git rev-parse --short HEAD 2>/dev/null) size $S workloads $W $(date -u)" | tee -a $L
if [ -n "${TESTS:-}" ]; then
  timeout 120 python3 -m pytest -m gpu tests/test_forward_graphs.py -p no:cacheprovider -rA -q > $OUT/pytest_fg.log 2>&1
  echo "pytest forward graphs rc $? $(tail -1 $OUT/pytest_fg.log) $(el)" | tee -a $L
fi
timeout $3 python3 -m lpmace bench --size $S --precisions fp32,bf16-mixed --backends compiled \
  --workloads $W --repeats 10 --compare-mace-torch --device cuda --no-progress \
  --out $OUT/bench_$S > $OUT/bench_$S.log 2>&1
echo "bench rc $? $(el)" | tee -a $L
python3 - "$OUT/bench_$S/results.json" <<'PY' | tee -a $L
import json, sys
r = json.load(open(sys.argv[1]))
for row in r["speed"]:
    print(row["workload"], row["code"], row["backend"], row["precision"], row.get("median_ms"), row.get("min_ms"), row.get("iqr_ms"), row.get("peak_memory_mb"), row.get("status"))
for row in r.get("accuracy", []):
    print("accuracy", {k: row[k] for k in row if not isinstance(row[k], (list, dict))})
PY
if [ -n "${PROFILE:-}" ]; then
  timeout 150 python3 benchmarks/profile_step.py --trainer-step --workloads train --backends compiled \
    --precisions fp32,bf16-mixed --size $S --rows 40 --out $OUT/prof > $OUT/prof.log 2>&1
  echo "profile rc $? $(el)" | tee -a $L
  grep -h "Self CPU time total\|Self CUDA time total\|^# \|wall\|busy" $OUT/prof/*.txt $OUT/prof.log | head -40 | tee -a $L
fi
cd $OUT && tar czf bench_$S.tgz bench_$S $( [ -d prof ] && echo prof ) && rm -rf bench_$S prof
echo "done $(el)" | tee -a $L
