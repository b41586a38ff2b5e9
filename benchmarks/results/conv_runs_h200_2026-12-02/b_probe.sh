#!/usr/bin/env bash
# session 33 call B: (1) where the layer-2 conv kernels' warps wait (ncu warp-state and scheduler
# statistics, bf16 then fp32 operands, `mp` W2 shapes); (2) the compiled training step's size refusal
# (session 32's d_shapes: tiny Cu model, 19 cells at batch 4 -> 4 x 144 + 1 x 104 padded atoms), with the
# refused statement, the generated code around it and the step's guards kept.
set -uo pipefail
T0=$(date +%s); el() { echo "[$(( $(date +%s) - T0 )) s]"; }
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/ase*.whl .whl/vesin*.whl || exit 1
export PYTHONPATH=$PWD/src:/tmp/site PYTHONUNBUFFERED=1 LPMACE_CACHE_DIR=/tmp/probe-cache
L=$OUT/run.log
echo "tree $(git log -1 --format='%h %s' 2>/dev/null) $(date -u)" | tee -a $L
timeout 200 ncu --clock-control none --launch-skip 2 --launch-count 4 -k regex:"message|grads" \
  --section WarpStateStats --section SchedulerStats --section Occupancy --section LaunchStats \
  --section MemoryWorkloadAnalysis --section ComputeWorkloadAnalysis \
  python3 benchmarks/conv_kernels.py --once --out /tmp/once > $OUT/ncu.log 2>&1
echo "ncu rc $? $(el)" | tee -a $L; grep -E "^  [a-z]|Stall|Warp Cycles|Issued|Eligible|Active Warps|Registers|Theoretical Occ|Achieved Occ|Memory Throughput|DRAM Throughput|L2 Hit|L1/TEX Hit|No Eligible|One or More" $OUT/ncu.log | head -120 | tee -a $L
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
cp benchmarks/results/active_round_h200_2026-12-02/d_shapes.sh $OUT/ 2>/dev/null
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
timeout 200 python3 -m lpmace train $D/c.yaml output_dir=$D/run1 > $OUT/train1.log 2>&1
echo "train rc $? $(el)" | tee -a $L; grep -v "cls.__new" $OUT/train1.log | grep -A3 "refused" | head -20 | tee -a $L
F=$(grep -o "at /[^:]*\.py:[0-9]*" $OUT/train1.log | head -1 | sed 's/^at //')
if [ -n "$F" ]; then f=${F%:*}; n=${F##*:}; cp $f $OUT/refusing_code.py; sed -n "$((n>40?n-40:1)),$((n+5))p" $f > $OUT/refusing_lines.txt
  grep -n "def call\|def forward\|args.clear\|= args" $f | head -20 >> $OUT/refusing_lines.txt; fi
cat $LPMACE_CACHE_DIR/steps/*.guards > $OUT/guards.txt 2>/dev/null
echo "done $(el)" | tee -a $L
