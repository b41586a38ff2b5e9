#!/usr/bin/env bash
# session 32 call A (issue 21): GPU tests of committee MD, then `lpmace active` on the H200 config (2 rounds).
set -uo pipefail
T0=$(date +%s); el() { echo "[$(( $(date +%s) - T0 )) s]"; }
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=$PWD/src:/tmp/site PYTHONUNBUFFERED=1 LPMACE_CACHE_DIR=/tmp/lpmace-cache PATH=/tmp/site/bin:$PATH
L=$OUT/run.log; R=/tmp/active_h200
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader | tee $L
echo "commit $(git rev-parse --short HEAD 2>/dev/null) $(date -u)" | tee -a $L
timeout 60 python3 -m pytest -m gpu tests/dynamics/test_committee_dynamics.py tests/test_dynamics.py -k cuda \
  -p no:cacheprovider -rA -q > $OUT/pytest.log 2>&1
echo "pytest rc $? $(tail -1 $OUT/pytest.log) $(el)" | tee -a $L
timeout 450 python3 -m lpmace active benchmarks/active/cu_h200.yaml --out $R > $OUT/active.log 2>&1
echo "active rc $? $(el)" | tee -a $L; grep -v Warn $OUT/active.log | tail -30 | tee -a $L
cd $R && tar czf $OUT/active_h200.tgz state.json report.* round_*/report.* round_*/selection.json round_*/member_*/log.jsonl 2>/dev/null
cp $R/report.md $OUT/ 2>/dev/null
echo "done $(el)" | tee -a $L
