#!/usr/bin/env bash
# session 28 call D: the dispatch (row kernel for 969-row tables, prefix kernel for the derivative calls),
# GPU kernel tests, W1 trainer-step profile (tar), W1 medium with mace-torch in the same run.
set -uo pipefail
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
tar xJf .whl/cueq.tar.xz -C /tmp/site || exit 1
export PYTHONPATH=$PWD/src:/tmp/site PYTHONUNBUFFERED=1 PATH=/tmp/site/bin:$PATH
L=$OUT/run.log
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader | tee $L
echo "commit $1 $(date -u)" | tee -a $L
timeout 60 python3 -m pytest -q -m gpu tests/kernels/test_polynomial_contraction.py -p no:cacheprovider > $OUT/pytest_gpu.log 2>&1
echo "pytest rc $? $(date -u)" | tee -a $L; tail -3 $OUT/pytest_gpu.log | tee -a $L
timeout 150 python3 benchmarks/profile_step.py --trainer-step --workloads train --backends compiled --precisions bf16-mixed,fp32 \
  --size medium --rows 40 --out /tmp/profile > $OUT/profile.log 2>&1
echo "profile rc $? $(date -u)" | tee -a $L; grep "^# W1" $OUT/profile.log | tee -a $L
tar czf $OUT/profile.tgz -C /tmp profile
exit 0
timeout 290 python3 -m lpmace bench --size medium --workloads train --backends compiled --precisions fp32,bf16-mixed \
  --compare-mace-torch --repeats 10 --no-progress --device cuda --out /tmp/w1 > $OUT/w1.log 2>&1
echo "w1 rc $? $(date -u)" | tee -a $L; grep -A12 "W1" /tmp/w1/report.md | head -30 | tee -a $L
tar czf $OUT/w1.tgz -C /tmp w1
