"""The model with backend="triton" (Triton's interpreter on the CPU, compiled on the GPU) against
backend="reference": energies, forces and the parameter gradients of a force loss (the double backward
of training) in fp64; site and interaction energies (E − ΣE0: E0s dominate a total) and forces of
every backend in fp32, bf16-mixed and fp16-mixed against fp64, within `tolerances.model_bound`."""

from __future__ import annotations

import pytest
import torch
from tolerances import model_bound

from lpmace.backends import implementation, use
from lpmace.data import graph_from_configuration, read_configurations

# precision policy: the dtype of its operands (the row of the tolerance table)
PRECISIONS = {"fp32": torch.float32, "bf16-mixed": torch.bfloat16, "fp16-mixed": torch.float16}


@pytest.fixture
def small_graph(bpa_test_path):
    config = read_configurations(bpa_test_path, index=":1")[0]
    import dataclasses

    few = dataclasses.replace(config, numbers=config.numbers[:7], positions=config.positions[:7],
                              forces=None if config.forces is None else config.forces[:7])
    return graph_from_configuration(few, 4.0)


def _run(model, graph, precision, backend):
    out = use(model, backend)(graph, precision=precision, training=True)
    loss = (out["energy"] ** 2).sum() * 1e-6 + (out["forces"].double() ** 2).sum()
    grads = torch.autograd.grad(loss, list(model.parameters()), allow_unused=True)
    return out["energy"].detach(), out["forces"].detach(), grads


def test_triton_backend_matches_reference_with_gradients(monkeypatch, make_model, small_graph):
    """fp64: the same numbers up to summation order, the force loss's parameter gradients included."""
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    tolerance = 1e-10
    model = make_model(torch.float64, correlation=(3, 2))
    e_ref, f_ref, g_ref = _run(model, small_graph, "fp64", "reference")
    e_tri, f_tri, g_tri = _run(model, small_graph, "fp64", "triton")
    e0 = model.e0s[model.species(small_graph.numbers)].sum()
    assert (e_tri - e_ref).abs().max() <= tolerance * (e_ref - e0).abs().max()  # of the interaction energy
    assert (f_tri - f_ref).abs().max() <= tolerance * f_ref.abs().max()
    for name, a, b in zip([n for n, _ in model.named_parameters()], g_ref, g_tri):
        if a is None:
            assert b is None or (b == 0).all(), name
            continue
        assert (a - b).abs().max() <= 10 * tolerance * a.abs().max() + 1e-300, name



def test_bf16_table_gradient_by_prefix_changes_only_the_contraction_weights_gradients(monkeypatch, make_model,
                                                                                    small_graph):
    """bf16-mixed on the triton backend: the table gradient's calls take the products by prefix (the
    default, BY_PREFIX 1) or the row-by-row sums (0). Only ∂L/∂T differs, so only the contraction weights'
    gradients may move, within the products' rounding (bf16 terms of float32 sums); every other output and
    gradient is bit-equal."""
    from lpmace.kernels import table_gradient, table_gradient_dot

    monkeypatch.setenv("TRITON_INTERPRET", "1")
    monkeypatch.setattr(table_gradient_dot, "ON_CPU", True)
    calls = []
    real = table_gradient_dot.table_gradient_by_prefix
    monkeypatch.setattr(table_gradient_dot, "table_gradient_by_prefix",
                        lambda a, *x, **k: calls.append(a.dtype) or real(a, *x, **k))
    model = make_model(torch.float32, correlation=(3, 2))
    e_dot, f_dot, g_dot = _run(model, small_graph, "bf16-mixed", "triton")
    taken = len(calls)
    assert taken and set(calls) == {torch.bfloat16}
    monkeypatch.setattr(table_gradient, "BY_PREFIX", 0)
    e_row, f_row, g_row = _run(model, small_graph, "bf16-mixed", "triton")
    assert len(calls) == taken  # none with BY_PREFIX 0
    assert torch.equal(e_dot, e_row) and torch.equal(f_dot, f_row)
    moved = []
    for name, a, b in zip([n for n, _ in model.named_parameters()], g_row, g_dot):
        if a is None:
            assert b is None, name
        elif not torch.equal(a, b):
            moved.append(name)
            assert (a - b).norm() <= 1e-4 * a.norm(), name
    assert moved and all(".contraction.weights." in name for name in moved), moved


