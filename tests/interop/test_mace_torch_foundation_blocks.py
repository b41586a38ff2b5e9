"""The blocks of the foundation models against mace-torch 0.3.16 in float64: density-normalised
interactions (MPA-0, OMAT-0, MP-0b2/b3, MATPES), the non-linear residual interaction, edge irreps
different from the hidden irreps (with use_edge_irreps_first), the element-agnostic product and
multi-head models (MH-0/MH-1), alone and combined. Energies to 1e-9 relative, forces 1e-8 eV/Å,
stress for periodic silicon; heads chosen by name; bf16-mixed of an MPA-like model within the usual
bf16 error of its fp64 evaluation.
"""

import numpy as np
import pytest
import torch

mace_modules = pytest.importorskip("mace.modules")
from e3nn import o3  # noqa: E402
from test_mace_torch import molecules, silicon  # noqa: E402,F401  (fixtures)
from tolerances import model_bound  # noqa: E402

import lpmace.io  # noqa: E402
from lpmace.cli import main  # noqa: E402
from lpmace.errors import InputError  # noqa: E402
from lpmace.interop import config_from_mace_torch, from_mace_torch, mace_torch_inputs  # noqa: E402

Z = [1, 6, 7, 8]
BLOCKS = {
    "residual": "RealAgnosticResidualInteractionBlock",
    "plain": "RealAgnosticInteractionBlock",
    "density": "RealAgnosticDensityInteractionBlock",
    "density_residual": "RealAgnosticDensityResidualInteractionBlock",
    "nonlinear_residual": "RealAgnosticResidualNonLinearInteractionBlock",
}


def build(z, first, rest, hidden="8x0e+8x1o", heads=None, seed=0, correlation=2, num_interactions=2, **extra):
    """A random mace-torch ScaleShiftMACE (one scale and shift per head); restores the default dtype.

    Parameters that mace-torch initialises to constants (the non-linear block's α = 20, β = 0,
    its ±0.001 element embeddings and its LayerNorms' unit scales) are randomised, so that every
    term they control is visible in the comparison."""
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        torch.manual_seed(seed)
        n_heads = len(heads or ["Default"])
        e0s = np.stack([np.linspace(-10.0, -2000.0, len(z)) * (1 + 0.01 * h) for h in range(n_heads)])
        model = mace_modules.ScaleShiftMACE(
            atomic_inter_scale=[0.8 + 0.3 * h for h in range(n_heads)] if heads else 0.8,
            atomic_inter_shift=[0.05 - 0.1 * h for h in range(n_heads)] if heads else 0.05,
            r_max=4.5, num_bessel=6, num_polynomial_cutoff=5, max_ell=2,
            interaction_cls=mace_modules.interaction_classes[BLOCKS[rest]],
            interaction_cls_first=mace_modules.interaction_classes[BLOCKS[first]],
            num_interactions=num_interactions, num_elements=len(z), hidden_irreps=o3.Irreps(hidden),
            MLP_irreps=o3.Irreps("8x0e"), atomic_energies=e0s if heads else e0s[0], avg_num_neighbors=9.0,
            atomic_numbers=z, correlation=correlation, gate=torch.nn.functional.silu, radial_MLP=[12, 12],
            heads=heads, **extra,
        )
        with torch.no_grad():
            for name, p in model.named_parameters():
                if name.endswith(("alpha", "beta")):
                    p.fill_(3.0 if name.endswith("alpha") else 0.35)  # a denominator 3 + 0.35 ρ > 0
                elif "source_embedding" in name or "target_embedding" in name or ".net." in name:
                    p.copy_(torch.randn_like(p) * 0.5)
        return model
    finally:
        torch.set_default_dtype(old)


def assert_same(ref_model, graph, z, stress=False, head=None):
    index = 0 if head is None else ref_model.heads.index(head)
    ours = from_mace_torch(ref_model, head=head)
    ref = ref_model(mace_torch_inputs(graph, z, head=index), compute_force=True, compute_stress=stress)
    out = ours(graph, compute_stress=stress)
    assert ((out["energy"] - ref["energy"]).abs() / ref["energy"].abs()).max() < 1e-9
    assert (out["forces"] - ref["forces"]).abs().max() < 1e-8
    assert ref["forces"].abs().max() > 1e-3  # the comparison is not between zeros
    if stress:
        assert (out["stress"] - ref["stress"]).abs().max() < 1e-8
        assert ref["stress"].abs().max() > 1e-5
    return ours, ref


@pytest.mark.parametrize("first, rest", [("density", "density_residual"), ("density_residual", "density_residual"),
                                         ("residual", "density"), ("density", "nonlinear_residual"),
                                         ("nonlinear_residual", "nonlinear_residual")])
def test_density_and_nonlinear_blocks_match_mace_torch(molecules, first, rest):  # noqa: F811
    ref = build(Z, first, rest)
    assert config_from_mace_torch(ref).first_interaction == first
    assert_same(ref, molecules, Z)


def test_mpa_like_model_energy_forces_stress_on_periodic_silicon(silicon):  # noqa: F811
    """MPA-0's layout (density first, density residual after, 0e + 1o hidden) on periodic cells."""
    ref = build([14], "density", "density_residual", hidden="8x0e+8x1o", correlation=3)
    assert_same(ref, silicon, [14], stress=True)


@pytest.mark.parametrize("edge_irreps, first_too", [("12x0e+12x1o+12x2e", True), ("12x0e+12x1o+12x2e", False),
                                                    ("6x0e", False), ("8x0e+8x1o+8x2e", True)])
