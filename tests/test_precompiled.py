"""lpmace.precompiled: what names a compiled step on disk, and what happens to a file that does not load.

(That a second process loads the steps the first one saved, traces nothing and trains the same is
tested with Inductor's real code generation in tests/train/test_train_backends.py.)
"""

from __future__ import annotations

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
