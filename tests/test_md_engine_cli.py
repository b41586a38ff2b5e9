"""`lpmace md --engine torch`: outputs, --all-frames, the summary JSON, bad input and blow-ups."""

from __future__ import annotations

import csv
import json

import ase
import ase.io
import numpy as np
import pytest

import lpmace.io
from lpmace.cli import main
from lpmace.commands.md import BATCHED_CSV_HEADER, CSV_HEADER, EXIT_UNSTABLE
from test_md import _rejected

FAST = {"max_ell": 1, "max_L": 0}
SUMMARY_KEYS = {"engine", "steps", "systems", "atoms", "ms_per_step", "steady_ms_per_step", "model_ms_per_step",
                "neighbour_list_builds",
                "interrupted", "blow_ups", "per_system"}
SYSTEM_KEYS = {"system", "atoms", "steps_done", "drift_meV_per_atom_per_ps", "fluctuation_meV_per_atom",
               "mean_temperature_K", "unstable_step", "reason"}


@pytest.fixture
def saved(make_model, tmp_path):
    return str(lpmace.io.save(make_model(**FAST), tmp_path / "model.safetensors"))


def _molecule(bpa_atoms) -> ase.Atoms:
    return ase.Atoms(numbers=bpa_atoms.numbers, positions=bpa_atoms.positions)


def _md(tmp_path, structure, model, *args):
    out, log = tmp_path / "traj.xyz", tmp_path / "md.csv"
    code = main(["md", str(structure), "--model", model, "--out", str(out), "--log", str(log), *args])
    return code, out, log, tmp_path / "md.summary.json"


def _rows(log):
    with open(log) as f:
        return list(csv.reader(f))


def test_torch_engine_writes_what_the_ase_engine_writes(saved, bpa_atoms, tmp_path, capsys):
    structure = tmp_path / "bpa.xyz"
    ase.io.write(structure, _molecule(bpa_atoms), format="extxyz")
    common = ("--steps", "8", "--interval", "2", "--seed", "5")
    results = {}
    for engine in ("ase", "torch"):
        folder = tmp_path / engine
        folder.mkdir()
        code, out, log, summary = _md(folder, structure, saved, "--engine", engine, *common)
        assert code == 0
        rows = _rows(log)
        assert tuple(rows[0]) == CSV_HEADER
        results[engine] = (np.array(rows[1:], dtype=float), ase.io.read(out, index=":"), json.loads(summary.read_text()))
    stdout = capsys.readouterr().out
    assert "engine torch" in stdout and "neighbour list builds" in stdout
    (ase_rows, ase_frames, ase_summary), (torch_rows, torch_frames, torch_summary) = results["ase"], results["torch"]
    assert [int(s) for s in torch_rows[:, 0]] == [0, 2, 4, 6, 8]
    np.testing.assert_allclose(torch_rows, ase_rows, rtol=0, atol=1e-8)
    for a, b in zip(ase_frames, torch_frames):
        np.testing.assert_allclose(b.positions, a.positions, rtol=0, atol=1e-9)
        np.testing.assert_allclose(b.get_forces(), a.get_forces(), rtol=0, atol=1e-9)
        assert b.info["step"] == a.info["step"]
    for summary, engine in ((ase_summary, "ase"), (torch_summary, "torch")):
        assert set(summary) == SUMMARY_KEYS and summary["engine"] == engine
        assert summary["steps"] == 8 and summary["systems"] == 1 and summary["atoms"] == 27
        assert summary["blow_ups"] == 0 and summary["ms_per_step"] > 0
        (system,) = summary["per_system"]
        assert set(system) == SYSTEM_KEYS and system["unstable_step"] is None and system["steps_done"] == 8
    assert ase_summary["neighbour_list_builds"] == 9 and ase_summary["model_ms_per_step"] is None
    assert 1 <= torch_summary["neighbour_list_builds"] < 9 and torch_summary["model_ms_per_step"] > 0
    assert torch_summary["per_system"][0]["drift_meV_per_atom_per_ps"] == pytest.approx(
        ase_summary["per_system"][0]["drift_meV_per_atom_per_ps"], abs=1e-6)


def test_all_frames_runs_every_frame_as_one_batch(saved, bpa_test_path, tmp_path, capsys):
    frames = [_molecule(a) for a in ase.io.read(bpa_test_path, index=":3")]
    structure = tmp_path / "three.xyz"
    ase.io.write(structure, frames, format="extxyz")
    code, out, log, summary = _md(tmp_path, structure, saved, "--engine", "torch", "--all-frames", "--steps", "4",
                                  "--interval", "2", "--state-dtype", "float32", "--skin", "0.5")
    assert code == 0
    capsys.readouterr()
    rows = _rows(log)
    assert tuple(rows[0]) == BATCHED_CSV_HEADER
    assert [(int(r[0]), int(r[1])) for r in rows[1:]] == [(s, t) for t in (0, 2, 4) for s in range(3)]
    written = ase.io.read(out, index=":")
    assert [(f.info["system"], f.info["step"]) for f in written] == [(int(r[0]), int(r[1])) for r in rows[1:]]
    for frame, row in zip(written, rows[1:]):
        assert frame.get_potential_energy() == pytest.approx(float(row[3]), abs=1e-6)
    for s in range(3):  # step 0 holds each frame's own geometry
        assert np.allclose(written[s].positions, frames[s].positions, atol=1e-5)
    data = json.loads(summary.read_text())
    assert data["systems"] == 3 and data["atoms"] == 81 and len(data["per_system"]) == 3


