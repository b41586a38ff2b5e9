"""Quantized readouts (lpmace.quantize, `lpmace quantize`): within a derived bound of the float32
model, bit-identical after a save/load round trip, refused clearly when the input is wrong.

The bound. Quantization changes only the readout weights (and, for dynamic modes, the readout
inputs), so the features h entering each readout, and their Jacobian J = ∂h/∂r, are those of the
float32 model. Per output channel j of a layer with effective weights W (the 1/sqrt(fan_in) folded
in), symmetric per-channel rounding moves each weight by at most δW:
    int8:            |ΔW_ji| <= max_i |W_ji| / 254   (scale max/127.5, half a step of rounding)
    float8_e4m3fn:   |ΔW_ji| <= |W_ji| / 16 + s_j / 1024   (3 mantissa bits; s_j = max_i |W_ji| / 448,
                      the second term covers subnormals)
    int8 activations (dynamic): |Δx_c| <= max_c |x_c| / 254.
With φ = scaled SiLU, L1 = sup|φ'|, L2 = sup|φ''|, a readout x -> Σ_k W2_k φ(Σ_c W1_kc x_c) changes by
    |Δe| <= Σ_k (|W2_k| + δW2_k) L1 Δz_k + Σ_k |φ(z_k)| δW2_k,
    Δz_k = Σ_c (|x_c| δW1_kc + δx_c (|W1_kc| + δW1_kc))
and its input gradient g_c = Σ_k W1_kc φ'(z_k) W2_k by
    |Δg_c| <= Σ_k [δW1_kc L1 (|W2_k| + δW2_k) + |W1_kc| L2 Δz_k (|W2_k| + δW2_k) + |W1_kc| |φ'(z_k)| δW2_k]
(a linear readout is the case without φ). Energies move by at most scale · Σ_atoms Σ_t |Δe|, forces
(F = -scale Σ J^T g) by at most scale · Σ |J|^T |Δg| per component. Dynamic modes differentiate
straight through the rounding (∂z/∂x = W1 + ΔW1), which the same bound covers.
"""

from __future__ import annotations

import copy
import json
import math
import sys

import pytest
import safetensors
import torch

import lpmace.io
from lpmace import datasets
from lpmace.cli import main
from lpmace.conversions import record
from lpmace.data import collate, graph_from_configuration, read_configurations
from lpmace.errors import InputError
from lpmace.model import MACE
from lpmace.nn.activation import scaled_silu
from lpmace.nn.quantized_readout import ReadoutLayers
from lpmace.precision import PRESETS
from lpmace.quantize import quantization_info, quantize_readouts

pytest.importorskip("torchao")

_GRID = torch.linspace(-30, 30, 600001, dtype=torch.float64, requires_grad=True)
_D1 = torch.autograd.grad(scaled_silu(_GRID).sum(), _GRID, create_graph=True)[0]
_D2 = torch.autograd.grad(_D1.sum(), _GRID)[0]
# sup|φ'| and sup|φ''| on a fine grid, +1 % for what the grid misses
L1, L2 = 1.01 * float(_D1.detach().abs().max()), 1.01 * float(_D2.abs().max())


@pytest.fixture(scope="module")
def molecule():
    """The first 3BPA test molecule (27 atoms) as a graph for the tiny models' 4 Å cutoff."""
    return graph_from_configuration(read_configurations(datasets.path("3bpa/test_300K.xyz"))[0], 4.0)


def _model(make_model):
    # readout MLP 8 wide: the 8 -> 8 layer is one int8-dynamic converts (widths multiples of 8)
    return make_model(torch.float32, readout_mlp=8)


def _weight_bounds(w: torch.Tensor, mode: str) -> torch.Tensor:
    """δW [out, in] for effective float weights w [out, in] (module docstring)."""
    top = w.abs().amax(dim=1, keepdim=True)
    if mode.startswith("int8"):
        return (top / 254).expand_as(w)
    return w.abs() / 16 + top / 448 / 1024


