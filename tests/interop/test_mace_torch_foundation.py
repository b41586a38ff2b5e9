"""What foundation models add to MACE, imported from mace-torch 0.3.16 and checked against it in float64:
ZBL pair repulsion, the Agnesi distance transform, apply_cutoff=False (each alone and as MP-0b has
them), models pickled by mace-torch < 0.3.14, and features still refused (a one-line reason, exit 2).

Energies to 1e-9 relative, forces and stress to 1e-8 (eV/Å, eV/Å³), on 3BPA molecules and periodic
Si cells compressed by a quarter and a tenth so that atoms come closer than the sum of their covalent
radii, where the ZBL repulsion and the Agnesi transform differ most from a plain model.

mace-torch's ZBL rounds 14.3996·Z to torch's default dtype (an integer tensor times a float), so the
reference runs with float64 as the default dtype, as mace-torch's own calculator does for float64.
"""

import dataclasses
import subprocess
import sys

import pytest
import torch

mace_modules = pytest.importorskip("mace.modules")

from test_mace_torch import build_mace_torch  # noqa: E402
from tolerances import model_bound  # noqa: E402

import lpmace.io  # noqa: E402
from lpmace import datasets  # noqa: E402
from lpmace.backends import use  # noqa: E402
from lpmace.data import collate, graph_from_configuration, read_configurations  # noqa: E402
from lpmace.errors import InputError  # noqa: E402
from lpmace.interop import from_mace_torch, mace_torch_inputs  # noqa: E402

from shared_data import shared_data_dir  # noqa: E402

Z_MOLECULES, Z_SILICON = [1, 6, 7, 8], [14]
RESIDUAL, PLAIN = "RealAgnosticResidualInteractionBlock", "RealAgnosticInteractionBlock"
MP0B = dict(pair_repulsion=True, distance_transform="Agnesi")


def reference(model, graph, z, stress=False):
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        return model(mace_torch_inputs(graph, z), compute_force=True, compute_stress=stress)
    finally:
        torch.set_default_dtype(previous)


def assert_matches(ours, ref, graph, stress=False):
    out = ours(graph, compute_stress=stress)
    assert ((out["energy"] - ref["energy"]).abs() / ref["energy"].abs()).max() < 1e-9
    assert (out["forces"] - ref["forces"]).abs().max() < 1e-8
    assert ref["forces"].abs().max() > 1e-3
    if stress:
        assert (out["stress"] - ref["stress"]).abs().max() < 1e-8
        assert ref["stress"].abs().max() > 1e-5
    return out


def compressed(configs, factor):
    return [dataclasses.replace(c, positions=c.positions * factor, cell=c.cell * factor) for c in configs]


@pytest.fixture(scope="module")
def molecules():
    configs = read_configurations(datasets.path("3bpa/test_300K.xyz"), index=":3")
    return collate([graph_from_configuration(c, 4.5) for c in compressed(configs, 0.75)])


@pytest.fixture(scope="module")
def silicon():
    configs = read_configurations(
        shared_data_dir() / "si_zuo2020" / "Si_test.xyz", energy_key="energy", forces_key="force", index=":2"
    )
    return collate([graph_from_configuration(c, 4.5) for c in compressed(configs, 0.9)])


@pytest.mark.parametrize(
    "features, first, cls",
    [
        (dict(pair_repulsion=True), RESIDUAL, "ScaleShiftMACE"),
        (dict(pair_repulsion=True), PLAIN, "MACE"),  # MACE adds the pair energy unscaled
        (dict(distance_transform="Agnesi"), RESIDUAL, "ScaleShiftMACE"),
        (dict(apply_cutoff=False), PLAIN, "ScaleShiftMACE"),
        (MP0B, RESIDUAL, "ScaleShiftMACE"),
        (dict(MP0B, apply_cutoff=False), RESIDUAL, "MACE"),
    ],
)
def test_feature_matches_mace_torch_on_close_contacts(molecules, features, first, cls):
    theirs = build_mace_torch(Z_MOLECULES, "16x0e+16x1o", first, 3, cls=cls, **features)
    ours = from_mace_torch(theirs)
    config = ours.config
    assert (config.pair_repulsion, config.distance_transform, config.apply_cutoff) == (
        features.get("pair_repulsion", False), features.get("distance_transform", "None").lower(),
        features.get("apply_cutoff", True))
    out = assert_matches(ours, reference(theirs, molecules, Z_MOLECULES), molecules)
    if config.pair_repulsion:  # the repulsion is far above the tolerance: a wrong one would fail
        ours.pair_repulsion = None
        assert (ours(molecules)["energy"] - out["energy"]).abs().min() > 1.0