def test_torch_engine_reports_a_blow_up_and_exits_3(make_model, bpa_atoms, tmp_path, capsys):
    steep = str(lpmace.io.save(make_model(scale=100.0, **FAST), tmp_path / "steep.safetensors"))
    structure = tmp_path / "bpa.xyz"
    ase.io.write(structure, _molecule(bpa_atoms), format="extxyz")
    code, out, log, summary = _md(tmp_path, structure, steep, "--engine", "torch", "--steps", "20", "--dt", "50",
                                  "--interval", "1")
    assert code == EXIT_UNSTABLE
    assert "MD became unstable at step 1" in capsys.readouterr().err
    assert len(ase.io.read(out, index=":")) == 1 and len(log.read_text().splitlines()) == 2
    data = json.loads(summary.read_text())
    assert data["blow_ups"] == 1 and data["per_system"][0]["unstable_step"] == 1
    assert "total energy moved" in data["per_system"][0]["reason"]


@pytest.mark.parametrize("case", ["unknown element", "nan", "overlapping", "single atom", "second frame"])
def test_torch_engine_rejects_a_structure_before_writing(saved, bpa_atoms, tmp_path, capsys, case):
    atoms = _molecule(bpa_atoms)
    frames = [atoms]
    if case == "unknown element":
        atoms.numbers[0] = 26
    elif case == "nan":
        atoms.positions[3, 1] = np.nan
    elif case == "overlapping":
        atoms.positions[1] = atoms.positions[0] + 1e-3
    elif case == "single atom":
        frames = [atoms[:1]]
    else:  # --all-frames: the second frame has two atoms at one position
        bad = atoms.copy()
        bad.positions[5] = bad.positions[4]
        frames = [atoms, bad]
    path = tmp_path / "in.xyz"
    ase.io.write(path, frames, format="extxyz")
    code, *_ = _md(tmp_path, path, saved, "--engine", "torch", "--steps", "2", "--all-frames")
    _rejected(capsys, code, tmp_path, str(path), *(["frame 1"] if case == "second frame" else []))


@pytest.mark.parametrize("args", [("--dt", "0"), ("--dt", "-0.5"), ("--skin", "-1"), ("--skin", "nan"),
                                  ("--engine", "ase", "--skin", "1"), ("--engine", "ase", "--all-frames"),
                                  ("--engine", "ase", "--state-dtype", "float32"), ("--all-frames", "--index", "1")])
def test_md_rejects_bad_flags_before_writing(saved, bpa_atoms, tmp_path, capsys, args):
    path = tmp_path / "in.xyz"
    ase.io.write(path, _molecule(bpa_atoms), format="extxyz")
    code, *_ = _md(tmp_path, path, saved, "--steps", "2", *args)
    _rejected(capsys, code, tmp_path, args[-2] if args[-1] not in ("--all-frames",) else args[-1])


def test_an_earlier_runs_summary_does_not_outlive_a_run_that_crashes(tmp_path, saved, bpa_atoms, monkeypatch):
    """Outputs are rewritten from the start; a crash (not bad input) must not leave the old summary
    beside them as if it described them."""
    import lpmace.commands.md as md_command

    structure = tmp_path / "molecule.xyz"
    ase.io.write(structure, _molecule(bpa_atoms))
    code, _, _, summary = _md(tmp_path, structure, saved, "--engine", "torch", "--steps", "4", "--interval", "2")
    assert code == 0 and summary.exists()

    def crash(*args, **kwargs):
        raise RuntimeError("a bug, not bad input")

    monkeypatch.setattr(md_command, "_run_torch", crash)
    with pytest.raises(RuntimeError, match="a bug"):
        _md(tmp_path, structure, saved, "--engine", "torch", "--steps", "4", "--interval", "2")
    assert not summary.exists()


@pytest.mark.parametrize("precision, ensemble, warned", [("bf16-mixed", "nve", True), ("fp32", "nve", False),
                                                          ("bf16-mixed", "nvt", False)])
def test_a_16bit_policy_in_nve_is_warned_about(saved, bpa_atoms, tmp_path, capsys, precision, ensemble, warned):
    structure = tmp_path / "bpa.xyz"
    ase.io.write(structure, _molecule(bpa_atoms), format="extxyz")
    code, *_ = _md(tmp_path, structure, saved, "--engine", "torch", "--steps", "2", "--precision", precision,
                   "--ensemble", ensemble)
    assert code == 0
    assert ("does not conserve the total energy" in capsys.readouterr().err) == warned
