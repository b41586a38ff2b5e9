"""lpmace.precompiled: what names a compiled step on disk, and what happens to a file that does not load.

(That a second process loads the steps the first one saved, traces nothing and trains the same is
tested with Inductor's real code generation in tests/train/test_train_backends.py.)
"""

from __future__ import annotations

import pathlib

import pytest
import torch

from lpmace import compile as compiled_module
from lpmace import precompiled
from lpmace.precision import resolve_policy


def _digest(model, key=("fp32",), device="cpu"):
    return precompiled.digest(model, compiled_module._state(model), key, torch.device(device))


def test_the_digest_names_what_the_compiled_code_depends_on(make_model):
    model = make_model(torch.float32)
    base = _digest(model)
    assert _digest(model) == base  # the same model: the same file
    assert _digest(make_model(torch.float32, seed=1)) == base  # weights are inputs, not part of the code
    assert _digest(model, key=("bf16-mixed",)) != base  # the caller's key (policy, flags, sizes ...)
    assert _digest(make_model(torch.float64)) != base  # dtypes of the weights
    assert model.config.correlation != (3, 3)
    assert _digest(make_model(torch.float32, correlation=(3, 3))) != base  # the architecture
    next(model.parameters()).requires_grad_(False)  # a frozen weight has no gradient to compile
    assert _digest(model) != base


def test_a_constant_of_the_configuration_changes_the_digest(make_model):
    """r_max is no tensor: it is written into the compiled code as a number."""
    import dataclasses

    model = make_model(torch.float32)
    base = _digest(model)
    model.config = dataclasses.replace(model.config, r_max=model.config.r_max + 0.5)
    assert _digest(model) != base


def test_the_policy_is_part_of_the_key_by_value():
    assert repr(resolve_policy("bf16-mixed")) == repr(resolve_policy("bf16-mixed"))
    assert repr(resolve_policy("bf16-mixed")) != repr(resolve_policy("fp16-mixed"))


def test_a_file_that_does_not_load_is_removed_and_compiled_again(monkeypatch, tmp_path):
    if not precompiled.available():
        pytest.skip("this torch has no standalone_compile")
    monkeypatch.setenv("LPMACE_CACHE_DIR", str(tmp_path))
    path = precompiled.step_path("0" * 64)
    assert path.parent == tmp_path / "steps"
    path.write_bytes(b"not a compiled step")
    with pytest.warns(UserWarning, match="did not load"):
        assert precompiled.load_step(path) is None
    assert not path.exists()
    assert precompiled.load_step(path) is None  # none there: nothing to say


# --- review27: what the digest misses, and inputs a saved step refuses ---------------------------


def test_the_digest_names_how_the_readouts_are_quantized(make_model):
    """int8 and float8 readouts have the same tensor names, shapes and (reported) dtypes: only
    the quantization (model.conversions, the readouts' modes) tells their compiled code apart."""
    pytest.importorskip("torchao")
    from lpmace.quantize import quantize_readouts

    model = make_model(torch.float32, channels=16, readout_mlp=16)
    int8, fp8 = quantize_readouts(model, "int8"), quantize_readouts(model, "fp8")
    assert int8.conversions != fp8.conversions
    assert _digest(int8) != _digest(fp8)


def test_the_digest_names_deterministic_algorithms(make_model):
    """Inductor lowers index_put/scatter with accumulation differently in deterministic mode (an
    ATen fallback, no atomics): a step compiled without it must not be loaded by a run that asks
    for deterministic algorithms."""
    model = make_model(torch.float32)
    base = _digest(model)
    before = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True)
    try:
        deterministic = _digest(model)
    finally:
        torch.use_deterministic_algorithms(before)
    assert deterministic != base


def test_an_unwritable_cache_still_names_one_file_per_step(monkeypatch, tmp_path):
    """With LPMACE_CACHE_DIR unusable, the same digest must name the same file (a step saved in a
    fresh temporary folder at every lookup can never be found again)."""
    blocker = tmp_path / "a file"
    blocker.write_text("")
    monkeypatch.setenv("LPMACE_CACHE_DIR", str(blocker / "cache"))  # under a file: mkdir fails
    assert precompiled.step_path("0" * 64) == precompiled.step_path("0" * 64)


