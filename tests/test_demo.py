"""The demo: it fine-tunes the shipped pretrained model with live progress, keeps its accuracy, and
reports every precision in the table and the JSON, written atomically.

The full demo (three fine-tunings, a few minutes on a CPU) runs in CI as the README's main command;
here one precision runs on a handful of configurations.
"""

import json
import math
import time

from lpmace.demo import DEMO_PRECISIONS, markdown_table, run_demo, write_summary


def _rows():
    return [
        {"precision": p, "epochs": 1, "steps": 10, "step_time_ms": 100.0 + i, "train_time_s": 9.0,
         "peak_memory_mb": 1000.0 + i, "peak_memory_kind": "process RSS", "skipped_steps": i,
         "test_energy_rmse_mev_per_atom": 10.0 + i, "test_force_rmse_mev_per_A": 200.0 + i,
         "force_rel_error_vs_fp64": 10.0 ** -(6 - 2 * i), "force_max_error_vs_fp64_mev_per_A": 0.5 * i}
        for i, p in enumerate(DEMO_PRECISIONS)
    ]


def test_summary_files_hold_every_precision(tmp_path):
    rows = _rows()
    write_summary(rows, tmp_path, "cpu", {"test_configs": 300})
    data = json.loads((tmp_path / "summary.json").read_text())
    assert [r["precision"] for r in data["rows"]] == list(DEMO_PRECISIONS)
    assert data["environment"]["device"] == "cpu" and data["environment"]["torch"]
    table = (tmp_path / "summary.md").read_text()
    for p in DEMO_PRECISIONS:
        assert f"| {p} |" in table
    assert "1.0e-02" in table and "201.0" in table
    assert not list(tmp_path.glob(".*.tmp"))


def test_table_has_one_line_per_row_and_says_the_model_was_pretrained():
    text = markdown_table(_rows(), "cpu")
    lines = [line for line in text.splitlines() if line.startswith("|")]
    assert len(lines) == 2 + len(DEMO_PRECISIONS)
    assert all(line.count("|") == lines[0].count("|") for line in lines)
    words = " ".join(text.split())
    assert "pretrained model" in words and "fine-tunes it for 10 steps (1 epochs)" in words


def test_fine_tune_streams_progress_and_keeps_the_pretrained_accuracy(tmp_path):
    arrivals = []
    rows = run_demo(tmp_path, epochs=2, precisions=("fp16-mixed",), n_fine_tune=12, n_test=20, n_compare=5,
                    log=lambda line: arrivals.append((time.monotonic(), line)))
    lines = [line for _, line in arrivals]
    epochs = [t for t, line in arrivals if line.startswith("  fp16-mixed | epoch ")]
    # Streamed as the child writes them, not handed over when it ends: the epochs arrive apart.
    assert len(epochs) == 2 and epochs[1] - epochs[0] > 0.05, lines
    position = lambda text: next(i for i, line in enumerate(lines) if text in line)  # noqa: E731
    assert position("| epoch 2") < position("| testing")
    (row,) = rows
    assert row["precision"] == "fp16-mixed" and row["steps"] == 4
    assert all(math.isfinite(v) for v in row.values() if isinstance(v, float))
    # The shipped model, fine-tuned in fp16: a working potential, not a freshly initialised one.
    assert row["test_energy_rmse_mev_per_atom"] < 30 and row["test_force_rmse_mev_per_A"] < 150
    assert 0 < row["force_rel_error_vs_fp64"] < 1e-2
    assert "| fp16-mixed |" in (tmp_path / "summary.md").read_text()