def test_edge_irreps_other_than_hidden_irreps(molecules, edge_irreps, first_too):  # noqa: F811
    ref = build(Z, "residual", "residual", edge_irreps=o3.Irreps(edge_irreps), use_edge_irreps_first=first_too)
    cfg = config_from_mace_torch(ref)
    assert (cfg.edge_channels, cfg.edge_irreps_first) == (o3.Irreps(edge_irreps)[0].mul, first_too and
                                                          o3.Irreps(edge_irreps)[0].mul != 8)
    assert_same(ref, molecules, Z)


def test_element_agnostic_product(molecules):  # noqa: F811
    ref = build(Z, "plain", "residual", use_agnostic_product=True, correlation=3)
    assert config_from_mace_torch(ref).agnostic_product
    ours, _ = assert_same(ref, molecules, Z)
    assert ours.products[0].contraction.weights["L0_nu1"].shape[0] == 1  # one set for all elements


def mh_like(z=Z):
    """MH-0/MH-1's features on a tiny scale: two heads, non-linear residual interactions after a
    density first block, edge irreps 12 × (0e + 1o + 2e) against hidden 8 × (0e + 1o) (the first
    block's too), element-agnostic product."""
    return build(z, "density", "nonlinear_residual", heads=["omat_pbe", "spice_wB97M"], correlation=3,
                 edge_irreps=o3.Irreps("12x0e+12x1o+12x2e"), use_edge_irreps_first=True,
                 use_agnostic_product=True, num_interactions=3)


@pytest.mark.parametrize("head", ["omat_pbe", "spice_wB97M"])
def test_mh_like_model_matches_mace_torch_for_each_head(molecules, head):  # noqa: F811
    ref = mh_like()
    ours, _ = assert_same(ref, molecules, Z, head=head)
    h = ref.heads.index(head)
    assert ours.config.E0s == tuple(ref.atomic_energies_fn.atomic_energies[h].tolist())
    assert ours.config.scale == float(ref.scale_shift.scale[h])


def test_mh_like_model_stress_on_periodic_silicon(silicon):  # noqa: F811
    assert_same(mh_like([14]), silicon, [14], stress=True, head="spice_wB97M")


def test_multi_head_model_without_head_is_one_line_listing_the_heads():
    ref = mh_like()
    with pytest.raises(InputError, match=r"2 heads \(omat_pbe, spice_wB97M\).*head=NAME") as err:
        from_mace_torch(ref)
    assert "\n" not in str(err.value)
    with pytest.raises(InputError, match=r"no head 'pbe'.*heads: omat_pbe, spice_wB97M"):
        from_mace_torch(ref, head="pbe")


def test_convert_keeps_the_head_named_on_the_command_line(molecules, tmp_path, capsys):  # noqa: F811
    ref = mh_like()
    source, target = tmp_path / "mh.model", tmp_path / "mh.safetensors"
    torch.save(ref, source)
    assert main(["convert", str(source), str(target)]) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("lpmace: error:") and str(source) in err and "omat_pbe, spice_wB97M" in err
    assert not target.exists()
    assert main(["convert", str(source), str(target), "--head", "spice_wB97M"]) == 0
    loaded = lpmace.io.load(target)
    want = ref(mace_torch_inputs(molecules, Z, head=1), compute_force=True)
    got = loaded(molecules)
    assert ((got["energy"] - want["energy"]).abs() / want["energy"].abs()).max() < 1e-9
    assert (got["forces"] - want["forces"]).abs().max() < 1e-8


def test_bf16_mixed_of_an_imported_mpa_like_model_stays_within_the_bf16_bound(molecules):  # noqa: F811
    """Site interaction energies, interaction energy and forces of bf16-mixed against fp64, relative
    (the measure and bound of tests/kernels/test_backend_model.py)."""
    ours = from_mace_torch(build(Z, "density", "density_residual", correlation=3))
    e0 = ours.e0s[ours.species(molecules.numbers)]

    def run(precision):
        out = ours(molecules, precision=precision)
        sites = out["node_energy"].detach().double() - e0
        return sites, out["forces"].detach().double()

    (sites64, forces64), (sites, forces) = run("fp64"), run("bf16-mixed")
    rms = lambda x: float(x.pow(2).mean().sqrt())  # noqa: E731
    bound = model_bound(torch.bfloat16)
    assert rms(sites - sites64) / rms(sites64) <= bound
    assert float((sites - sites64).sum().abs()) / float(sites64.abs().sum()) <= bound
    assert rms(forces - forces64) / rms(forces64) <= bound
    assert rms(forces - forces64) > 0  # bf16 did run


def test_features_still_missing_are_refused_by_name():
    ref = build(Z, "residual", "residual", use_last_readout_only=True)
    with pytest.raises(InputError, match="use_last_readout_only"):
        from_mace_torch(ref)


def test_bench_builds_the_mace_torch_model_of_a_foundation_config(make_config):
    """`lpmace bench --compare-mace-torch` builds mace-torch from an lpmace config: the blocks, edge
    irreps and product of the config come back from the import."""
    from lpmace.bench.workloads import build_mace_torch

    for blocks in (dict(first_interaction="density", interaction="density_residual", pair_repulsion=True,
                        distance_transform="agnesi"),
                   dict(first_interaction="residual", interaction="residual", apply_cutoff=False),
                   dict(first_interaction="plain", interaction="nonlinear_residual", agnostic_product=True,
                        edge_channels=6, edge_max_L=2, edge_irreps_first=True)):
        config = make_config(**blocks)
        back = config_from_mace_torch(build_mace_torch(config))
        assert {k: getattr(back, k) for k in blocks} == blocks
        assert (back.channels, back.max_L, back.correlation) == (config.channels, config.max_L, config.correlation)
