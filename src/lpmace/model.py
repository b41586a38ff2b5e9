"""MACEConfig and MACE: the model as mace-torch's ScaleShiftMACE computes it.

    E = Σ_i [ E0(z_i) + scale · (Σ_t readout_t(h_i^(t)) + E_pair,i) + shift ]   (summed in float64)
    h^(t) = Product_t( Interaction_t(h^(t-1), Y(r̂_ij), R(r_ij)), z ) (+ element-dependent skip)

E_pair is the optional ZBL repulsion (lpmace.nn.pair_repulsion), inside the scale and shift as in
ScaleShiftMACE (mace-torch's plain MACE has scale 1 and shift 0, the same sum). Forces are -∂E/∂r
and stress (1/V) ∂E/∂ε by autograd (double backward when training). Each block computes in the
dtype the precision policy (lpmace.precision) names for it; the parameters are cast at the block
boundaries and never changed, so the same weights run under any policy.

Nothing here chooses how a block is computed: the heavy blocks own their implementation, set by one
walk over the built model; compilation wraps a model from outside (`lpmace.compile`).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Dict, Optional, Tuple, Union

import torch

from lpmace.data.graph import Graph
from lpmace.elements import check_known_elements
from lpmace.errors import InputError
from lpmace.kernels.launch import element_grouping
from lpmace.nn.constants import ExactConstants
from lpmace.nn.distance_transform import DISTANCE_TRANSFORMS, distance_transform
from lpmace.nn.edges import Edges
from lpmace.nn.element_weights import element_weight
from lpmace.nn.interaction import Interaction
from lpmace.nn.nonlinear_interaction import NonLinearInteraction
from lpmace.nn.pair_repulsion import ZBLRepulsion
from lpmace.nn.product import Product, frozen_weights
from lpmace.nn.radial import RadialEmbedding
from lpmace.nn.readout import LinearReadout, MLPReadout
from lpmace.o3.spherical_harmonics import SphericalHarmonics
from lpmace.precision import PrecisionPolicy, matmul_mode, resolve_policy, scaled_weight

# mace-torch's RealAgnostic{Residual,,DensityResidual,Density}InteractionBlock and
# RealAgnosticResidualNonLinearInteractionBlock
INTERACTIONS = ("residual", "plain", "density_residual", "density", "nonlinear_residual")
FIRST_INTERACTIONS = INTERACTIONS


@dataclass(frozen=True)
class MACEConfig:
    """Hyperparameters of a MACE model: data only, JSON-serialisable with `to_dict`.

    atomic_numbers: elements the model knows, in the order of its element-dependent weights.
    E0s: isolated-atom energies (eV) per element, same order (empty = zeros).
    r_max, num_bessel, num_polynomial_cutoff: radial basis (Å).
    max_ell: highest degree of the edge spherical harmonics.
    channels, max_L: hidden features are channels × (0e + 1o + ... + max_L) (mace-torch's
        hidden_irreps "128x0e+128x1o" is channels=128, max_L=1).
    correlation: body order of the symmetric contraction, per interaction (an int is broadcast).
    num_interactions, readout_mlp (width of the last readout's hidden layer, mace's MLP_irreps),
    radial_mlp (hidden widths), avg_num_neighbors, scale, shift (site energy = scale · x + shift).
    first_interaction: "residual" (mace-torch's default RealAgnosticResidualInteractionBlock) or
        "plain" (RealAgnosticInteractionBlock: an isolated atom then has energy E0 + shift), or one
        of the other INTERACTIONS: "density_residual", "density" (messages divided by a learned
        neighbour density, lpmace.nn.density), "nonlinear_residual" (lpmace.nn.nonlinear_interaction).
    interaction: the kind of every interaction after the first (same names).
    agnostic_product: the symmetric contraction's weights are shared by all elements (one set).
    edge_channels, edge_max_L: the convolution runs on edge_channels × (0e + 1o + ... + edge_max_L)
        features (mace-torch's edge_irreps; None: channels, max_L) after the first interaction;
        the first runs on its input's channels × 0e, or on edge_channels × 0e if edge_irreps_first.
    pair_repulsion: add the ZBL repulsion to the site energies (mace-torch's pair_repulsion=True).
    distance_transform: "none" or "agnesi" (the Bessel basis of a transformed length, mace-torch's
        distance_transform="Agnesi"; lpmace.nn.distance_transform).
    apply_cutoff: False moves the cutoff envelope from the radial basis to the radial MLP's output
        (mace-torch's apply_cutoff=False).

    Physics only: how weights are stored (species compression, quantized readouts) is a conversion
    of the built model (lpmace.conversions), and how they are computed a run-time choice.
    """

    atomic_numbers: Tuple[int, ...]
    E0s: Tuple[float, ...] = ()
    r_max: float = 5.0
    num_bessel: int = 8
    num_polynomial_cutoff: int = 5
    max_ell: int = 3
    channels: int = 128
    max_L: int = 1
    correlation: Tuple[int, ...] = (3, 3)
    num_interactions: int = 2
    readout_mlp: int = 16
    radial_mlp: Tuple[int, ...] = (64, 64, 64)
    avg_num_neighbors: float = 1.0
    scale: float = 1.0
    shift: float = 0.0
    first_interaction: str = "residual"
    interaction: str = "residual"
    agnostic_product: bool = False
    edge_channels: Optional[int] = None
    edge_max_L: Optional[int] = None
    edge_irreps_first: bool = False
    pair_repulsion: bool = False
    distance_transform: str = "none"
    apply_cutoff: bool = True

    def __post_init__(self):
        fix = lambda name, value: object.__setattr__(self, name, value)  # noqa: E731
        fix("atomic_numbers", tuple(int(z) for z in self.atomic_numbers))
        fix("E0s", tuple(float(e) for e in self.E0s) or (0.0,) * len(self.atomic_numbers))
        corr = self.correlation
        corr = (int(corr),) * self.num_interactions if isinstance(corr, (int, float)) else tuple(int(c) for c in corr)
        fix("correlation", corr)
        fix("radial_mlp", tuple(int(w) for w in self.radial_mlp))
        zs = self.atomic_numbers
        if not zs or len(set(zs)) != len(zs) or not all(1 <= z <= 118 for z in zs):
            raise InputError(f"atomic_numbers must be distinct elements 1..118, got {list(zs)}")
        if len(self.E0s) != len(zs):
            raise InputError(f"E0s has {len(self.E0s)} values for {len(zs)} atomic_numbers")
        if len(self.correlation) != self.num_interactions or min(self.correlation) < 1:
            raise InputError(f"correlation {self.correlation} must give one order >= 1 per interaction")
        if self.distance_transform not in DISTANCE_TRANSFORMS:
            raise InputError(f"distance_transform must be one of {DISTANCE_TRANSFORMS}, "
                             f"got {self.distance_transform!r}")
        for name in ("first_interaction", "interaction"):
            if getattr(self, name) not in INTERACTIONS:
                raise InputError(f"{name} must be one of {INTERACTIONS}, got {getattr(self, name)!r}")
        for name in ("agnostic_product", "edge_irreps_first", "pair_repulsion", "apply_cutoff"):
            if not isinstance(getattr(self, name), bool):
                raise InputError(f"{name} must be true or false, got {getattr(self, name)!r}")
        for name, low in (("edge_channels", 1), ("edge_max_L", 0)):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < low):
                raise InputError(f"{name} must be null or an integer >= {low}, got {value!r}")
        if self.edge_max_L is not None and self.edge_max_L > self.max_ell:
            raise InputError(f"need edge_max_L <= max_ell, got edge_max_L={self.edge_max_L}, max_ell={self.max_ell}")
        for name in ("num_bessel", "num_polynomial_cutoff", "channels", "num_interactions", "readout_mlp"):
            if int(getattr(self, name)) < 1:
                raise InputError(f"{name} must be >= 1, got {getattr(self, name)}")
        if not (0 < self.r_max < float("inf") and self.avg_num_neighbors > 0):
            raise InputError(f"r_max and avg_num_neighbors must be finite and positive, got {self.r_max}, "
                             f"{self.avg_num_neighbors}")
        if min(self.radial_mlp, default=1) < 1:
            raise InputError(f"radial_mlp widths must be >= 1, got {list(self.radial_mlp)}")
        if not (0 <= self.max_L <= self.max_ell):
            raise InputError(f"need 0 <= max_L <= max_ell, got max_L={self.max_L}, max_ell={self.max_ell}")

    def edge_irreps(self, t: int) -> Tuple[int, int]:
        """(channels, lmax) of the features the convolution of interaction t runs on."""
        channels = self.channels if self.edge_channels is None else self.edge_channels
        if t == 0:
            return (channels if self.edge_irreps_first else self.channels), 0
        return channels, (self.max_L if self.edge_max_L is None else self.edge_max_L)

    def to_dict(self) -> dict:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items()}

    @classmethod
    def from_dict(cls, d: dict) -> "MACEConfig":
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise InputError(f"unknown MACEConfig key(s): {', '.join(unknown)}")
        return cls(**d)


class MACE(ExactConstants):
    """MACE interatomic potential.

    ``model(graph)`` returns a dict:
        energy: [n_graphs] float64 total energy (eV);
        node_energy: [n_atoms] float64 site energies including E0 (eV);
        forces: [n_atoms, 3] (eV/Å) in the geometry dtype of the precision, or None if compute_forces=False;
        stress: [n_graphs, 3, 3] (eV/Å³, ASE sign: (1/V) ∂E/∂ε; NaN for cells of zero volume)
            if compute_stress=True, else None.
    With training=True the force graph is kept for a loss on forces (double backward).
    """

    def __init__(self, config: MACEConfig):
        super().__init__()
        self.config = c = config
        self.conversions: list = []  # what changed how the weights are stored (lpmace.conversions)
        n_el = len(c.atomic_numbers)
        lookup = torch.full((119,), -1, dtype=torch.int64)
        lookup[list(c.atomic_numbers)] = torch.arange(n_el)
        self.register_buffer("species_of_number", lookup, persistent=False)
        self.register_constant("e0s", torch.tensor(c.E0s, dtype=torch.float64))  # ~1e3 eV: float64 (rule 1)

        self.embedding = torch.nn.Parameter(torch.randn(n_el, c.channels))
        self.radial = RadialEmbedding(c.r_max, c.num_bessel, c.num_polynomial_cutoff)
        self.distance_transform = distance_transform(c.distance_transform, c.atomic_numbers)
        self.pair_repulsion = ZBLRepulsion(c.atomic_numbers, c.num_polynomial_cutoff) if c.pair_repulsion else None
        self.spherical_harmonics = SphericalHarmonics(c.max_ell)
        self.interactions = torch.nn.ModuleList()
        self.products = torch.nn.ModuleList()
        self.readouts = torch.nn.ModuleList()
        last = c.num_interactions - 1
        for t in range(c.num_interactions):
            lmax_in = 0 if t == 0 else c.max_L
            lmax_out = 0 if t == last else c.max_L
            kind = c.first_interaction if t == 0 else c.interaction
            edge_channels, lmax_edge = c.edge_irreps(t)
            shape = dict(channels=c.channels, lmax_in=lmax_in, max_ell=c.max_ell, lmax_sc=lmax_out,
                         num_elements=n_el, num_bessel=c.num_bessel, radial_mlp=c.radial_mlp,
                         edge_channels=edge_channels, lmax_edge=lmax_edge)
            if kind == "nonlinear_residual":
                self.interactions.append(NonLinearInteraction(**shape))
            else:
                self.interactions.append(Interaction(**shape, avg_num_neighbors=c.avg_num_neighbors,
                                                     residual=kind.endswith("residual"),
                                                     density=kind.startswith("density")))
            self.products.append(Product(c.channels, c.max_ell, lmax_out, c.correlation[t],
                                         1 if c.agnostic_product else n_el))
            mlp = t == last and c.num_interactions > 1
            self.readouts.append(MLPReadout(c.channels, c.readout_mlp) if mlp else LinearReadout(c.channels))

    @property
    def dtype(self) -> torch.dtype:
        return next(self.parameters()).dtype

    # True while a caller that checked every element of its inputs on the host (the trainer, which
    # checks its data when reading it) runs the model: `species` then reads nothing from the device.
    elements_checked = False

    def species(self, numbers: torch.Tensor) -> torch.Tensor:
        """Atomic numbers [n] -> element indices [n]; unknown elements are an InputError (`lpmace.elements`)."""
        if self.elements_checked:
            return self.species_of_number[numbers]
        if numbers.numel() and (numbers.min() < 1 or numbers.max() > 118):
            check_known_elements(numbers.tolist(), self.config.atomic_numbers, "input structure")
        species = self.species_of_number[numbers]
        if numbers.numel() and bool((species < 0).any()):
            check_known_elements(numbers.tolist(), self.config.atomic_numbers, "input structure")
        return species

    def site_energies(self, graph: Graph, positions, cell, species, policy: PrecisionPolicy,
                      with_shift: bool = True) -> torch.Tensor:
        """Interaction site energies scale·Σ_t readout_t + shift (without the shift if not `with_shift`):
        [n_atoms] in the accumulate dtype.

        positions [n_atoms, 3] and cell [n_graphs, 3, 3] in the geometry dtype; species [n_atoms]
        element indices (from `species`).
        """
        c, p = self.config, policy
        # not F.one_hot: its class index becomes a constant tensor when traced (lpmace.compile)
        elements = torch.arange(len(c.atomic_numbers), device=species.device)
        one_hot = (species[:, None] == elements).to(p.linear)
        sender, receiver = graph.edge_index[0], graph.edge_index[1]
        edge_cell = torch.index_select(cell, 0, torch.index_select(graph.batch, 0, sender))
        shifts = torch.einsum("ek,ekx->ex", graph.unit_shifts.to(p.geometry), edge_cell)
        vectors = torch.index_select(positions, 0, receiver) - torch.index_select(positions, 0, sender) + shifts
        lengths = vectors.norm(dim=-1, keepdim=True)
        radial, cutoff = self.radial_features(lengths, species, graph.edge_index, p)
        edges = Edges(graph.edge_index, self.spherical_harmonics(vectors.to(p.spherical_harmonics)),
                      radial, positions.shape[0], cutoff=cutoff)

        emb = element_weight(self.embedding)
        emb = scaled_weight(emb, emb.shape[0], p.linear)
        h = (one_hot @ emb)[:, :, None]  # [n, C, 1]
        total = torch.zeros(positions.shape[0], dtype=p.accumulate, device=positions.device)
        product_species = torch.zeros_like(species) if c.agnostic_product else species  # one shared set
        # the nodes in element order, sorted once for every fused contraction's kernels, forward and backward
        grouping = None
        if any(product.contraction.implementation == "triton" for product in self.products):
            grouping = element_grouping(product_species, 1 if c.agnostic_product else len(c.atomic_numbers))
        for interaction, product, readout in zip(self.interactions, self.products, self.readouts):
            a, sc = interaction(h, one_hot, edges, p)
            h = product(a, product_species, sc, p, grouping)
            total = total + readout(h, p.readout).to(p.accumulate)
        if self.pair_repulsion is not None:
            total = total.to(p.follows("pair_energy")) + self.pair_repulsion(
                lengths.to(p.follows("pair_repulsion")), species, graph.edge_index, p.follows("pair_energy"))
        return c.scale * total + c.shift if with_shift else c.scale * total

    def radial_features(self, lengths: torch.Tensor, species: torch.Tensor, edge_index: torch.Tensor,
                        policy: PrecisionPolicy):
        """(radial basis [E, num_bessel], envelope [E, 1] or None) of edge lengths [E, 1] (geometry
        dtype), both in the policy's radial dtype. The envelope is returned apart only with
        apply_cutoff=False (the interactions then apply it to the radial MLP's output)."""
        p = policy
        if self.distance_transform is None and self.config.apply_cutoff:
            return self.radial(lengths.to(p.radial)), None
        x = lengths
        if self.distance_transform is not None:
            x = self.distance_transform(lengths.to(p.follows("distance_transform")), species, edge_index)
        bessel, envelope = self.radial.bessel(x.to(p.radial)), self.radial.envelope(lengths.to(p.radial))
        return (bessel * envelope, None) if self.config.apply_cutoff else (bessel, envelope)

    @property
    def default_precision(self) -> str:
        """The preset used when forward gets no precision: fp64 for float64 parameters, else fp32."""
        return "fp64" if self.dtype == torch.float64 else "fp32"

    def forward(
        self,
        graph: Graph,
        *,
        precision: Union[str, PrecisionPolicy, None] = None,
        compute_forces: bool = True,
        compute_stress: bool = False,
        training: bool = False,
    ) -> Dict[str, Optional[torch.Tensor]]:
        """Energy, forces and stress of `graph` under `precision` (a preset name, YAML path or policy;
        default `default_precision`). The parameters are not changed: each block casts them.

        training=True keeps the graph of the forces for a loss on them; with training=False the fused
        blocks keep no parameter gradients.
        """
        policy = resolve_policy(precision, default=self.default_precision)
        species = self.species(graph.numbers)  # validates the elements once per call
        with matmul_mode(policy):
            return self.compute(graph, species, policy, compute_forces, compute_stress, training)

    def compute(self, graph: Graph, species: torch.Tensor, policy: PrecisionPolicy, compute_forces: bool,
                compute_stress: bool, training: bool) -> Dict[str, Optional[torch.Tensor]]:
        """`forward` with the elements already validated (`species`) and the policy resolved: pure
        tensor code without host syncs or data-dependent shapes, which `lpmace.compile` traces."""
        dtype = policy.geometry
        positions = graph.positions.to(dtype).detach().requires_grad_(compute_forces or compute_stress)
        cell = graph.cell.to(dtype)
        strain = None
        if compute_stress:
            strain = torch.zeros_like(cell, requires_grad=True)
            sym = 0.5 * (strain + strain.transpose(1, 2))
            positions_used = positions + torch.einsum("nx,nxy->ny", positions, torch.index_select(sym, 0, graph.batch))
            cell = cell + torch.bmm(cell, sym)
        else:
            positions_used = positions
        with frozen_weights(not training):
            scaled = self.site_energies(graph, positions_used, cell, species, policy, with_shift=False)
        e0 = self.e0s.to(policy.energy)[species]
        node_energy = (scaled + self.config.shift).to(policy.energy) + e0
        energy = torch.zeros(graph.num_graphs, dtype=policy.energy, device=node_energy.device)
        # scatter_add, not index_add: Inductor's CPU code for an index_add into one structure fails.
        # The shift is added as shift × atoms per structure, outside the scatter: in a batch of one
        # structure, Inductor's CUDA code (torch 2.11) for the scatter added it once more for every
        # masked lane of its 32-wide block (+shift·(32 − n) eV on an H200, 2026-12-01).
        atoms = (graph.ptr[1:] - graph.ptr[:-1]).to(policy.energy)
        energy = energy.scatter_add(0, graph.batch, scaled.to(policy.energy) + e0) + self.config.shift * atoms

        forces = stress = None
        inputs = [t for t, want in ((positions, compute_forces), (strain, compute_stress)) if want]
        if inputs:
            grads = torch.autograd.grad(
                energy.sum(), inputs, create_graph=training, retain_graph=training, allow_unused=True
            )
            grads = [torch.zeros_like(x) if g is None else g for g, x in zip(grads, inputs)]
            if compute_forces:
                forces = -grads[0]
            if compute_stress:
                volume = torch.linalg.det(graph.cell.to(dtype)).abs()
                stress = grads[-1] / torch.where(volume > 0, volume, torch.nan)[:, None, None]
        return {"energy": energy, "node_energy": node_energy, "forces": forces, "stress": stress}
