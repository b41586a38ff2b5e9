"""The fast backends on the foundation-model blocks: density-normalised interactions, the non-linear
residual interaction and edge irreps other than the hidden irreps (the conv kernel then runs on
lmax_in = edge_max_L, not max_L). backend="triton" (Triton's interpreter on the CPU) and backend
"compiled" (torch.compile's aot_eager: tracing and AOTAutograd, no code generation) against the
reference in fp64: energies, forces, stress and the parameter gradients of a force loss."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from test_backend_model import _run, small_graph  # noqa: F401  (fixture)

from lpmace.backends import use
from lpmace.data import collate, graph_from_configuration, read_configurations

MODELS = {
    # MPA-0's layout, with edge irreps 6 × (0e + 1o + 2e) over hidden 8 × (0e + 1o)
    "density": dict(first_interaction="density", interaction="density_residual", edge_channels=6, edge_max_L=2),
    # MH-1's blocks: non-linear residual interactions, agnostic product, edge irreps in the first block too
    "nonlinear": dict(first_interaction="density_residual", interaction="nonlinear_residual", agnostic_product=True,
                      edge_channels=6, edge_max_L=2, edge_irreps_first=True),
}


def _close(a, b, tolerance, what):
    assert a.shape == b.shape, what
    assert (a - b).abs().max() <= tolerance * max(float(b.abs().max()), 1e-300), what


@pytest.mark.parametrize("kind", MODELS)
def test_triton_backend_matches_reference(monkeypatch, make_model, small_graph, kind):  # noqa: F811
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    model = make_model(torch.float64, correlation=(2, 2), **MODELS[kind])
    assert model.interactions[1].conv.lmax_in == 2 and model.config.max_L == 1
    e_ref, f_ref, g_ref = _run(model, small_graph, "fp64", "reference")
    e_tri, f_tri, g_tri = _run(model, small_graph, "fp64", "triton")
    e0 = model.e0s[model.species(small_graph.numbers)].sum()
    assert (e_tri - e_ref).abs().max() <= 1e-10 * (e_ref - e0).abs().max()
    _close(f_tri, f_ref, 1e-10, "forces")
    for name, a, b in zip([n for n, _ in model.named_parameters()], g_ref, g_tri):
        if a is None:
            assert b is None or (b == 0).all(), name
        else:
            _close(b, a, 1e-9, name)


@pytest.mark.parametrize("kind", MODELS)
def test_compiled_backend_matches_reference(monkeypatch, make_model, bpa_test_path, kind):
    monkeypatch.setenv("LPMACE_COMPILE_BACKEND", "aot_eager")
    model = make_model(torch.float64, correlation=(2, 2), **MODELS[kind])
    # molecules in periodic 14 Å boxes: a finite stress (a zero-volume cell gives NaN stress, and
    # NaN parameter gradients from the compiled joint graph, whatever the blocks)
    boxed = [dataclasses.replace(c, cell=14.0 * np.eye(3), pbc=np.ones(3, dtype=bool))
             for c in read_configurations(bpa_test_path, index=":2")]
    graph = collate([graph_from_configuration(c, 4.0) for c in boxed])
    outs, grads = {}, {}
    for backend in ("reference", "compiled"):
        out = use(model, backend)(graph, precision="fp64", training=True, compute_stress=True)
        loss = (out["energy"] ** 2).sum() * 1e-6 + (out["forces"] ** 2).sum()
        outs[backend] = out
        grads[backend] = torch.autograd.grad(loss, list(model.parameters()), allow_unused=True)
    for key in ("energy", "forces", "stress"):
        _close(outs["compiled"][key].detach(), outs["reference"][key].detach(), 1e-10, key)
    for (name, _), a, b in zip(model.named_parameters(), grads["reference"], grads["compiled"]):
        if a is None:
            assert b is None or not b.any(), name
        else:
            _close(b, a, 1e-9, name)
