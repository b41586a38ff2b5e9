#!/usr/bin/env bash
# session 39 call B: call A's kernel times were the host's (one call between two events: Python and the launches'
# small ops); contraction_kernels.py now records 10 calls in a CUDA graph and times the replay. Every call of a
# W1 step (both layers), the kernel before (polynomial_dot_before.py), the table gradient's settings, the tiles.
set -uo pipefail
T0=$(date +%s); el() { echo "[$(( $(date +%s) - T0 )) s]"; }
export PYTHONPATH=$PWD/src PYTHONUNBUFFERED=1 LPMACE_CACHE_DIR=/tmp/lpmace-cache
D=benchmarks/results/contraction_in_dot_h200_mp_2026-12-03
L=$OUT/run.log
nvidia-smi --query-gpu=name,driver_version,clocks.max.sm --format=csv,noheader | tee -a $L
timeout 120 python3 benchmarks/contraction_kernels.py --old $D/polynomial_dot_before.py --out $OUT/kernels 2>&1 | tee -a $L
echo "kernels $(el)" | tee -a $L
timeout 100 python3 benchmarks/contraction_kernels.py --table-gradient 2>&1 | tee -a $L
echo "table gradient $(el)" | tee -a $L
timeout 150 python3 benchmarks/contraction_kernels.py --sweep 2>&1 | tee -a $L
echo "done $(el)" | tee -a $L
