"""Section "quantize" of `lpmace bench`: what int8 / float8 readouts (torchao, `lpmace.quantize`) do to accuracy,
model bytes and speed.

One model, every readout mode (none = the float32 model, int8, int8-dynamic, fp8, fp8-dynamic),
each evaluated on 3BPA test configurations (300 K, embedded) under the fp32 policy:
    - energy and force RMSE against the DFT labels;
    - the change against the unquantized model (`lpmace.evaluate.errors_against`): RMS energy change
      (meV/atom) and force change (RMSE relative to the RMS force, and the largest component, meV/Å);
    - bytes of the model file and of its readout tensors;
    - inference time per configuration (energy + forces, one configuration per call, median) and
      its ratio to the unquantized model's (median of ratios over interleaved rounds);
    - the readout alone at a real MACE size (128 channels -> 16 -> 1, 4096 atoms, forward and the
      input gradient the forces need), where the readout matrices are as large as they get.
A mode that cannot run on the device (fp8-dynamic without an sm_89+ GPU) is a row saying why.

quick: a random tiny model (16 channels, readout MLP 16, 3BPA E0s), 20 test configurations.
full: a model of the demo's size (32 channels, L = 1, correlation 3) trained for a few epochs on the
embedded 3BPA training set (4 epochs), or the model given (`lpmace bench --model`); all 300 test
configurations. `run` returns the section of results.json: {"settings": {model, configs, policy},
"rows": one per mode}; docs/experiments/quantize.md says what the rows showed.
"""

from __future__ import annotations

import pathlib
import tempfile
from typing import Optional

import numpy as np
import torch

NAME = "quantize"
MODES = ("none", "int8", "int8-dynamic", "fp8", "fp8-dynamic")
COLUMNS = [
    "mode", "supported", "converted", "E_rmse_meV_atom", "F_rmse_meV_A", "dE_rms_meV_atom", "dF_rel_rmse",
    "dF_max_meV_A", "model_bytes", "readout_bytes", "ms_per_config", "time_ratio", "readout_ms_4096x128",
    "readout_time_ratio", "note",
]
_TINY = dict(r_max=4.0, num_bessel=4, max_ell=2, channels=16, max_L=1, correlation=(2, 2), readout_mlp=16,
             radial_mlp=(16, 16), avg_num_neighbors=8.0)
_TRAIN = ("model.channels=32", "model.max_L=1", "model.correlation=3", "batch_size=5", "valid_batch_size=32")


def _quick_model(seed: int):
    from lpmace import datasets
    from lpmace.data import isolated_atom_energies, read_configurations
    from lpmace.model import MACE, MACEConfig

    e0s = isolated_atom_energies(read_configurations(datasets.path("3bpa/iso_atoms.xyz"), forces_key=None))
    torch.manual_seed(seed)
    zs = tuple(sorted(e0s))
    return MACE(MACEConfig(atomic_numbers=zs, E0s=tuple(e0s[z] for z in zs), **_TINY)).float()


def _trained_model(device: str, seed: int, progress: bool, folder: pathlib.Path, epochs: int = 4):
    from lpmace.io import load
    from lpmace.train.config import load_train_config
    from lpmace.train.trainer import Trainer

    cfg = load_train_config(None, (*_TRAIN, f"epochs={epochs}", f"seed={seed + 1}", f"device={device}",
                                   f"output_dir={folder / 'train'}", "test_files=[]", f"progress={progress}"))
    Trainer(cfg, log=print if progress else (lambda message: None)).run()
    return load(folder / "train" / "model.safetensors", device=device)


def _readout_bytes(model) -> int:
    from lpmace.quantize import packed_state

    return sum(t.numel() * t.element_size() for n, t in packed_state(model).items() if n.startswith("readouts."))


def _predict(model, graphs, device):
    """`Metrics` of `model` on `graphs` under fp32."""
    from lpmace.evaluate import evaluate

    return evaluate(model, graphs, precision="fp32", batch_size=16, device=device)


def _interleaved_times(calls: dict, device: str, rounds: int, seed: int, warmup: int = 2) -> dict:
    """{name: (median ms, median over rounds of ms / ms of the first call)} of zero-argument calls.

    Each round times every call once, in a shuffled order, so that load from other processes on a
    shared machine falls on all of them alike; the per-round ratio to the first call (the
    unquantized model) is the steadier number when that load drifts.
    """
    from lpmace.bench.measure import timed

    for call in calls.values():
        for _ in range(warmup):
            call()
    names, rng = list(calls), np.random.default_rng(seed)
    times = {name: [] for name in names}
    for _ in range(rounds):
        for i in rng.permutation(len(names)):
            times[names[i]].append(timed(calls[names[i]], device, repeats=1, warmup=0)["median_ms"])
    first = np.array(times[names[0]])
    return {name: (float(np.median(t)), float(np.median(np.array(t) / first))) for name, t in times.items()}


def _model_pass(model, graphs: list):
    """One call per configuration: energy and forces under fp32."""
    def one_pass():
        for g in graphs:
            with torch.enable_grad():
                model(g, precision="fp32", compute_forces=True)

    return one_pass


