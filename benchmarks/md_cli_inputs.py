"""Inputs for timing `lpmace md` itself on a GPU: the bench's `medium` model (random weights, seed 0)
as a model file, the W2 box, 256 random 64-atom C/H/N/O cells (one multi-frame file) and benzene.

    python benchmarks/md_cli_inputs.py DIR
    lpmace md DIR/w2.xyz --model DIR/medium.safetensors --engine torch --precision bf16-mixed --steps 200 \\
        --out DIR/w2_traj.xyz --log DIR/w2.csv            # summary: DIR/w2.summary.json
    lpmace md DIR/cells.xyz --all-frames --model DIR/medium.safetensors --engine torch ...

The W2 box and the cells are `lpmace.bench.workloads.random_bulk` (0.1 atoms/Å³, jittered grid, no
overlaps), as in `lpmace bench` and benchmarks/md_engine_speed.py.
"""

from __future__ import annotations

import pathlib
import sys

import numpy as np
from ase import Atoms
from ase.build import molecule
from ase.io import write

from lpmace.bench.workloads import build_model, random_bulk
from lpmace.io import save


def main(out: pathlib.Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    model = build_model("medium")
    save(model, out / "medium.safetensors")
    rng = np.random.default_rng(0)
    as_atoms = lambda c: Atoms(numbers=c.numbers, positions=c.positions, cell=c.cell, pbc=True)  # noqa: E731
    write(out / "w2.xyz", as_atoms(random_bulk(4096, model.config.atomic_numbers, rng)))
    write(out / "cells.xyz", [as_atoms(random_bulk(64, (1, 6, 7, 8), rng)) for _ in range(256)])
    write(out / "benzene.xyz", molecule("C6H6"))


if __name__ == "__main__":
    main(pathlib.Path(sys.argv[1]))
