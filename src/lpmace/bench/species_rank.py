"""Section "species-rank" of `lpmace bench`: what compressed species embeddings save, and what they cost in accuracy.

Part 1 (counting, no data): parameters and bytes of the element-dependent weights (embedding, skip
connections, symmetric-contraction weights) of the medium model (MACEConfig defaults: 128 channels,
L = 1, correlation 3, max_ell 3, 2 interactions) against the number of elements S in {4, 10, 30, 89}
and species_rank in {full, 16, 8, 4, 2} (ranks below S), measured on the models
`lpmace.compress.compress` makes of the built full-rank model, in fp32 and with the embedding as an
int8 table.

Part 2 (training; needs `data`, the folder with rmd17_ethanol/ and si_zuo2020/, given to `lpmace bench`
as --species-data, the project's shared/data): one multi-element training set — 3BPA (C, H, N, O; ωB97X),
rMD17 ethanol (C, H, O; PBE) and bulk Si (Zuo et al., PBE), S = 5 — and a small model trained with
the lpmace trainer at each rank ("trained"), plus the full-rank model's truncated SVD at each rank
and its int8 embedding, without retraining ("svd", "int8"). The three sets use different DFT
settings; E0s are fitted by least squares (one composition per set, so each set's mean energy is
fitted exactly), the energy weight is 100 (λF 1000) so that a few epochs learn the energies too, and
errors are reported per set, on its own test file. Ranks: full, 3, 2, 1 (quick: full, 2, 1).

`run` returns the section of results.json: {"settings": {...}, "rows": counting rows (part "count")
then accuracy rows (part "accuracy")}; docs/experiments/species_rank.md says what they showed.
"""

from __future__ import annotations

import math
import tempfile
import warnings
from pathlib import Path
from typing import List

import numpy as np
import torch

from lpmace.errors import InputError

NAME = "species_rank"

SPECIES_COUNTS = (4, 10, 30, 89)
RANKS = (None, 16, 8, 4, 2)
SETS = ("3bpa", "ethanol", "si")
COLUMNS = [
    "part", "S", "rank", "method", "element_params", "element_kib", "element_kib_int8_embedding",
    "total_params", "element_fraction",
    *(f"E_rmse_{s}" for s in SETS), *(f"F_rmse_{s}" for s in SETS), "F_dev_from_full", "train_time_s",
]
_MODEL = {
    True: {"channels": 8, "max_L": 0, "correlation": 2, "max_ell": 2, "radial_mlp": [16], "num_bessel": 6,
           "r_max": 4.0},
    False: {"channels": 16, "max_L": 1, "correlation": 2, "max_ell": 2, "radial_mlp": [32], "num_bessel": 8,
            "r_max": 4.5},
}
# (train, test) configurations per set; Si takes its smallest cells.
_SIZES = {True: {"3bpa": (8, 4), "ethanol": (8, 4), "si": (4, 2)},
          False: {"3bpa": (80, 50), "ethanol": (80, 50), "si": (40, 25)}}
_EPOCHS = {True: 1, False: 8}


def check_data(data) -> Path:
    """The folder holding rmd17_ethanol/ and si_zuo2020/ (the project's shared/data), or InputError."""
    if data is None or not ((Path(data) / "rmd17_ethanol").is_dir() and (Path(data) / "si_zuo2020").is_dir()):
        raise InputError(f"--species-data {data}: needs a folder with rmd17_ethanol/ and si_zuo2020/ "
                         "(the project's shared/data) for the species-rank section")
    return Path(data)


