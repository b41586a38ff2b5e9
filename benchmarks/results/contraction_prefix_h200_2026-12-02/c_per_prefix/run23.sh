#!/usr/bin/env bash
# session 28 call C: the per-prefix product kernel: fp64 model diagnosis, tile sweep, kernel times
# (medium, mp), GPU kernel tests, W1 trainer-step profile (tar).
set -uo pipefail
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=$PWD/src:/tmp/site PYTHONUNBUFFERED=1
L=$OUT/run.log
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader | tee $L
echo "commit $1 $(date -u)" | tee -a $L
timeout 60 python3 .whl/diag_model64.py > $OUT/diag_model64.log 2>&1; echo "diag rc $?" | tee -a $L; tail -12 $OUT/diag_model64.log | tee -a $L
timeout 90 python3 benchmarks/contraction_kernels.py --sweep > $OUT/sweep.log 2>&1
echo "sweep rc $? $(date -u)" | tee -a $L; cat $OUT/sweep.log | tee -a $L
timeout 60 python3 benchmarks/contraction_kernels.py --out $OUT/kernels_medium > $OUT/kernels_medium.log 2>&1
echo "kernels medium rc $? $(date -u)" | tee -a $L; tail -7 $OUT/kernels_medium.log | tee -a $L
timeout 60 python3 benchmarks/contraction_kernels.py --nodes 4096 --elements 89 --present 4 --out $OUT/kernels_mp > $OUT/kernels_mp.log 2>&1
echo "kernels mp rc $? $(date -u)" | tee -a $L; tail -7 $OUT/kernels_mp.log | tee -a $L
timeout 100 python3 -m pytest -q -m gpu tests/kernels/test_polynomial_contraction.py -p no:cacheprovider > $OUT/pytest_gpu.log 2>&1
echo "pytest rc $? $(date -u)" | tee -a $L; tail -4 $OUT/pytest_gpu.log | tee -a $L
timeout 150 python3 benchmarks/profile_step.py --trainer-step --workloads train --backends compiled --precisions bf16-mixed,fp32 \
  --size medium --rows 40 --out /tmp/profile > $OUT/profile.log 2>&1
echo "profile rc $? $(date -u)" | tee -a $L; grep "^# W1" $OUT/profile.log | tee -a $L
tar czf $OUT/profile.tgz -C /tmp profile
