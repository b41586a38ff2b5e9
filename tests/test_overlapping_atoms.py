"""Two atoms at one position are refused with one line naming the file, frame and atoms, wherever the
structure enters: training data (train_file, valid_file) and `lpmace md`. (`lpmace eval` and the
Calculator: tests/test_cli_eval.py and tests/test_calculator.py; the check: tests/data/test_batching.py.)"""

from __future__ import annotations

import ase.io
import pytest

import lpmace.io
from lpmace.cli import main


@pytest.fixture
def duplicated(bpa_test_path, tmp_path):
    """4 3BPA molecules; in frame 3, atom 7 sits on atom 2."""
    frames = ase.io.read(bpa_test_path, index=":4")
    frames[3].positions[7] = frames[3].positions[2]
    path = tmp_path / "dup.xyz"
    ase.io.write(path, frames, format="extxyz")
    return path


def _one_line(capsys, code, *fragments):
    err = capsys.readouterr().err
    assert code == 2 and len(err.strip().splitlines()) == 1 and err.startswith("lpmace: error: "), err
    for fragment in fragments:
        assert fragment in err, err


def test_training_refuses_a_valid_file_with_overlapping_atoms_before_any_step(bpa_test_path, duplicated, tmp_path,
                                                                             capsys):
    clean = tmp_path / "train.xyz"
    ase.io.write(clean, ase.io.read(bpa_test_path, index="10:22"), format="extxyz")
    config = tmp_path / "train.yaml"
    config.write_text(f"train_file: {clean}\nvalid_file: {duplicated}\ntest_files: []\nepochs: 1\n"
                      "model: {channels: 8, max_L: 0, correlation: 2}\n")
    code = main(["train", str(config), f"output_dir={tmp_path / 'run'}", "device=cpu", "progress=false"])
    _one_line(capsys, code, f"{duplicated}:frame 3", "atoms 2 and 7 are 0 Å apart")
    assert not (tmp_path / "run" / "log.jsonl").exists()


def test_md_refuses_overlapping_atoms_in_one_line(model, duplicated, tmp_path, capsys):
    saved = lpmace.io.save(model, tmp_path / "model.safetensors")
    code = main(["md", str(duplicated), "--index", "3", "--model", str(saved), "--steps", "2", "--device", "cpu",
                 "--out", str(tmp_path / "traj.xyz"), "--log", str(tmp_path / "md.csv")])
    _one_line(capsys, code, "atoms 2 and 7 are 0 Å apart")
