"""Fine-tuning a mace-torch foundation model with `lpmace train`.

An MPA-like model (density interaction blocks, ZBL repulsion, Agnesi transform) of H, C, O and Si,
saved by mace-torch 0.3.16 with torch.save, starts a run from its `.model` (only with
trust_mace_model) or from its converted `.safetensors`, and is fine-tuned for 2 epochs on bulk Si
(Zuo et al. 2020): the data's elements are a subset of the model's, which keeps all four, and
the weights of H, C and O that depend on the element stay as they were. The held-out Si force error must fall, in fp32 and in bf16-mixed; in fp64 the run starts from exactly
the imported weights, so its first evaluation is mace-torch's.
"""

import os

import pytest
import torch

pytest.importorskip("mace.modules")

from test_mace_torch_foundation import reference  # noqa: E402
from test_mace_torch_foundation_blocks import build, mh_like  # noqa: E402

from lpmace.cli import main  # noqa: E402
from lpmace.data import collate, graph_from_configuration, read_configurations  # noqa: E402
from lpmace.errors import InputError  # noqa: E402
from lpmace.evaluate import evaluate  # noqa: E402
from lpmace.interop import from_mace_torch  # noqa: E402
from lpmace.io import load  # noqa: E402
from lpmace.train import Trainer, load_train_config  # noqa: E402

from shared_data import shared_data_dir  # noqa: E402

Z = [1, 6, 8, 14]
SI_E0 = -4.6  # eV: near this data set's energy per atom (-295.5 eV / 64 atoms), as a trained model's would be
SI = dict(energy_key="energy", forces_key="force")
TRAIN_CONFIGS = 4  # 3 train (one step each, batch 1) and 1 valid: two CPU epochs in seconds


def mpa_like():
    model = build(Z, "density", "density_residual", pair_repulsion=True, distance_transform="Agnesi")
    with torch.no_grad():
        model.atomic_energies_fn.atomic_energies[..., Z.index(14)] = SI_E0
    return model


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """The mace-torch model (.model and converted .safetensors), the Si training file, held-out Si."""
    folder = tmp_path_factory.mktemp("finetune")
    mace = mpa_like()
    torch.save(mace, folder / "mpa.model")
    assert main(["convert", str(folder / "mpa.model"), str(folder / "mpa.safetensors")]) == 0
    lines = (shared_data_dir() / "si_zuo2020" / "Si_train.xyz").read_text().splitlines(keepends=True)
    start = 0
    for _ in range(TRAIN_CONFIGS):
        start += int(lines[start]) + 2
    (folder / "si.xyz").write_text("".join(lines[:start]))
    held_out = read_configurations(shared_data_dir() / "si_zuo2020" / "Si_test.xyz", index=":3", **SI)
    graphs = [graph_from_configuration(c, 4.5) for c in held_out]
    return dict(folder=folder, mace=mace, held_out=graphs)


def run_config(files, foundation, output, *extra):
    folder = files["folder"]
    return load_train_config(None, (
        f"foundation_model={folder / foundation}", f"train_file={folder / 'si.xyz'}", "energy_key=energy",
        "forces_key=force", "stress_key=null", "valid_fraction=0.25", "test_files=[]", "epochs=2",
        "batch_size=1", "lr=0.01", "progress=false", f"output_dir={folder / output}") + extra)


@pytest.mark.parametrize("foundation, precision", [("mpa.model", "fp32"), ("mpa.safetensors", "bf16-mixed")])
def test_fine_tuning_lowers_the_held_out_si_force_error(files, foundation, precision):
    trust = ("trust_mace_model=true",) if foundation.endswith(".model") else ()
    cfg = run_config(files, foundation, f"run-{precision}", f"precision={precision}", *trust)
    trainer = Trainer(cfg, log=lambda m: None)
    assert trainer.model.config.atomic_numbers == tuple(Z)  # Si data: the model keeps H, C and O
    trainer.run()
    tuned = load(files["folder"] / f"run-{precision}" / "model.safetensors")
    assert tuned.config.atomic_numbers == tuple(Z)
    start = from_mace_torch(files["mace"]).to(tuned.embedding.dtype).state_dict()
    for name, weight in tuned.state_dict().items():  # H, C, O keep their rows (weight decay would move them)
        if name.startswith("embedding") or ".contraction.weights." in name or ".skip.weights." in name:
            assert torch.equal(weight[:3], start[name][:3]), name
            assert not torch.equal(weight[3], start[name][3]), name  # while Si's trained
    before = evaluate(from_mace_torch(files["mace"]), files["held_out"], precision="fp64").force_rmse_mev_per_A
    after = evaluate(tuned, files["held_out"], precision="fp64").force_rmse_mev_per_A
    assert after < 0.99 * before, (before, after)


def test_an_fp64_run_starts_from_the_imported_weights(files):
    cfg = run_config(files, "mpa.model", "run-fp64", "precision=fp64", "trust_mace_model=true")
    trainer = Trainer(cfg, log=lambda m: None)
    imported = from_mace_torch(files["mace"]).state_dict()
    for name, value in trainer.model.state_dict().items():
        # the import's change of basis (a least-squares solve) may round differently run to run with
        # the BLAS thread count: equal to float64 round-off, not bit for bit
        torch.testing.assert_close(value, imported[name], rtol=1e-12, atol=1e-14, msg=lambda m: f"{name}: {m}")
    held_out = collate(files["held_out"])
    first = evaluate(trainer.model, [held_out], precision="fp64").energy_pred
    want = reference(files["mace"], held_out, Z)["energy"].detach().numpy()
    assert abs(first - want).max() / abs(want).min() < 1e-9, (first, want)


def test_an_untrusted_mace_torch_model_is_refused_in_one_line(files, capsys):
    folder = files["folder"]
    run = folder / "run-untrusted"
    assert main(["train", os.devnull, f"foundation_model={folder / 'mpa.model'}", f"train_file={folder / 'si.xyz'}",
                 "energy_key=energy", "forces_key=force", "stress_key=null", "test_files=[]",
                 f"output_dir={run}"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("lpmace: error: foundation_model ")
    assert str(folder / "mpa.model") in err and "trust_mace_model: true" in err
    assert not run.exists()


def test_a_multi_head_model_needs_foundation_head(files):
    folder = files["folder"]
    mh = mh_like(Z)
    torch.save(mh, folder / "mh.model")
    trust = ("trust_mace_model=true",)
    with pytest.raises(InputError, match=r"mh.model: .*2 heads \(omat_pbe, spice_wB97M\).*foundation_head") as err:
        Trainer(run_config(files, "mh.model", "run-mh", *trust), log=lambda m: None)
    assert "\n" not in str(err.value)
    trainer = Trainer(run_config(files, "mh.model", "run-mh", "foundation_head=spice_wB97M", *trust),
                      log=lambda m: None)
    assert trainer.model.config.E0s == tuple(mh.atomic_energies_fn.atomic_energies[1].tolist())
    assert trainer.model.config.scale == float(mh.scale_shift.scale[1])
