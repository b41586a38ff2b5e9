#!/usr/bin/env bash
# session 39 call E: `lpmace bench --size medium --workloads infer,train --compare-mace-torch` at the code of
# call D (W2 inference checks the row kernel's new tile at 4,096 atoms; W1 repeats call D's).
set -uo pipefail
BENCH_S=480 bash benchmarks/results/conv_split_h200_mp_2026-12-03/bench.sh medium infer,train
