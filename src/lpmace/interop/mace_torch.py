"""Import mace-torch models: `from_mace_torch(module) -> lpmace.MACE`.

Supported: mace-torch `MACE` and `ScaleShiftMACE` (any 0.3.x; attributes that older versions did
not pickle, such as `edge_irreps` before 0.3.14 or `apply_cutoff`, take the value those versions
computed with) with RealAgnosticInteractionBlock or RealAgnosticResidualInteractionBlock first and
RealAgnosticResidualInteractionBlock after, e3nn (not cuEquivariance) layout, hidden irreps
C×(0e + 1o + ... + L) (same C for every l), Bessel radial basis with polynomial cutoff, one head;
with or without ZBL pair repulsion (`pair_repulsion=True`), the Agnesi distance transform
(`distance_transform="Agnesi"`) and `apply_cutoff=False` — what MP-0a, MP-0b and OFF23 use.

Refused, with a one-line reason naming the feature: other model classes (MACELES, PolarMACE,
AtomicDipolesMACE, ...), `embedding_specs`, several heads, the density-normalised and non-linear
interaction blocks, edge irreps other than the hidden irreps, the element-agnostic product, odd
parity or non-uniform hidden irreps, other radial bases and distance transforms (Soft), trained
ZBL / Agnesi constants, `use_so3`, `use_last_readout_only`, `keep_last_layer_irreps`.

Weights map one to one (lpmace's blocks keep e3nn's normalisation), except the symmetric
contraction: mace-torch stores weights against its U tensors (``U_matrix_ν``), lpmace against its
own polynomial basis (lpmace.o3.symmetric_basis). Both span the same space of symmetric equivariant
maps, so the weights are carried over by an exact change of basis, checked to round-off. The ZBL
and Agnesi constants are not weights: lpmace holds them, and the import checks the model's equal them.

`load_mace_torch_model` unpickles a `.model` file: that runs code from the file. Only load files
you trust (the same trust mace-torch itself asks for).
"""

from __future__ import annotations

import math
import warnings
from types import SimpleNamespace

import torch

from lpmace.errors import InputError
from lpmace.model import MACE, MACEConfig
from lpmace.nn.activation import SILU_NORMALIZATION
from lpmace.nn.distance_transform import AGNESI
from lpmace.nn.pair_repulsion import EXPONENT, SCREENING, SCREENING_LENGTH
from lpmace.o3.clebsch_gordan import conv_paths
from lpmace.o3.symmetric_basis import _times_table, monomials, symmetric_basis

TRUST_WARNING = (
    "loading a mace-torch .model file unpickles it, which can run arbitrary code: "
    "only convert files you trust"
)


def load_mace_torch_model(path: str) -> torch.nn.Module:
    """Unpickle a mace-torch model file (needs mace-torch installed). Trusts the file: see module doc."""
    warnings.warn(TRUST_WARNING, stacklevel=2)
    try:
        import mace  # noqa: F401  (registers mace's classes and its e3nn constants for unpickling)
    except ImportError as err:
        raise InputError(f"{path}: reading a .model file needs mace-torch installed ({err})") from err
    try:
        model = torch.load(path, map_location="cpu", weights_only=False)
    except FileNotFoundError as err:
        raise InputError(f"{path}: no such file") from err
    except Exception as err:  # noqa: BLE001 — any unpickling failure is bad input
        raise InputError(f"{path}: not a readable mace-torch model ({type(err).__name__}: {err})") from err
    if not isinstance(model, torch.nn.Module):
        raise InputError(f"{path}: holds a {type(model).__name__}, not a mace-torch model")
    return model