def _readout_bounds(model, mode: str, h_list, layer_modes):
    """Per readout t: (|Δe| bound [n], |Δg| bound [n, C]) at inputs h_list[t] [n, C, 1], float64."""
    out = []
    for t, (readout, h) in enumerate(zip(model.readouts, h_list)):
        layers = ReadoutLayers.from_readout(readout).double().layers
        ws = [layer.weight.detach() for layer in layers]  # [out, in] with 1/sqrt(in) folded in
        quantized = [layer_modes[f"readouts.{t}.layers.{i}"] != "none" for i in range(len(ws))]
        dws = [_weight_bounds(w, mode) if q else torch.zeros_like(w) for w, q in zip(ws, quantized)]
        x = h[:, :, 0].double()
        assert not (mode.endswith("dynamic") and any(quantized[1:])), "the bound covers dynamic first layers only"
        dynamic = mode.endswith("dynamic") and quantized[0]
        dx = (x.abs().amax(dim=1, keepdim=True) / 254).expand_as(x) if dynamic else torch.zeros_like(x)
        if len(ws) == 1:
            (w,), (dw,) = ws, dws
            de = x.abs() @ dw[0] + dx @ (w.abs() + dw)[0]
            out.append((de, dw[0].expand_as(x)))
            continue
        (w1, w2), (dw1, dw2) = ws, dws
        z = x @ w1.t()
        dz = x.abs() @ dw1.t() + dx.expand_as(x) @ (w1.abs() + dw1).t()
        w2_abs = (w2.abs() + dw2)[0]
        zg = z.clone().requires_grad_(True)
        phi = scaled_silu(zg)
        d1 = torch.autograd.grad(phi.sum(), zg)[0]
        de = (w2_abs * L1 * dz).sum(1) + (phi.detach().abs() * dw2[0]).sum(1)
        dg = (dw1 * L1 * w2_abs[:, None]).sum(0) + (L2 * dz * w2_abs) @ w1.abs() + (d1.abs() * dw2[0]) @ w1.abs()
        out.append((de, dg))
    return out


def _features_and_jacobians(model, graph):
    """The readout inputs h_t [n, C, 1] and |∂h_t[:, :, 0] / ∂r| [n, C, n, 3] of the float64 copy of `model`."""
    m64 = MACE(model.config)
    m64.load_state_dict(model.state_dict())
    m64 = m64.double()
    captured = []
    hooks = [r.register_forward_pre_hook(lambda mod, args: captured.append(args[0])) for r in m64.readouts]
    positions = graph.positions.double().clone().requires_grad_(True)
    m64.site_energies(graph, positions, graph.cell.double(), m64.species(graph.numbers), PRESETS["fp64"])
    for hook in hooks:
        hook.remove()
    jacobians = []
    for h in captured:
        x = h[:, :, 0]
        eye = torch.eye(x.numel(), dtype=x.dtype).reshape(-1, *x.shape)
        rows = torch.autograd.grad(x, positions, eye, retain_graph=True, is_grads_batched=True)[0]
        jacobians.append(rows.reshape(*x.shape, *positions.shape).abs())
    return [h.detach() for h in captured], jacobians


def _bounds(model, quantized, mode, graph):
    """(energy bound eV, forces bound [n, 3] eV/Å, Σ |site energy of the readouts| eV) of `quantized`
    against `model` on one structure."""
    h_list, jacobians = _features_and_jacobians(model, graph)
    per_readout = _readout_bounds(model, mode, h_list, quantization_info(quantized)["layers"])
    scale = abs(model.config.scale)
    energy = scale * sum(float(de.sum()) for de, _ in per_readout)
    forces = scale * sum(torch.einsum("icaj,ic->aj", jac, dg) for jac, (_, dg) in zip(jacobians, per_readout))
    contribution = scale * sum(float(copy.deepcopy(r).double()(h, torch.float64).detach().abs().sum())
                               for r, h in zip(model.readouts, h_list))
    return energy, forces, contribution


def _errors(model, quantized, graph):
    ref, out = model(graph, precision="fp32"), quantized(graph, precision="fp32")
    return float((out["energy"] - ref["energy"]).detach().abs()), (out["forces"] - ref["forces"]).abs().double()


