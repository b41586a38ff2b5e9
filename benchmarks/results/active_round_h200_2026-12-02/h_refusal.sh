#!/usr/bin/env bash
# session 33 call H: which statement of the compiled training step refuses round 2's batches (h_refusal.py),
# with the saved steps' fixed sizes and the generated code around the refused statement.
set -uo pipefail
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/ase*.whl .whl/vesin*.whl || exit 1
export PYTHONPATH=$PWD/src:/tmp/site PYTHONUNBUFFERED=1 LPMACE_CACHE_DIR=/tmp/lpmace-cache
echo "tree $(git log -1 --format='%h %s' 2>/dev/null) $(date -u)" | tee $OUT/run.log
timeout ${LIMIT:-240} python3 benchmarks/results/active_round_h200_2026-12-02/h_refusal.py /tmp/h > $OUT/h.log 2>&1
echo "rc $?" | tee -a $OUT/run.log; grep "member\|dataset\|Error" $OUT/h.log | cut -c1-700 | tee -a $OUT/run.log
for F in $(grep -o "at /[^:]*\.py:[0-9]*" $OUT/h.log | sed 's/^at //' | sort -u); do
  f=${F%:*}; n=${F##*:}; echo "== $F" >> $OUT/refusing_lines.txt
  sed -n "$((n>30?n-30:1)),$((n+3))p" $f >> $OUT/refusing_lines.txt; cp $f $OUT/ 2>/dev/null; done
for g in /tmp/lpmace-cache/steps/*.guards; do echo "$(basename $g): $(grep -o "L\['t[015]'\]\.size()\[0\] == [0-9]*" $g | tr '\n' ' ')"; done > $OUT/fixed_sizes.txt
cat $OUT/fixed_sizes.txt; head -c 3000 $OUT/refusing_lines.txt