def mace_torch_inputs(graph, atomic_numbers) -> dict:
    """A mace-torch input dict for an lpmace `Graph` (same edges), to run both models on one batch."""
    index = torch.tensor([list(atomic_numbers).index(n) for n in graph.numbers.tolist()], device=graph.numbers.device)
    edge_cell = graph.cell[graph.batch[graph.edge_index[0]]]
    return dict(
        positions=graph.positions.clone(),
        node_attrs=torch.nn.functional.one_hot(index, len(atomic_numbers)).to(graph.positions.dtype),
        edge_index=graph.edge_index, shifts=torch.einsum("ek,ekx->ex", graph.unit_shifts, edge_cell),
        unit_shifts=graph.unit_shifts, cell=graph.cell.reshape(-1, 3), batch=graph.batch, ptr=graph.ptr,
        head=torch.zeros(graph.num_graphs, dtype=torch.long, device=graph.numbers.device),
    )


def _unsupported(reason: str):
    raise InputError(f"cannot import this mace-torch model: {reason}")


def _uniform_irreps(irreps, what: str):
    """(channels, lmax) of C×(0e+1o+...+L), else refuse."""
    muls = [mul for mul, _ in irreps]
    ls = [ir.l for _, ir in irreps]
    parities = [ir.p for _, ir in irreps]
    if ls != list(range(len(ls))) or len(set(muls)) != 1 or parities != [(-1) ** l for l in ls]:
        _unsupported(f"{what} irreps {irreps} are not C x (0e + 1o + 2e + ...)")
    return muls[0], ls[-1]


def _linear_blocks(linear) -> list:
    """Per-output-irrep lists of [mul_in, mul_out] weights of an e3nn o3.Linear, in instruction order."""
    if not hasattr(linear, "instructions"):
        _unsupported(f"{type(linear).__name__} is not an e3nn Linear (cuEquivariance layout?)")
    w = linear.weight.detach().to(torch.float64).reshape(-1)
    blocks, start = {}, 0
    for ins in linear.instructions:
        size = ins.path_shape[0] * ins.path_shape[1]
        blocks.setdefault(ins.i_out, []).append(w[start : start + size].reshape(ins.path_shape))
        start += size
    return [torch.cat(blocks[i], dim=0) for i in sorted(blocks)]


def _skip_blocks(tp, num_elements: int) -> list:
    """e3nn FullyConnectedTensorProduct(x, one-hot) weights -> per-l [n_elements, C_in, C_out]."""
    from lpmace.o3.clebsch_gordan import wigner_3j

    w = tp.weight.detach().to(torch.float64).reshape(-1)
    out, start = [], 0
    for ins in tp.instructions:
        c_in, n_el, c_out = ins.path_shape
        l = tp.irreps_out[ins.i_out].ir.l
        block = w[start : start + c_in * n_el * c_out].reshape(c_in, n_el, c_out).permute(1, 0, 2)
        start += c_in * n_el * c_out
        # e3nn: path_weight · CG(l,0,l)[m,0,m]; lpmace: 1/sqrt(c_in · n_elements)
        factor = ins.path_weight * float(wigner_3j(l, 0, l)[0, 0, 0]) * math.sqrt(c_in * num_elements)
        out.append(block * factor)
    return out


def _polynomial_of_u(u: torch.Tensor, dim: int, degree: int) -> torch.Tensor:
    """mace U [(2L+1), dim^degree..., K] -> coefficients over all monomials [n_mono, 2L+1, K]."""
    grids = torch.meshgrid(*[torch.arange(dim)] * degree, indexing="ij")
    flat = [g.reshape(-1) for g in grids]
    mono = flat[0]
    for k in range(1, degree):
        mono = _times_table(dim, k)[mono, flat[k]]
    m, k = u.shape[0], u.shape[-1]
    values = u.reshape(m, -1, k).permute(1, 0, 2)
    out = torch.zeros(len(monomials(dim, degree)), m, k, dtype=torch.float64)
    return out.index_add_(0, mono, values)