@pytest.mark.parametrize("mode", ["int8", "int8-dynamic", "fp8"])
def test_quantized_energy_and_forces_within_the_rounding_bound_that_doubled_scales_break(make_model, molecule, mode):
    model = _model(make_model)
    quantized = quantize_readouts(model, mode)
    e_bound, f_bound, readout_energy = _bounds(model, quantized, mode, molecule)
    # float32 arithmetic differs between the two models (weights pre-scaled, other summation order)
    e_slack, f_slack = 1e-4, 1e-5 + 1e-5 * float(model(molecule)["forces"].abs().max())
    e_error, f_error = _errors(model, quantized, molecule)
    assert 0 < e_error <= e_bound + e_slack, (e_error, e_bound)
    assert f_error.max() > 0
    assert bool((f_error <= f_bound + f_slack).all()), float((f_error / (f_bound + f_slack)).max())
    # the bound says something: here 5 % (int8) and 36 % (fp8) of the energy the readouts contribute
    assert e_bound < 0.5 * readout_energy

    broken = quantize_readouts(model, mode)
    for readout in broken.readouts:
        for layer in readout.layers:
            if hasattr(layer.weight, "scale"):
                layer.weight.scale.mul_(2)
    e_broken, f_broken = _errors(model, broken, molecule)
    assert e_broken > e_bound + e_slack or bool((f_broken > f_bound + f_slack).any())


def test_readout_layers_compute_what_the_readouts_compute(model):
    h = torch.randn(5, model.config.channels, 4, dtype=torch.float64)
    for readout in model.readouts:
        swapped = ReadoutLayers.from_readout(readout)
        for dtype in (torch.float64, torch.float32):
            rtol = 1e-6 if dtype == torch.float32 else 1e-13
            torch.testing.assert_close(swapped(h, dtype), readout(h, dtype), rtol=rtol, atol=0)


def test_only_readouts_change_and_the_energy_sum_stays_float64(make_model, molecule):
    model = _model(make_model)
    quantized = quantize_readouts(model, "int8")
    assert quantization_info(model) is None, "the input model is left as it was"
    before = {n: t for n, t in model.state_dict().items() if not n.startswith("readouts.")}
    after = {n: t for n, t in quantized.state_dict().items() if not n.startswith("readouts.")}
    assert before.keys() == after.keys() and all(torch.equal(before[n], after[n]) for n in before)
    out = quantized(collate([molecule, molecule]), precision="bf16-mixed")
    assert out["energy"].dtype == torch.float64 and torch.isfinite(out["forces"]).all()


@pytest.mark.parametrize("mode, readout_mlp, converted", [("int8", 4, "3/3"), ("fp8", 4, "3/3"),
                                                           ("int8-dynamic", 4, "0/3"), ("int8-dynamic", 8, "1/3")])
def test_logs_converted_count(make_model, mode, readout_mlp, converted):
    messages = []
    quantized = quantize_readouts(make_model(torch.float32, readout_mlp=readout_mlp), mode, log=messages.append)
    assert len(messages) == 1 and messages[0].startswith(f"converted {converted} readout layers to {mode}")
    modes = quantization_info(quantized)["layers"]
    assert f"{sum(m != 'none' for m in modes.values())}/{len(modes)}" == converted


@pytest.mark.parametrize("mode", ["int8", "int8-dynamic", "fp8"])
def test_save_load_round_trip_is_bit_identical(make_model, molecule, tmp_path, mode):
    quantized = quantize_readouts(_model(make_model), mode)
    path = lpmace.io.save(quantized, tmp_path / "q.safetensors")
    with safetensors.safe_open(str(path), framework="pt") as f:
        metadata, names = f.metadata(), set(f.keys())
        qdata = f.get_tensor("readouts.1.layers.0.weight.qdata")
    (entry,) = json.loads(metadata["conversions"])
    assert entry == {"name": "readout_quantization", **quantization_info(quantized)} and entry["readout"] == mode
    assert "readouts.1.layers.0.weight" not in names
    assert qdata.dtype == (torch.float8_e4m3fn if mode == "fp8" else torch.int8)
    loaded = lpmace.io.load(path)
    assert quantization_info(loaded) == quantization_info(quantized)
    before, after = quantized(molecule), loaded(molecule)
    assert torch.equal(before["energy"], after["energy"]) and torch.equal(before["forces"], after["forces"])


def test_a_model_with_compressed_species_weights_quantizes_and_round_trips(make_model, molecule, tmp_path):
    model = make_model(torch.float32, readout_mlp=8, species_rank=2, int8_embedding=True)
    quantized = quantize_readouts(model, "int8")
    loaded = lpmace.io.load(lpmace.io.save(quantized, tmp_path / "q.safetensors"))
    assert torch.equal(loaded(molecule)["forces"], quantized(molecule)["forces"])
    assert 0 < float((quantized(molecule)["energy"] - model(molecule)["energy"]).detach().abs()) < 1


