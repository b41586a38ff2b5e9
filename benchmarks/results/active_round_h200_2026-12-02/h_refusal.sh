#!/usr/bin/env bash
# session 33 call H: call F again (both rounds, fresh machine) to see which statement of the compiled
# training step refuses round 2's batches (the warning now names it) and what the saved steps' guards say.
set -uo pipefail
bash benchmarks/results/active_round_h200_2026-12-02/f_two_rounds.sh
for F in $(grep -o "at /[^:]*\.py:[0-9]*" $OUT/active.log | sed 's/^at //' | sort -u); do
  f=${F%:*}; n=${F##*:}; echo "== $F" >> $OUT/refusing_lines.txt
  sed -n "$((n>30?n-30:1)),$((n+3))p" $f >> $OUT/refusing_lines.txt; cp $f $OUT/ 2>/dev/null; done
grep -h -o "L\['t[0-9]*'\]\.size()\[[0-9]*\] == [0-9]*" /tmp/lpmace-cache/steps/*.guards | sort | uniq -c > $OUT/fixed_sizes.txt
for g in /tmp/lpmace-cache/steps/*.guards; do echo "$(basename $g): $(grep -o "L\['t[015]'\]\.size()\[0\] == [0-9]*" $g | tr '\n' ' ')"; done >> $OUT/fixed_sizes.txt
cat $OUT/fixed_sizes.txt
