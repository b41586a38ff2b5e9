"""`lpmace bench --quick` on CUDA (`pytest -m gpu`): the CUDA engine set, each engine measured, the
Triton backend's accuracy that of the reference, and mace-torch's cuEquivariance twin where installed."""

from __future__ import annotations

import json

import pytest

from lpmace.cli import main

PRECISIONS = ("fp64", "fp32", "bf16-mixed")


@pytest.fixture(scope="module")
def cuda_quick(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench-cuda")
    status = main(["bench", "--quick", "--device", "cuda", "--precisions", ",".join(PRECISIONS),
                   "--workloads", "train,infer,accuracy", "--out", str(out), "--no-progress"])
    return status, json.loads((out / "results.json").read_text())


@pytest.mark.gpu
def test_cuda_bench_measures_reference_and_triton(cuda_quick):
    status, results = cuda_quick
    assert status == 0 and results["complete"] is True
    assert results["environment"]["device"].startswith("cuda")
    labels = {(r["code"], r["backend"], r["precision"]) for r in results["speed"]}
    # on CUDA with triton, bench's default backends are reference and triton
    assert labels == {("lpmace", b, p) for b in ("reference", "triton") for p in PRECISIONS}
    assert all(r["status"] == "ok" and r["median_ms"] > 0 and r["peak_memory_mb"] > 0 for r in results["speed"])


@pytest.mark.gpu
def test_cuda_triton_accuracy_is_the_reference_accuracy(cuda_quick):
    _, results = cuda_quick
    rows = {(r["dataset"], r["backend"], r["precision"]): r for r in results["accuracy"] if r["code"] == "lpmace"}
    triton64 = [r for (_, b, p), r in rows.items() if (b, p) == ("triton", "fp64")]
    assert triton64 and all(r["force_rel_rmse"] < 1e-9 for r in triton64)  # fp64 kernels: rounding only
    for (dataset, backend, precision), row in rows.items():
        if precision == "bf16-mixed":
            # bf16 rounds (> 1e-4) but stays a usable model (< 10 %), on both backends alike
            assert 1e-4 < row["force_rel_rmse"] < 0.1, (dataset, backend, row["force_rel_rmse"])


@pytest.mark.gpu
def test_cuda_bench_runs_mace_torch_with_cuequivariance(tmp_path):
    pytest.importorskip("mace", reason="mace-torch is an optional comparison (scripts/setup.sh installs it)")
    pytest.importorskip("cuequivariance_torch", reason="the cueq twin needs cuequivariance-torch (CUDA only)")
    out = tmp_path / "out"
    assert main(["bench", "--quick", "--device", "cuda", "--precisions", "fp32", "--backends", "reference",
                 "--workloads", "infer,accuracy", "--compare-mace-torch", "--out", str(out), "--no-progress"]) == 0
    results = json.loads((out / "results.json").read_text())
    speed = {(r["code"], r["backend"]): r for r in results["speed"]}
    assert speed[("mace-torch", "cueq")]["status"] == "ok" and speed[("mace-torch", "cueq")]["median_ms"] > 0
    assert not [s for s in results["skipped"] if "cueq" in s["what"]]