def test_calculator_runs_a_quantized_file(make_model, bpa_atoms, tmp_path):
    from lpmace.calculator import Calculator

    quantized = quantize_readouts(_model(make_model), "int8")
    path = lpmace.io.save(quantized, tmp_path / "q.safetensors")
    bpa_atoms.calc = Calculator(path)
    graph = graph_from_configuration(read_configurations(datasets.path("3bpa/test_300K.xyz"))[0], 4.0)
    assert math.isclose(bpa_atoms.get_potential_energy(), float(quantized(graph)["energy"].detach()), rel_tol=1e-12)
    assert bpa_atoms.get_forces().shape == (27, 3)


def test_damaged_quantized_files_are_refused(make_model, tmp_path):
    path = lpmace.io.save(quantize_readouts(_model(make_model), "int8"), tmp_path / "q.safetensors")
    with safetensors.safe_open(str(path), framework="pt") as f:
        metadata, tensors = f.metadata(), {k: f.get_tensor(k) for k in f.keys()}
    conversions = json.loads(metadata["conversions"])
    conversions[0]["layers"]["readouts.0.layers.0"] = "int4"
    bad = tmp_path / "bad_mode.safetensors"
    safetensors.torch.save_file(tensors, str(bad), metadata={**metadata, "conversions": json.dumps(conversions)})
    with pytest.raises(InputError, match="readouts.0.layers.0: unknown mode 'int4'"):
        lpmace.io.load(bad)
    wrong = dict(tensors, **{"readouts.0.layers.0.weight.qdata": tensors["readouts.0.layers.0.weight.qdata"].float()})
    bad = tmp_path / "bad_dtype.safetensors"
    safetensors.torch.save_file(wrong, str(bad), metadata=metadata)
    with pytest.raises(InputError, match="readouts.0.layers.0.weight.qdata torch.float32 \\(expected torch.int8\\)"):
        lpmace.io.load(bad)


def test_without_torchao_plain_models_still_load_and_quantize_says_what_to_install(make_model, tmp_path,
                                                                                   monkeypatch):
    model = _model(make_model)
    quantized_path = lpmace.io.save(quantize_readouts(model, "int8"), tmp_path / "q.safetensors")
    for name in ("torchao", "torchao.quantization"):
        monkeypatch.setitem(sys.modules, name, None)  # import fails as if it were not installed
    plain = lpmace.io.load(lpmace.io.save(model, tmp_path / "m.safetensors"))
    assert quantization_info(plain) is None
    with pytest.raises(InputError, match="need torchao: pip install 'torchao==0.18.0'"):
        quantize_readouts(model, "int8")
    with pytest.raises(InputError, match="q.safetensors: quantized readouts need torchao"):
        lpmace.io.load(quantized_path)


def test_fp8_dynamic_is_refused_without_a_float8_gpu(make_model):
    with pytest.raises(InputError, match="compute capability >= 8.9"):
        quantize_readouts(_model(make_model), "fp8-dynamic")
    with pytest.raises(InputError, match="unknown readout quantization 'int4'"):
        quantize_readouts(_model(make_model), "int4")


# ---- command line ----------------------------------------------------------------------------------

@pytest.fixture
def saved(make_model, tmp_path):
    return lpmace.io.save(_model(make_model), tmp_path / "model.safetensors")


def _error_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("lpmace: error: ")
    return err[0]


def test_cli_quantize_writes_a_model_that_eval_runs(saved, tmp_path, capsys):
    out = tmp_path / "q.safetensors"
    assert main(["quantize", str(saved), str(out), "--readout", "fp8"]) == 0
    printed = capsys.readouterr().out
    assert "converted 3/3 readout layers to fp8" in printed and f"wrote {out}" in printed
    assert quantization_info(lpmace.io.load(out))["readout"] == "fp8"
    assert main(["info", str(out)]) == 0
    info = capsys.readouterr().out
    assert "readout quantization: fp8 (torchao " in info and "readouts.0.layers.0: fp8" in info
    data = tmp_path / "two.xyz"
    data.write_text("".join(datasets.path("3bpa/test_300K.xyz").read_text().splitlines(True)[:58]))
    assert main(["eval", str(out), str(data)]) == 0
    assert "two.xyz" in capsys.readouterr().out


