"""Import mace-torch models: `from_mace_torch(module) -> lpmace.MACE`.

Supported: mace-torch `MACE` and `ScaleShiftMACE` saved by any 0.3.x (attributes that older versions
did not pickle, such as `edge_irreps` before 0.3.14 or `apply_cutoff`, take the value those versions
computed with), in the e3nn (not cuEquivariance) layout, with hidden irreps C×(0e + 1o + ... + L)
(same C for every l), Bessel radial basis with polynomial cutoff, and
- interactions RealAgnostic{Residual,,DensityResidual,Density}InteractionBlock or
  RealAgnosticResidualNonLinearInteractionBlock (any first, one kind for all the others);
- edge irreps C_e×(0e + 1o + ... + L_e) different from the hidden ones (`edge_irreps`,
  `use_edge_irreps_first`), and the element-agnostic product (`use_agnostic_product`);
- ZBL pair repulsion (`pair_repulsion=True`), the Agnesi distance transform
  (`distance_transform="Agnesi"`) and `apply_cutoff=False`;
- several heads: `head=NAME` keeps that one (its E0s, scale and shift, and its slice of every
  readout, as mace-torch's `remove_pt_head` does); a multi-head model without `head` is refused
  with the list of its heads.
That covers MP-0a/b/b2/b3, MPA-0, OMAT-0, MATPES, OFF23 and MH-0/MH-1 as mace-torch builds them.
Refused, with a one-line reason naming the feature: other model classes (MACELES, PolarMACE,
AtomicDipolesMACE, ...), extra embeddings (`embedding_specs`), other interaction or readout blocks,
odd-parity or non-uniform hidden irreps, other radial bases and distance transforms (Soft), trained
ZBL / Agnesi constants or Bessel frequencies, `use_so3`, `use_last_readout_only`,
`keep_last_layer_irreps`.

Weights map one to one (lpmace's blocks keep e3nn's normalisation), except the symmetric
contraction: mace-torch stores weights against its U tensors (``U_matrix_ν``), lpmace against its
own polynomial basis (lpmace.o3.symmetric_basis). Both span the same space of symmetric equivariant
maps, so the weights are carried over by an exact change of basis, checked to round-off. The ZBL
and Agnesi constants are not weights: lpmace holds them, and the import checks the model's equal them.

The checks behind each refusal live in `lpmace.interop.supported`.

`load_mace_torch_model` unpickles a `.model` file: that runs code from the file. Only load files
you trust (the same trust mace-torch itself asks for).
"""

from __future__ import annotations

import math
import warnings

import torch

from lpmace.errors import InputError
from lpmace.interop.supported import (INTERACTION_KINDS, check_supported, edge_irreps, head_index, uniform_irreps,
                                      unsupported)
from lpmace.model import MACE, MACEConfig
from lpmace.nn.activation import SIGMOID_NORMALIZATION, SILU_NORMALIZATION
from lpmace.nn.nonlinear_interaction import NonLinearInteraction
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


def mace_torch_inputs(graph, atomic_numbers, head: int = 0) -> dict:
    """A mace-torch input dict for an lpmace `Graph` (same edges), to run both models on one batch
    (every structure evaluated with the head of index `head`)."""
    index = torch.tensor([list(atomic_numbers).index(n) for n in graph.numbers.tolist()], device=graph.numbers.device)
    edge_cell = graph.cell[graph.batch[graph.edge_index[0]]]
    return dict(
        positions=graph.positions.clone(),
        node_attrs=torch.nn.functional.one_hot(index, len(atomic_numbers)).to(graph.positions.dtype),
        edge_index=graph.edge_index, shifts=torch.einsum("ek,ekx->ex", graph.unit_shifts, edge_cell),
        unit_shifts=graph.unit_shifts, cell=graph.cell.reshape(-1, 3), batch=graph.batch, ptr=graph.ptr,
        head=torch.full((graph.num_graphs,), int(head), dtype=torch.long, device=graph.numbers.device),
    )