@pytest.mark.slow
def test_a_compiled_step_takes_non_contiguous_inputs(monkeypatch, tmp_path, make_model):
    """Real Inductor on the CPU (about a minute): positions that are a strided view (a column
    slice) give the reference's forces. torch.compile re-specialised on new strides; the step
    compiled without Dynamo asserts the traced strides instead ("expected ... stride 4==3")."""
    if not precompiled.available():
        pytest.skip("this torch has no standalone_compile")
    from lpmace import datasets
    from lpmace.backends import use
    from lpmace.data import collate, graph_from_configuration, read_configurations

    monkeypatch.setenv("LPMACE_CACHE_DIR", str(tmp_path))
    monkeypatch.delenv("LPMACE_COMPILE_BACKEND", raising=False)
    monkeypatch.delenv("LPMACE_COMPILE_MODE", raising=False)
    model = make_model(torch.float64, num_interactions=1, correlation=1, max_ell=1, max_L=0)
    configs = read_configurations(datasets.path("3bpa/test_300K.xyz"), index=":2")
    graph = collate([graph_from_configuration(c, 4.0) for c in configs])
    compiled = use(model, "compiled")
    compiled(graph, precision="fp64")  # compiled (and saved) with contiguous positions
    wide = torch.cat([graph.positions, torch.zeros_like(graph.positions[:, :1])], dim=1)
    graph.positions = wide[:, :3]  # the same values, row stride 4
    assert not graph.positions.is_contiguous()
    ref = use(model, "reference")(graph, precision="fp64")
    out = compiled(graph, precision="fp64")
    assert torch.allclose(out["forces"], ref["forces"], rtol=0, atol=1e-10)


# --- guards and variants ------------------------------------------------------------------------


def test_guards_accept_the_sizes_they_name():
    step = precompiled.Precompiled(lambda *x: x, "L['t1'].size()[0] <= 10 and 2 <= L['t1'].size()[0]")
    assert step.accepts([None, torch.zeros(10, 3)]) and step.accepts([None, torch.zeros(2, 3)])
    assert not step.accepts([None, torch.zeros(11, 3)]) and not step.accepts([None, torch.zeros(1, 3)])
    assert precompiled.Precompiled(lambda *x: x, None).accepts([])  # no condition: every batch


def test_a_batch_the_guards_refuse_gets_a_variant_of_its_own(monkeypatch, tmp_path, make_model):
    """Inductor's guards on the sizes (32-bit indexing on a GPU) are checked before each call, as
    Dynamo would: a batch they refuse gets a variant compiled for it and saved as variant 1, and the
    batches the first variant accepts keep using it. (Inductor is replaced by the traced graph run as
    it is, with a guard on the atom count: what is tested is the choice of variant.)"""
    from lpmace import datasets
    from lpmace.backends import use
    from lpmace.data import collate, graph_from_configuration, read_configurations

    monkeypatch.setenv("LPMACE_CACHE_DIR", str(tmp_path))
    monkeypatch.delenv("LPMACE_COMPILE_BACKEND", raising=False)
    monkeypatch.delenv("LPMACE_COMPILE_MODE", raising=False)
    compiled_paths = []

    def compile_step(graph_module, state, inputs, training, path, fresh=False):
        compiled_paths.append(path.name)
        names, atoms = list(state), inputs[1].shape[0]

        def run(*flat):
            return graph_module(dict(zip(names, flat[: len(names)])), *flat[len(names):])

        return precompiled.Precompiled(run, f"L['t1'].size()[0] <= {atoms}")

    monkeypatch.setattr(precompiled, "compile_step", compile_step)
    model = make_model(torch.float64)
    configs = read_configurations(datasets.path("3bpa/test_300K.xyz"), index=":5")
    small, large = (collate([graph_from_configuration(c, 4.0) for c in configs[:k]]) for k in (2, 5))
    run = use(model, "compiled")
    for graph in (small, large, small, large):
        out = run(graph, precision="fp64", compute_forces=True)
        ref = use(model, "reference")(graph, precision="fp64")
        assert torch.allclose(out["forces"], ref["forces"], rtol=0, atol=1e-10)
    assert [p.rsplit("-", 1)[1] for p in compiled_paths] == ["0.bin", "1.bin"]
    assert compiled_paths[0].rsplit("-", 1)[0] == compiled_paths[1].rsplit("-", 1)[0]  # one digest


