#!/usr/bin/env bash
# session 36 call B (issue 17): the GPU conv tests of the real-size kinds (L = 0 and 1 features), the kernels at
# CANDIDATES (Y contracted first, tiles, caps; `conv_kernels.py --layers`) and all kernels at the defaults.
set -uo pipefail
T0=$(date +%s); el() { echo "[$(( $(date +%s) - T0 )) s]"; }
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=$PWD/src:/tmp/site PYTHONUNBUFFERED=1 LPMACE_CACHE_DIR=/tmp/lpmace-cache
L=$OUT/run.log
nvidia-smi --query-gpu=name,driver_version,clocks.max.sm --format=csv,noheader | tee -a $L
echo "$(date -u) torch $(python3 -c 'import torch, triton; print(torch.__version__, triton.__version__)')" | tee -a $L
timeout 130 python3 -m pytest -m gpu tests/kernels/test_conv_tensor_product.py -k "real_size or rounded_once or butterfly" -p no:cacheprovider -q -rf > $OUT/pytest.log 2>&1
echo "pytest rc $? $(tail -1 $OUT/pytest.log) $(el)" | tee -a $L
grep -E "FAILED|Error" $OUT/pytest.log | head -10 | tee -a $L
timeout 300 python3 benchmarks/conv_kernels.py --layers --out $OUT/conv > $OUT/layers.log 2>&1
echo "layers rc $? $(el)" | tee -a $L
python3 - $OUT/conv/conv_layers.json <<'PY' | tee -a $L
import json, sys
for r in json.load(open(sys.argv[1])):
    print(r["layer"], r["dtype"], r["kernel"], r.get("channels_per_program"), r.get("channels_per_lane"), r.get("unroll"),
          r.get("runs"), r.get("ahead"), "yf" if r.get("y_first") else "-", r.get("maxnreg"), round(r["ms"], 4) if "ms" in r else r.get("error"), r.get("registers_spills"),
          "%.1f%%" % (100 * r["bandwidth_tb_s"] / 4.3) if "bandwidth_tb_s" in r else "", r.get("check"))
PY
timeout 120 python3 benchmarks/conv_kernels.py --out $OUT/conv > $OUT/defaults.log 2>&1
echo "defaults rc $? $(el)" | tee -a $L
python3 - $OUT/conv/conv_kernels.json <<'PY' | tee -a $L
import json, sys
for r in json.load(open(sys.argv[1])):
    print(r["layer"], r["dtype"], r["kernel"], round(r["ms"], 4), "%.1f%%" % (100 * r["bandwidth_tb_s"] / 4.3), r["check"])
PY
echo "done $(el)" | tee -a $L
