#!/usr/bin/env bash
# One NVE run of the study: run_nve.sh LABEL PRECISION SEED STEPS
#   LABEL      folder name under runs/ (runs/LABEL_sSEED/)
#   PRECISION  a preset name or one of policies/*.yaml
# Same model, same start (frame 0 of the held-out test200.xyz), 300 K Maxwell-Boltzmann from SEED,
# dt 0.5 fs, a sample every 10 steps. One thread: the machine is shared.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
cd "$here"  # policies/*.yaml are relative to this folder
label=$1 precision=$2 seed=$3 steps=$4
out=$here/runs/${label}_s${seed}
mkdir -p "$out"
cmd=(lpmace md /tmp/mdp/test200.xyz --model "$here/model.safetensors" --precision "$precision"
     --ensemble nve --steps "$steps" --dt 0.5 --temperature 300 --seed "$seed" --interval 10
     --device cpu --backend reference --out "$out/traj.xyz" --log "$out/md.csv")
echo "${cmd[*]}" | sed "s#$here/##g" > "$out/command.txt"
OMP_NUM_THREADS=1 ${LPMACE:-lpmace} "${cmd[@]:1}" > "$out/stdout.txt" 2>&1
cat "$out/stdout.txt"
