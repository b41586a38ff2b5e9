#!/usr/bin/env bash
# session 27 call A (issue 18): GPU tests of the graph step, startup cold/warm (H200), trainer-step profile.
set -uo pipefail
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
tar xJf .whl/cueq.tar.xz -C /tmp/site || exit 1
export PYTHONPATH=$PWD/src:/tmp/site PYTHONUNBUFFERED=1
L=$OUT/run.log
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader | tee $L
echo "commit $1 $(date -u)" | tee -a $L
timeout 150 python3 -m pytest -q -m gpu tests/train/test_cuda_graphs.py tests/train/test_sync_free_step.py -p no:cacheprovider > $OUT/pytest_train_gpu.log 2>&1
echo "pytest rc $? $(date -u)" | tee -a $L; tail -3 $OUT/pytest_train_gpu.log | tee -a $L
timeout 240 python3 -m lpmace bench --workloads startup --device cuda --no-progress --out $OUT/startup > $OUT/startup.log 2>&1
echo "startup rc $? $(date -u)" | tee -a $L
grep -A6 "| process |" $OUT/startup/report.md | tee -a $L
timeout 150 python3 benchmarks/profile_step.py --trainer-step --workloads train --backends compiled --precisions bf16-mixed,fp32 \
  --size medium --rows 45 --out $OUT/profile > $OUT/profile.log 2>&1
echo "profile rc $? $(date -u)" | tee -a $L; grep "^# W1" $OUT/profile.log | tee -a $L