def _contraction_weights(u: torch.Tensor, weight: torch.Tensor, lmax_in: int, degree: int, L: int):
    """Change of basis of one (L, ν) weight block [n_el, K_mace, C] -> [n_el, K_lpmace, C]."""
    dim = (lmax_in + 1) ** 2
    # U stored in float32 (a float32 mace-torch model) is exact only to ~1e-7: the tolerance follows it.
    tolerance = 1e-9 if u.dtype == torch.float64 else 1e-5
    u = u.detach().to(torch.float64)
    if L == 0:
        u = u.unsqueeze(0)
    theirs = _polynomial_of_u(u, dim, degree)
    monos, coeffs = symmetric_basis(lmax_in, degree, L)
    mine = torch.zeros(theirs.shape[0], 2 * L + 1, coeffs.shape[-1], dtype=torch.float64)
    index = {m: i for i, m in enumerate(monomials(dim, degree))}
    rows = torch.tensor([index[tuple(m)] for m in monos.tolist()], dtype=torch.int64)
    mine[rows] = coeffs
    target = torch.einsum("pmk,zkc->pmzc", theirs, weight.detach().to(torch.float64))
    a = mine.reshape(-1, mine.shape[-1])
    b = target.reshape(a.shape[0], -1)
    if a.shape[1] == 0:
        if b.abs().max() > 1e-12 if b.numel() else False:
            _unsupported(f"symmetric contraction (L={L}, nu={degree}) outside lpmace's basis")
        return torch.zeros(weight.shape[0], 0, weight.shape[2], dtype=torch.float64)
    x = torch.linalg.lstsq(a, b).solution
    residual = float((a @ x - b).norm()) / max(float(b.norm()), 1e-300)
    if residual > tolerance:
        _unsupported(f"symmetric contraction (L={L}, nu={degree}) not in lpmace's basis (residual {residual:.1e})")
    return x.reshape(-1, weight.shape[0], weight.shape[2]).permute(1, 0, 2)


def _same_constants(module, expected: dict, what: str):
    """Refuse `module` unless its buffers named in `expected` hold those values (to float32 round-off:
    a model built in float32 stores them rounded)."""
    for name, value in expected.items():
        got = torch.as_tensor(getattr(module, name)).detach().to(torch.float64).reshape(-1)
        want = torch.as_tensor(value, dtype=torch.float64).reshape(-1)
        if got.shape != want.shape or not torch.allclose(got, want, rtol=1e-6, atol=0.0):
            _unsupported(f"{what} with {name}={got.tolist()} (lpmace has the fixed {want.tolist()})")


def _check_pair_and_transform(model, atomic_numbers):
    """ZBL repulsion and the Agnesi transform: lpmace holds their constants (lpmace.nn.pair_repulsion,
    lpmace.nn.distance_transform); a model whose buffers differ (trained, or another radius table)
    is refused."""
    from ase.data import covalent_radii

    radii = {"covalent_radii": [float(covalent_radii[z]) for z in atomic_numbers]}
    take = lambda m: torch.as_tensor(m.covalent_radii).detach()[list(atomic_numbers)]  # noqa: E731
    if hasattr(model, "pair_repulsion"):
        zbl = getattr(model, "pair_repulsion_fn", None)
        if type(zbl).__name__ != "ZBLBasis":
            _unsupported(f"pair repulsion {type(zbl).__name__} (supported: ZBLBasis)")
        _same_constants(zbl, {"a_exp": EXPONENT, "a_prefactor": SCREENING_LENGTH,
                              "c": [c for c, _ in SCREENING]}, "ZBL repulsion")
        _same_constants(SimpleNamespace(covalent_radii=take(zbl)), radii, "ZBL repulsion")
        if int(zbl.p) != int(model.radial_embedding.cutoff_fn.p):
            _unsupported(f"ZBL envelope p={int(zbl.p)} differs from the radial cutoff's "
                         f"p={int(model.radial_embedding.cutoff_fn.p)}")
    transform = getattr(model.radial_embedding, "distance_transform", None)
    if transform is not None:
        if type(transform).__name__ != "AgnesiTransform":
            _unsupported(f"distance transform {type(transform).__name__} is not implemented (supported: Agnesi)")
        _same_constants(transform, AGNESI, "Agnesi transform")
        _same_constants(SimpleNamespace(covalent_radii=take(transform)), radii, "Agnesi transform")


