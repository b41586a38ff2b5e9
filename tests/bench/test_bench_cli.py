"""`lpmace bench` end to end on the CPU: the --quick report, and bad input refused before anything is written."""

from __future__ import annotations

import json
import math

import pytest

from lpmace.cli import main

SECTIONS = ("speed", "roofline", "accuracy", "equivariance", "scaling", "md")


def _numbers(value, path="results"):
    """Every (path, number) in a JSON tree."""
    if isinstance(value, dict):
        for k, v in value.items():
            yield from _numbers(v, f"{path}.{k}")
    elif isinstance(value, list):
        for i, v in enumerate(value):
            yield from _numbers(v, f"{path}[{i}]")
    elif isinstance(value, (int, float)) and not isinstance(value, bool):
        yield path, value


@pytest.fixture(scope="module")
def quick(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench")
    # --device cpu: the engine set below is the CPU's (bench defaults to CUDA where there is one)
    status = main(["bench", "--quick", "--compare-mace-torch", "--device", "cpu", "--out", str(out), "--no-progress"])
    return status, out, json.loads((out / "results.json").read_text())


def test_quick_report_has_every_section_with_finite_numbers(quick):
    status, out, results = quick
    assert status == 0 and results["complete"] is True
    for section in SECTIONS:
        assert results.get(section), f"section {section} is empty"
    bad = [(p, v) for p, v in _numbers(results) if not math.isfinite(v)]
    assert not bad, bad[:5]
    for name in ("report.md", "report.html", "pareto.png", "scaling.png", "nve.png"):
        assert (out / name).stat().st_size > 0, name
    report = (out / "report.md").read_text()
    assert "mace-torch" in report and "bf16-mixed" in report
    # time-to-accuracy is not part of --quick, and the report says so rather than leaving a gap
    assert {"section": "time_to_accuracy", "what": "time-to-accuracy", "why": "--quick leaves it out"} \
        in results["skipped"]
    assert "--quick leaves it out" in report


def test_quick_report_measures_every_engine(quick):
    _, _, results = quick
    labels = {(r["code"], r["backend"], r["precision"]) for r in results["speed"]}
    expected = {("lpmace", "reference", p) for p in ("fp64", "fp32", "bf16-mixed", "fp16-mixed")}
    expected |= {("mace-torch", "e3nn", "fp32"), ("mace-torch", "e3nn", "fp64")}
    assert labels == expected
    assert {r["workload"] for r in results["speed"]} == {"train W1", "infer W2"}
    assert all(r["status"] == "ok" and r["median_ms"] > 0 and r["repeats"] == 3 for r in results["speed"])
    # training rows also give the steps' rate back to back; inference rows do not
    assert all((r["back_to_back_ms"] > 0) if r["workload"] == "train W1" else r["back_to_back_ms"] is None
               for r in results["speed"])


def test_fp64_against_fp64_is_exactly_zero_in_the_report(quick):
    _, _, results = quick
    rows = [r for r in results["accuracy"] if r["code"] == "lpmace" and r["precision"] == "fp64"]
    assert len(rows) == 2  # the 3BPA molecules and the W2 box
    for row in rows:
        assert row["energy_rmse_mev_per_atom"] == 0.0 and row["force_max_mev_per_A"] == 0.0
        assert row["force_rel_rmse"] == 0.0
    low = [r for r in results["accuracy"] if r["precision"] == "bf16-mixed"]
    assert all(r["force_rel_rmse"] > 1e-4 for r in low)
    # md: fp64 is the reference row (no self-difference); every other precision is compared with the
    # fp64 run of its own system and engine.
    reference = {(r["system"], r["engine"]): r for r in results["md"] if r["precision"] == "fp64"}
    assert len(reference) == 4 and all(r["drift_vs_fp64"] is None for r in reference.values())
    others = [r for r in results["md"] if r["precision"] != "fp64"]
    assert others and all(r["drift_vs_fp64"] == r["drift_mev_per_atom_per_ps"]
                          - reference[r["system"], r["engine"]]["drift_mev_per_atom_per_ps"] for r in others)


def test_quick_md_runs_both_engines_on_the_same_systems_per_precision(quick):
    _, out, results = quick
    rows = results["md"]
    precisions = ("fp64", "fp32", "bf16-mixed", "fp16-mixed")
    systems = list(dict.fromkeys(r["system"] for r in rows))
    assert len(systems) == 2  # the 3BPA molecule and a periodic cell
    assert sorted((r["system"], r["engine"], r["precision"]) for r in rows) == sorted(
        (s, e, p) for s in systems for e in ("ase", "torch") for p in precisions)
    for row in rows:
        assert row["stable"] and row["steps_done"] == row["steps"] == 20 and row["dt_fs"] == 0.5
        assert row["ms_per_step"] > 0 and row["neighbour_list_builds"] >= 1
        assert (row["model_ms_per_step"] is None) == (row["engine"] == "ase")
    # same seed, steps and dt: at fp64 the two engines follow one trajectory (tests/bench/test_stability.py)
    for system in systems:
        ase64, torch64 = (next(r for r in rows if (r["system"], r["engine"], r["precision"]) == (system, e, "fp64"))
                          for e in ("ase", "torch"))
        assert ase64["drift_mev_per_atom_per_ps"] == pytest.approx(torch64["drift_mev_per_atom_per_ps"], rel=1e-6)
    md = (out / "report.md").read_text().split("## MD stability (NVE)")[1].split("\n## ")[0]
    assert "| engine |" in md and "model ms per step" in md and "neighbour list builds" in md


def test_mace_torch_fp64_agrees_with_lpmace_fp64(quick):
    _, _, results = quick
    rows = [r for r in results["accuracy"] if r["code"] == "mace-torch" and r["precision"] == "fp64"]
    assert rows and all(r["force_rel_rmse"] < 1e-12 for r in rows)


@pytest.mark.parametrize("argv, message", [
    (["--workloads", "speed,warp"], "--workloads: unknown"),
    (["--precisions", "fp32,fp7"], "fp7"),
    (["--backends", "cuda-graphs"], "--backends: 'cuda-graphs' is not available"),
    (["--backends", "triton", "--device", "cpu"], "--backends triton on the CPU needs TRITON_INTERPRET=1"),
    (["--model", "no/such/model.safetensors"], "no such file"),
    (["--repeats", "0"], "--repeats must be at least 1"),
    (["--md-dt", "nan"], "--md-dt must be a positive number"),
])
def test_bad_options_exit_2_and_write_nothing(tmp_path, capsys, monkeypatch, argv, message):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    out = tmp_path / "out"
    assert main(["bench", "--quick", "--out", str(out), *argv]) == 2
    assert message in capsys.readouterr().err
    assert not out.exists()


def test_a_mace_torch_model_needs_explicit_trust(tmp_path, capsys):
    model = tmp_path / "x.model"
    model.write_bytes(b"not read")
    out = tmp_path / "out"
    assert main(["bench", "--quick", "--model", str(model), "--out", str(out)]) == 2
    assert "--trust-mace-model" in capsys.readouterr().err
    assert not out.exists()


SILICON = ('2\nLattice="5 0 0 0 5 0 0 0 5" Properties=species:S:1:pos:R:3 pbc="T T T"\n'
           "Si 0 0 0\nSi 1.3 1.3 1.3\n")


def test_data_with_elements_a_given_model_lacks_is_refused(tmp_path, capsys, make_model):
    import lpmace.io

    model = lpmace.io.save(make_model(), tmp_path / "tiny.safetensors")
    data = tmp_path / "si.xyz"
    data.write_text(SILICON)
    out = tmp_path / "out"
    assert main(["bench", "--quick", "--model", str(model), "--data", str(data), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert str(data) in err and "Z=14" in err
    assert not out.exists()


def test_a_random_model_learns_the_elements_of_the_data(tmp_path):
    from pathlib import Path

    from lpmace.bench.runner import BenchOptions, check

    data = tmp_path / "si.xyz"
    data.write_text(SILICON)
    plan = check(BenchOptions(out=Path(tmp_path / "out"), size="tiny", quick=True, data=(str(data),)))
    assert plan.model.config.atomic_numbers == (1, 6, 7, 8, 14)
    assert [name for name, _ in plan.data] == ["3BPA test_300K (5 molecules)", "si.xyz (1 structures)"]


def test_the_mp_size_knows_its_89_elements_and_refuses_data_beyond_them(tmp_path):
    from pathlib import Path

    from lpmace.bench.runner import BenchOptions, check
    from lpmace.errors import InputError

    data = tmp_path / "si.xyz"
    data.write_text(SILICON)
    plan = check(BenchOptions(out=Path(tmp_path / "out"), size="mp", quick=True, data=(str(data),)))
    assert plan.model.config.atomic_numbers == tuple(range(1, 90))
    uranium = tmp_path / "u.xyz"
    uranium.write_text(SILICON.replace("Si", "U"))
    with pytest.raises(InputError, match=r"element\(s\) U not in the model \(Z=92;"):
        check(BenchOptions(out=Path(tmp_path / "out"), size="mp", quick=True, data=(str(uranium),)))


def test_backend_compiled_on_the_cpu_needs_no_triton_interpreter(tmp_path, monkeypatch):
    """compiled runs the reference ops inside its graph on a CPU: TRITON_INTERPRET is triton's condition only."""
    from pathlib import Path

    from lpmace.bench.runner import BenchOptions, check

    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    plan = check(BenchOptions(out=Path(tmp_path / "out"), size="tiny", quick=True, backends=("reference", "compiled")))
    assert plan.options.backends == ("reference", "compiled")