def _linear_blocks(linear) -> list:
    """Per-output-irrep lists of [mul_in, mul_out] weights of an e3nn o3.Linear, in instruction order."""
    if not hasattr(linear, "instructions"):
        unsupported(f"{type(linear).__name__} is not an e3nn Linear (cuEquivariance layout?)")
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
            unsupported(f"symmetric contraction (L={L}, nu={degree}) outside lpmace's basis")
        return torch.zeros(weight.shape[0], 0, weight.shape[2], dtype=torch.float64)
    x = torch.linalg.lstsq(a, b).solution
    residual = float((a @ x - b).norm()) / max(float(b.norm()), 1e-300)
    if residual > tolerance:
        unsupported(f"symmetric contraction (L={L}, nu={degree}) not in lpmace's basis (residual {residual:.1e})")
    return x.reshape(-1, weight.shape[0], weight.shape[2]).permute(1, 0, 2)


def _on_host(model):
    """The model itself if it lives on the CPU, else a CPU copy (the user's model is left alone)."""
    tensors = list(model.parameters()) + list(model.buffers())
    if all(t.device.type == "cpu" for t in tensors):
        return model
    import copy

    return copy.deepcopy(model).cpu()


def _radial_hidden(inter) -> list:
    """Hidden widths of an interaction's edge-weight MLP (e3nn FullyConnectedNet, or the LayerNorm
    MLP of the non-linear block)."""
    net = inter.conv_tp_weights
    if hasattr(net, "net"):
        return [m.out_features for m in net.net if isinstance(m, torch.nn.Linear)][:-1]
    return [layer.weight.shape[1] for layer in net][:-1]


def _edge_config(model, channels: int, max_l: int) -> dict:
    """MACEConfig's edge_channels, edge_max_L and edge_irreps_first from the interactions' edge irreps."""
    first = uniform_irreps(edge_irreps(model.interactions[0]), "interaction 0 edge")
    later = {uniform_irreps(edge_irreps(inter), f"interaction {t} edge")
             for t, inter in enumerate(model.interactions) if t > 0}
    if len(later) > 1 or (first[1] != 0):
        unsupported(f"edge irreps that differ between interactions ({first}, {sorted(later)})")
    edge_channels, edge_l = later.pop() if later else (first[0], max_l)
    if first[0] not in (channels, edge_channels):
        unsupported(f"first interaction's edge irreps {first[0]}x0e match neither the hidden nor the edge irreps")
    out = {"edge_irreps_first": first[0] != channels}
    if (edge_channels, edge_l) != (channels, max_l) or out["edge_irreps_first"]:
        out.update(edge_channels=edge_channels, edge_max_L=edge_l)
    return out


