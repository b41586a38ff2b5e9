"""Speed and memory: a training step on W1 and inference on W2 per engine, and inference time and
peak memory against system size up to out-of-memory (reported as a row, never a crash).

Speed rows: median and interquartile range of `repeats` CUDA-synchronised calls after `warmup`;
atom·steps/s = atoms / median time. Training rows also give the mean of `repeats` steps launched back to
back (one synchronisation at the end: the trainer's rate, where the host's work for a step overlaps the
device's previous one). Peak memory is torch's allocator peak on CUDA (None on a CPU), of
an inference call without CUDA graphs where the engine replays them (a replay allocates nothing).
The scaling curve calls inference without CUDA graphs (no recording per size held until the end).
"""

from __future__ import annotations

from typing import Callable, Optional, Sequence

import numpy as np

from lpmace.bench.engines import Engine
from lpmace.bench.measure import back_to_back, is_out_of_memory, peak_memory_mb, release_memory, timed
from lpmace.bench.workloads import Workload, random_bulk
from lpmace.data import graph_from_configuration
from lpmace.model import MACEConfig

__all__ = ["scaling_rows", "scaling_sizes", "speed_rows"]


def _measure(engine: Engine, workload: Workload, device: str, repeats: int, warmup: int, replay: bool) -> dict:
    inputs = engine.prepare(workload.graph)
    eager = engine.infer_unrecorded
    if workload.kind == "train":
        fn = memory_fn = engine.train_step(inputs)
    else:
        infer = engine.infer if replay else eager

        def fn():
            return infer(inputs, False)

        def memory_fn():
            return eager(inputs, False)
    result = timed(fn, device, repeats, warmup)
    result["back_to_back_ms"] = back_to_back(fn, device, repeats) if workload.kind == "train" else None
    result["peak_memory_mb"] = peak_memory_mb(memory_fn, device)
    return result


def _row(engine: Engine, workload: Workload, device: str, repeats: int, warmup: int, replay: bool = True) -> dict:
    row = {"workload": workload.name, **engine.row(), "atoms": workload.graph.num_atoms,
           "edges": workload.graph.num_edges}
    empty = {"repeats": 0, "median_ms": None, "iqr_ms": None, "min_ms": None, "max_ms": None,
             "atom_steps_per_s": None, "back_to_back_ms": None, "peak_memory_mb": None}
    try:
        measured = _measure(engine, workload, device, repeats, warmup, replay)
        row.update(measured, atom_steps_per_s=workload.graph.num_atoms / (measured["median_ms"] / 1000.0),
                   status="ok")
    except Exception as err:
        row.update(empty, status="OOM" if is_out_of_memory(err) else f"error: {type(err).__name__}: {err}"[:300])
    engine.release()
    release_memory(device)
    return row


def speed_rows(engines: Sequence[Engine], workloads: Sequence[Workload], device: str, *, repeats: int, warmup: int,
               tick: Callable[[str], None] = lambda s: None) -> list[dict]:
    """One row per (workload, engine); engines without a training step skip training workloads."""
    rows = []
    for workload in workloads:
        for engine in engines:
            tick(f"speed {workload.name} {engine.label}")
            if workload.kind == "train" and engine.train_step is None:
                continue
            rows.append(_row(engine, workload, device, repeats, warmup))
    return rows


def scaling_sizes(device: str, quick: bool, max_atoms: Optional[int] = None) -> list[int]:
    """System sizes for the scaling curve: ~500 to 100k atoms on a GPU, smaller on a CPU."""
    if quick:
        sizes = [32, 64, 128]
    elif str(device).startswith("cuda"):
        sizes = [512, 1024, 2048, 4096, 8192, 16384, 32768, 65536, 100_000]
    else:
        sizes = [64, 128, 256, 512, 1024, 2048]
    return [n for n in sizes if max_atoms is None or n <= max_atoms]


def scaling_rows(engines: Sequence[Engine], config: MACEConfig, sizes: Sequence[int], device: str, *,
                 repeats: int, warmup: int, seed: int = 0, max_seconds_per_call: float = 20.0,
                 tick: Callable[[str], None] = lambda s: None) -> list[dict]:
    """Inference time and peak memory of periodic boxes (0.1 atoms/Å³) of increasing size, per engine.

    A series ends at its first out-of-memory or error (that size gets a row with the status) or once
    one call takes longer than `max_seconds_per_call` (later sizes would only take longer).
    """
    graphs = {}
    rows = []
    for engine in engines:
        for n in sizes:
            tick(f"scaling {n} atoms {engine.label}")
            if n not in graphs:
                rng = np.random.default_rng(seed + n)
                graphs[n] = graph_from_configuration(random_bulk(n, config.atomic_numbers, rng), config.r_max)
            workload = Workload(f"infer {n}", "infer", graphs[n])
            row = _row(engine, workload, device, repeats, warmup, replay=False)
            row.pop("workload")
            rows.append(row)
            if row["status"] != "ok" or row["median_ms"] > 1000.0 * max_seconds_per_call:
                break
    return rows