# ---- part 1: counting ---------------------------------------------------------------------------
def count_rows() -> List[dict]:
    """One row per (S, rank): element-weight parameters and KiB (fp32; int8 embedding) of the medium model."""
    from lpmace.compress import compress, element_weight_storage
    from lpmace.model import MACE, MACEConfig

    rows = []
    for s in SPECIES_COUNTS:
        full, built = None, MACE(MACEConfig(atomic_numbers=tuple(range(1, s + 1))))
        for rank in RANKS:
            if rank is not None and rank >= s:
                continue
            model = built if rank is None else compress(built, rank, how="random")
            int8 = compress(built, rank, int8_embedding=True, how="random")
            stored, stored8 = element_weight_storage(model), element_weight_storage(int8)
            total = sum(p.numel() for p in model.parameters())
            full = full or stored["numel"]
            rows.append({"part": "count", "S": s, "rank": rank or "full", "method": "built",
                         "element_params": stored["numel"], "element_kib": stored["bytes"] / 1024,
                         "element_kib_int8_embedding": stored8["bytes"] / 1024, "total_params": total,
                         "element_fraction": stored["numel"] / total})
    return rows


# ---- part 2: accuracy against rank ---------------------------------------------------------------
def _configs(quick: bool, data: Path):
    """{set: (train configurations, test configurations)} from the bundled data and `data`."""
    from lpmace import datasets
    from lpmace.data import read_configurations

    sizes = _SIZES[quick]
    files = {
        "3bpa": (datasets.path("3bpa/train_300K.xyz"), datasets.path("3bpa/test_300K.xyz"), "REF_energy", "REF_forces"),
        "ethanol": (data / "rmd17_ethanol/rmd17_ethanol_train_01.xyz", data / "rmd17_ethanol/rmd17_ethanol_test_01.xyz",
                    "REF_energy", "REF_forces"),
        "si": (data / "si_zuo2020/Si_train.xyz", data / "si_zuo2020/Si_test.xyz", "energy", "force"),
    }
    out = {}
    for name, (train, test, e_key, f_key) in files.items():
        n_train, n_test = sizes[name]
        keys = {"energy_key": e_key, "forces_key": f_key, "stress_key": None, "virials_key": None}
        whole = name == "si"  # sorted by size below
        tr = read_configurations(train, index=":" if whole else f":{n_train}", **keys)
        te = read_configurations(test, index=":" if whole else f":{n_test}", **keys)
        if whole:  # smallest cells first (stable: file order among equal sizes)
            tr, te = (sorted(x, key=lambda c: c.num_atoms)[:n] for x, n in ((tr, n_train), (te, n_test)))
        out[name] = (tr, te)
    return out


def _write(configs, path: Path) -> None:
    """Extended XYZ with the keys the trainer reads by default (REF_energy, REF_forces)."""
    import ase
    import ase.io

    frames = []
    for c in configs:
        atoms = ase.Atoms(numbers=c.numbers, positions=c.positions, cell=c.cell, pbc=c.pbc)
        atoms.info["REF_energy"] = float(c.energy)
        atoms.arrays["REF_forces"] = np.array(c.forces)
        frames.append(atoms)
    ase.io.write(str(path), frames, format="extxyz")


def _errors(model, graphs_by_set, precision: str, device: str) -> dict:
    from lpmace.evaluate import evaluate

    row, forces = {}, []
    for name, graphs in graphs_by_set.items():
        m = evaluate(model, graphs, precision=precision, batch_size=8, device=device)
        row[f"E_rmse_{name}"] = m.energy_rmse_mev_per_atom
        row[f"F_rmse_{name}"] = m.force_rmse_mev_per_A
        forces.append(m.forces_pred)
    return row, np.concatenate(forces)


