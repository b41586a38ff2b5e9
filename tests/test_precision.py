"""Precision policies: presets, floors, YAML, and blocks that really compute in the named dtypes."""

import pytest
import torch

from lpmace import datasets
from lpmace.data import collate, graph_from_configuration, read_configurations
from lpmace.errors import InputError
from lpmace.model import MACE, MACEConfig
from lpmace.nn.linear import EquivariantLinear
from lpmace.nn.product import SymmetricContraction
from lpmace.nn.radial import RadialMLP
from lpmace.nn.readout import LinearReadout, MLPReadout
from lpmace.o3.spherical_harmonics import SphericalHarmonics
from lpmace.precision import PRESETS, PrecisionPolicy, policy_from_yaml, resolve_policy

# Relative force RMSE against the fp64 evaluation of the same weights, measured on this model
# (32 channels, L=1, 5 molecules of 3BPA) on a CPU: fp32 1.1e-6, bf16-mixed 1.4e-2, fp16-mixed
# 1.2e-3, bf16-full 3.8e-2, layerwise 1.1e-3. Bounds leave ~3x headroom; tf32 equals fp32 on CPU.
FORCE_ERROR_BOUND = {
    "fp32": 1e-5, "tf32": 1e-3, "bf16-mixed": 5e-2, "fp16-mixed": 5e-3, "bf16-full": 1.2e-1, "layerwise": 5e-3,
}


@pytest.fixture(scope="module")
def model_and_graph():
    torch.manual_seed(0)
    model = MACE(MACEConfig(atomic_numbers=(1, 6, 7, 8), channels=32, avg_num_neighbors=15.0))
    configs = read_configurations(datasets.path("3bpa/train_300K.xyz"), index=":5")
    return model, collate([graph_from_configuration(c, 5.0) for c in configs])


def relative_force_error(model, graph, name):
    ref = model(graph, precision="fp64")["forces"]
    got = model(graph, precision=name)["forces"].double()
    return float(((got - ref) ** 2).mean().sqrt() / (ref**2).mean().sqrt())


@pytest.mark.parametrize("name", sorted(FORCE_ERROR_BOUND))
def test_preset_force_error_against_fp64_is_nonzero_and_bounded(model_and_graph, name):
    model, graph = model_and_graph
    err = relative_force_error(model, graph, name)
    assert 0.0 < err < FORCE_ERROR_BOUND[name]


def test_fp64_policy_on_fp32_weights_is_exact_fp64_evaluation(model_and_graph):
    model, graph = model_and_graph
    double = MACE(model.config).double()
    double.load_state_dict(model.state_dict())
    a, b = model(graph, precision="fp64"), double(graph)
    assert torch.equal(a["energy"], b["energy"]) and torch.equal(a["forces"], b["forces"])


@pytest.mark.parametrize("name", list(PRESETS))
def test_every_preset_trains_forward_and_backward(model_and_graph, name):
    model, graph = model_and_graph
    model.zero_grad()
    out = model(graph, precision=name, training=True)
    loss = (out["energy"] ** 2).mean() * 1e-6 + (out["forces"].double() ** 2).mean()
    loss.backward()
    grads = [p.grad for p in model.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert sum(float(g.abs().sum()) for g in grads) > 0
    assert out["energy"].dtype == torch.float64


def test_same_weights_and_global_dtype_untouched(model_and_graph):
    model, graph = model_and_graph
    before = {k: v.clone() for k, v in model.state_dict().items()}
    default = torch.get_default_dtype()
    for name in PRESETS:
        model(graph, precision=name)
    assert torch.get_default_dtype() == default
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) and before[k].dtype == after[k].dtype for k in before)


@pytest.mark.parametrize("name", list(PRESETS))
def test_blocks_compute_in_the_dtypes_the_policy_names(model_and_graph, name):
    """Forward hooks record each block's output dtype: a block that silently stays in fp32 fails."""
    model, graph = model_and_graph
    policy = PRESETS[name]
    seen = {}

    def hook(module, _inputs, output):
        seen.setdefault(type(module).__name__, set()).add(output.dtype)

    handles = [m.register_forward_hook(hook) for m in model.modules()
               if isinstance(m, (SphericalHarmonics, RadialMLP, EquivariantLinear, SymmetricContraction,
                                 LinearReadout, MLPReadout))]
    try:
        model(graph, precision=name)
    finally:
        for h in handles:
            h.remove()
    assert seen["SphericalHarmonics"] == {policy.spherical_harmonics}
    assert policy.spherical_harmonics in (torch.float32, torch.float64)
    assert seen["RadialMLP"] == {policy.radial_mlp}
    assert seen["EquivariantLinear"] == {policy.linear}
    assert seen["LinearReadout"] == {policy.readout} and seen["MLPReadout"] == {policy.readout}
    wide = max(policy.contraction, policy.accumulate, key=lambda d: torch.finfo(d).bits)
    assert seen["SymmetricContraction"] == {wide}


