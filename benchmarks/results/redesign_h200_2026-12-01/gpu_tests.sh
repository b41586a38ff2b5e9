#!/usr/bin/env bash
# pytest -m gpu on the device machine; log under $OUT. Usage: gpu_tests.sh COMMIT
set -uo pipefail
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=$PWD/src:/tmp/site PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader | tee $OUT/pytest_gpu.log
python3 -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__)" | tee -a $OUT/pytest_gpu.log
echo "commit $1" | tee -a $OUT/pytest_gpu.log
date -u | tee -a $OUT/pytest_gpu.log
timeout 560 python3 -m pytest -m gpu -p no:cacheprovider -rA -q --durations=15 2>&1 | tee -a $OUT/pytest_gpu.log | grep --line-buffered -E "PASS|FAIL|ERROR|SKIP|passed|failed|error|deselected"