def test_mp0b_like_periodic_silicon_energy_forces_stress(silicon):
    theirs = build_mace_torch(Z_SILICON, "16x0e+16x1o", RESIDUAL, 3, **MP0B)
    assert_matches(from_mace_torch(theirs), reference(theirs, silicon, Z_SILICON, stress=True), silicon, stress=True)


# What mace-torch 0.3.16 sets that older versions did not pickle (model, radial block, interactions,
# products). ZBLBasis before 0.3.7 held p as a float and an r_max it did not use.
ADDED_SINCE_0_3_0 = {
    "model": ("heads", "apply_cutoff", "edge_irreps", "use_reduced_cg", "use_agnostic_product", "use_so3",
              "use_last_readout_only", "use_edge_irreps_first", "lammps_mliap"),
    "radial_embedding": ("apply_cutoff",),
    "interactions": ("edge_irreps", "cueq_config", "oeq_config"),
    "products": ("use_agnostic_product",),
}


def as_old_pickle(model):
    for name in ADDED_SINCE_0_3_0["model"]:
        model.__dict__.pop(name, None)
    delattr(model.radial_embedding, "apply_cutoff")
    for group in ("interactions", "products"):
        for block in getattr(model, group):
            for name in ADDED_SINCE_0_3_0[group]:
                block.__dict__.pop(name, None)
            assert not any(hasattr(block, name) for name in ADDED_SINCE_0_3_0[group])
    model.pair_repulsion_fn.p = torch.tensor(float(model.pair_repulsion_fn.p))
    return model


def test_model_pickled_before_0_3_14_converts_and_matches(molecules, tmp_path, capsys):
    """mace-torch < 0.3.14 pickles lack edge_irreps (and the newer flags): they import with the values
    those versions computed with, through `lpmace convert` as a user would."""
    from lpmace.cli import main

    theirs = build_mace_torch(Z_MOLECULES, "16x0e+16x1o", RESIDUAL, 3, **MP0B)
    expected = reference(theirs, molecules, Z_MOLECULES)
    source, target = tmp_path / "old.model", tmp_path / "old.safetensors"
    torch.save(as_old_pickle(theirs), source)
    assert main(["convert", str(source), str(target)]) == 0
    assert_matches(lpmace.io.load(target), expected, molecules)


def _trained_zbl():
    theirs = build_mace_torch(Z_MOLECULES, "8x0e", RESIDUAL, 2, pair_repulsion=True)
    theirs.pair_repulsion_fn.a_exp.fill_(0.31)
    return theirs


@pytest.mark.parametrize(
    "features, feature",
    [(dict(distance_transform="Soft"), "SoftTransform"), (dict(radial_type="gaussian"), "GaussianBasis"),
     (dict(use_last_readout_only=True), "use_last_readout_only"), (dict(hidden="8x0e+8x0o"), "irreps"),
     (None, "a_exp")],
)
def test_feature_not_implemented_is_refused_naming_it(features, feature):
    if features is None:
        theirs = _trained_zbl()
    else:
        features = dict(features)
        theirs = build_mace_torch(Z_MOLECULES, features.pop("hidden", "8x0e"), RESIDUAL, 2, **features)
    with pytest.raises(InputError, match=feature) as err:
        from_mace_torch(theirs)
    assert "\n" not in str(err.value)


def test_convert_of_a_refused_model_is_one_line_and_exit_2(tmp_path):
    source = tmp_path / "soft.model"
    torch.save(build_mace_torch(Z_MOLECULES, "8x0e", RESIDUAL, 2, distance_transform="Soft"), source)
    command = [sys.executable, "-m", "lpmace.cli", "convert", str(source), str(tmp_path / "x.safetensors")]
    result = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert result.returncode == 2, result
    errors = [line for line in result.stderr.strip().splitlines() if line.startswith("lpmace: error: ")]
    assert len(errors) == 1 and "SoftTransform" in errors[0] and str(source) in errors[0], result.stderr
    assert "Traceback" not in result.stderr and not (tmp_path / "x.safetensors").exists()


@pytest.fixture(scope="module")
def mp0b_like():
    return from_mace_torch(build_mace_torch(Z_MOLECULES, "16x0e+16x1o", RESIDUAL, 3, **MP0B))


