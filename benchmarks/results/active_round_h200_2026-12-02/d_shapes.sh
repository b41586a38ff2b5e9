#!/usr/bin/env bash
# session 32 call D: does a compiled training step accept a batch of another size in the same size class
# (CUDA graphs pad to buckets)? Tiny Cu model, 19 configs, batch 4 -> 4 x 128 + 1 x 96 atoms; run twice
# (the second process loads the steps saved by the first).
set -uo pipefail
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/ase*.whl .whl/vesin*.whl || exit 1
export PYTHONPATH=$PWD/src:/tmp/site PYTHONUNBUFFERED=1 LPMACE_CACHE_DIR=/tmp/shapes-cache
D=/tmp/shapes; mkdir -p $D
python3 - <<'PY'
import numpy as np, ase.io
from ase.build import bulk
from ase.calculators.emt import EMT
rng = np.random.default_rng(0); frames = []
for i in range(19):
    a = bulk("Cu", "fcc", a=3.61, cubic=True).repeat(2); a.positions += rng.normal(0, 0.08, a.positions.shape)
    a.calc = EMT(); e, f = a.get_potential_energy(), a.get_forces(); a.calc = None
    a.info["REF_energy"] = e; a.arrays["REF_forces"] = f; frames.append(a)
ase.io.write("/tmp/shapes/cu.xyz", frames)
PY
cat > $D/c.yaml <<'Y'
train_file: /tmp/shapes/cu.xyz
valid_fraction: 0.0
test_files: []
e0s: fit
energy_key: REF_energy
forces_key: REF_forces
epochs: 2
batch_size: 4
precision: bf16-mixed
backend: compiled
device: cuda
progress: false
model: {channels: 16, max_L: 1, correlation: 2, max_ell: 2, radial_mlp: [16], num_bessel: 4, r_max: 4.0, num_interactions: 2, readout_mlp: 4}
Y
for run in 1 2; do
  timeout 200 python3 -m lpmace train $D/c.yaml output_dir=$D/run$run > $OUT/train$run.log 2>&1
  echo "train $run rc $?"; grep -v "Warn\|warn\|cls.__new" $OUT/train$run.log | tail -4
done
ls $LPMACE_CACHE_DIR/steps | head; cat $LPMACE_CACHE_DIR/steps/*.guards | head -c 3000