def _check_supported(model):
    name = type(model).__name__
    if name not in ("MACE", "ScaleShiftMACE"):
        _unsupported(f"model class {name} (supported: MACE, ScaleShiftMACE)")
    if hasattr(model, "joint_embedding") or getattr(model, "embedding_specs", None):
        _unsupported("extra embeddings (embedding_specs) are not implemented")
    if len(getattr(model, "heads", None) or ["Default"]) != 1:
        _unsupported(f"multi-head models ({model.heads}) are not supported")
    if getattr(model, "use_last_readout_only", False):
        _unsupported("use_last_readout_only (one readout for all layers) is not implemented")
    if getattr(model, "use_so3", False):
        _unsupported("use_so3 (even-parity spherical harmonics) is not implemented")
    radial = model.radial_embedding
    if type(radial.bessel_fn).__name__ != "BesselBasis":
        _unsupported(f"radial basis {type(radial.bessel_fn).__name__} (supported: BesselBasis)")
    _check_pair_and_transform(model, [int(z) for z in model.atomic_numbers.tolist()])
    for t, inter in enumerate(model.interactions):
        kind = type(inter).__name__
        ok = ("RealAgnosticResidualInteractionBlock",) + (("RealAgnosticInteractionBlock",) if t == 0 else ())
        if kind not in ok:
            _unsupported(f"interaction {t} is {kind} (supported: {', '.join(ok)})")
        if getattr(inter, "cueq_config", None) is not None and getattr(inter.cueq_config, "enabled", False):
            _unsupported("cuEquivariance layout; convert it back to e3nn with mace-torch first")
        # mace-torch < 0.3.14 pickles have no edge_irreps: they were the node irreps
        if (getattr(inter, "edge_irreps", None) or inter.node_feats_irreps) != inter.node_feats_irreps:
            _unsupported("edge_irreps different from the node irreps")
    if model.products[-1].linear.irreps_out.lmax != 0:
        _unsupported("keep_last_layer_irreps (non-scalar features after the last layer) is not implemented")
    for prod in model.products:
        if getattr(prod, "use_agnostic_product", False):
            _unsupported("element-agnostic product is not supported")


def _on_host(model):
    """The model itself if it lives on the CPU, else a CPU copy (the user's model is left alone)."""
    tensors = list(model.parameters()) + list(model.buffers())
    if all(t.device.type == "cpu" for t in tensors):
        return model
    import copy

    return copy.deepcopy(model).cpu()


def config_from_mace_torch(model) -> MACEConfig:
    """The MACEConfig of a supported mace-torch model (raises InputError otherwise)."""
    model = _on_host(model)
    _check_supported(model)
    inter0 = model.interactions[0]
    channels, _ = _uniform_irreps(inter0.node_feats_irreps, "node embedding")
    t_count = len(model.interactions)
    max_l = _uniform_irreps(model.interactions[1].node_feats_irreps, "hidden")[1] if t_count > 1 else 0
    max_ell = inter0.edge_attrs_irreps.lmax
    bessel = model.radial_embedding.bessel_fn
    r_max = float(bessel.r_max)
    expected = math.pi / r_max * torch.arange(1, bessel.bessel_weights.numel() + 1, dtype=torch.float64)
    if not torch.allclose(bessel.bessel_weights.detach().to(torch.float64), expected, rtol=1e-6):
        _unsupported("trained Bessel frequencies are not supported")
    e0 = model.atomic_energies_fn.atomic_energies.detach().to(torch.float64).reshape(-1)
    scale = float(model.scale_shift.scale) if hasattr(model, "scale_shift") else 1.0
    shift = float(model.scale_shift.shift) if hasattr(model, "scale_shift") else 0.0
    radial_sizes = [layer.weight.shape[1] for layer in inter0.conv_tp_weights][:-1]
    readout_mlp = 16
    if t_count > 1:
        readout_mlp = model.readouts[-1].linear_1.irreps_out.num_irreps
        cst = getattr(getattr(model.readouts[-1].non_linearity, "acts", [None])[0], "cst", SILU_NORMALIZATION)
        if abs(cst - SILU_NORMALIZATION) > 1e-12:
            _unsupported("readout activation is not the normalised SiLU")
    return MACEConfig(
        atomic_numbers=tuple(int(z) for z in model.atomic_numbers.tolist()),
        E0s=tuple(e0.tolist()),
        r_max=r_max,
        num_bessel=bessel.bessel_weights.numel(),
        num_polynomial_cutoff=int(model.radial_embedding.cutoff_fn.p),
        max_ell=max_ell,
        channels=channels,
        max_L=max_l,
        correlation=tuple(int(p.symmetric_contractions.contractions[0].correlation) for p in model.products),
        num_interactions=t_count,
        readout_mlp=readout_mlp,
        radial_mlp=tuple(radial_sizes),
        avg_num_neighbors=float(inter0.avg_num_neighbors),
        scale=scale,
        shift=shift,
        first_interaction="residual" if "Residual" in type(inter0).__name__ else "plain",
        pair_repulsion=hasattr(model, "pair_repulsion"),
        distance_transform="agnesi" if hasattr(model.radial_embedding, "distance_transform") else "none",
        # absent before mace-torch 0.3.14 (and on its MACE object before the radial block had it)
        apply_cutoff=bool(getattr(model.radial_embedding, "apply_cutoff", True)),
    )


