#!/usr/bin/env bash
# Issue 18: the compile cache across processes on the CPU. Two `lpmace train` processes of the same small config
# (backend compiled, 15 training structures of 3BPA) with one fresh LPMACE_CACHE_DIR; prints each log's
# first_step_s and compiles. Usage (repository root, .venv set up): bash benchmarks/results/compile_cache_cpu_2026-12-01/run.sh OUT
set -euo pipefail
OUT=$1; mkdir -p "$OUT"; export LPMACE_CACHE_DIR=$OUT/cache; rm -rf "$LPMACE_CACHE_DIR"
python3 - "$OUT" <<'PY'
import sys
from pathlib import Path
out = Path(sys.argv[1])
lines = Path("src/lpmace/datasets/3bpa/train_300K.xyz").read_text().splitlines(keepends=True)
frames, i = [], 0
while len(frames) < 20:
    n = int(lines[i]); frames.append("".join(lines[i:i + n + 2])); i += n + 2
(out / "train.xyz").write_text("".join(frames))
(out / "cfg.yaml").write_text(f"""train_file: {out / 'train.xyz'}
valid_fraction: 0.25
test_files: []
epochs: 1
batch_size: 4
backend: compiled
progress: false
model: {{channels: 8, max_L: 0, correlation: 2, max_ell: 2, radial_mlp: [16], num_bessel: 6, r_max: 4.0}}
""")
PY
for k in first second; do
  rm -rf "$OUT/$k"
  PYTHONPATH=src .venv/bin/python -m lpmace train "$OUT/cfg.yaml" output_dir="$OUT/$k" > "$OUT/$k.log" 2>&1
  python3 -c "import json,sys; r=json.loads(open(sys.argv[1]).readlines()[-1]); print(sys.argv[2], 'first_step_s', r['first_step_s'], 'compiles', r['compiles'], 'train_loss', r['train_loss'])" "$OUT/$k/log.jsonl" $k
done
