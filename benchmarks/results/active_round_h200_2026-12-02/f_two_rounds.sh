#!/usr/bin/env bash
# session 33 call F (issue 21): `lpmace active` on the H200 config, both rounds (round 2 warm-starts every member),
# on a fresh machine with an empty compile cache; run again with --resume on the same machine if the call's
# time limit stops it. Checks: no crash in round 2, compiles per member (members 2-4 should load member 1's step).
set -uo pipefail
T0=$(date +%s); el() { echo "[$(( $(date +%s) - T0 )) s]"; }
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=$PWD/src:/tmp/site PYTHONUNBUFFERED=1 LPMACE_CACHE_DIR=/tmp/lpmace-cache PATH=/tmp/site/bin:$PATH
L=$OUT/run.log; R=/tmp/active_h200
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader | tee -a $L
echo "tree $(git log -1 --format='%h %s' 2>/dev/null) $(date -u)" | tee -a $L
RESUME=""; [ -f $R/state.json ] && RESUME="--resume"
timeout ${LIMIT:-540} python3 -m lpmace active benchmarks/active/cu_h200.yaml --out $R $RESUME >> $OUT/active.log 2>&1
echo "active $RESUME rc $? $(el)" | tee -a $L; grep -v "Warn\|warn" $OUT/active.log | tail -40 | tee -a $L
for f in $R/round_*/member_*/log.jsonl; do echo "$f: $(grep -o '"first_step_s": [0-9.]*, "compiles": [0-9]*' $f | tail -1)"; done | tee -a $L
ls $LPMACE_CACHE_DIR/steps 2>/dev/null | tee -a $L
cd $R && tar czf $OUT/active_h200.tgz state.json report.* round_*/report.* round_*/selection.json round_*/member_*/log.jsonl 2>/dev/null
cp $R/report.md $R/report.json $OUT/ 2>/dev/null
echo "done $(el)" | tee -a $L