def test_a_training_step_sorts_the_nodes_by_element_once(monkeypatch, make_model, small_graph):
    """The 14 launches of a two-layer model's training step that walk nodes by element (the contraction,
    its ∂A in the force pass, and the double backward's calls, ∂T by the table-gradient kernel) all
    take the one element order the model formed: no launch sorts."""
    import lpmace.model
    from lpmace.kernels import launch

    monkeypatch.setenv("TRITON_INTERPRET", "1")
    calls = {"model": 0, "launch": 0}

    def counted(where, real):
        return lambda *args: calls.__setitem__(where, calls[where] + 1) or real(*args)
    monkeypatch.setattr(lpmace.model, "element_grouping", counted("model", lpmace.model.element_grouping))
    monkeypatch.setattr(launch, "element_grouping", counted("launch", launch.element_grouping))
    given = []
    blocks = launch.element_blocks
    monkeypatch.setattr(launch, "element_blocks", lambda *args: given.append(args[3].numel()) or blocks(*args))
    for module in ("polynomial", "polynomial_dot", "table_gradient"):  # where the kernels took it by name
        monkeypatch.setattr(f"lpmace.kernels.{module}.element_blocks", launch.element_blocks)
    _run(make_model(torch.float64, correlation=(3, 2)), small_graph, "fp64", "triton")
    assert calls == {"model": 1, "launch": 0}
    assert len(given) == 14 and all(given), given  # every launch, each with the model's grouping
    _run(make_model(torch.float64, correlation=(3, 2)), small_graph, "fp64", "reference")
    assert calls == {"model": 1, "launch": 0} and len(given) == 14  # the reference neither forms nor reads one


def test_triton_backend_matches_reference_in_fp64_on_a_float32_model(monkeypatch, make_model, small_graph):
    """The bench and trainer models are float32; fp64 (the reference of every precision) must compute
    with the same exact tables in both backends (the reference's were float32-rounded: 3e-10 of the forces)."""
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    model = make_model(torch.float32)
    e_ref, f_ref = (use(model, "reference")(small_graph, precision="fp64")[k].detach() for k in ("energy", "forces"))
    e_tri, f_tri = (use(model, "triton")(small_graph, precision="fp64")[k].detach() for k in ("energy", "forces"))
    e0 = model.e0s[model.species(small_graph.numbers)].sum()
    assert (e_tri - e_ref).abs().max() <= 1e-13 * (e_ref - e0).abs().max()  # of the interaction energy
    assert (f_tri - f_ref).abs().max() <= 1e-13 * f_ref.abs().max()

def _interaction(model, graph, precision, backend):
    """Site interaction energies [n], the interaction energy E − ΣE0 and forces, in float64."""
    out = use(model, backend)(graph, precision=precision)
    e0 = model.e0s[model.species(graph.numbers)]
    return out["node_energy"].detach().double() - e0, out["energy"].detach().double().sum() - e0.sum(), \
        out["forces"].detach().double()


def _relative_errors(found, exact) -> dict:
    rms = lambda x: float(x.pow(2).mean().sqrt())  # noqa: E731
    (sites, energy, forces), (sites64, energy64, forces64) = found, exact
    return {"site energies": rms(sites - sites64) / rms(sites64),
            "interaction energy": float((energy - energy64).abs() / sites64.abs().sum()),
            "forces": rms(forces - forces64) / rms(forces64)}


def _check_backends_against_fp64(model, graph, precision):
    exact = _interaction(model, graph, "fp64", "reference")
    assert float(exact[0].abs().max()) > 1e-3 and float(exact[2].abs().max()) > 1e-3  # not a trivial model
    bound = model_bound(PRECISIONS[precision])
    errors = {b: _relative_errors(_interaction(model, graph, precision, b), exact) for b in ("reference", "triton")}
    for what, reference in errors["reference"].items():
        triton = errors["triton"][what]
        assert reference <= bound, (what, reference, bound)
        assert triton <= bound, (what, triton, bound)
        # flash-attention's rule, with fp32's bound as the floor where both are float32-exact
        assert triton <= 2 * reference + model_bound(torch.float32), (what, triton, reference)