def test_contraction_rounds_operands_then_computes_in_fp32():
    """bf16-mixed contraction == fp32 contraction of bf16-rounded A and weights (kernel semantics)."""
    torch.manual_seed(1)
    block = SymmetricContraction(channels=4, lmax_in=2, lmax_out=1, correlation=3, num_elements=2)
    a = torch.randn(5, 4, 9)
    species = torch.tensor([0, 1, 1, 0, 1])
    got = block(a, species, PRESETS["bf16-mixed"].block("contraction"))
    rounded = SymmetricContraction(channels=4, lmax_in=2, lmax_out=1, correlation=3, num_elements=2)
    rounded.load_state_dict({k: v.to(torch.bfloat16).float() for k, v in block.state_dict().items()})
    want = rounded(a.to(torch.bfloat16).float(), species, PRESETS["fp32"].block("contraction"))
    assert got.dtype == torch.float32
    torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-6)
    assert not torch.allclose(got, block(a, species, PRESETS["fp32"].block("contraction")), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(
    "component, dtype, reason",
    [
        ("spherical_harmonics", "bf16", "equivariance"),
        ("cg", "fp16", "equivariance"),
        ("accumulate", "bf16", "accumulates"),
        ("energy", "fp32", "E0s"),
        ("geometry", "fp16", "differences of positions"),
        ("params", "bf16", "master weights"),
    ],
)
def test_policy_below_a_floor_is_refused_with_the_reason(component, dtype, reason):
    with pytest.raises(InputError, match=reason):
        PrecisionPolicy("custom", **{component: dtype})


def test_yaml_policy_overrides_a_preset(tmp_path):
    path = tmp_path / "mine.yaml"
    path.write_text("base: bf16-mixed\nreadout: fp32\ntf32: true\n")
    policy = resolve_policy(str(path))
    assert policy.readout == torch.float32 and policy.linear == torch.bfloat16 and policy.tf32
    assert policy.name == "mine"


@pytest.mark.parametrize(
    "text, match",
    [
        ("readuot: fp32\n", "readuot"),
        ("linear: fp8\n", "fp8"),
        ("base: fp12\n", "fp12"),
        ("tf32: maybe\n", "tf32"),
        ("- fp32\n", "mapping"),
        ("spherical_harmonics: bf16\n", "floor"),
    ],
)
def test_bad_yaml_policies_name_the_problem(tmp_path, text, match):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(InputError, match=match):
        policy_from_yaml(path)


def test_unknown_preset_lists_the_presets():
    with pytest.raises(InputError, match="bf16-mixed"):
        resolve_policy("bf17-mixed")


def test_policy_table_lists_every_component():
    table = PRESETS["bf16-mixed"].table()
    for component in ("geometry", "spherical_harmonics", "tensor_product", "energy", "params"):
        assert component in table
    assert "bfloat16" in table and "float64" in table


def test_block_dtypes_come_from_the_policy():
    """policy.block(name): operands in the component's dtype; the fused equivariant blocks form
    products and sums in at least the accumulate dtype, matmul blocks in the operand dtype; tables
    in the cg dtype."""
    bf16 = PRESETS["bf16-mixed"]
    tp = bf16.block("tensor_product")
    assert (tp.operand, tp.math, tp.table, tp.accumulate) == (torch.bfloat16, torch.float32, torch.float32,
                                                             torch.float32)
    linear = bf16.block("linear")
    assert (linear.operand, linear.math) == (torch.bfloat16, torch.bfloat16)
    fp64 = PRESETS["fp64"].block("contraction")
    assert (fp64.operand, fp64.math, fp64.table, fp64.accumulate) == (torch.float64,) * 4
    wide_sums = PrecisionPolicy("acc64", contraction=torch.bfloat16, accumulate=torch.float64).block("contraction")
    assert (wide_sums.operand, wide_sums.math, wide_sums.accumulate) == (torch.bfloat16, torch.float64, torch.float64)
    with pytest.raises(InputError, match="no component 'conv'"):
        bf16.block("conv")
