"""`lpmace bench --workloads startup`: two `lpmace train` processes, cold then warm, share one fresh
compile cache named through LPMACE_CACHE_DIR; rows come from their logs; a failing process is a row
with its last error line. (That a warm process compiles nothing is tested on a real run in
tests/train/test_train_backends.py.)"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

from lpmace.bench import startup
from lpmace.bench.report import write_report


def _fake_train(calls, fail=False):
    def run(argv, capture_output, text, env):
        calls.append((argv, env))
        if fail:
            return subprocess.CompletedProcess(argv, 2, "", "lpmace train: error: something named here\n")
        out = Path(next(a for a in argv if a.startswith("output_dir=")).split("=", 1)[1])
        out.mkdir(parents=True)
        cold = len(calls) == 1
        row = {"epoch": 1, "first_step_s": 90.0 if cold else 13.0, "compiles": 2 if cold else 0,
               "train_loss": 930.5, "train_time_s": 10.0}
        (out / "log.jsonl").write_text(json.dumps(row) + "\n")
        return subprocess.CompletedProcess(argv, 0, "", "")
    return run


def test_a_cold_and_a_warm_process_share_one_fresh_cache(monkeypatch, tmp_path):
    calls = []
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", "/somewhere/else")
    monkeypatch.setattr(startup.subprocess, "run", _fake_train(calls))
    found = startup.run(device="cpu", quick=True, progress=False, seed=3)
    assert [r["process"] for r in found["rows"]] == ["cold", "warm"]
    assert [(r["first_step_s"], r["compiles"], r["status"]) for r in found["rows"]] == [(90.0, 2, "ok"), (13.0, 0, "ok")]
    (argv0, env0), (argv1, env1) = calls
    assert env0["LPMACE_CACHE_DIR"] == env1["LPMACE_CACHE_DIR"] and "TORCHINDUCTOR_CACHE_DIR" not in env0
    assert not Path(env0["LPMACE_CACHE_DIR"]).exists()  # a temporary folder, removed afterwards
    for argv in (argv0, argv1):
        assert argv[argv.index("-m") + 1:][:3] == ["lpmace", "train", "/dev/null"]
        assert {"backend=compiled", "precision=fp32", "device=cpu", "seed=3", "epochs=1"} <= set(argv)
    assert [a for a in argv0 if not a.startswith("output_dir=")] == [a for a in argv1 if not a.startswith("output_dir=")]
    # the report shows the section as a table
    results = {"schema": 1, "complete": True, "environment": {}, "settings": {"workloads": ["startup"]},
               "startup": {**found, "seconds": 1.0}}
    write_report(results, tmp_path / "report")
    text = (tmp_path / "report" / "report.md").read_text()
    assert "Start-up: a cold and a warm training process" in text and "| warm | 13 | 0 |" in text


def test_a_failing_process_is_a_row_with_its_error(monkeypatch):
    monkeypatch.setattr(startup.subprocess, "run", _fake_train([], fail=True))
    rows = startup.run(device="cpu", quick=True, progress=False)["rows"]
    assert [r["status"] for r in rows] == ["error: lpmace train: error: something named here"] * 2
