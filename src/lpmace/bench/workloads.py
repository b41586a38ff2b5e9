"""What `lpmace bench` measures on: model sizes, the ANCHORS workloads, and mace-torch running the same weights.

Sizes follow the MACE-MP naming (small = 128x0e, medium = 128x0e+128x1o, L2 = 128x0e+128x1o+128x2e);
everything else is shared/ANCHORS.md's model: 2 interactions, max_ell 3, correlation 3, r_max 5 Å,
8 Bessel functions, p = 5, radial MLP [64, 64, 64], readout MLP 16, avg_num_neighbors 15. ``tiny`` is
for `--quick` and CI (8 channels, max_ell 2, correlation 2). ``mp`` is MACE-MP-0 medium's shape: medium
with 89 elements (Z = 1..89), r_max 6 Å, 10 Bessel functions and avg_num_neighbors 61.

Workloads (ANCHORS.md): W1 = 32 random 27-atom molecules (7 Å box, atoms ≥ 1 Å apart), a
training batch; W2 = one periodic box at 0.1 atoms/Å³ (4096 atoms), inference. Random structures
use the model's own elements, so any model can be benchmarked.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional, Sequence

import numpy as np
import torch

from lpmace.bench.choices import SIZES
from lpmace.data import Configuration, collate, graph_from_configuration
from lpmace.data.graph import Graph
from lpmace.errors import InputError
from lpmace.model import MACE, MACEConfig

__all__ = ["SIZES", "Workload", "build_model", "build_mace_torch", "random_bulk", "random_molecules",
           "rotate_graph", "workloads"]

DEFAULT_ELEMENTS = (1, 6, 7, 8)


@dataclass(frozen=True)
class Workload:
    """One benchmark input: `graph` (on the host, float64 geometry) and what is timed on it."""

    name: str  # "train W1", "infer W2"
    kind: str  # "train" or "infer"
    graph: Graph


def build_model(size: str, atomic_numbers: Sequence[int] = DEFAULT_ELEMENTS, seed: int = 0) -> MACE:
    """A randomly initialised (seeded) lpmace model of `size` with float32 parameters.

    It knows `atomic_numbers`, unless the size names its own elements (``mp``: a foundation model's 89),
    which it then knows instead: a structure with another element is refused against them, as it would be
    by the foundation model.
    """
    if size not in SIZES:
        raise InputError(f"--size must be one of {sorted(SIZES)}, got {size!r}")
    torch.manual_seed(seed)
    return MACE(MACEConfig(**{"atomic_numbers": tuple(atomic_numbers), **SIZES[size]})).float()


def build_mace_torch(config: MACEConfig, seed: int = 0) -> torch.nn.Module:
    """mace-torch's ScaleShiftMACE with the hyperparameters of `config`, float64, random (seeded).

    The caller converts it with `lpmace.interop.from_mace_torch` so both codes run the same weights.
    Raises ImportError when mace-torch (or e3nn) is not installed.
    """
    from e3nn import o3
    from mace import modules

    from lpmace.interop.supported import INTERACTION_KINDS

    irreps = lambda c, lmax: "+".join(f"{c}x{ell}{'eo'[ell % 2]}" for ell in range(lmax + 1))  # noqa: E731
    hidden = irreps(config.channels, config.max_L)
    block = {kind: modules.interaction_classes[name] for name, kind in INTERACTION_KINDS.items()}
    residual, first = block[config.interaction], block[config.first_interaction]
    edge = {}
    if config.edge_channels is not None or config.edge_max_L is not None:
        edge = dict(edge_irreps=o3.Irreps(irreps(*config.edge_irreps(1))),
                    use_edge_irreps_first=config.edge_irreps_first)
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)  # mace-torch builds its buffers in the default dtype
    try:
        torch.manual_seed(seed)
        return modules.ScaleShiftMACE(
            r_max=config.r_max, num_bessel=config.num_bessel, num_polynomial_cutoff=config.num_polynomial_cutoff,
            max_ell=config.max_ell, interaction_cls=residual, interaction_cls_first=first,
            num_interactions=config.num_interactions, num_elements=len(config.atomic_numbers),
            hidden_irreps=o3.Irreps(hidden), MLP_irreps=o3.Irreps(f"{config.readout_mlp}x0e"),
            atomic_energies=np.zeros(len(config.atomic_numbers)), avg_num_neighbors=config.avg_num_neighbors,
            atomic_numbers=list(config.atomic_numbers), correlation=list(config.correlation),
            gate=torch.nn.functional.silu, radial_MLP=list(config.radial_mlp),
            atomic_inter_scale=1.0, atomic_inter_shift=0.0, use_agnostic_product=config.agnostic_product,
            pair_repulsion=config.pair_repulsion, apply_cutoff=config.apply_cutoff,
            distance_transform={"none": "None", "agnesi": "Agnesi"}[config.distance_transform], **edge)
    finally:
        torch.set_default_dtype(old)


def random_molecules(count: int, n_atoms: int, elements: Sequence[int], rng: np.random.Generator,
                     box: float = 7.0, min_distance: float = 1.0) -> list[Configuration]:
    """`count` random molecules of `n_atoms` atoms in a `box` Å cube, atoms ≥ `min_distance` Å apart."""
    out = []
    for _ in range(count):
        positions: list[np.ndarray] = []
        while len(positions) < n_atoms:
            p = rng.uniform(0.0, box, 3)
            if all(np.linalg.norm(p - q) > min_distance for q in positions):
                positions.append(p)
        out.append(Configuration(numbers=rng.choice(list(elements), n_atoms), positions=np.array(positions),
                                 cell=np.zeros((3, 3)), pbc=np.zeros(3, bool)))
    return out


def random_bulk(n_atoms: int, elements: Sequence[int], rng: np.random.Generator, density: float = 0.1) -> Configuration:
    """A periodic cube of `n_atoms` at `density` atoms/Å³: a jittered simple-cubic grid (no overlaps)."""
    length = (n_atoms / density) ** (1.0 / 3.0)
    m = math.ceil(n_atoms ** (1.0 / 3.0))
    grid = np.stack(np.meshgrid(*[np.arange(m)] * 3, indexing="ij"), -1).reshape(-1, 3)[:n_atoms]
    positions = (grid + 0.5 + rng.uniform(-0.2, 0.2, grid.shape)) * (length / m)
    return Configuration(numbers=rng.choice(list(elements), n_atoms), positions=positions,
                         cell=np.eye(3) * length, pbc=np.ones(3, bool))


def workloads(config: MACEConfig, *, quick: bool, seed: int = 0, box_atoms: Optional[int] = None) -> list[Workload]:
    """W1 (training) and W2 (inference) for a model with `config`; `quick` shrinks them (4 molecules, 128 atoms)."""
    rng = np.random.default_rng(seed)
    elements = config.atomic_numbers
    molecules = random_molecules(4 if quick else 32, 27, elements, rng)
    n_box = box_atoms or (128 if quick else 4096)
    w1 = collate([graph_from_configuration(c, config.r_max) for c in molecules])
    w2 = graph_from_configuration(random_bulk(n_box, elements, rng), config.r_max)
    return [Workload("train W1", "train", w1), Workload("infer W2", "infer", w2)]


def rotate_graph(graph: Graph, rotation: torch.Tensor) -> Graph:
    """`graph` with positions and cells transformed by the 3×3 orthogonal `rotation` (float64).

    Edges stay valid: an edge vector is a difference of positions plus integer shifts of the cell's
    rows, and all of them transform together.
    """
    import dataclasses

    rotation = rotation.to(graph.positions)
    return dataclasses.replace(graph, positions=graph.positions @ rotation.T, cell=graph.cell @ rotation.T)
