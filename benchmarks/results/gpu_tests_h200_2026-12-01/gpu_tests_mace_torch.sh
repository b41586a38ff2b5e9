#!/usr/bin/env bash
# The two tests `pytest -m gpu` skipped without mace-torch, run with mace-torch 0.3.16 + cuEquivariance 0.13 installed.
set -uo pipefail
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
tar xJf .whl/cueq.tar.xz -C /tmp/site || exit 1
export PYTHONPATH=$PWD/src:/tmp/site PYTHONUNBUFFERED=1
L=$OUT/pytest_gpu_mace_torch.log
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader | tee $L
python3 -c "import torch, triton, mace, cuequivariance_torch as c; print('torch', torch.__version__, 'triton', triton.__version__, 'mace-torch', mace.__version__, 'cuequivariance-torch', c.__version__)" 2>&1 | tee -a $L
echo "commit $1" | tee -a $L
date -u | tee -a $L
timeout 400 python3 -m pytest -m gpu tests/interop/test_mace_torch.py tests/bench/test_bench_gpu.py -p no:cacheprovider -rA -q 2>&1 | tee -a $L | grep --line-buffered -E "PASS|FAIL|ERROR|SKIP|passed|failed|error|deselected"
