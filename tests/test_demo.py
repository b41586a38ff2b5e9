"""The demo's report: every row in the table and the JSON, numbers formatted, written atomically.

The demo itself (three trainings, ~3 minutes on a CPU) runs in CI as the README's main command.
"""

import json

from lpmace.demo import DEMO_PRECISIONS, markdown_table, write_summary


def _rows():
    return [
        {"precision": p, "epochs": 1, "step_time_ms": 100.0 + i, "train_time_s": 9.0, "peak_memory_mb": 1000.0 + i,
         "peak_memory_kind": "process RSS", "skipped_steps": i, "test_energy_rmse_mev_per_atom": 10.0 + i,
         "test_force_rmse_mev_per_A": 200.0 + i, "force_rel_error_vs_fp64": 10.0 ** -(6 - 2 * i),
         "force_max_error_vs_fp64_mev_per_A": 0.5 * i}
        for i, p in enumerate(DEMO_PRECISIONS)
    ]


def test_summary_files_hold_every_precision(tmp_path):
    rows = _rows()
    write_summary(rows, tmp_path, "cpu")
    data = json.loads((tmp_path / "summary.json").read_text())
    assert [r["precision"] for r in data["rows"]] == list(DEMO_PRECISIONS)
    assert data["environment"]["device"] == "cpu" and data["environment"]["torch"]
    table = (tmp_path / "summary.md").read_text()
    for p in DEMO_PRECISIONS:
        assert f"| {p} |" in table
    assert "1.0e-02" in table and "201.0" in table
    assert not list(tmp_path.glob(".*.tmp"))


def test_table_has_one_line_per_row_and_a_header():
    lines = [line for line in markdown_table(_rows(), "cpu").splitlines() if line.startswith("|")]
    assert len(lines) == 2 + len(DEMO_PRECISIONS)
    assert all(line.count("|") == lines[0].count("|") for line in lines)
