"""The environment a benchmark records: lpmace's own commit, never the enclosing repository's."""

from __future__ import annotations

import shutil
import subprocess

import pytest

from lpmace.bench.measure import _git_commit

pytestmark = pytest.mark.skipif(shutil.which("git") is None, reason="needs git")


def _git(folder, *args) -> str:
    return subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", *args], cwd=folder, check=True,
                          capture_output=True, text=True).stdout.strip()


def test_a_package_inside_someone_elses_repository_has_no_commit(tmp_path, monkeypatch):
    """A virtual environment in a user's project: site-packages/lpmace sits in their repository."""
    _git(tmp_path, "init", "-q")
    (tmp_path / "analysis.py").write_text("print('user code')\n")
    _git(tmp_path, "add", "analysis.py")
    _git(tmp_path, "commit", "-qm", "user")
    package = tmp_path / ".venv" / "site-packages" / "lpmace"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text("")
    monkeypatch.chdir(tmp_path)
    assert _git_commit(package) is None


def test_a_checkout_records_its_own_commit_whatever_the_working_folder(tmp_path, monkeypatch):
    checkout, elsewhere = tmp_path / "lpmace_src", tmp_path / "project"
    package = checkout / "src" / "lpmace"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text("")
    _git(checkout, "init", "-q")
    _git(checkout, "add", ".")
    _git(checkout, "commit", "-qm", "lpmace")
    elsewhere.mkdir()
    _git(elsewhere, "init", "-q")
    (elsewhere / "x").write_text("x")
    _git(elsewhere, "add", "x")
    _git(elsewhere, "commit", "-qm", "other")
    commit = _git(checkout, "rev-parse", "HEAD")
    monkeypatch.chdir(elsewhere)
    monkeypatch.setenv("GIT_DIR", str(elsewhere / ".git"))  # e.g. set by a git hook running the benchmark
    assert _git_commit(package) == commit
    (package / "__init__.py").write_text("# edited\n")
    assert _git_commit(package) == commit + "+dirty"
