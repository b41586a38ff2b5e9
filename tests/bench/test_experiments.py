"""`lpmace bench --experiment`: names checked before anything is written, results and report written,
one failing experiment does not stop the others."""

from __future__ import annotations

import json
import sys
import types

import pytest

from lpmace.bench import experiments
from lpmace.cli import main
from lpmace.errors import InputError


def test_unknown_experiment_exits_2_and_writes_nothing(tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["bench", "--experiment", "quantize,nope", "--out", str(out)]) == 2
    assert "nope" in capsys.readouterr().err
    assert not out.exists()
    with pytest.raises(InputError):
        experiments.check_names([])


def test_experiment_with_workloads_is_refused(tmp_path):
    assert main(["bench", "--experiment", "quantize", "--workloads", "train", "--out", str(tmp_path / "o")]) == 2
    assert not (tmp_path / "o").exists()


def test_results_report_and_a_failing_experiment(tmp_path, monkeypatch):
    good = types.ModuleType("lpmace.bench.experiments.good")
    good.NAME = "good"
    good.run = lambda **kw: {"rows": [{"mode": "a", "error": 0.5, "nan": float("nan")}], "columns": ["mode", "error"],
                             "summary": "Found **0.5**."}
    bad = types.ModuleType("lpmace.bench.experiments.bad")
    bad.run = lambda **kw: 1 / 0
    monkeypatch.setitem(sys.modules, good.__name__, good)
    monkeypatch.setitem(sys.modules, bad.__name__, bad)
    monkeypatch.setitem(experiments.EXPERIMENTS, "good", "a good one")
    monkeypatch.setitem(experiments.EXPERIMENTS, "bad", "a bad one")
    results = experiments.run_experiments(["bad", "good"], tmp_path, device="cpu", quick=True, progress=False,
                                          log=lambda m: None)
    saved = json.loads((tmp_path / "experiments.json").read_text())
    assert saved["experiments"]["bad"]["error"].startswith("ZeroDivisionError")
    assert saved["experiments"]["good"]["rows"][0] == {"mode": "a", "error": 0.5, "nan": None}
    report = (tmp_path / "experiments.md").read_text()
    assert "## good" in report and "Found **0.5**." in report and "| a | 0.5 |" in report
    assert "## bad" in report and "Failed: ZeroDivisionError" in report
    assert results["environment"]["device"] == "cpu"