def test_a_training_call_without_gradients_is_an_inference_call(monkeypatch, make_model):
    """Under torch.no_grad a training call returns no autograd graph (nothing kept alive), like the
    inference call it is; its forces are still computed (the reference backend needs grad mode)."""
    from lpmace import datasets
    from lpmace.backends import use
    from lpmace.data import collate, graph_from_configuration, read_configurations

    monkeypatch.setenv("LPMACE_COMPILE_BACKEND", "none")  # the traced graph, run as it is
    model = make_model(torch.float64)
    graph = collate([graph_from_configuration(c, 4.0) for c in
                     read_configurations(datasets.path("3bpa/test_300K.xyz"), index=":2")])
    with torch.no_grad():
        out = use(model, "compiled")(graph, precision="fp64", training=True)
    assert out["forces"].grad_fn is None and not out["energy"].requires_grad
    ref = use(model, "reference")(graph, precision="fp64")
    assert torch.allclose(out["forces"], ref["forces"], rtol=0, atol=1e-12)
    trained = use(model, "compiled")(graph, precision="fp64", training=True)
    assert trained["energy"].requires_grad  # with gradients on, the same call is a training call


def test_a_saved_step_whose_code_refuses_accepted_sizes_hands_them_to_another_variant(monkeypatch):
    """`lpmace.compile._call`: a step that asserts a size its guards accepted (seen on an H200) refuses
    those sizes from then on; the next variant serves them; other sizes stay with the first."""
    import warnings

    from lpmace import compile as compile_module
    from lpmace.precompiled import Precompiled

    def saved_for_352(*args):
        if args[-1].shape[0] != 352:
            raise AssertionError(f"expected size {args[-1].shape[0]}==352, stride 1==1 at dim=0")
        return ("352",)

    variants = [Precompiled(saved_for_352, None)]
    made = []

    def load_or_trace(model, key, state, inputs, device, variants, fresh=False):
        made.append(tuple(inputs[0].shape))
        variants.append(Precompiled(lambda *args: ("new",), None))
        return variants[-1]

    monkeypatch.setattr(compile_module, "_load_or_trace", load_or_trace)
    call = lambda n: compile_module._call(None, (), {}, (torch.zeros(n),), "cpu", variants)  # noqa: E731
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert call(320) == ("new",)
    assert made == [(320,)] and any("refused a batch" in str(w.message) for w in caught)
    # the warning names the statement that asserted (in compiled code: which tensor)
    assert any("test_precompiled.py" in str(w.message) and "raise AssertionError(f\"expected size" in str(w.message)
               for w in caught)
    assert call(320) == ("new",) and len(made) == 1  # served by the new variant, nothing compiled again
    assert call(352) == ("352",)  # the first variant still serves its own sizes
    assert not variants[0].accepts((torch.zeros(320),)) and variants[0].accepts((torch.zeros(352),))


def test_other_assertions_and_a_step_that_keeps_refusing_are_raised(monkeypatch):
    from lpmace import compile as compile_module
    from lpmace.precompiled import Precompiled

    def broken(*args):
        raise AssertionError("something else")

    with pytest.raises(AssertionError, match="something else"):
        compile_module._call(None, (), {}, (torch.zeros(3),), "cpu", [Precompiled(broken, None)])

    def always_refuses(*args):
        raise AssertionError("expected size 3==4, stride 1==1 at dim=0")

    def load_or_trace(model, key, state, inputs, device, variants, fresh=False):
        variants.append(Precompiled(always_refuses, None))
        return variants[-1]

    monkeypatch.setattr(compile_module, "_load_or_trace", load_or_trace)
    variants = [Precompiled(always_refuses, None)]
    with pytest.raises(AssertionError, match="expected size"):
        compile_module._call(None, (), {}, (torch.zeros(3),), "cpu", variants)
    assert len(variants) == 3  # two more tried, then the failure is raised


