#!/usr/bin/env bash
# session 30, call 4: GPU tests of inference CUDA graphs (ForwardGraphs) and of StepGraphs after the refactor
set -uo pipefail
T0=$(date +%s); el() { echo $(( $(date +%s) - T0 )); }
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
export PYTHONUNBUFFERED=1 LPMACE_CACHE_DIR=/tmp/lpmace-cache PATH=/tmp/site/bin:$PATH PYTHONPATH=$PWD/src:/tmp/site
L=$OUT/run.log
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader | tee $L
timeout 110 python3 -m pytest -q -m gpu tests/test_forward_graphs.py -p no:cacheprovider -x > $OUT/pytest_fg.log 2>&1
echo "forward graphs rc $? $(tail -1 $OUT/pytest_fg.log) [$(el) s]" | tee -a $L
timeout $(( 165 - $(el) )) python3 -m pytest -q -m gpu tests/train/test_cuda_graphs.py -k "recorded_steps and triton" -p no:cacheprovider > $OUT/pytest_sg.log 2>&1
echo "step graphs rc $? $(tail -1 $OUT/pytest_sg.log) [$(el) s]" | tee -a $L
