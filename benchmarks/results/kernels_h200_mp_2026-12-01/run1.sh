#!/usr/bin/env bash
# issue 17 run 1: conv kernel GPU tests, kernel bench (old/new, tile sweep), model profiles (new/old). Usage: run1.sh COMMIT
set -uo pipefail
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=$PWD/src:/tmp/site PYTHONUNBUFFERED=1
L=$OUT/run.log
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader | tee $L
python3 -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__)" | tee -a $L
echo "commit $1 $(date -u)" | tee -a $L
timeout 150 python3 -m pytest -m gpu tests/kernels/test_conv_tensor_product.py -p no:cacheprovider -rA -q > $OUT/pytest_conv.log 2>&1
echo "pytest rc $? $(tail -1 $OUT/pytest_conv.log)" | tee -a $L
timeout 330 python3 benchmarks/conv_kernels.py --out $OUT --old .whl/old_conv.py --sweep > $OUT/conv_kernels.log 2>&1
echo "conv_kernels rc $? $(date -u)" | tee -a $L
mkdir -p /tmp/prof
timeout 120 python3 benchmarks/profile_step.py --precisions fp32,bf16-mixed --backends triton --size mp --rows 25 --out /tmp/prof/new > /tmp/prof/new.log 2>&1
echo "profile new rc $? $(date -u)" | tee -a $L
PYTHONPATH=$PWD/.whl/old_src/src:/tmp/site timeout 120 python3 benchmarks/profile_step.py --precisions fp32,bf16-mixed --backends triton --size mp --rows 25 --out /tmp/prof/old > /tmp/prof/old.log 2>&1
echo "profile old rc $? $(date -u)" | tee -a $L
tar czf $OUT/profiles.tar.gz -C /tmp prof