def config_from_mace_torch(model, head=None) -> MACEConfig:
    """The MACEConfig of a supported mace-torch model, for its head `head` (see `head_index`);
    raises InputError otherwise."""
    model = _on_host(model)
    check_supported(model)
    h = head_index(model, head)
    n_heads = len(getattr(model, "heads", None) or ["Default"])
    inter0 = model.interactions[0]
    channels, _ = uniform_irreps(inter0.node_feats_irreps, "node embedding")
    t_count = len(model.interactions)
    max_l = uniform_irreps(model.interactions[1].node_feats_irreps, "hidden")[1] if t_count > 1 else 0
    max_ell = inter0.edge_attrs_irreps.lmax
    if inter0.edge_attrs_irreps != type(inter0.edge_attrs_irreps).spherical_harmonics(max_ell):
        unsupported(f"edge attributes {inter0.edge_attrs_irreps} are not the spherical harmonics (use_so3?)")
    bessel = model.radial_embedding.bessel_fn
    r_max = float(bessel.r_max)
    expected = math.pi / r_max * torch.arange(1, bessel.bessel_weights.numel() + 1, dtype=torch.float64)
    if not torch.allclose(bessel.bessel_weights.detach().to(torch.float64), expected, rtol=1e-6):
        unsupported("trained Bessel frequencies are not supported")
    e0 = torch.atleast_2d(model.atomic_energies_fn.atomic_energies.detach().to(torch.float64))[h]
    per_head = lambda x: float(torch.atleast_1d(x.detach())[h if x.numel() > 1 else 0])  # noqa: E731
    scale = per_head(model.scale_shift.scale) if hasattr(model, "scale_shift") else 1.0
    shift = per_head(model.scale_shift.shift) if hasattr(model, "scale_shift") else 0.0
    radial_sizes = {tuple(_radial_hidden(inter)) for inter in model.interactions}
    if len(radial_sizes) > 1:
        unsupported(f"radial MLPs of different widths {sorted(radial_sizes)}")
    readout_mlp = 16
    if t_count > 1:
        readout_mlp = model.readouts[-1].linear_1.irreps_out.num_irreps // n_heads
        cst = getattr(getattr(model.readouts[-1].non_linearity, "acts", [None])[0], "cst", SILU_NORMALIZATION)
        if abs(cst - SILU_NORMALIZATION) > 1e-12:
            unsupported("readout activation is not the normalised SiLU")
    kinds = [INTERACTION_KINDS[type(inter).__name__] for inter in model.interactions]
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
        radial_mlp=radial_sizes.pop(),
        avg_num_neighbors=float(inter0.avg_num_neighbors),
        scale=scale,
        shift=shift,
        first_interaction=kinds[0],
        interaction=kinds[1] if t_count > 1 else "residual",
        agnostic_product=bool(getattr(model.products[0], "use_agnostic_product", False)),
        **_edge_config(model, channels, max_l),
        pair_repulsion=hasattr(model, "pair_repulsion"),
        distance_transform="agnesi" if hasattr(model.radial_embedding, "distance_transform") else "none",
        # absent before mace-torch 0.3.14 (and on its MACE object before the radial block had it)
        apply_cutoff=bool(getattr(model.radial_embedding, "apply_cutoff", True)),
    )


def _copy(weights, blocks, what: str):
    """Copy `blocks` into the parameters `weights`, one to one (their numbers and shapes must agree)."""
    weights, blocks = list(weights), list(blocks)
    if len(weights) != len(blocks) or any(w.shape != b.shape for w, b in zip(weights, blocks)):
        unsupported(f"{what}: weights {[tuple(b.shape) for b in blocks]} do not map onto "
                     f"{[tuple(w.shape) for w in weights]}")
    for w, b in zip(weights, blocks):
        w.copy_(b)


def _layer_norm_mlp(mine, net, what: str):
    """mace-torch's RadialMLP (Linear → LayerNorm → SiLU ..., torch layers) into a LayerNormMLP."""
    if not isinstance(getattr(net, "net", None), torch.nn.Sequential):
        unsupported(f"{what}: {type(net).__name__} is not mace-torch's RadialMLP (Linear → LayerNorm → SiLU)")
    linears = [m for m in net.net if isinstance(m, torch.nn.Linear)]
    norms = [m for m in net.net if isinstance(m, torch.nn.LayerNorm)]
    known = (torch.nn.Linear, torch.nn.LayerNorm, torch.nn.SiLU)
    others = [type(m).__name__ for m in net.net if not isinstance(m, known)]
    if others or any(abs(n.eps - mine.EPS) > 0 or n.bias is None for n in norms):
        unsupported(f"{what}: MLP layers {others or 'LayerNorm'} differ from Linear → LayerNorm → SiLU")
    f64 = lambda t: t.detach().to(torch.float64)  # noqa: E731
    _copy(mine.weights, [f64(m.weight).T for m in linears], what)
    _copy(mine.biases, [f64(m.bias) for m in linears], what)
    _copy(mine.norm_scales, [f64(n.weight) for n in norms], what)
    _copy(mine.norm_offsets, [f64(n.bias) for n in norms], what)