@pytest.mark.parametrize("precision", PRECISIONS)
def test_interaction_energies_and_forces_of_every_backend_against_fp64(monkeypatch, make_model, small_graph,
                                                                       precision):
    """Each backend in each precision within the table's bound of fp64 (same fp32 weights); a model
    that dropped a path or returned only the E0s is off by ~100 %. (Backend "compiled":
    test_compiled_backend.py.) A smaller model than above: the interpreter takes ~10 s a pass."""
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    model = make_model(torch.float32, correlation=(2, 2), max_ell=1, max_L=0)
    _check_backends_against_fp64(model, small_graph, precision)


def test_fused_blocks_accumulate_in_the_policy_accumulate_dtype(monkeypatch, make_model, small_graph):
    """A policy with bf16 operands and float64 accumulation: the Triton blocks get the policy's
    accumulation dtype, so they agree with the reference (which sums in float64) to float64 rounding,
    not to float32's."""
    from lpmace.precision import COMPONENTS, PrecisionPolicy

    monkeypatch.setenv("TRITON_INTERPRET", "1")
    wide = {c: torch.float64 for c in COMPONENTS}  # all float64 but the operands of the two fused blocks
    policy = PrecisionPolicy("bf16-acc64", **{**wide, "tensor_product": torch.bfloat16, "contraction": torch.bfloat16})
    model = make_model(torch.float32, correlation=(2, 2), max_ell=1, max_L=0)
    reference = _interaction(model, small_graph, policy, "reference")
    triton = _interaction(model, small_graph, policy, "triton")
    assert float((triton[0] - reference[0]).abs().max()) <= 1e-11 * float(reference[0].abs().max())
    assert float((triton[2] - reference[2]).abs().max()) <= 1e-11 * float(reference[2].abs().max())


@pytest.mark.gpu
@pytest.mark.parametrize("precision", PRECISIONS)
def test_backends_against_fp64_at_real_size_on_the_gpu(precision):
    """The medium bench model (128 channels, L = 1, max_ell 3, correlation 3) on the W1 batch."""
    from lpmace.bench.workloads import build_model, workloads

    model = build_model("medium").cuda()
    graph = workloads(model.config, quick=False)[0].graph.to("cuda")
    _check_backends_against_fp64(model, graph, precision)


@pytest.mark.gpu
def test_triton_forces_rotate_with_the_molecules_on_the_gpu():
    import numpy as np

    from lpmace.bench.accuracy import random_rotation
    from lpmace.bench.workloads import build_model, rotate_graph, workloads

    model = build_model("medium").cuda()
    graph = workloads(model.config, quick=False)[0].graph.to("cuda")
    rotation = random_rotation(np.random.default_rng(0)).cuda()
    f = use(model, "triton")(graph, precision="fp32")["forces"].double()
    f_rot = use(model, "triton")(rotate_graph(graph, rotation), precision="fp32")["forces"].double()
    assert (f_rot - f @ rotation.T).pow(2).mean().sqrt() <= 1e-4 * f.pow(2).mean().sqrt()


def test_backend_is_not_part_of_the_state_dict(make_model, monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    model = make_model()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    assert implementation(model) == "reference"  # what a model is built with
    assert use(model, "triton") is model
    assert implementation(model) == "triton"
    assert model.state_dict().keys() == before.keys()
    assert all(torch.equal(model.state_dict()[k], v) for k, v in before.items())
    use(model, "reference")
    assert implementation(model) == "reference"


def test_use_sets_every_heavy_block_once(make_model, monkeypatch):
    """One walk sets both kinds of heavy block in every layer; nothing else has an implementation."""
    from lpmace.nn.interaction import ConvTensorProduct
    from lpmace.nn.product import SymmetricContraction

    monkeypatch.setenv("TRITON_INTERPRET", "1")
    model = make_model(num_interactions=2)
    use(model, "triton")
    blocks = [m for m in model.modules() if hasattr(m, "IMPLEMENTATIONS")]
    kinds = {type(m) for m in blocks}
    assert kinds == {ConvTensorProduct, SymmetricContraction}
    assert len(blocks) == 2 * model.config.num_interactions
    assert all(m.implementation == "triton" for m in blocks)


def test_calculator_and_trainer_check_the_backend(make_model, tmp_path):
    from lpmace.calculator import Calculator
    from lpmace.errors import InputError
    from lpmace.train import load_train_config

    assert Calculator(make_model()).backend == "reference"  # auto on a CPU
    with pytest.raises(InputError, match="backend must be one of"):
        Calculator(make_model(), backend="fast")
    assert load_train_config(None, ("backend=triton",)).backend == "triton"
