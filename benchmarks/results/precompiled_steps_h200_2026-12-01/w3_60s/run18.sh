#!/usr/bin/env bash
# session 27 call C (issue 18): W3 3BPA time to accuracy, bf16-mixed compiled: a cold process (one epoch: compile
# included) then a warm one (60 s) with mace_run_train in the same run.
set -uo pipefail
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
tar xJf .whl/cueq.tar.xz -C /tmp/site || exit 1
export PYTHONPATH=$PWD/src:/tmp/site PYTHONUNBUFFERED=1
L=$OUT/run.log
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader | tee $L
echo "commit $1 $(date -u)" | tee -a $L
export LPMACE_CACHE_DIR=/tmp/w3_cache
summary() { python3 - "$1" <<'PY' | tee -a $L
import json, sys
r = json.load(open(sys.argv[1] + "/results.json"))["time_to_accuracy"]
for run in r["runs"]:
    c = run["curve"]
    print(run["code"], run["backend"], run["precision"], run["status"], "epochs", len(c), "to target", run["time_to_target_s"],
          "final", run["final_force_rmse_mev_per_A"], "first", c[0] if c else None, "last", c[-1] if c else None)
PY
}
timeout 200 python3 -m lpmace bench --size medium --workloads time-to-accuracy --precisions bf16-mixed --backends compiled \
  --tta-budget 1 --device cuda --no-progress --out $OUT/w3_cold > $OUT/w3_cold.log 2>&1
echo "w3 cold rc $? $(date -u)" | tee -a $L; summary $OUT/w3_cold
timeout 330 python3 -m lpmace bench --size medium --workloads time-to-accuracy --precisions bf16-mixed --backends compiled \
  --tta-budget 60 --compare-mace-torch --device cuda --no-progress --out $OUT/w3 > $OUT/w3.log 2>&1
echo "w3 warm rc $? $(date -u)" | tee -a $L; summary $OUT/w3