def test_mp0b_like_in_bf16_mixed_stays_within_the_bf16_model_bound(mp0b_like, molecules):
    """Interaction energy (E − ΣE0, ZBL included) and forces of bf16-mixed against fp64."""
    e0 = mp0b_like.e0s[mp0b_like.species(molecules.numbers)]
    runs = {p: mp0b_like(molecules, precision=p) for p in ("fp64", "bf16-mixed")}
    sites = {p: out["node_energy"].detach().double() - e0 for p, out in runs.items()}
    forces = {p: out["forces"].detach().double() for p, out in runs.items()}
    rms = lambda x: float(x.pow(2).mean().sqrt())  # noqa: E731
    bound = model_bound(torch.bfloat16)
    site_error = rms(sites["bf16-mixed"] - sites["fp64"]) / rms(sites["fp64"])
    force_error = rms(forces["bf16-mixed"] - forces["fp64"]) / rms(forces["fp64"])
    assert 0 < site_error <= bound and 0 < force_error <= bound, (site_error, force_error)


def test_precision_floors_hold_for_repulsion_and_transform(mp0b_like, molecules):
    """bf16-full (a bfloat16 radial basis) still feeds the transform and the repulsion float32
    lengths, and the pair energy comes back float64; fp64 keeps them float64."""
    seen = {}
    hooks = [module.register_forward_hook(lambda m, args, out, key=name: seen.update({key: (args[0].dtype, out.dtype)}))
             for name, module in (("transform", mp0b_like.distance_transform), ("zbl", mp0b_like.pair_repulsion))]
    try:
        for precision, geometry in (("bf16-full", torch.float32), ("fp64", torch.float64)):
            mp0b_like(molecules, precision=precision)
            assert seen == {"transform": (geometry, geometry), "zbl": (geometry, torch.float64)}
    finally:
        for hook in hooks:
            hook.remove()
    from lpmace.precision import PRESETS

    rows = {line.split()[0]: line.split()[1] for line in PRESETS["bf16-full"].table().splitlines()[2:]}
    followers = ("distance_transform", "pair_repulsion", "pair_energy")
    assert [rows[n] for n in followers] == ["float32", "float32", "float64"]


@pytest.mark.parametrize("backend", ["triton", pytest.param("compiled", marks=pytest.mark.slow)])  # 40 s
def test_backends_match_reference_with_the_new_parts(monkeypatch, backend):
    """triton (Triton's interpreter on the CPU) and compiled (torch.compile's aot_eager: tracing and
    autograd, no code generation) compute what the reference does with ZBL, Agnesi and
    apply_cutoff=False."""
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    monkeypatch.setenv("LPMACE_COMPILE_BACKEND", "aot_eager")
    theirs = build_mace_torch(Z_MOLECULES, "8x0e+8x1o", RESIDUAL, 2, **MP0B, apply_cutoff=False)
    config = read_configurations(datasets.path("3bpa/test_300K.xyz"), index=":1")[0]
    few = dataclasses.replace(config, numbers=config.numbers[:7], positions=config.positions[:7] * 0.75,
                              forces=None)
    graph = graph_from_configuration(few, 4.5)
    ours = from_mace_torch(theirs)
    ref = ours(graph, precision="fp64")
    out = use(from_mace_torch(theirs), backend)(graph, precision="fp64")
    interaction = (ref["energy"] - ours.e0s[ours.species(graph.numbers)].sum()).abs().max()
    assert (out["energy"] - ref["energy"]).abs().max() <= 1e-10 * interaction
    assert (out["forces"] - ref["forces"]).abs().max() <= 1e-10 * ref["forces"].abs().max()


@pytest.mark.parametrize(
    "overrides, words",
    [(dict(distance_transform="Soft"), "distance_transform.*'Soft'"), (dict(pair_repulsion="yes"), "pair_repulsion"),
     (dict(apply_cutoff=0), "apply_cutoff")],
)
def test_config_refuses_unknown_transform_and_non_booleans_in_one_line(overrides, words):
    from lpmace.model import MACEConfig

    with pytest.raises(InputError, match=words) as err:
        MACEConfig.from_dict({"atomic_numbers": [1, 6], **overrides})
    assert "\n" not in str(err.value)


def test_new_config_keys_are_json_and_default_to_the_plain_model():
    import json

    from lpmace.model import MACEConfig

    plain = MACEConfig(atomic_numbers=(1, 6))
    assert (plain.pair_repulsion, plain.distance_transform, plain.apply_cutoff) == (False, "none", True)
    config = MACEConfig(atomic_numbers=(1, 6), pair_repulsion=True, distance_transform="agnesi", apply_cutoff=False)
    assert MACEConfig.from_dict(json.loads(json.dumps(config.to_dict()))) == config
