"""The README's promises: CI runs exactly its two commands, it links the documentation that holds the
rest, and the usage page's Python example runs; the measurements moved out of it keep their commands."""

from __future__ import annotations

import pathlib
import re

import numpy as np

ROOT = pathlib.Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()
USAGE = (ROOT / "docs" / "usage.md").read_text()
BENCHMARKS = (ROOT / "docs" / "benchmarks.md").read_text()


def _blocks(text: str, language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", text, flags=re.S)


def test_python_examples_run(tmp_path, monkeypatch, capsys):
    """The usage page's Python blocks, in order, in one namespace (the backends block continues the first)."""
    examples = _blocks(USAGE, "python")
    assert len(examples) == 2
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    exec(compile(examples[0], "docs/usage.md", "exec"), namespace)
    assert (tmp_path / "untrained.safetensors").is_file()
    forces = namespace["atoms"].get_forces()
    assert forces.shape == (27, 3) and np.isfinite(forces).all()
    assert "energy" in capsys.readouterr().out
    exec(compile(examples[1], "docs/usage.md", "exec"), namespace)
    out = namespace["out"]
    assert str(out["energy"].dtype) == "torch.float64" and out["energy"].shape == (1,)  # the fp64 energy sum
    assert out["forces"].shape == (27, 3) and bool(out["forces"].isfinite().all())


def test_ci_runs_the_readme_commands():
    commands = [line for block in _blocks(README, "bash") for line in block.splitlines()
                if line.startswith("scripts/setup.sh")]
    assert len(commands) == 2, commands
    ci = (ROOT / ".ci" / "run").read_text().splitlines()
    for command in commands:
        assert f"({command})" in ci, f".ci/run does not run the README command {command!r}"


def test_readme_links_exist_and_it_has_one_headline_table():
    links = re.findall(r"\]\(([^)#]+)\)", README)
    assert {"docs/usage.md", "docs/benchmarks.md", "docs/experiments/"} <= set(links)
    assert all((ROOT / link).exists() for link in links), links
    for page in ("usage.md", "benchmarks.md"):
        text = (ROOT / "docs" / page).read_text()
        for link in re.findall(r"\]\(([^)#]+)\)", text):
            assert (ROOT / "docs" / link).exists(), (page, link)
    tables = re.findall(r"^## (.*)\n(?:(?!^## ).*\n)*?^\| --- ", README, flags=re.M)
    assert tables == ["The two commands", "Headline"], tables  # the demo's output and one headline table


def test_every_measurement_in_the_benchmarks_page_has_a_command():
    """Each level-2 section of docs/benchmarks.md that holds a table shows the command that measured it."""
    sections = re.split(r"^## ", BENCHMARKS, flags=re.M)[1:]
    assert len(sections) >= 5
    for section in sections:
        if "\n| --- " in section:
            assert "```bash\n" in section, section.splitlines()[0]