@torch.no_grad()
def from_mace_torch(model) -> MACE:
    """An lpmace MACE (float64 parameters, on the CPU) computing what the mace-torch `model` computes."""
    model = _on_host(model)
    cfg = config_from_mace_torch(model)
    ours = MACE(cfg).double()
    n_el = len(cfg.atomic_numbers)
    f64 = lambda t: t.detach().to(torch.float64)  # noqa: E731
    ours.embedding.copy_(_linear_blocks(model.node_embedding.linear)[0])
    for t, (inter, mine) in enumerate(zip(model.interactions, ours.interactions)):
        theirs_paths = [
            (inter.conv_tp.irreps_in1[i.i_in1].ir.l, inter.conv_tp.irreps_in2[i.i_in2].ir.l,
             inter.conv_tp.irreps_out[i.i_out].ir.l)
            for i in inter.conv_tp.instructions
        ]
        if theirs_paths != mine.paths or mine.paths != conv_paths(mine.lmax_in, mine.max_ell, mine.max_ell):
            _unsupported(f"interaction {t}: tensor-product paths {theirs_paths} differ from {mine.paths}")
        for w, block in zip(mine.linear_up.weights, _linear_blocks(inter.linear_up)):
            w.copy_(block)
        layers = [layer.weight for layer in inter.conv_tp_weights]
        for w, layer in zip(mine.radial_mlp.weights, layers):
            w.copy_(f64(layer))
        for w, block in zip(mine.linear.weights, _linear_blocks(inter.linear)):
            w.copy_(block)
        for w, block in zip(mine.skip.weights, _skip_blocks(inter.skip_tp, n_el)):
            w.copy_(block)
    for t, (prod, mine) in enumerate(zip(model.products, ours.products)):
        lmax_in = cfg.max_ell
        for L, contraction in enumerate(prod.symmetric_contractions.contractions):
            nu_max = contraction.correlation
            by_nu = {nu_max: contraction.weights_max}
            for i, w in enumerate(contraction.weights):
                by_nu[nu_max - 1 - i] = w
            for nu, w in by_nu.items():
                u = contraction.U_tensors(nu)
                mine.contraction.weights[f"L{L}_nu{nu}"].copy_(_contraction_weights(u, w, lmax_in, nu, L))
        for w, block in zip(mine.linear.weights, _linear_blocks(prod.linear)):
            w.copy_(block)
    for t, (readout, mine) in enumerate(zip(model.readouts, ours.readouts)):
        if hasattr(readout, "linear_1"):
            mine.weight_1.copy_(_linear_blocks(readout.linear_1)[0])
            mine.weight_2.copy_(_linear_blocks(readout.linear_2)[0])
        else:
            mine.weight.copy_(_linear_blocks(readout.linear)[0])
    return ours
