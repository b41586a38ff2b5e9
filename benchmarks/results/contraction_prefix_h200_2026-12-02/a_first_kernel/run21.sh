#!/usr/bin/env bash
# session 28 call A (issues 17/18): the prefix-product contraction kernel on the H200: GPU tests,
# kernel times (medium, mp), model-level kernel checks, W1 trainer-step profile.
set -uo pipefail
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
tar xJf .whl/cueq.tar.xz -C /tmp/site || exit 1
export PYTHONPATH=$PWD/src:/tmp/site PYTHONUNBUFFERED=1
L=$OUT/run.log
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader | tee $L
echo "commit $1 $(date -u)" | tee -a $L
timeout 100 python3 benchmarks/contraction_kernels.py --out $OUT/kernels_medium > $OUT/kernels_medium.log 2>&1
echo "kernels medium rc $? $(date -u)" | tee -a $L; tail -8 $OUT/kernels_medium.log | tee -a $L
timeout 100 python3 benchmarks/contraction_kernels.py --nodes 4096 --elements 89 --present 4 --out $OUT/kernels_mp > $OUT/kernels_mp.log 2>&1
echo "kernels mp rc $? $(date -u)" | tee -a $L; tail -8 $OUT/kernels_mp.log | tee -a $L
timeout 150 python3 -m pytest -q -m gpu tests/kernels/test_polynomial_contraction.py tests/kernels/test_backend_model.py tests/train/test_cuda_graphs.py -p no:cacheprovider > $OUT/pytest_gpu.log 2>&1
echo "pytest rc $? $(date -u)" | tee -a $L; tail -5 $OUT/pytest_gpu.log | tee -a $L
timeout 120 python3 benchmarks/check_kernels_gpu.py --kernels-only > $OUT/check_kernels.log 2>&1
echo "check_kernels rc $? $(date -u)" | tee -a $L; grep -i "force\|fail\|model" $OUT/check_kernels.log | head -30 | tee -a $L
timeout 170 python3 benchmarks/profile_step.py --trainer-step --workloads train --backends compiled --precisions bf16-mixed,fp32 \
  --size medium --rows 45 --out $OUT/profile > $OUT/profile.log 2>&1
echo "profile rc $? $(date -u)" | tee -a $L; grep "^# W1" $OUT/profile.log | tee -a $L
