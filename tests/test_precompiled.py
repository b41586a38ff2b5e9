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
