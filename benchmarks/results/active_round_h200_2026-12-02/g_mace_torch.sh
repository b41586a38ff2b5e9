#!/usr/bin/env bash
# session 33 call G (issue 21): the round through mace-torch 0.3.16 again, for what call B did not reach: the
# committee's test force RMSE (now computed before sampling) and one trajectory each with e3nn and cuEquivariance.
set -uo pipefail
T0=$(date +%s); el() { echo "[$(( $(date +%s) - T0 )) s]"; }
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
tar xJf .whl/cueq.tar.xz -C /tmp/site || exit 1
export PYTHONPATH=$PWD/src:/tmp/site PYTHONUNBUFFERED=1 PATH=/tmp/site/bin:$PATH
L=$OUT/run.log; R=/tmp/mace_round
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader | tee $L
echo "tree $(git log -1 --format='%h %s' 2>/dev/null) $(date -u)" | tee -a $L
timeout ${LIMIT:-560} python3 benchmarks/active/mace_torch_round.py benchmarks/active/cu_h200.yaml --out $R --md-systems 1 --cueq \
  > $OUT/mace_round.log 2>&1
echo "mace round rc $? $(el)" | tee -a $L; grep -v "Warn\|warn" $OUT/mace_round.log | tail -20 | tee -a $L
cp $R/mace_torch_round.json $OUT/ 2>/dev/null
cd $R && tar czf $OUT/mace_logs.tgz member_*/mace_run_train.log 2>/dev/null
echo "done $(el)" | tee -a $L
