#!/usr/bin/env bash
# session 39 call F: `lpmace bench --size mp --workloads infer --compare-mace-torch` at the code of calls D and E
# (the row kernel's new tile at the foundation model's W2; the last of the session's device time).
set -uo pipefail
BENCH_S=300 bash benchmarks/results/conv_split_h200_mp_2026-12-03/bench.sh mp infer