def _nonlinear_weights(inter, mine, t: int):
    """RealAgnosticResidualNonLinearInteractionBlock -> lpmace.nn.nonlinear_interaction."""
    c, gates = mine.channels, mine.max_ell
    gate_irreps = f"{(1 + gates) * c}x0e" + "".join(f"+{c}x{l}{'eo'[l % 2]}" for l in range(1, gates + 1))
    if str(inter.irreps_nonlin) != gate_irreps:
        unsupported(f"interaction {t}: gate input {inter.irreps_nonlin} is not {gate_irreps}")
    consts = (getattr(inter.equivariant_nonlin, "_scalar_cst", SILU_NORMALIZATION),
              getattr(inter.equivariant_nonlin, "_gate_cst", SIGMOID_NORMALIZATION))
    if abs(consts[0] - SILU_NORMALIZATION) + abs(consts[1] - SIGMOID_NORMALIZATION) > 1e-12:
        unsupported(f"interaction {t}: gate activations are not the normalised SiLU and sigmoid")
    mine.source_embedding.copy_(_linear_blocks(inter.source_embedding)[0])
    mine.target_embedding.copy_(_linear_blocks(inter.target_embedding)[0])
    _layer_norm_mlp(mine.radial_mlp, inter.conv_tp_weights, f"interaction {t} radial MLP")
    _layer_norm_mlp(mine.density_mlp, inter.density_fn, f"interaction {t} density MLP")
    mine.alpha.copy_(inter.alpha.detach())
    mine.beta.copy_(inter.beta.detach())
    for name in ("linear_1", "linear_res", "linear_2"):
        _copy(getattr(mine, name).weights, _linear_blocks(getattr(inter, name)), f"interaction {t} {name}")
    _copy(mine.skip.weights, _linear_blocks(inter.skip_tp), f"interaction {t} skip")


def _readout_weights(readout, mine, h: int, n_heads: int, t: int):
    """One head's slice of a readout: column h of the output; for the MLP readout also the h-th block
    of hidden units, whose fan-in in linear_2 was n_heads times larger (mace-torch's mask_head)."""
    if hasattr(readout, "linear_1"):
        w1, w2 = _linear_blocks(readout.linear_1)[0], _linear_blocks(readout.linear_2)[0]
        m = w1.shape[1] // n_heads
        if w2.shape != (n_heads * m, n_heads) or (n_heads > 1 and getattr(readout, "num_heads", 1) != n_heads):
            unsupported(f"readout {t}: hidden units are not one block per head")
        mine_w2 = w2[h * m:(h + 1) * m, h:h + 1] / math.sqrt(n_heads)
        _copy([mine.weight_1, mine.weight_2], [w1[:, h * m:(h + 1) * m], mine_w2], f"readout {t}")
    else:
        _copy([mine.weight], [_linear_blocks(readout.linear)[0][:, h:h + 1]], f"readout {t}")


@torch.no_grad()
def from_mace_torch(model, head=None) -> MACE:
    """An lpmace MACE (float64 parameters, on the CPU) computing what the mace-torch `model` computes
    for its head `head` (a name from `model.heads`; needed only when the model has several)."""
    model = _on_host(model)
    cfg = config_from_mace_torch(model, head)
    h, n_heads = head_index(model, head), len(getattr(model, "heads", None) or ["Default"])
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
        if theirs_paths != mine.paths or mine.paths != conv_paths(mine.lmax_edge, mine.max_ell, mine.max_ell):
            unsupported(f"interaction {t}: tensor-product paths {theirs_paths} differ from {mine.paths}")
        _copy(mine.linear_up.weights, _linear_blocks(inter.linear_up), f"interaction {t} linear_up")
        if isinstance(mine, NonLinearInteraction):
            _nonlinear_weights(inter, mine, t)
            continue
        layers = [f64(layer.weight) for layer in inter.conv_tp_weights]
        _copy(mine.radial_mlp.weights, layers, f"interaction {t} radial MLP")
        _copy(mine.linear.weights, _linear_blocks(inter.linear), f"interaction {t} linear")
        _copy(mine.skip.weights, _skip_blocks(inter.skip_tp, n_el), f"interaction {t} skip")
        if mine.density_mlp is not None:
            layers = [f64(layer.weight) for layer in inter.density_fn]
            _copy(mine.density_mlp.weights, layers, f"interaction {t} density")
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
        _copy(mine.linear.weights, _linear_blocks(prod.linear), f"product {t} linear")
    for t, (readout, mine) in enumerate(zip(model.readouts, ours.readouts)):
        _readout_weights(readout, mine, h, n_heads, t)
    return ours
