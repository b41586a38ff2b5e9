#!/usr/bin/env bash
# session 37 call C (issues 17, 18): the GPU tests of ∂T (89 and 4 elements: each element's nodes in runs;
# lpmace.kernels.table_gradient), then `lpmace bench --size mp --workloads infer,train,accuracy --compare-mace-torch` (bench.sh).
set -uo pipefail
D=$(dirname $0)
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
PYTHONPATH=$PWD/src:/tmp/site timeout 90 python3 -m pytest -m gpu tests/kernels/test_table_gradient.py -p no:cacheprovider -q -rf > $OUT/pytest_table.log 2>&1
echo "pytest table rc $? $(tail -1 $OUT/pytest_table.log)" | tee -a $OUT/run.log
grep -E "FAILED|Error" $OUT/pytest_table.log | head -10 | tee -a $OUT/run.log
BENCH_S=${BENCH_S:-510} bash $D/bench.sh mp infer,train,accuracy
