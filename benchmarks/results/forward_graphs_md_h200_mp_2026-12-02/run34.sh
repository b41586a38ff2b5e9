#!/usr/bin/env bash
# session 31, call 3: GPU tests of lpmace.dynamics, neighbour-list speed, MD engine speed, conv register caps.
set -uo pipefail
T0=$(date +%s); el() { echo "[$(( $(date +%s) - T0 )) s]"; }
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=$PWD/src:/tmp/site PYTHONUNBUFFERED=1 LPMACE_CACHE_DIR=/tmp/lpmace-cache PATH=/tmp/site/bin:$PATH
L=$OUT/run.log
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader | tee $L
echo "commit $(git rev-parse --short HEAD 2>/dev/null) $(date -u)" | tee -a $L
timeout 150 python3 -m pytest -m gpu tests/dynamics tests/test_dynamics.py -p no:cacheprovider -rA -q > $OUT/pytest_md.log 2>&1
echo "pytest md rc $? $(tail -1 $OUT/pytest_md.log) $(el)" | tee -a $L
timeout 60 python3 benchmarks/neighbour_list_speed.py --device cuda > $OUT/neighbours.log 2>&1
echo "neighbours rc $? $(el)" | tee -a $L; grep -v Warn $OUT/neighbours.log | tail -12 | tee -a $L
timeout ${MD_S:-300} python3 benchmarks/md_engine_speed.py --out $OUT/md > $OUT/md_engine.log 2>&1
echo "md_engine rc $? $(el)" | tee -a $L; grep -v Warn $OUT/md_engine.log | tail -16 | tee -a $L
timeout 90 python3 benchmarks/conv_kernels.py --registers --out $OUT/conv > $OUT/conv_registers.log 2>&1
echo "conv registers rc $? $(el)" | tee -a $L; grep -v Warn $OUT/conv_registers.log | cut -c1-200 | tee -a $L
cd $OUT && tar czf extra.tgz md conv 2>/dev/null; rm -rf md conv
echo "done $(el)" | tee -a $L
