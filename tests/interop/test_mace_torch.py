"""The proof that lpmace's model is MACE: imported mace-torch models agree in float64.

Energies to 1e-9 relative and forces to 1e-8 eV/Å (issue 2), on real 3BPA molecules and periodic
Si cells, for both first-interaction types, L = 0..3 and correlation 1..4.
"""

import numpy as np
import pytest
import torch

mace_modules = pytest.importorskip("mace.modules")
from e3nn import o3  # noqa: E402

from lpmace import datasets  # noqa: E402
from lpmace.data import collate, graph_from_configuration, read_configurations  # noqa: E402
from lpmace.errors import InputError  # noqa: E402
from lpmace.interop import from_mace_torch, mace_torch_inputs  # noqa: E402

from shared_data import shared_data_dir  # noqa: E402


def build_mace_torch(z, hidden, first, correlation, num_interactions=2, cls="ScaleShiftMACE", seed=0,
                     dtype=torch.float64, **features):
    """A random mace-torch model (`features`: more constructor arguments, e.g. pair_repulsion=True);
    restores the global default dtype it needs to set."""
    old = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        torch.manual_seed(seed)
        kwargs = dict(
            r_max=4.5, num_bessel=8, num_polynomial_cutoff=5, max_ell=3,
            interaction_cls=mace_modules.interaction_classes["RealAgnosticResidualInteractionBlock"],
            interaction_cls_first=mace_modules.interaction_classes[first],
            num_interactions=num_interactions, num_elements=len(z), hidden_irreps=o3.Irreps(hidden),
            MLP_irreps=o3.Irreps("16x0e"), atomic_energies=np.linspace(-10.0, -2000.0, len(z)),
            avg_num_neighbors=11.0, atomic_numbers=z, correlation=correlation,
            gate=torch.nn.functional.silu, radial_MLP=[16, 16, 16], **features,
        )
        if cls == "ScaleShiftMACE":
            return mace_modules.ScaleShiftMACE(atomic_inter_scale=0.8, atomic_inter_shift=0.05, **kwargs)
        return mace_modules.MACE(**kwargs)
    finally:
        torch.set_default_dtype(old)


def assert_same(ref_model, graph, z, stress=False):
    ours = from_mace_torch(ref_model)
    ref = ref_model(mace_torch_inputs(graph, z), compute_force=True, compute_stress=stress)
    out = ours(graph, compute_stress=stress)
    rel = ((out["energy"] - ref["energy"]).abs() / ref["energy"].abs()).max()
    assert rel < 1e-9
    assert (out["forces"] - ref["forces"]).abs().max() < 1e-8
    assert ref["forces"].abs().max() > 1e-3  # the comparison is not between zeros
    if stress:
        assert (out["stress"] - ref["stress"]).abs().max() < 1e-8
        assert ref["stress"].abs().max() > 1e-5


@pytest.fixture(scope="module")
def molecules():
    configs = read_configurations(datasets.path("3bpa/test_300K.xyz"), index=":3")
    assert len(configs) == 3
    return collate([graph_from_configuration(c, 4.5) for c in configs])


@pytest.fixture(scope="module")
def silicon():
    configs = read_configurations(
        shared_data_dir() / "si_zuo2020" / "Si_test.xyz", energy_key="energy", forces_key="force", index=":3"
    )
    return collate([graph_from_configuration(c, 4.5) for c in configs])


@pytest.mark.parametrize(
    "hidden, first, correlation",
    [
        ("16x0e+16x1o", "RealAgnosticResidualInteractionBlock", 3),
        ("16x0e+16x1o", "RealAgnosticInteractionBlock", 3),
        ("8x0e", "RealAgnosticResidualInteractionBlock", 1),
        ("8x0e+8x1o+8x2e", "RealAgnosticResidualInteractionBlock", 2),
        ("4x0e+4x1o+4x2e+4x3o", "RealAgnosticInteractionBlock", 3),
    ],
)
def test_3bpa_molecules_match_mace_torch(molecules, hidden, first, correlation):
    z = [1, 6, 7, 8]
    assert_same(build_mace_torch(z, hidden, first, correlation), molecules, z)


def test_periodic_silicon_energy_forces_stress_match(silicon):
    z = [14]
    assert_same(build_mace_torch(z, "16x0e+16x1o", "RealAgnosticResidualInteractionBlock", 3), silicon, z, stress=True)


def test_plain_mace_class_and_single_interaction(molecules):
    z = [1, 6, 7, 8]
    ref = build_mace_torch(z, "16x0e+16x1o", "RealAgnosticResidualInteractionBlock", 2, num_interactions=1, cls="MACE")
    assert_same(ref, molecules, z)


def test_correlation_four(molecules):
    # One interaction keeps mace-torch's own correlation-4 set-up to ~10 s and ~10 GB.
    z = [1, 6, 7, 8]
    ref = build_mace_torch(z, "4x0e", "RealAgnosticResidualInteractionBlock", 4, num_interactions=1)
    assert_same(ref, molecules, z)


def test_float32_model_converts_with_float32_accuracy(molecules):
    """mace-torch models saved in float32 carry float32 U tensors; they convert to float32 accuracy."""
    z = [1, 6, 7, 8]
    ref = build_mace_torch(z, "16x0e+16x1o", "RealAgnosticResidualInteractionBlock", 3, dtype=torch.float32)
    ours = from_mace_torch(ref).float()
    inputs = {k: (v.float() if torch.is_floating_point(v) else v) for k, v in mace_torch_inputs(molecules, z).items()}
    want = ref(inputs, compute_force=True)
    got = ours(molecules)
    assert ((got["energy"] - want["energy"].double()).abs() / want["energy"].double().abs()).max() < 1e-6
    assert (got["forces"] - want["forces"]).abs().max() < 1e-4 * want["forces"].abs().max()


def test_unsupported_model_is_refused_with_reason():
    z = [1, 6]
    ref = build_mace_torch(z, "16x0e+8x1o", "RealAgnosticResidualInteractionBlock", 2)
    with pytest.raises(InputError, match="irreps"):
        from_mace_torch(ref)
