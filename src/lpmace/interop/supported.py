"""Which mace-torch models import: the checks behind `from_mace_torch`, each refusal one line naming
the feature (`cannot import this mace-torch model: ...`), and the names lpmace gives mace-torch's
interaction blocks and heads. What is supported, and why, is listed in `lpmace.interop.mace_torch`'s
docstring and in docs/usage.md ("Importing mace-torch models")."""

from __future__ import annotations

from types import SimpleNamespace

import torch

from lpmace.errors import InputError
from lpmace.nn.distance_transform import AGNESI
from lpmace.nn.pair_repulsion import EXPONENT, SCREENING, SCREENING_LENGTH

__all__ = ["INTERACTION_KINDS", "READOUTS", "check_supported", "edge_irreps", "head_index", "uniform_irreps",
           "unsupported"]

def unsupported(reason: str):
    raise InputError(f"cannot import this mace-torch model: {reason}")


# mace-torch interaction block -> MACEConfig interaction kind
INTERACTION_KINDS = {
    "RealAgnosticResidualInteractionBlock": "residual",
    "RealAgnosticInteractionBlock": "plain",
    "RealAgnosticDensityResidualInteractionBlock": "density_residual",
    "RealAgnosticDensityInteractionBlock": "density",
    "RealAgnosticResidualNonLinearInteractionBlock": "nonlinear_residual",
}
READOUTS = ("LinearReadoutBlock", "NonLinearReadoutBlock")


def head_index(model, head=None) -> int:
    """The index of `head` among the model's heads (mace-torch's `heads`; one "Default" head when the
    model has none). None is the only head of a one-head model; for several heads it is an error that
    lists them."""
    heads = [str(h) for h in getattr(model, "heads", None) or ["Default"]]
    if head is None:
        if len(heads) > 1:
            raise InputError(f"this mace-torch model has {len(heads)} heads ({', '.join(heads)}): "
                             f"choose one with head=NAME (lpmace convert --head NAME)")
        return 0
    if str(head) not in heads:
        raise InputError(f"no head {head!r} in this mace-torch model (heads: {', '.join(heads)})")
    return heads.index(str(head))


def edge_irreps(inter):
    """An interaction's edge irreps (models saved before mace-torch 0.3.14 have none: the node irreps)."""
    return getattr(inter, "edge_irreps", None) or inter.node_feats_irreps


def uniform_irreps(irreps, what: str):
    """(channels, lmax) of C×(0e+1o+...+L), else refuse."""
    muls = [mul for mul, _ in irreps]
    ls = [ir.l for _, ir in irreps]
    parities = [ir.p for _, ir in irreps]
    if ls != list(range(len(ls))) or len(set(muls)) != 1 or parities != [(-1) ** l for l in ls]:
        unsupported(f"{what} irreps {irreps} are not C x (0e + 1o + 2e + ...)")
    return muls[0], ls[-1]


def _same_constants(module, expected: dict, what: str):
    """Refuse `module` unless its buffers named in `expected` hold those values (to float32 round-off:
    a model built in float32 stores them rounded)."""
    for name, value in expected.items():
        got = torch.as_tensor(getattr(module, name)).detach().to(torch.float64).reshape(-1)
        want = torch.as_tensor(value, dtype=torch.float64).reshape(-1)
        if got.shape != want.shape or not torch.allclose(got, want, rtol=1e-6, atol=0.0):
            unsupported(f"{what} with {name}={got.tolist()} (lpmace has the fixed {want.tolist()})")


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
            unsupported(f"pair repulsion {type(zbl).__name__} (supported: ZBLBasis)")
        _same_constants(zbl, {"a_exp": EXPONENT, "a_prefactor": SCREENING_LENGTH,
                              "c": [c for c, _ in SCREENING]}, "ZBL repulsion")
        _same_constants(SimpleNamespace(covalent_radii=take(zbl)), radii, "ZBL repulsion")
        if int(zbl.p) != int(model.radial_embedding.cutoff_fn.p):
            unsupported(f"ZBL envelope p={int(zbl.p)} differs from the radial cutoff's "
                         f"p={int(model.radial_embedding.cutoff_fn.p)}")
    transform = getattr(model.radial_embedding, "distance_transform", None)
    if transform is not None:
        if type(transform).__name__ != "AgnesiTransform":
            unsupported(f"distance transform {type(transform).__name__} is not implemented (supported: Agnesi)")
        _same_constants(transform, AGNESI, "Agnesi transform")
        _same_constants(SimpleNamespace(covalent_radii=take(transform)), radii, "Agnesi transform")


def check_supported(model):
    name = type(model).__name__
    if name not in ("MACE", "ScaleShiftMACE"):
        unsupported(f"model class {name} (supported: MACE, ScaleShiftMACE)")
    if hasattr(model, "joint_embedding") or getattr(model, "embedding_specs", None):
        unsupported("extra embeddings (embedding_specs) are not implemented")
    if getattr(model, "use_last_readout_only", False):
        unsupported("use_last_readout_only (one readout for all layers) is not implemented")
    if getattr(model, "use_so3", False):
        unsupported("use_so3 (even-parity spherical harmonics) is not implemented")
    radial = model.radial_embedding
    if type(radial.bessel_fn).__name__ != "BesselBasis":
        unsupported(f"radial basis {type(radial.bessel_fn).__name__} (supported: BesselBasis)")
    _check_pair_and_transform(model, [int(z) for z in model.atomic_numbers.tolist()])
    kinds = []
    for t, inter in enumerate(model.interactions):
        kind = type(inter).__name__
        if kind not in INTERACTION_KINDS:
            unsupported(f"interaction {t} is {kind} (supported: {', '.join(INTERACTION_KINDS)})")
        if getattr(inter, "cueq_config", None) is not None and getattr(inter.cueq_config, "enabled", False):
            unsupported("cuEquivariance layout; convert it back to e3nn with mace-torch first")
        uniform_irreps(edge_irreps(inter), f"interaction {t} edge")
        kinds.append(INTERACTION_KINDS[kind])
    if len(set(kinds[1:])) > 1:
        unsupported(f"interactions after the first of different kinds ({', '.join(kinds[1:])})")
    if len({bool(getattr(p, "use_agnostic_product", False)) for p in model.products}) > 1:
        unsupported("element-agnostic product in some interactions only")
    if len(model.readouts) != len(model.interactions):
        unsupported("use_last_readout_only (one readout for several interactions) is not implemented")
    for t, readout in enumerate(model.readouts):
        if type(readout).__name__ not in READOUTS:
            unsupported(f"readout {t} is {type(readout).__name__} (supported: {', '.join(READOUTS)})")
    last = model.products[-1].linear.irreps_out
    if last.lmax > 0:
        unsupported(f"keep_last_layer_irreps (last product outputs {last}) is not implemented")
