#!/usr/bin/env bash
# session 38 call C (issues 17, 18): main's code after calls A and B, the README's `medium` rows again and the `mp`
# training step: bench.sh medium infer,train, then bench.sh mp train (what time is left).
set -uo pipefail
T0=$(date +%s)
D=benchmarks/results/conv_split_h200_mp_2026-12-03
BENCH_S=330 bash $D/bench.sh medium infer,train
BENCH_S=$(( 560 - $(date +%s) + T0 )) bash $D/bench.sh mp train
echo "done [$(( $(date +%s) - T0 )) s]" | tee -a $OUT/run.log
