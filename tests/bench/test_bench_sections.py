"""The bench's measuring parts against what they must report: errors, equivariance, FLOPs, OOM handling."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from lpmace.bench import accuracy, engines, roofline, speed, workloads
from lpmace.data import graph_from_configuration



@pytest.fixture
def model(make_model):
    return make_model(torch.float32)


@pytest.fixture
def box(model):
    config = workloads.random_bulk(40, model.config.atomic_numbers, np.random.default_rng(3))
    return graph_from_configuration(config, model.config.r_max)


def test_rotating_a_periodic_graph_keeps_every_edge_length(box):
    rotation = accuracy.random_rotation(np.random.default_rng(0))
    rotated = workloads.rotate_graph(box, rotation)

    def lengths(g):
        cell = g.cell[g.batch[g.edge_index[0]]]
        vectors = g.positions[g.edge_index[1]] - g.positions[g.edge_index[0]] + torch.einsum("ek,ekx->ex", g.unit_shifts, cell)
        return vectors.norm(dim=1)

    torch.testing.assert_close(lengths(rotated), lengths(box), rtol=0, atol=1e-12)
    assert not torch.allclose(rotated.positions, box.positions)


def test_random_rotation_is_proper_or_improper_as_asked():
    rng = np.random.default_rng(1)
    for proper in (True, False):
        r = accuracy.random_rotation(rng, proper=proper)
        torch.testing.assert_close(r @ r.T, torch.eye(3, dtype=torch.float64), atol=1e-12, rtol=0)
        assert math.isclose(float(torch.linalg.det(r)), 1.0 if proper else -1.0, abs_tol=1e-12)


def test_fp64_against_fp64_is_exactly_zero_and_16_bit_is_not(model, box):
    ref = engines.lpmace_engine(model, "fp64", "reference", "cpu")
    rows = accuracy.accuracy_rows([engines.lpmace_engine(model, p, "reference", "cpu") for p in ("fp64", "bf16-mixed")],
                                  ref, [("box", [box])])
    fp64, bf16 = rows
    for key in ("energy_rmse_mev_per_atom", "force_rmse_mev_per_A", "force_max_mev_per_A", "force_rel_rmse",
                "stress_rmse_mev_per_A3"):
        assert fp64[key] == 0.0, key
        assert bf16[key] > 0.0, key
    assert 1e-4 < bf16["force_rel_rmse"] < 0.1  # bf16 has 8 significant bits: ~1e-2, not 0 and not O(1)


def _break_equivariance(model):
    """Scale one Cartesian component of the l=1 features after the first interaction: no longer equivariant."""
    def hook(module, inputs, output):
        out = output[0] if isinstance(output, tuple) else output
        scaled = out.clone()
        scaled[..., 1] = scaled[..., 1] * 3.0  # component index 1 of the (l+1)^2 axis: one of the l=1 trio
        return (scaled, *output[1:]) if isinstance(output, tuple) else scaled
    return model.interactions[0].register_forward_hook(hook)


def test_a_broken_block_shows_up_as_a_large_equivariance_error(model, box, make_model):
    intact = accuracy.equivariance_row(engines.lpmace_engine(model, "fp64", "reference", "cpu"), box, rotations=2)
    broken_model = make_model(torch.float32)
    _break_equivariance(broken_model)
    broken = accuracy.equivariance_row(engines.lpmace_engine(broken_model, "fp64", "reference", "cpu"), box,
                                       rotations=2)
    assert intact["force_rel_rmse_rotation"] < 1e-9 and intact["force_rel_rmse_reflection"] < 1e-9
    assert broken["force_rel_rmse_rotation"] > 1e-3
    assert broken["force_rel_rmse_reflection"] > 1e-3


def test_flop_and_byte_counts_of_a_matrix_product():
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(64, 32, generator=g), torch.randn(32, 16, generator=g)
    flop, nbytes = roofline.count_flop_and_bytes(lambda: a @ b)
    assert flop == 2 * 64 * 32 * 16
    assert nbytes == 4 * (64 * 32 + 32 * 16 + 64 * 16)


def test_known_and_unknown_device_peaks():
    assert roofline.device_peaks("NVIDIA H100 80GB HBM3")["bf16"] == 989.0
    assert roofline.device_peaks("Some Future GPU") is None
    row = roofline.roofline_row({"workload": "w", "code": "lpmace", "backend": "reference", "precision": "bf16-mixed",
                                 "median_ms": 2.0}, 4 * 10**12, 10**12, "unknown")
    assert row["achieved_tflop_per_s"] == pytest.approx(2000.0) and row["peak_tflop_per_s"] is None
    assert row["fraction_of_peak_flop"] is None


def test_scaling_reports_out_of_memory_and_stops_the_series(model):
    real = engines.lpmace_engine(model, "fp32", "reference", "cpu")

    def infer(graph, stress):
        if graph.num_atoms > 40:
            raise torch.OutOfMemoryError("CUDA out of memory (simulated)")
        return real.infer(graph, stress)

    fake = engines.Engine("lpmace", "reference", "fp32", prepare=real.prepare, infer=infer)
    rows = speed.scaling_rows([fake], model.config, [16, 32, 64, 128], "cpu", repeats=1, warmup=0)
    assert [r["atoms"] for r in rows] == [16, 32, 64]
    assert [r["status"] for r in rows] == ["ok", "ok", "OOM"]
    assert rows[-1]["median_ms"] is None and all(r["median_ms"] > 0 for r in rows[:2])


def test_unknown_backend_is_refused(model):
    with pytest.raises(ValueError, match="backend 'cuda-graphs' is not available"):
        engines.lpmace_engine(model, "fp32", "cuda-graphs", "cpu")


def test_mace_torch_twin_runs_the_same_function(model):
    from lpmace.interop import from_mace_torch

    config = workloads.build_model("tiny").config
    mace64 = workloads.build_mace_torch(config)
    ours = from_mace_torch(mace64)
    graph = workloads.workloads(config, quick=True)[1].graph
    theirs = engines.mace_torch_engines(mace64, config.atomic_numbers, "cpu", skipped := [])
    assert [e.label for e in theirs] == ["mace-torch e3nn fp32", "mace-torch e3nn fp64"]
    assert skipped and "CUDA" in skipped[0]["why"]
    ref = engines.lpmace_engine(ours, "fp64", "reference", "cpu")
    rows = accuracy.accuracy_rows(theirs, ref, [("box", [graph])])
    assert rows[1]["force_rel_rmse"] < 1e-12  # mace-torch fp64 = lpmace fp64 on converted weights
    assert 0 < rows[0]["force_rel_rmse"] < 1e-4  # its fp32: rounding only
    assert torch.get_default_dtype() == torch.float32


def test_mp_size_is_mace_mp_0_medium_and_its_workloads_hold_its_89_elements():
    model = workloads.build_model("mp")  # asked for H, C, N, O (the default): mp keeps its own 89
    c = model.config
    assert c.atomic_numbers == tuple(range(1, 90)) and model.embedding.shape == (89, 128)
    assert (c.r_max, c.num_bessel, c.num_polynomial_cutoff, c.avg_num_neighbors) == (6.0, 10, 5, 61.0)
    assert (c.channels, c.max_L, c.max_ell, c.correlation, c.num_interactions) == (128, 1, 3, (3, 3), 2)
    assert (c.radial_mlp, c.readout_mlp) == ((64, 64, 64), 16)
    w1, w2 = workloads.workloads(c, quick=True)
    for w in (w1, w2):
        numbers = set(w.graph.numbers.tolist())
        assert numbers - {1, 6, 7, 8} and numbers <= set(range(1, 90)), w.name
    assert len(set(w2.graph.numbers.tolist())) > 40  # 128 atoms drawn from 89 elements


def test_mp_size_gives_mace_torch_89_elements():
    pytest.importorskip("mace", reason="mace-torch is not installed")
    from lpmace.interop import from_mace_torch

    config = workloads.build_model("mp").config
    mace64 = workloads.build_mace_torch(config)
    assert mace64.atomic_numbers.tolist() == list(range(1, 90))
    assert mace64.node_embedding.linear.irreps_in.dim == 89  # num_elements
    assert from_mace_torch(mace64).config == config


def test_fused_kernel_flops_are_counted():
    from lpmace.kernels.monomials import monomial_table
    from lpmace.kernels.polynomial import polynomial_contraction

    index = monomial_table(4, 2).index[:15]
    g = torch.Generator().manual_seed(0)
    a, species, table = torch.randn(3, 2, 4, generator=g), torch.tensor([0, 1, 0]), torch.randn(2, 2, 15, 4, 1, generator=g)
    flop, _ = roofline.count_flop_and_bytes(lambda: polynomial_contraction(a, species, index, table))
    assert flop == 3 * 2 * 15 * (1 + 2 * 4)  # n·C·R·((ν−1) products + 2·O·Q multiply-adds)


def test_mpa_size_is_mp_with_density_blocks_zbl_and_agnesi_and_mace_torch_builds_it():
    """`mpa` is the MPA-0 / OMAT-0 medium shape: mp's widths and 89 elements, density-normalised
    interactions (plain first, residual after), ZBL repulsion and the Agnesi transform; the mace-torch
    twin of the bench has the same blocks (its import gives back the same config)."""
    pytest.importorskip("mace", reason="mace-torch is not installed")
    from lpmace.interop import from_mace_torch

    c = workloads.build_model("mpa").config
    mp = workloads.build_model("mp").config
    assert (c.first_interaction, c.interaction, c.pair_repulsion, c.distance_transform) == \
        ("density", "density_residual", True, "agnesi")
    assert (c.atomic_numbers, c.r_max, c.num_bessel, c.channels, c.max_L) == \
        (mp.atomic_numbers, mp.r_max, mp.num_bessel, mp.channels, mp.max_L)
    mace64 = workloads.build_mace_torch(c)
    assert [type(b).__name__ for b in mace64.interactions] == ["RealAgnosticDensityInteractionBlock",
                                                               "RealAgnosticDensityResidualInteractionBlock"]
    assert hasattr(mace64, "pair_repulsion") and hasattr(mace64.radial_embedding, "distance_transform")
    assert from_mace_torch(mace64).config == c
