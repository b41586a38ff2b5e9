"""The experiments as sections of `lpmace bench`: named in --workloads, written into results.json and
the report like the other sections; a failing one is a skipped row and the others still run; they are
not part of a default run; misspelt names and a missing --species-data are refused before anything
is written."""

from __future__ import annotations

import json
import sys
import types

from lpmace.bench.report import write_report
from lpmace.bench.runner import EXPERIMENTS, SECTIONS
from lpmace.cli import main


def test_unknown_section_exits_2_and_writes_nothing(tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["bench", "--quick", "--workloads", "quantize,nope", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "nope" in err and all(name in err for name in EXPERIMENTS)
    assert not out.exists()
    assert set(EXPERIMENTS) <= set(SECTIONS)


def test_species_rank_without_its_data_is_refused(tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["bench", "--quick", "--workloads", "species-rank", "--out", str(out)]) == 2
    assert "--species-data" in capsys.readouterr().err
    assert not out.exists()


def test_sections_written_and_a_failing_one_skipped(tmp_path, monkeypatch):
    good = types.ModuleType("lpmace.bench.progressive_correlation")
    good.run = lambda **kw: {"settings": {"budget_s": 60.0, "device": kw["device"]},
                             "rows": [{"run": "fixed", "schedule": "ν = 3", "epochs": 6, "status": "ok",
                                       "seconds_per_epoch": {"3": 0.5}, "test_force_rmse_mev_per_A": float("nan")}]}
    bad = types.ModuleType("lpmace.bench.quantize")
    bad.run = lambda **kw: 1 / 0
    monkeypatch.setitem(sys.modules, good.__name__, good)
    monkeypatch.setitem(sys.modules, bad.__name__, bad)
    out = tmp_path / "out"
    assert main(["bench", "--quick", "--workloads", "quantize,progressive-correlation", "--device", "cpu",
                 "--no-progress", "--out", str(out)]) == 0
    results = json.loads((out / "results.json").read_text())
    assert results["complete"] is True and "quantize" not in results
    found = results["progressive_correlation"]
    assert found["settings"] == {"budget_s": 60.0, "device": "cpu"} and found["seconds"] >= 0
    assert found["rows"][0]["test_force_rmse_mev_per_A"] is None  # strict JSON: NaN is null
    (failed,) = [r for r in results["skipped"] if r["section"] == "quantize"]
    assert failed["why"].startswith("ZeroDivisionError")
    report = (out / "report.md").read_text()
    assert "## Progressive correlation order" in report and "| fixed | ν = 3 | 6 |" in report
    assert "3 0.5" in report and "docs/experiments/progressive_correlation.md" in report
    assert "## Quantized readouts (int8, fp8)" in report and "skipped quantize: ZeroDivisionError" in report
    assert "## Precision schedules" not in report  # not asked for


def test_a_default_run_has_no_experiment_sections(tmp_path):
    written = write_report({"schema": 1, "skipped": [{"section": "speed", "what": "train", "why": "x"}]}, tmp_path)
    report = written["report.md"].read_text()
    assert "## Speed" in report
    assert not any(h in report for h in ("Quantized readouts", "species rank", "Progressive", "Precision sched"))
