"""`lpmace eval` and `lpmace precision`: tables, JSON, parity plots, and one-line errors."""

from __future__ import annotations

import json
import pathlib
import subprocess
import sys

import ase
import ase.io
import numpy as np
import pytest

import lpmace.io
from lpmace.cli import main
from lpmace.data import graph_from_configuration, read_configurations
from lpmace.evaluate import evaluate

EMBEDDED_TEST = "embedded:3bpa/test_300K.xyz"


@pytest.fixture
def saved(model, tmp_path):
    return lpmace.io.save(model, tmp_path / "model.safetensors")


@pytest.fixture
def small_xyz(bpa_test_path, tmp_path):
    """The first 6 3BPA test molecules in a file of their own."""
    path = tmp_path / "small.xyz"
    ase.io.write(path, ase.io.read(bpa_test_path, index=":6"), format="extxyz")
    return path


def _one_line_error(capsys, code: int, *fragments: str) -> str:
    assert code == 2
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("lpmace: error: "), captured.err
    for fragment in fragments:
        assert fragment in lines[0]
    return lines[0]


def test_eval_on_the_embedded_test_file_writes_json_and_plots(model, saved, bpa_test_path, tmp_path, capsys):
    out_json, plots = tmp_path / "metrics.json", tmp_path / "plots"
    code = main(["eval", str(saved), EMBEDDED_TEST, "--batch-size", "32", "--json", str(out_json),
                 "--parity", str(plots)])
    assert code == 0
    stdout = capsys.readouterr().out
    row = next(line for line in stdout.splitlines() if line.startswith(EMBEDDED_TEST))
    assert row.split()[1] == "300"
    assert len(row.split()) == 8  # file, configs, E per atom and total (RMSE, MAE), F (RMSE, MAE)
    units = next(line for line in stdout.splitlines() if line.strip().startswith("meV/atom")).split()
    assert units == ["meV/atom", "meV/atom", "meV", "meV", "meV/Å", "meV/Å"]
    assert "meV/atom" in stdout and "meV/Å" in stdout and "S RMSE" not in stdout  # no stress in 3BPA

    data = json.loads(out_json.read_text())
    assert data["precision"]["name"] == "fp64"
    metrics = data["files"][EMBEDDED_TEST]
    graphs = [graph_from_configuration(c, model.config.r_max) for c in read_configurations(bpa_test_path)]
    expected = evaluate(model, graphs).to_dict()
    for key in ("energy_rmse_mev_per_atom", "energy_mae_mev_per_atom", "force_rmse_mev_per_A", "force_mae_mev_per_A"):
        np.testing.assert_allclose(metrics[key], expected[key], rtol=1e-12)
        assert f"{metrics[key]:.2f}" in row
    assert metrics["n_configs"] == 300 and metrics["stress_rmse_mev_per_A3"] is None
    assert [p.name for p in plots.iterdir()] == ["parity_test_300K.png"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["metrics.json", "model.safetensors", "plots"]


def test_eval_table_has_a_row_per_file_and_stress_when_present(model, saved, small_xyz, tmp_path, capsys):
    crystals = []
    for atoms in ase.io.read(small_xyz, index=":2"):
        atoms.set_cell(np.diag([9.0, 9.5, 10.0]))
        atoms.set_pbc(True)
        atoms.center()
        atoms.info["REF_stress"] = np.full(6, 1e-3)
        crystals.append(atoms)
    periodic = tmp_path / "periodic.xyz"
    ase.io.write(periodic, crystals, format="extxyz")
    out_json = tmp_path / "m.json"
    assert main(["eval", str(saved), str(small_xyz), str(periodic), "--precision", "fp32",
                 "--json", str(out_json)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert "precision fp32" in lines[0]
    assert "S RMSE" in lines[1] and "meV/Å³" in lines[2]
    assert lines[3].split()[:2] == [str(small_xyz), "6"] and lines[3].split()[-2:] == ["-", "-"]
    assert lines[4].split()[:2] == [str(periodic), "2"]
    files = json.loads(out_json.read_text())["files"]
    assert files[str(periodic)]["n_stress"] == 2 and files[str(periodic)]["stress_rmse_mev_per_A3"] > 0
    assert files[str(small_xyz)]["precision"] == "fp32"


def test_bad_key_is_named_exit_2_no_traceback_no_json(saved, small_xyz, tmp_path):
    out_json = tmp_path / "metrics.json"
    result = subprocess.run(
        [sys.executable, "-m", "lpmace.cli", "eval", str(saved), str(small_xyz), "--forces-key", "DFT_forces",
         "--json", str(out_json)],
        capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 2, result
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("lpmace: error: ") and "Traceback" not in result.stderr
    assert "'DFT_forces'" in lines[0] and "--forces-key none" in lines[0]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.safetensors", "small.xyz"]  # no JSON, no temp


def test_a_bad_second_file_fails_before_any_evaluation(saved, small_xyz, tmp_path, capsys):
    out_json = tmp_path / "m.json"
    code = main(["eval", str(saved), str(small_xyz), str(tmp_path / "missing.xyz"), "--json", str(out_json)])
    _one_line_error(capsys, code, "missing.xyz")
    assert not out_json.exists()


@pytest.mark.parametrize(
    "args, fragment",
    [
        (["MISSING_MODEL", "DATA"], "nope.safetensors"),
        (["MODEL", "DATA", "--precision", "fp8"], "fp8"),
        (["MODEL", "DATA", "--batch-size", "0"], "--batch-size"),
        (["MODEL", "embedded:3bpa/nothing.xyz"], "nothing.xyz"),
        (["MODEL", "DATA", "--json", "NO_FOLDER"], "no_such_folder"),
        (["MODEL", "DATA", "--device", "tpu9"], "tpu9"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(saved, small_xyz, tmp_path, capsys, args, fragment):
    replace = {"MODEL": str(saved), "MISSING_MODEL": str(tmp_path / "nope.safetensors"), "DATA": str(small_xyz),
               "NO_FOLDER": str(tmp_path / "no_such_folder" / "m.json")}
    _one_line_error(capsys, main(["eval"] + [replace.get(a, a) for a in args]), fragment)


def test_unknown_element_names_the_file(saved, small_xyz, tmp_path, capsys):
    atoms = ase.io.read(small_xyz, index=0)
    atoms.numbers[0] = 14
    path = tmp_path / "si.xyz"
    ase.io.write(path, atoms, format="extxyz")
    _one_line_error(capsys, main(["eval", str(saved), str(path)]), str(path), "14")


def _table_dtypes(text: str) -> dict:
    return {line.split()[0]: line.split()[1] for line in text.splitlines()[2:] if not line.startswith("tf32")}


def test_precision_show_a_preset(capsys):
    assert main(["precision", "show", "bf16-mixed"]) == 0
    dtypes = _table_dtypes(capsys.readouterr().out)
    assert dtypes["linear"] == "bfloat16" and dtypes["spherical_harmonics"] == "float32"
    assert dtypes["energy"] == "float64"


def test_precision_show_a_yaml_file(tmp_path, capsys):
    good = tmp_path / "readout32.yaml"
    good.write_text("base: bf16-mixed\nreadout: fp32\n")
    assert main(["precision", "show", str(good)]) == 0
    out = capsys.readouterr().out
    assert "readout32" in out.splitlines()[0]
    assert _table_dtypes(out)["readout"] == "float32" and _table_dtypes(out)["linear"] == "bfloat16"


def test_precision_show_refuses_a_policy_below_the_floors(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("base: bf16-mixed\nspherical_harmonics: fp16\n")
    _one_line_error(capsys, main(["precision", "show", str(bad)]), str(bad), "spherical_harmonics", "equivariance")
    _one_line_error(capsys, main(["precision", "show", "fp8"]), "fp8")


def test_precision_list_describes_every_preset(capsys):
    from lpmace.precision import PRESETS

    assert main(["precision", "list"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split()[0] for line in lines] == list(PRESETS)
    assert all(len(line.split()) > 3 for line in lines)


def test_overlapping_atoms_are_one_line_naming_file_frame_and_atoms(saved, small_xyz, tmp_path, capsys):
    frames = ase.io.read(small_xyz, index=":3")
    frames[2].positions[5] = frames[2].positions[1]  # a duplicated atom: NaN everywhere if evaluated
    path = tmp_path / "dup.xyz"
    ase.io.write(path, frames, format="extxyz")
    out_json = tmp_path / "m.json"
    code = main(["eval", str(saved), str(path), "--json", str(out_json)])
    _one_line_error(capsys, code, f"{path}:frame 2", "atoms 1 and 5 are 0 Å apart")
    assert not out_json.exists()


def test_json_is_strict_even_when_the_model_gives_nan(model, small_xyz, tmp_path, capsys):
    import torch

    with torch.no_grad():
        next(model.parameters()).fill_(float("nan"))  # a diverged model
    saved = lpmace.io.save(model, tmp_path / "nan.safetensors")
    out_json = tmp_path / "m.json"
    assert main(["eval", str(saved), str(small_xyz), "--json", str(out_json)]) == 0

    def refuse(constant):
        raise AssertionError(f"{constant} in JSON")

    metrics = json.loads(out_json.read_text(), parse_constant=refuse)["files"][str(small_xyz)]
    assert metrics["energy_rmse_mev_per_atom"] is None and metrics["n_configs"] == 6


@pytest.mark.parametrize("option, name", [("--json", "m.json"), ("--parity", "plots/new")])
def test_unwritable_output_folder_fails_before_any_evaluation(saved, small_xyz, tmp_path, capsys, monkeypatch,
                                                              option, name):
    import os

    import lpmace.evaluate

    monkeypatch.setattr(lpmace.evaluate, "evaluate", lambda *a, **k: pytest.fail("evaluated before the check"))
    folder = tmp_path / "read_only"
    folder.mkdir(mode=0o555)
    if os.geteuid() == 0:  # root writes through permission bits; /proc/self takes no new files
        folder = pathlib.Path("/proc/self")
    _one_line_error(capsys, main(["eval", str(saved), str(small_xyz), option, str(folder / name)]),
                    option, "cannot write into folder")
