"""Compressed species embeddings: low-rank element weights W[z] = A[z]·B and an int8 embedding table.

The reference for every compressed model is the uncompressed model it came from: at full rank the
outputs must not change at all, below it parameters must drop by the counted amount and the error
must shrink as the rank grows.
"""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch

from lpmace.backends import use
from lpmace.compress import compress, element_weight_slots, element_weight_storage
from lpmace.conversions import rebuild
from lpmace.data import graph_from_configuration, read_configurations
from lpmace.errors import InputError
from lpmace.io import load, read_config, save
from lpmace.model import MACE, MACEConfig
from lpmace.nn.element_weights import Int8ElementTable, LowRankElementWeight, element_weight

ELEMENTS = (1, 6, 7, 8)  # the tiny model of conftest


@pytest.fixture(scope="module")
def graphs():
    from lpmace import datasets

    configs = read_configurations(datasets.path("3bpa/test_300K.xyz"), index=":3")
    few = dataclasses.replace(configs[0], numbers=configs[0].numbers[:7], positions=configs[0].positions[:7],
                              forces=configs[0].forces[:7])
    return [graph_from_configuration(c, 4.0) for c in configs], graph_from_configuration(few, 4.0)


def _flat_sizes(model) -> list:
    """Per-element length n of every element weight (its [S, ...] shape without S)."""
    sizes = []
    for owner, name, role in element_weight_slots(model):
        stored = getattr(owner, name)
        weights = [stored] if role == "embedding" else list(stored.values() if hasattr(stored, "values") else stored)
        sizes += [element_weight(w)[0].numel() for w in weights]
    return sizes


