"""`lpmace md` stopped from outside (SIGINT, a scheduler's SIGTERM, kill -9) keeps readable outputs.

Each test runs the command as a real process, waits until the CSV at its final path shows a few
samples (so the outputs must be flushed as they go), signals it and reads what is left.
"""

from __future__ import annotations

import csv
import os
import pathlib
import signal
import subprocess
import sys
import time

import ase
import ase.io
import pytest

import lpmace
import lpmace.io

SAMPLES_BEFORE_SIGNAL = 3
# Generous: the process imports torch and lpmace first (seconds on a busy 2-core machine).
TIMEOUT_S = 180.0


@pytest.fixture(params=["ase", "torch"])
def md_process(make_model, bpa_atoms, tmp_path, request):
    """Start `python -m lpmace md` (each engine) for far more steps than the test waits for; yields
    (process, out, log)."""
    model = lpmace.io.save(make_model(max_ell=1, max_L=0), tmp_path / "model.safetensors")
    structure = tmp_path / "bpa.xyz"
    ase.io.write(structure, ase.Atoms(numbers=bpa_atoms.numbers, positions=bpa_atoms.positions), format="extxyz")
    out, log = tmp_path / "traj.xyz", tmp_path / "md.csv"
    source_root = str(pathlib.Path(lpmace.__file__).parents[1])  # the lpmace under test, not an installed one
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([source_root, os.environ.get("PYTHONPATH", "")]),
           "OMP_NUM_THREADS": "1"}
    process = subprocess.Popen(
        [sys.executable, "-m", "lpmace", "md", str(structure), "--model", str(model), "--steps", "1000000",
         "--interval", "1", "--dt", "0.5", "--out", str(out), "--log", str(log), "--engine", request.param],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        yield process, out, log
    finally:
        if process.poll() is None:
            process.kill()
        process.communicate()


def _wait_for_samples(process, log: pathlib.Path) -> None:
    deadline = time.monotonic() + TIMEOUT_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"md ended before it was signalled (exit {process.returncode}): {process.stderr.read()}")
        if log.exists() and len(log.read_text().splitlines()) > SAMPLES_BEFORE_SIGNAL:  # header + samples
            return
        time.sleep(0.1)
    pytest.fail(f"{log} did not show {SAMPLES_BEFORE_SIGNAL} samples within {TIMEOUT_S:g} s")


def _samples(out: pathlib.Path, log: pathlib.Path) -> tuple[list[ase.Atoms], list[list[str]]]:
    frames = ase.io.read(out, index=":")
    with open(log) as handle:
        rows = list(csv.reader(handle))[1:]
    return frames, rows


@pytest.mark.parametrize("signal_number", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_a_signal_stops_md_cleanly_and_keeps_every_sample(md_process, signal_number):
    process, out, log = md_process
    _wait_for_samples(process, log)
    process.send_signal(signal_number)
    _, stderr = process.communicate(timeout=TIMEOUT_S)
    assert process.returncode == 128 + signal_number  # 130, 143

    frames, rows = _samples(out, log)
    steps = [int(row[0]) for row in rows]
    assert len(frames) == len(rows) > SAMPLES_BEFORE_SIGNAL - 1
    assert [frame.info["step"] for frame in frames] == steps == list(range(len(rows)))
    for frame, row in zip(frames, rows):
        assert frame.get_potential_energy() == pytest.approx(float(row[2]), abs=1e-8)
    lines = stderr.strip().splitlines()
    assert len(lines) == 1, lines
    name = signal.Signals(signal_number).name
    assert lines[0].startswith(f"lpmace: md stopped by {name} at step {steps[-1]} of 1000000; ")
    assert f"{out} and {log} hold steps 0 to {steps[-1]} ({len(rows)} samples)" in lines[0]
    assert not [p.name for p in out.parent.iterdir() if p.name.endswith(".tmp")]


def test_kill_9_leaves_readable_outputs(md_process):
    process, out, log = md_process
    _wait_for_samples(process, log)
    process.kill()
    process.communicate(timeout=TIMEOUT_S)
    frames, rows = _samples(out, log)
    steps = [int(row[0]) for row in rows]
    # The frame is written before its CSV row, so a kill between the two leaves one frame more.
    assert len(rows) >= SAMPLES_BEFORE_SIGNAL and len(frames) - len(rows) in (0, 1)
    assert [frame.info["step"] for frame in frames[: len(rows)]] == steps == list(range(len(rows)))