def accuracy_rows(*, device: str, quick: bool, progress: bool, seed: int, work: Path, data: Path) -> List[dict]:
    from lpmace.compress import compress
    from lpmace.data import graph_from_configuration
    from lpmace.io import load
    from lpmace.train import Trainer, load_train_config

    sets = _configs(quick, data)
    train = [c for tr, _ in sets.values() for c in tr]
    _write(train, work / "train.xyz")
    tests = {}
    for name, (_, te) in sets.items():
        _write(te, work / f"test_{name}.xyz")
        tests[name] = work / f"test_{name}.xyz"
    num_elements = len({int(z) for c in train for z in c.numbers})
    model = _MODEL[quick]
    ranks = (num_elements, 2, 1) if quick else (num_elements, 3, 2, 1)
    graphs = {name: [graph_from_configuration(c, model["r_max"]) for c in sets[name][1]] for name in SETS}
    precision = "fp32"
    settings = [
        f"train_file={work / 'train.xyz'}", f"test_files={[str(p) for p in tests.values()]}",
        "isolated_atoms_file=null", "e0s=fit", f"epochs={_EPOCHS[quick]}", f"batch_size={4 if quick else 5}",
        "valid_fraction=0.1", "energy_weight=100", f"seed={seed + 1}", f"device={device}",
        f"progress={str(progress).lower()}",
        f"precision={precision}", "backend=triton" if str(device).startswith("cuda") else "backend=auto",
        *(f"model.{k}={v}" for k, v in model.items()),
    ]
    log = print if progress else (lambda message: None)
    rows = []
    for rank in ranks:
        out_dir = work / f"rank{rank}"
        cfg = load_train_config(None, (*settings, f"output_dir={out_dir}",
                                       f"model.species_rank={'null' if rank == num_elements else rank}"))
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="E0 fit is underdetermined")  # one composition per set
            summary = Trainer(cfg, log=log).run()
        trained = load(out_dir / "model.safetensors")
        errors, forces = _errors(trained, graphs, precision, device)
        if rank == num_elements:
            reference, forces_full = trained, forces
        rows.append(_accuracy_row(num_elements, rank, "trained", trained, errors, forces, forces_full,
                                  summary["train_time_s"]))
    for rank in ranks[1:]:
        compressed = compress(reference, rank)
        errors, forces = _errors(compressed, graphs, precision, device)
        rows.append(_accuracy_row(num_elements, rank, "svd of full", compressed, errors, forces, forces_full, None))
    int8 = compress(reference, None, int8_embedding=True)
    errors, forces = _errors(int8, graphs, precision, device)
    rows.append(_accuracy_row(num_elements, num_elements, "int8 embedding of full", int8, errors, forces,
                              forces_full, None))
    return rows


def _accuracy_row(num_elements, rank, method, model, errors, forces, forces_full, train_time) -> dict:
    from lpmace.compress import element_weight_storage

    stored = element_weight_storage(model)
    int8_table = sum(b.numel() for name, b in model.named_buffers() if name.startswith("embedding."))
    total = sum(p.numel() for p in model.parameters()) + int8_table
    deviation = 1000 * math.sqrt(float(np.mean((forces - forces_full) ** 2)))
    return {"part": "accuracy", "S": num_elements, "rank": "full" if rank == num_elements else rank,
            "method": method, "element_params": stored["numel"], "element_kib": stored["bytes"] / 1024,
            "total_params": total, "element_fraction": stored["numel"] / total, **errors,
            "F_dev_from_full": deviation, "train_time_s": train_time}


# ---- the section ---------------------------------------------------------------------------------
def run(*, device: str, quick: bool, progress: bool, seed: int = 0, data=None) -> dict:
    """Both parts; quick: a tiny model, a few configurations, one epoch at ranks full, 2, 1.
    `data`: the folder with rmd17_ethanol/ and si_zuo2020/ (InputError, before anything runs, without it)."""
    data = check_data(data)
    torch.manual_seed(seed)
    rows = count_rows()
    with tempfile.TemporaryDirectory(prefix="lpmace-species-rank-") as work:
        rows += accuracy_rows(device=device, quick=quick, progress=progress, seed=seed, work=Path(work), data=data)
    settings = {"model": _MODEL[quick], "configurations": _SIZES[quick], "epochs": _EPOCHS[quick],
                "precision": "fp32", "data": str(data)}
    return {"settings": settings, "rows": rows}
