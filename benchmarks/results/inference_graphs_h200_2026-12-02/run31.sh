#!/usr/bin/env bash
# session 30, call 3: is compiled W2 medium inference host-bound? default mode twice, reduce-overhead once,
# and torch.profiler of the compiled forward (CPU vs CUDA time per step).
set -uo pipefail
T0=$(date +%s); el() { echo $(( $(date +%s) - T0 )); }
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
export PYTHONUNBUFFERED=1 LPMACE_CACHE_DIR=/tmp/lpmace-cache PATH=/tmp/site/bin:$PATH PYTHONPATH=$PWD/src:/tmp/site
L=$OUT/run.log
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader | tee $L; nproc | tee -a $L
bench() {  # tag, then env assignments
  local tag=$1; shift
  env "$@" timeout 150 python3 -m lpmace bench --size medium --precisions fp32,bf16-mixed --backends compiled \
    --workloads infer --repeats 30 --device cuda --no-progress --out /tmp/b_$tag > $OUT/bench_$tag.log 2>&1
  echo "$tag rc $? [$(el) s]" | tee -a $L
  python3 -c "
import json; r=json.load(open('/tmp/b_$tag/results.json'))
for x in r['speed']: print('$tag', x['precision'], 'median %.2f min %.2f iqr %.2f max %.2f' % (x['median_ms'], x['min_ms'], x['iqr_ms'], x['max_ms']))" | tee -a $L
}
timeout 120 python3 "$(dirname "$0")/diag_host.py" medium 2>&1 | grep -v Warn | tee -a $L
bench default1 LPMACE_COMPILE_MODE=default
bench reduce LPMACE_COMPILE_MODE=reduce-overhead
bench default2 LPMACE_COMPILE_MODE=default
timeout 90 python3 benchmarks/profile_step.py --precisions fp32,bf16-mixed --backends compiled --workloads infer \
  --size medium --rows 30 --out $OUT/prof > $OUT/prof.log 2>&1
echo "profile rc $? [$(el) s]" | tee -a $L
grep -h "Self CPU time total\|Self CUDA time total\|^# " $OUT/prof/*.txt | tee -a $L
echo "done [$(el) s]" | tee -a $L