def _readout_step(mode: str, device: str, seed: int):
    """The last readout of a 128-channel model (128 -> 16 -> 1) on 4096 atoms: forward and the
    gradient with respect to its input (what forces need)."""
    from lpmace.model import MACE, MACEConfig
    from lpmace.quantize import quantize_readouts

    torch.manual_seed(seed)
    model = MACE(MACEConfig(atomic_numbers=(1,), channels=128, max_L=0, max_ell=1, correlation=1, readout_mlp=16,
                            radial_mlp=(8,))).float().to(device)
    readout = model.readouts[-1] if mode == "none" else quantize_readouts(model, mode, log=lambda m: None).readouts[-1]
    h = torch.randn(4096, 128, 1, device=device, requires_grad=True)

    def step():
        torch.autograd.grad(readout(h, torch.float32).sum(), h)

    return step


def _row(mode, **values) -> dict:
    row = {c: None for c in COLUMNS}
    row.update(mode=mode, **values)
    return row


def run(*, device: str, quick: bool, progress: bool, seed: int = 0, model=None,
        origin: Optional[str] = None) -> dict:
    """The rows of every mode; `model` (an lpmace MACE, called `origin` in the settings) replaces the
    quick or trained model."""
    from lpmace import datasets
    from lpmace.data import graph_from_configuration, read_configurations
    from lpmace.errors import InputError
    from lpmace.evaluate import errors_against
    from lpmace.io import load, save
    from lpmace.quantize import quantization_info, quantize_readouts, unsupported_reason

    with tempfile.TemporaryDirectory() as tmp:
        folder = pathlib.Path(tmp)
        if model is not None:
            base, origin = model.to(device), origin or "the given model"
        elif quick:
            base, origin = _quick_model(seed).to(device), "random tiny model (16 channels, readout MLP 16)"
        else:
            base = _trained_model(device, seed, progress, folder)
            origin = "32-channel model (L = 1, correlation 3) trained 4 epochs on 3BPA"
        if quantization_info(base) is not None:
            raise InputError(f"{origin}: its readouts are already quantized; give the unquantized model")
        base = base.float()
        configs = read_configurations(datasets.path("3bpa/test_300K.xyz"))[: 20 if quick else None]
        graphs = [graph_from_configuration(c, base.config.r_max) for c in configs]
        timing_graphs = [g.to(device) for g in graphs[: 5 if quick else 10]]
        repeats = 3 if quick else 11

        rows, reference, passes, readout_steps = [], None, {}, {}
        for mode in MODES:
            reason = None if mode == "none" else unsupported_reason(mode, device)
            if reason:
                rows.append(_row(mode, supported=False, note=reason))
                continue
            messages = []
            try:
                current = base if mode == "none" else quantize_readouts(base, mode, log=messages.append)
                metrics = _predict(current, graphs, device)
            except Exception as error:  # a mode torchao cannot run here is a row, not the end of the experiment
                if mode == "none":
                    raise
                rows.append(_row(mode, supported=False, note=f"failed: {type(error).__name__}: {error}"))
                continue
            if reference is None:
                reference = metrics.predictions()
            change = errors_against(metrics.predictions(), reference)
            path = save(current, folder / f"{mode}.safetensors")
            reloaded = _predict(load(path, device=device), graphs[:2], device).energy_per_atom_pred
            if not np.allclose(reloaded, metrics.energy_per_atom_pred[: len(reloaded)], rtol=1e-6, atol=1e-9):
                raise RuntimeError(f"{mode}: the saved file does not give the evaluated energies back")
            info = quantization_info(current)
            converted = "0/0" if info is None else (
                f"{sum(m != 'none' for m in info['layers'].values())}/{len(info['layers'])}")
            rows.append(_row(
                mode, supported=True, converted=converted,
                E_rmse_meV_atom=metrics.energy_rmse_mev_per_atom, F_rmse_meV_A=metrics.force_rmse_mev_per_A,
                dE_rms_meV_atom=change["energy_rmse_mev_per_atom"], dF_rel_rmse=change["force_rel_rmse"],
                dF_max_meV_A=change["force_max_mev_per_A"],
                model_bytes=path.stat().st_size, readout_bytes=_readout_bytes(current),
                note="; ".join(messages),
            ))
            passes[mode] = _model_pass(current, timing_graphs)
            readout_steps[mode] = _readout_step(mode, device, seed)
            if progress:
                print(f"quantize: {mode} evaluated")
        per_pass = _interleaved_times(passes, device, repeats, seed)
        readout = _interleaved_times(readout_steps, device, 5 * repeats, seed)
        for row in rows:
            if row["supported"]:
                ms, row["time_ratio"] = per_pass[row["mode"]]
                row["ms_per_config"] = ms / len(timing_graphs)
                row["readout_ms_4096x128"], row["readout_time_ratio"] = readout[row["mode"]]
    return {"settings": {"model": origin, "configs": len(graphs), "policy": "fp32"}, "rows": rows}