def test_full_rank_reproduces_the_uncompressed_model_exactly(make_model, graphs, monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    model = make_model()  # fp64
    full = compress(model, species_rank=len(ELEMENTS))
    assert all(isinstance(w, LowRankElementWeight) and w.rank == len(ELEMENTS) for w in _weights(full))
    assert len(list(_weights(full))) == len(list(_weights(model))) > 3
    molecules, small = graphs
    for graph, backend in [(g, "reference") for g in molecules] + [(small, "triton")]:
        a = use(model, backend)(graph, compute_stress=False)
        b = use(full, backend)(graph, compute_stress=False)
        assert torch.equal(a["energy"], b["energy"]), backend
        assert (a["forces"] - b["forces"]).abs().max() <= 1e-12 * a["forces"].abs().max(), backend


def test_low_rank_factors_get_the_same_gradients_on_both_backends(make_model, graphs, monkeypatch):
    """The fused contraction builds its table from the factors: the training gradients of A and B
    (a force loss, double backward) agree with the reference path's."""
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    model = compress(make_model(), species_rank=2)
    _, small = graphs
    grads = {}
    for backend in ("reference", "triton"):
        out = use(model, backend)(small, training=True)
        loss = (out["forces"] ** 2).sum() + 1e-3 * (out["energy"] ** 2).sum()
        named = [(n, p) for n, p in model.named_parameters() if n.endswith((".A", ".B"))]
        grads[backend] = dict(zip([n for n, _ in named], torch.autograd.grad(loss, [p for _, p in named]), strict=True))
    assert any(".contraction.weights." in n for n in grads["reference"])
    for name, g in grads["reference"].items():
        assert g.abs().max() > 0, name
        assert (grads["triton"][name] - g).abs().max() <= 1e-9 * g.abs().max(), name


def test_rank_below_the_number_of_elements_stores_r_times_s_plus_n(make_model):
    """Element weights of sizes n_i take Σ S·n_i numbers in full and Σ r·(S + n_i) at rank r."""
    model = make_model(torch.float32, atomic_numbers=(1, 6, 7, 8, 14), E0s=())
    sizes, s = _flat_sizes(model), 5
    total = sum(p.numel() for p in model.parameters())
    assert element_weight_storage(model)["numel"] == s * sum(sizes)
    previous = total
    for rank in (4, 3, 2, 1):
        low = compress(model, rank)
        assert element_weight_storage(low)["numel"] == sum(rank * (s + n) for n in sizes)
        assert element_weight_storage(low)["bytes"] == 4 * sum(rank * (s + n) for n in sizes)  # fp32
        n_params = sum(p.numel() for p in low.parameters())
        assert n_params == total - s * sum(sizes) + sum(rank * (s + n) for n in sizes)
        assert n_params < previous
        previous = n_params
        built = rebuild(MACE(low.config), low.conversions)  # built at that rank (random factors): the same layout
        assert {k: v.shape for k, v in built.state_dict().items()} == {k: v.shape for k, v in low.state_dict().items()}


def _with_decaying_spectrum(model, factor: float = 0.1):
    """Each element weight's singular values set to s_0 · factor^i: its elements share most of their
    structure, as in a trained model (a random one has a flat spectrum)."""
    with torch.no_grad():
        for w in _weights(model):
            u, s, vh = torch.linalg.svd(w.reshape(w.shape[0], -1), full_matrices=False)
            s = s[0] * factor ** torch.arange(s.shape[0], dtype=s.dtype)
            w.copy_(((u * s) @ vh).reshape(w.shape))
    return model


@torch.no_grad()
def test_truncated_svd_is_optimal_and_its_error_shrinks_with_rank(make_model, graphs):
    """Eckart–Young: the weight error at rank r is the tail Σ_{i>r} s_i²; the model's energy and force
    errors against the uncompressed model fall with the rank and vanish at full rank."""
    model = _with_decaying_spectrum(make_model())
    molecules, _ = graphs
    with torch.enable_grad():
        reference = [model(g) for g in molecules]
    spectra = [torch.linalg.svdvals(w.reshape(w.shape[0], -1)) for w in _weights(model)]
    energy_errors, force_errors = [], []
    for rank in (1, 2, 3, 4):
        low = compress(model, rank)
        for w, w_low, s in zip(_weights(model), _weights(low), spectra, strict=True):
            tail = float((s[rank:] ** 2).sum())
            assert float((w - element_weight(w_low)).norm() ** 2) == pytest.approx(tail, rel=1e-8, abs=1e-24)
        with torch.enable_grad():
            outs = [low(g) for g in molecules]
        energy_errors.append(max(float((o["energy"] - r["energy"]).abs().max()) for o, r in zip(outs, reference, strict=True)))
        force_errors.append(max(float((o["forces"] - r["forces"]).abs().max()) for o, r in zip(outs, reference, strict=True)))
    assert all(a > b for a, b in zip(energy_errors, energy_errors[1:], strict=False))
    assert all(a > b for a, b in zip(force_errors, force_errors[1:], strict=False))
    assert energy_errors[-1] == 0.0 and force_errors[-1] == 0.0  # full rank: A = I
    assert energy_errors[0] > 1e-3 and force_errors[0] > 1e-3  # eV, eV/Å: rank 1 is a real change


def _weights(model):
    for owner, name, role in element_weight_slots(model):
        stored = getattr(owner, name)
        yield from [stored] if role == "embedding" else (stored.values() if hasattr(stored, "values") else stored)


def test_int8_embedding_is_int8_within_half_a_step_and_close(make_model, graphs):
    model = make_model()
    quantized = compress(model, int8_embedding=True)
    table = quantized.embedding
    assert isinstance(table, Int8ElementTable) and table.values.dtype == torch.int8
    step = table.scale.reshape(-1, 1)
    assert ((element_weight(table) - model.embedding).abs() <= step / 2 * (1 + 1e-12)).all()
    assert int(table.values.abs().max()) == 127
    molecules, _ = graphs
    a, b = model(molecules[0]), quantized(molecules[0])
    assert 0 < (a["forces"] - b["forces"]).abs().max() <= 0.05 * a["forces"].abs().max()
    # with a rank, the coordinates A are the int8 table and B stays a float parameter
    both = compress(model, 2, int8_embedding=True)
    assert isinstance(both.embedding.A, Int8ElementTable) and both.embedding.B.dtype == torch.float64
    assert element_weight_storage(both)["bytes"] < element_weight_storage(compress(model, 2))["bytes"]


@pytest.mark.parametrize("bad, match", [
    (dict(species_rank=0), "species_rank must be an integer from 1 to the number of elements \\(4\\).*0"),
    (dict(species_rank=5), "species_rank .*\\(4\\).*got 5"),
    (dict(species_rank="2"), "species_rank .*got '2'"),
    (dict(species_rank=True), "species_rank .*got True"),
    (dict(int8_embedding="yes"), "int8_embedding must be true or false, got 'yes'"),
])
def test_bad_compression_settings_are_named(make_model, bad, match):
    with pytest.raises(InputError, match=match):
        compress(make_model(), **bad)
    with pytest.raises(InputError, match=match):  # as a file's conversions list would ask for it
        rebuild(make_model(), [{"name": "species_compression", "species_rank": None, "int8_embedding": False, **bad}])
    with pytest.raises(InputError, match="unknown MACEConfig key"):  # the config is physics only
        MACEConfig.from_dict({**make_model().config.to_dict(), **bad})


def test_trainer_reads_species_rank_and_refuses_a_rank_above_the_elements(tmp_path):
    from lpmace import datasets
    from lpmace.train import Trainer, load_train_config

    model = load_train_config(None, ("model.species_rank=2", "model.int8_embedding=true")).model
    assert (model["species_rank"], model["int8_embedding"]) == (2, True)
    lines = datasets.path("3bpa/train_300K.xyz").read_text().splitlines(keepends=True)
    (tmp_path / "train.xyz").write_text("".join(lines[: 8 * 29]))  # 8 molecules of 27 atoms
    cfg = load_train_config(None, (f"train_file={tmp_path / 'train.xyz'}", "test_files=[]", "model.channels=8",
                                   f"output_dir={tmp_path / 'run'}", "model.species_rank=9", "progress=false"))
    with pytest.raises(InputError, match="species_rank .*\\(4\\).*got 9"):
        Trainer(cfg, log=lambda m: None)
    assert not (tmp_path / "run").exists()  # nothing written


def test_save_load_round_trip_of_a_compressed_model(make_model, graphs, tmp_path):
    model = compress(make_model(torch.float32), species_rank=3, int8_embedding=True)
    path = save(model, tmp_path / "low.safetensors")
    assert read_config(path) == model.config
    loaded = load(path)
    assert loaded.conversions == model.conversions == [
        {"name": "species_compression", "species_rank": 3, "int8_embedding": True, "how": "svd"}]
    state, back = model.state_dict(), loaded.state_dict()
    assert state.keys() == back.keys() and "embedding.A.values" in back
    assert all(torch.equal(state[k], back[k]) and state[k].dtype == back[k].dtype for k in state)
    molecules, _ = graphs
    assert torch.equal(model(molecules[1])["forces"], loaded(molecules[1])["forces"])
    # an uncompressed model keeps its tensor names and config keys
    plain = make_model()
    assert "species_rank" not in plain.config.to_dict() and "embedding" in plain.state_dict()
    assert set(plain.state_dict()) == set(load(save(plain, tmp_path / "plain.safetensors")).state_dict())


def test_low_rank_model_trains_its_factors(make_model, graphs):
    """A model built at a rank (random factors) learns: one SGD step on A and B lowers a force loss."""
    model = make_model(species_rank=2)
    assert isinstance(model.embedding, LowRankElementWeight)
    molecules, _ = graphs
    graph = molecules[0]
    loss = lambda: ((model(graph, training=True)["forces"] - graph.forces) ** 2).mean()  # noqa: E731
    factors = [p for n, p in model.named_parameters() if n.endswith((".A", ".B"))]
    before = loss()
    grads = torch.autograd.grad(before, factors)
    with torch.no_grad():
        for p, g in zip(factors, grads, strict=True):
            p -= 1e-3 * g / max(float(g.abs().max()), 1e-30)
    assert loss() < before


def test_quick_experiment_rows():
    from shared_data import shared_data_dir

    from lpmace.bench import species_rank

    out = species_rank.run(device="cpu", quick=True, progress=False, data=shared_data_dir())
    rows, columns = out["rows"], species_rank.COLUMNS
    assert all(set(r) <= set(columns) for r in rows)
    counts = [r for r in rows if r["part"] == "count"]
    assert {r["S"] for r in counts} == {4, 10, 30, 89}
    for s in (4, 10, 30, 89):
        mine = [r for r in counts if r["S"] == s]
        assert mine[0]["rank"] == "full"
        params = [r["element_params"] for r in mine]
        assert params == sorted(params, reverse=True) and len(set(params)) == len(params)
        assert all(r["element_kib_int8_embedding"] <= r["element_kib"] for r in mine)
    full89 = next(r for r in counts if r["S"] == 89 and r["rank"] == "full")
    assert full89["element_fraction"] > 0.5  # with 89 elements, most of the medium model is element weights
    # full storage grows linearly in S
    fulls = {r["S"]: r["element_params"] for r in counts if r["rank"] == "full"}
    assert fulls[89] * 4 == fulls[4] * 89
    acc = [r for r in rows if r["part"] == "accuracy"]
    assert {r["method"] for r in acc} == {"trained", "svd of full", "int8 embedding of full"}
    for r in acc:
        values = [r[f"{q}_rmse_{s}"] for q in "EF" for s in ("3bpa", "ethanol", "si")]
        assert all(math.isfinite(v) and v > 0 for v in values), r
        assert r["element_params"] > 0 and r["total_params"] > r["element_params"]
    trained = {r["rank"]: r for r in acc if r["method"] == "trained"}
    assert trained["full"]["F_dev_from_full"] == 0.0
    assert trained[1]["element_params"] < trained[2]["element_params"] < trained["full"]["element_params"]
    assert out["settings"]["epochs"] == 1 and out["settings"]["data"] == str(shared_data_dir())


def test_species_rank_section_needs_its_data_folder(tmp_path):
    from lpmace.bench import species_rank

    with pytest.raises(InputError, match="--species-data None: needs a folder with rmd17_ethanol/ and si_zuo2020/"):
        species_rank.run(device="cpu", quick=True, progress=False)
    with pytest.raises(InputError, match=f"--species-data {tmp_path}"):
        species_rank.check_data(tmp_path)
