#!/usr/bin/env bash
# session 27 call B2 (issue 18): precompiled steps on the H200: availability, save/load by hand, GPU tests, startup cold/warm.
set -uo pipefail
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
tar xJf .whl/cueq.tar.xz -C /tmp/site || exit 1
export PYTHONPATH=$PWD/src:/tmp/site PYTHONUNBUFFERED=1
L=$OUT/run.log
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader | tee $L
echo "commit $1 $(date -u)" | tee -a $L
export LPMACE_CACHE_DIR=/tmp/pc_cache
for p in 1 2; do
  timeout 200 python3 .whl/precheck.py medium bf16-mixed > $OUT/precheck_$p.log 2>&1
  echo "precheck $p rc $? $(date -u)" | tee -a $L; grep -v "^ \|Warning" $OUT/precheck_$p.log | tail -12 | tee -a $L
done
unset LPMACE_CACHE_DIR
timeout 150 python3 -m pytest -q -m gpu tests/train/test_cuda_graphs.py tests/train/test_sync_free_step.py tests/kernels/test_polynomial_contraction.py -p no:cacheprovider > $OUT/pytest_train_gpu.log 2>&1
echo "pytest rc $? $(date -u)" | tee -a $L; tail -3 $OUT/pytest_train_gpu.log | tee -a $L
timeout 240 python3 -m lpmace bench --workloads startup --device cuda --no-progress --out $OUT/startup > $OUT/startup.log 2>&1
echo "startup rc $? $(date -u)" | tee -a $L
grep -A6 "| process |" $OUT/startup/report.md | tee -a $L