def test_a_step_compiled_uncached_reads_no_earlier_cache_and_is_saved(tmp_path, monkeypatch, make_model):
    """`uncached`: Inductor's caches point at an empty folder while the step compiles (a cached compile
    of the same graph handed back a refusing step on the H200), and the step is still saved whole."""
    import torch._inductor.config as inductor_config
    from torch._inductor.runtime.cache_dir_utils import cache_dir

    before = cache_dir()
    with precompiled.uncached():
        inside = cache_dir()
        assert inside != before and not any(pathlib.Path(inside).iterdir())
        assert inductor_config.fx_graph_cache is not False  # on: torch saves what these caches gather
    assert cache_dir() == before
    monkeypatch.setenv("LPMACE_CACHE_DIR", str(tmp_path))
    from lpmace import datasets
    from lpmace.data import collate, graph_from_configuration, read_configurations

    model = make_model(torch.float64)
    graph = collate([graph_from_configuration(c, 4.0) for c in read_configurations(datasets.path("3bpa/test_300K.xyz"), index=":2")])
    path = tmp_path / "step-1.bin"
    real = precompiled.compile_step
    monkeypatch.setattr(precompiled, "compile_step", lambda *a, **k: real(*a[:4], path, fresh=True))
    compiled_module.Compiled(model)(graph, precision="fp64", compute_forces=True)
    assert path.is_file() and path.with_suffix(".guards").is_file()

def test_variants_after_the_first_are_compiled_without_inductors_caches(monkeypatch):
    """A variant after the first exists because an earlier one refused: with Inductor's cache, the H200
    handed back the refusing code for the same graph."""
    from lpmace import compile as compile_module

    seen = []
    monkeypatch.setattr(compile_module, "_saves_steps", lambda: False)
    monkeypatch.setattr(compile_module, "_step", lambda *args: None)
    monkeypatch.setattr(compile_module, "_trace", lambda model, step, state, inputs, device, training, path, fresh:
                        seen.append(fresh) or object())
    variants: list = []
    for _ in range(3):
        compile_module._load_or_trace(None, ("fp32", True, False, False), {}, (), "cpu", variants)
    assert seen == [False, True, True] and len(variants) == 3


def test_guards_name_the_sizes_the_compile_fixed():
    """A batch size fixed while compiling (here by int(), as a lowering may) is a guard; torch's default
    leaves it out, and a step compiled at 144 atoms then accepted 104 (H200)."""
    from torch._dynamo.source import ConstantSource
    from torch._subclasses.fake_tensor import FakeTensorMode
    from torch.fx.experimental.symbolic_shapes import DimDynamic, ShapeEnv, StatelessSymbolicContext

    mode = FakeTensorMode(shape_env=ShapeEnv(duck_shape=False))
    context = StatelessSymbolicContext(dynamic_sizes=[DimDynamic.DYNAMIC, DimDynamic.STATIC])
    atoms, edges = (mode.from_tensor(torch.zeros(n, 3), source=ConstantSource(f"batch_{i}"), symbolic_context=context)
                    for i, n in enumerate((144, 900)))
    assert "== 144" not in (precompiled._guards(mode.shape_env, [atoms, edges]) or "")
    int(atoms.shape[0])  # the compile fixes the atom count
    guards = precompiled._guards(mode.shape_env, [atoms, edges])
    assert "L['t0'].size()[0] == 144" in guards and "L['t1'].size()[1] == 3" in guards
    assert "L['t1'].size()[0] ==" not in guards  # the edge count stays a symbol
    step = precompiled.Precompiled(lambda *x: x, guards)
    assert step.accepts([torch.zeros(144, 3), torch.zeros(50, 3)])
    assert not step.accepts([torch.zeros(104, 3), torch.zeros(900, 3)])
