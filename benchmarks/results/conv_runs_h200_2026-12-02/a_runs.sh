#!/usr/bin/env bash
# session 33 call A (issues 17, 18): the conv kernels with their paths cut into runs (one program per run,
# fewer registers each), layer 2 and 1 of the W2 `mp` box, bf16 (1 and 2 channels per lane) and fp32;
# then the GPU kernel tests at real size with the default tiles.
set -uo pipefail
T0=$(date +%s); el() { echo "[$(( $(date +%s) - T0 )) s]"; }
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/ase*.whl .whl/vesin*.whl || exit 1
export PYTHONPATH=$PWD/src:/tmp/site PYTHONUNBUFFERED=1 LPMACE_CACHE_DIR=/tmp/lpmace-cache
L=$OUT/run.log
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader | tee -a $L
echo "tree $(git log -1 --format='%h %s' 2>/dev/null) $(date -u)" | tee -a $L
timeout ${LIMIT:-420} python3 benchmarks/conv_kernels.py --runs --out $OUT > $OUT/runs.log 2>&1
echo "runs rc $? $(el)" | tee -a $L; grep -v "Warn\|warn" $OUT/runs.log | tail -40 | tee -a $L
timeout 90 python3 -m pytest -m gpu tests/kernels/test_conv_tensor_product.py -p no:cacheprovider -q > $OUT/pytest.log 2>&1
echo "pytest rc $? $(tail -1 $OUT/pytest.log) $(el)" | tee -a $L
