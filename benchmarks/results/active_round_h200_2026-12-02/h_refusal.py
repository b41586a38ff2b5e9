"""Session 33 call H: round 2's size refusal in one short process. The H200 config's data (setup of
`lpmace active benchmarks/active/cu_h200.yaml`: 1,000 EMT-labelled Cu cells) plus 32 more cells (1,032:
929 train frames at batch 10, so one partial batch of 9 cells, as in round 2), then 4 members trained
for 1 epoch each, one after another in this process, as the loop trains them. Prints every warning
of lpmace (the refusal names the statement of the compiled code that asserted) and each member's
graphs compiled.

    python benchmarks/results/active_round_h200_2026-12-02/h_refusal.py OUT
"""

import dataclasses
import json
import os
import sys
import warnings
from pathlib import Path

import numpy as np

from lpmace.active import ActiveLoop, load_active_config
from lpmace.active.config import ENERGY_KEY, FORCES_KEY, member_train_config
from lpmace.active.frames import read_frames
from lpmace.train import Trainer

out = Path(sys.argv[1])
# H_CONFIG/H_DEVICE: a CPU check of this script with the small example
config, device = os.environ.get("H_CONFIG", "benchmarks/active/cu_h200.yaml"), os.environ.get("H_DEVICE", "cuda")
cfg, oracle = load_active_config(config, output_dir=str(out / "run"))
loop = ActiveLoop(cfg, oracle)
loop.out.mkdir(parents=True, exist_ok=True)
loop._setup(0)
frames = read_frames(loop.out / "dataset.xyz")
import ase.io  # noqa: E402

rng = np.random.default_rng(7)
extra = []
for atoms in frames[:32]:
    atoms = atoms.copy()
    atoms.positions += rng.normal(0, 0.02, atoms.positions.shape)
    oracle.reset()
    atoms.calc = oracle
    energy, forces = atoms.get_potential_energy(), atoms.get_forces()
    atoms.calc = None
    atoms.info[ENERGY_KEY] = energy
    atoms.arrays[FORCES_KEY] = forces
    extra.append(atoms)
ase.io.write(loop.out / "dataset.xyz", frames + extra)
print("dataset", len(frames + extra), flush=True)
for m in range(4):
    member = member_train_config(cfg, train_file=str(loop.out / "dataset.xyz"), output_dir=str(out / f"m{m}"),
                                 seed=cfg.seed + m, device=device)
    member = dataclasses.replace(member, epochs=1)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer = Trainer(member, log=lambda message: None, warn=print, data_parallel=False)
        trainer.run()
    for w in caught:
        if "lpmace" in str(w.message):
            print(f"member {m} warning: {w.message}", flush=True)
    last = [json.loads(line) for line in open(out / f"m{m}" / "log.jsonl")][-1]
    print(f"member {m}: compiles {last.get('compiles')}, first_step_s {last.get('first_step_s')}", flush=True)
