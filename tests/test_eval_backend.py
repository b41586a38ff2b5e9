"""`lpmace eval --backend`: the backend named is the one evaluated, a bad one is refused before any
work, and on CUDA the fast backends give the reference's metrics (fp64)."""

from __future__ import annotations

import json

import ase.io
import pytest

import lpmace.io
from lpmace.cli import main
from lpmace.data import graph_from_configuration, read_configurations
from lpmace.evaluate import evaluate


@pytest.fixture
def files(model, bpa_test_path, tmp_path):
    """(the tiny model saved, the first 3 3BPA test molecules in a file of their own)."""
    data = tmp_path / "few.xyz"
    ase.io.write(data, ase.io.read(bpa_test_path, index=":3"), format="extxyz")
    return lpmace.io.save(model, tmp_path / "model.safetensors"), data


def _eval(capsys, saved, data, out_json, *args) -> tuple[str, dict]:
    assert main(["eval", str(saved), str(data), "--json", str(out_json), *args]) == 0
    return capsys.readouterr().out, json.loads(out_json.read_text())["files"][str(data)]


def test_backend_reference_is_used_and_gives_the_library_metrics(model, files, tmp_path, capsys):
    saved, few_xyz = files
    out, metrics = _eval(capsys, saved, few_xyz, tmp_path / "m.json", "--backend", "reference")
    assert "backend reference" in out.splitlines()[0]
    # the same numbers as lpmace.evaluate on the model in memory (tests/test_evaluate.py checks those
    # against a plain per-structure computation)
    graphs = [graph_from_configuration(c, model.config.r_max) for c in read_configurations(few_xyz)]
    expected = evaluate(model, graphs).to_dict()
    for key in ("energy_rmse_mev_per_atom", "force_rmse_mev_per_A", "force_mae_mev_per_A"):
        assert metrics[key] == pytest.approx(expected[key], rel=1e-12), key


@pytest.mark.parametrize("backend", ["warp", "cuda-graphs"])
def test_an_unknown_backend_is_one_line_exit_2_and_no_json(files, tmp_path, capsys, backend):
    saved, few_xyz = files
    out_json = tmp_path / "m.json"
    assert main(["eval", str(saved), str(few_xyz), "--json", str(out_json), "--backend", backend]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("lpmace: error: backend must be one of"), lines
    assert repr(backend) in lines[0]
    assert not out_json.exists()


@pytest.mark.gpu
@pytest.mark.parametrize("backend", ["triton", "compiled"])
def test_fast_backends_on_cuda_give_the_reference_metrics(files, tmp_path, capsys, backend):
    saved, few_xyz = files
    common = ("--device", "cuda", "--precision", "fp64")
    _, reference = _eval(capsys, saved, few_xyz, tmp_path / "r.json", "--backend", "reference", *common)
    out, fast = _eval(capsys, saved, few_xyz, tmp_path / "f.json", "--backend", backend, *common)
    assert f"backend {backend}" in out.splitlines()[0]
    # fp64 kernels: equal to rounding. The metrics are errors against DFT labels, so a kernel that
    # dropped a path or returned only the E0s would move them by the whole interaction energy.
    for key in ("energy_rmse_mev_per_atom", "force_rmse_mev_per_A", "force_mae_mev_per_A"):
        assert fast[key] == pytest.approx(reference[key], rel=1e-9), key
