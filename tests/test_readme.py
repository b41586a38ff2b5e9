"""The README's promises: its Python example runs, and CI runs exactly its two commands."""

from __future__ import annotations

import pathlib
import re

import numpy as np

ROOT = pathlib.Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()


def _blocks(language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", README, flags=re.S)


def test_python_example_runs(tmp_path, monkeypatch, capsys):
    (example,) = _blocks("python")
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    exec(compile(example, "README.md", "exec"), namespace)
    assert (tmp_path / "untrained.safetensors").is_file()
    forces = namespace["atoms"].get_forces()
    assert forces.shape == (27, 3) and np.isfinite(forces).all()
    assert "energy" in capsys.readouterr().out


def test_ci_runs_the_readme_commands():
    commands = [line for block in _blocks("bash") for line in block.splitlines() if line.startswith("scripts/setup.sh")]
    assert len(commands) == 2, commands
    ci = (ROOT / ".ci" / "run").read_text().splitlines()
    for command in commands:
        assert f"({command})" in ci, f".ci/run does not run the README command {command!r}"
