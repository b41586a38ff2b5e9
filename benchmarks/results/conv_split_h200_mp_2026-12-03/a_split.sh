#!/usr/bin/env bash
# session 37 call A (issues 17, 18): the conv kernels at CANDIDATES (grads split in two launches, register caps;
# `conv_kernels.py --layers`) at the W2 box (4,096 atoms) and at a W1 batch's size (864 atoms), then the `mp` W1
# trainer step's profile in bf16-mixed (where the step's time goes with 89 elements).
set -uo pipefail
T0=$(date +%s); el() { echo "[$(( $(date +%s) - T0 )) s]"; }
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=$PWD/src:/tmp/site PYTHONUNBUFFERED=1 LPMACE_CACHE_DIR=/tmp/lpmace-cache
L=$OUT/run.log
nvidia-smi --query-gpu=name,driver_version,clocks.max.sm --format=csv,noheader | tee -a $L
echo "$(date -u) torch $(python3 -c 'import torch, triton; print(torch.__version__, triton.__version__)') $(git rev-parse --short HEAD 2>/dev/null)" | tee -a $L
summary() {
python3 - $1 <<'PY' | tee -a $L
import json, sys
for r in json.load(open(sys.argv[1])):
    print(r["layer"], r["dtype"], r["kernel"], r.get("channels_per_program"), r.get("channels_per_lane"), r.get("unroll"),
          r.get("runs"), r.get("ahead"), "split" if r.get("split") else "-", r.get("maxnreg"),
          round(r["ms"], 4) if "ms" in r else r.get("error"), r.get("registers_spills"),
          "%.1f%%" % (100 * r["bandwidth_tb_s"] / 4.3) if "bandwidth_tb_s" in r else "", r.get("check"))
PY
}
timeout 150 python3 benchmarks/conv_kernels.py --layers --out $OUT/conv > $OUT/layers.log 2>&1
echo "layers (4096 atoms) rc $? $(el)" | tee -a $L
summary $OUT/conv/conv_layers.json
timeout 120 python3 benchmarks/conv_kernels.py --layers --atoms 864 --out $OUT/conv864 > $OUT/layers864.log 2>&1
echo "layers (864 atoms) rc $? $(el)" | tee -a $L
summary $OUT/conv864/conv_layers.json
timeout 200 python3 benchmarks/profile_step.py --trainer-step --workloads train --backends compiled --precisions bf16-mixed \
  --size mp --rows 45 --out $OUT/prof > $OUT/prof.log 2>&1
echo "mp W1 profile rc $? $(el)" | tee -a $L
head -1 $OUT/prof/*.txt | tee -a $L
echo "done $(el)" | tee -a $L
