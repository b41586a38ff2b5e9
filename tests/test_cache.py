"""lpmace.cache: where compiled things are kept, and how long the process has been running."""

from __future__ import annotations

import os
import subprocess
import sys

from lpmace import cache


def test_cache_dir_is_under_lpmace_cache_dir(monkeypatch, tmp_path):
    monkeypatch.setenv("LPMACE_CACHE_DIR", str(tmp_path / "c"))
    assert cache.cache_dir("kernels") == tmp_path / "c" / "kernels" and (tmp_path / "c" / "kernels").is_dir()


def test_inductor_cache_goes_there_unless_the_user_named_another(monkeypatch, tmp_path):
    import lpmace

    monkeypatch.setenv("LPMACE_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(lpmace, "_INDUCTOR_CACHE_NAMED", False)
    monkeypatch.delenv("TORCHINDUCTOR_CACHE_DIR", raising=False)
    cache.use_compile_cache()
    assert os.environ["TORCHINDUCTOR_CACHE_DIR"] == str(tmp_path / "inductor")
    # torch names its default folder itself when it first looks: that is not the user's choice
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", "/tmp/torchinductor_someone")
    cache.use_compile_cache()
    assert os.environ["TORCHINDUCTOR_CACHE_DIR"] == str(tmp_path / "inductor")
    monkeypatch.setattr(lpmace, "_INDUCTOR_CACHE_NAMED", True)  # set before lpmace was imported
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", "/somewhere/else")
    cache.use_compile_cache()
    assert os.environ["TORCHINDUCTOR_CACHE_DIR"] == "/somewhere/else"


def test_process_age_counts_from_the_start_of_the_process_not_from_the_import():
    code = "import time; time.sleep(1.5); from lpmace.cache import process_age; print(process_age())"
    age = float(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout)
    assert 1.5 <= age < 60


def test_counting_compiled_graphs_does_not_load_the_compiler():
    """A process that never compiles reads 0 without importing torch._dynamo (almost 2 s of start-up)."""
    code = ("import sys; from lpmace.cache import compiled_graphs; import lpmace.train.trainer; "
            "print(compiled_graphs(), 'torch._dynamo' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out == ["0", "False"]