@pytest.mark.parametrize("case", ["mode", "missing", "exists", "same", "suffix", "twice"])
def test_cli_quantize_refuses_bad_input(saved, tmp_path, capsys, case):
    out = tmp_path / "q.safetensors"
    args = {"mode": [str(saved), str(out), "--readout", "int4"],
            "missing": [str(tmp_path / "nope.safetensors"), str(out)],
            "exists": [str(saved), str(saved)],
            "same": [str(saved), str(saved), "--force"],
            "suffix": [str(saved), str(tmp_path / "q.pt")],
            "twice": [str(out), str(tmp_path / "qq.safetensors")]}[case]
    if case == "twice":
        assert main(["quantize", str(saved), str(out)]) == 0
        capsys.readouterr()
    assert main(["quantize", *args]) == 2
    line = _error_line(capsys)
    expected = {"mode": "--readout 'int4'", "missing": "nope.safetensors", "exists": "pass --force",
                "same": "is the input model",
                "suffix": "must end in .safetensors", "twice": "already quantized"}[case]
    assert expected in line
    if case != "twice":
        assert not out.exists()


# ---- the bench section -------------------------------------------------------------------------------

def test_quick_experiment_rows():
    from lpmace.bench import quantize as experiment

    result = experiment.run(device="cpu", quick=True, progress=False)
    rows = {row["mode"]: row for row in result["rows"]}
    assert list(rows) == list(experiment.MODES) and all(set(r) == set(experiment.COLUMNS) for r in rows.values())
    none, int8, fp8 = rows["none"], rows["int8"], rows["fp8"]
    assert none["dE_rms_meV_atom"] == 0 and none["dF_rel_rmse"] == 0
    assert none["time_ratio"] == 1 and none["readout_time_ratio"] == 1
    for row in (none, int8, rows["int8-dynamic"], fp8):
        assert row["supported"] and all(math.isfinite(row[c]) and row[c] >= 0 for c in
                                        ("E_rmse_meV_atom", "F_rmse_meV_A", "ms_per_config", "time_ratio",
                                         "readout_ms_4096x128", "readout_time_ratio"))
    # int8 rounds each weight by <= 1/254 of its channel's largest: forces move, by well under 1 %
    assert 0 < int8["dF_rel_rmse"] < 1e-2
    # float8_e4m3fn keeps 3 mantissa bits (relative step 1/16) against int8's 1/255 of the channel maximum
    assert fp8["dF_rel_rmse"] > int8["dF_rel_rmse"]
    # 1 byte per weight plus a float32 scale per output channel, against 4 bytes per weight
    assert int8["readout_bytes"] < none["readout_bytes"] / 2 and int8["model_bytes"] < none["model_bytes"]
    assert int8["converted"] == "3/3" and rows["int8-dynamic"]["converted"] == "1/3"
    assert rows["fp8-dynamic"]["supported"] is False and "compute capability" in rows["fp8-dynamic"]["note"]
    assert result["settings"] == {"model": "random tiny model (16 channels, readout MLP 16)", "configs": 20,
                                  "policy": "fp32"}


def test_fp8_dynamic_file_has_one_scale_per_tensor_and_passes_the_shape_check(make_model, tmp_path):
    """fp8-dynamic stores a per-tensor scale [1, 1]; its file must pass load's shape check (on a CPU
    load then refuses the mode itself, naming the GPU it needs)."""
    from torchao.quantization import PerTensor
    from torchao.quantization.quantize_.workflows import Float8Tensor

    from lpmace import quantize as q

    model = make_model(torch.float32, readout_mlp=16, channels=16)
    q.swap_readouts(model)
    layer = model.get_submodule("readouts.1.layers.0")  # the C -> 16 layer fp8-dynamic converts
    layer.weight = torch.nn.Parameter(Float8Tensor.from_hp(layer.weight.detach(), granularity=PerTensor()),
                                      requires_grad=False)
    model.readouts[1].modes[0], model.readouts[1].dynamic[0] = "fp8-dynamic", True
    for readout in model.readouts:
        readout.requested = "fp8-dynamic"
    with pytest.raises(InputError, match="readouts.1.layers.0.weight: a Float8Tensor, not a plain tensor"):
        lpmace.io.save(model, tmp_path / "unrecorded.safetensors")  # converted, but model.conversions does not say so
    record(model, "readout_quantization", **q.quantization_info(model))  # as quantize_readouts does on a GPU
    path = lpmace.io.save(model, tmp_path / "fp8dyn.safetensors")
    with safetensors.safe_open(str(path), "pt") as f:
        assert tuple(f.get_tensor("readouts.1.layers.0.weight.scale").shape) == (1, 1)
    with pytest.raises(InputError, match="compute capability"):
        lpmace.io.load(path)
