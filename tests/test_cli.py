"""The `lpmace` command line: info, convert, and one-line errors with exit status 2."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import torch

import lpmace.io
from lpmace.cli import build_parser, main
from lpmace.errors import InputError


def _run(*args: str) -> subprocess.CompletedProcess:
    """`lpmace ARGS` in a fresh interpreter (what a user's shell would see)."""
    return subprocess.run(
        [sys.executable, "-m", "lpmace.cli", *args], capture_output=True, text=True, timeout=300
    )


@pytest.fixture
def saved(model, tmp_path):
    return lpmace.io.save(model, tmp_path / "model.safetensors")


def test_info_prints_config_and_parameter_count(model, saved, capsys):
    assert main(["info", str(saved)]) == 0
    out = capsys.readouterr().out
    n_parameters = sum(p.numel() for p in model.parameters())
    assert f"parameters: {n_parameters:,} (float64)" in out
    assert f"r_max: {model.config.r_max}" in out
    assert f"atomic_numbers: {list(model.config.atomic_numbers)}" in out


def _assert_one_line_error(result: subprocess.CompletedProcess, *fragments: str) -> None:
    assert result.returncode == 2, result
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("lpmace: error: ")
    assert "Traceback" not in result.stderr
    for fragment in fragments:
        assert fragment in lines[0]


def test_info_on_missing_file_is_one_line_and_exit_2(tmp_path):
    missing = tmp_path / "missing.safetensors"
    _assert_one_line_error(_run("info", str(missing)), str(missing))


def test_info_on_a_foreign_file_is_one_line_and_exit_2(tmp_path):
    path = tmp_path / "junk.safetensors"
    path.write_bytes(b"\x00not a safetensors file\n at all")
    _assert_one_line_error(_run("info", str(path)), str(path))


def test_convert_missing_input_is_one_line_and_exit_2(tmp_path):
    missing = tmp_path / "missing.model"
    _assert_one_line_error(_run("convert", str(missing), str(tmp_path / "out.safetensors")), str(missing))


def test_convert_of_a_broken_model_file_warns_then_errors(tmp_path):
    pytest.importorskip("mace")
    source = tmp_path / "broken.model"
    source.write_bytes(b"garbage, not a pickle")
    result = _run("convert", str(source), str(tmp_path / "out.safetensors"))
    warning, error = result.stderr.strip().splitlines()
    assert warning.startswith("lpmace: warning: ") and "trust" in warning
    _assert_one_line_error(subprocess.CompletedProcess(result.args, result.returncode, "", error), str(source))
    assert not (tmp_path / "out.safetensors").exists()


def test_convert_refuses_to_overwrite(saved, tmp_path, capsys):
    source = tmp_path / "in.model"
    source.write_bytes(b"never read")
    before = saved.read_bytes()
    assert main(["convert", str(source), str(saved)]) == 2
    err = capsys.readouterr().err
    assert "--force" in err and "warning" not in err  # refused before anything was unpickled
    assert saved.read_bytes() == before


def test_convert_wants_a_safetensors_name(tmp_path, capsys):
    source = tmp_path / "in.model"
    source.write_bytes(b"never read")
    assert main(["convert", str(source), str(tmp_path / "out.model")]) == 2
    assert ".safetensors" in capsys.readouterr().err


def test_help_lists_every_command():
    """Every module of lpmace/commands is a registered command, and --help lists each with its summary."""
    import re
    from pathlib import Path

    import lpmace.commands
    from lpmace.cli import COMMANDS

    modules = {p.stem for p in Path(lpmace.commands.__file__).parent.glob("*.py") if not p.stem.startswith("_")}
    assert set(COMMANDS) == modules
    result = _run("--help")
    assert result.returncode == 0
    listing = result.stdout.split("COMMAND\n", 1)[1].split("\noptions:", 1)[0]
    # argparse indents each command by 4 spaces; its summary follows on the line or on the next ones
    listed = re.findall(r"^ {4}(\w+)(?: +\S|\n {6,}\S)", listing, flags=re.M)
    assert listed == list(COMMANDS)



def test_help_and_argument_errors_import_no_torch():
    """Building the parser, every subcommand's --help and an argument error stay off torch (cli.py's
    promise), in a fresh interpreter so that this process's own imports cannot hide one."""
    probe = """
import contextlib, io, sys
from lpmace.cli import COMMANDS, build_parser
parser = build_parser()
for args in (["--help"], *([name, "--help"] for name in COMMANDS), ["bench", "--size", "huge"]):
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        try:
            parser.parse_args(args)
        except SystemExit:
            pass
print(sorted(m for m in ("torch", "numpy", "ase") if m in sys.modules))
"""
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


# --- interop: needs mace-torch (installed in CI by scripts/setup.sh) -------------------------------

# Isolated-atom energies of 3BPA (eV), as in the embedded iso_atoms.xyz.
E0S = {1: -13.587222780835477, 6: -1029.4889999855063, 7: -1484.9814568572233, 8: -2041.9816003861047}


def _mace_torch_model(seed: int = 0):
    """A tiny mace-torch ScaleShiftMACE for H, C, N, O; float64 if the default dtype is float64."""
    from e3nn import o3
    from mace import modules

    torch.manual_seed(seed)
    interaction = modules.interaction_classes["RealAgnosticResidualInteractionBlock"]
    return modules.ScaleShiftMACE(
        r_max=4.0, num_bessel=4, num_polynomial_cutoff=5, max_ell=2,
        interaction_cls=interaction, interaction_cls_first=interaction,
        num_interactions=2, num_elements=4, hidden_irreps=o3.Irreps("8x0e + 8x1o"),
        MLP_irreps=o3.Irreps("4x0e"), atomic_energies=np.array(list(E0S.values())),
        avg_num_neighbors=8.0, atomic_numbers=list(E0S), correlation=3,
        gate=torch.nn.functional.silu, radial_MLP=[8, 8], radial_type="bessel",
        atomic_inter_scale=0.7, atomic_inter_shift=0.1,
    )


def _mace_torch_energies(model, atoms_list) -> np.ndarray:
    """Energies of `atoms_list` from a float64 mace-torch model, through mace-torch's own data path."""
    from mace import data, tools
    from mace.tools import torch_geometric

    z_table = tools.AtomicNumberTable(list(E0S))
    keys = data.KeySpecification(info_keys={}, arrays_keys={})
    graphs = [
        data.AtomicData.from_config(
            data.config_from_atoms(atoms, key_specification=keys), z_table=z_table, cutoff=4.0
        )
        for atoms in atoms_list
    ]
    batch = next(iter(torch_geometric.dataloader.DataLoader(graphs, batch_size=len(graphs), shuffle=False)))
    out = model(batch.to_dict(), training=False, compute_force=True)
    return out["energy"].detach().numpy()


def test_convert_round_trip_matches_mace_torch(tmp_path, default_dtype_float64, capsys):
    pytest.importorskip("mace")
    import ase.io

    from lpmace import datasets
    from lpmace.calculator import Calculator

    mace_model = _mace_torch_model()
    source, target = tmp_path / "tiny.model", tmp_path / "tiny.safetensors"
    torch.save(mace_model, source)
    molecules = ase.io.read(datasets.path("3bpa/test_300K.xyz"), index=":3")
    expected = _mace_torch_energies(mace_model, molecules)

    assert main(["convert", str(source), str(target)]) == 0
    err = capsys.readouterr().err
    assert "warning" in err and "unpickl" in err and "trust" in err

    converted = lpmace.io.load(target)
    energies = []
    for atoms in molecules:
        atoms.calc = Calculator(converted)
        energies.append(atoms.get_potential_energy())
    np.testing.assert_allclose(energies, expected, rtol=1e-9, atol=0)
    assert main(["convert", str(source), str(target), "--force"]) == 0


def _fail_evaluation_with(monkeypatch, fail) -> None:
    """Make `lpmace eval`'s evaluation call `fail` (reading the model and data still happen)."""
    import lpmace.evaluate

    monkeypatch.setattr(lpmace.evaluate, "evaluate", lambda *args, **kwargs: fail())


@pytest.mark.parametrize(
    "fail, fragments",
    [
        # what the CPU allocator raises for a structure too big for the machine
        (lambda: torch.empty(2**50, dtype=torch.uint8), ("out of CPU memory", "1.05e+06 GiB", "--batch-size")),
        (lambda: (_ for _ in ()).throw(torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB. "
                                                               "GPU 0 has a total capacity of 79 GiB")),
         ("out of GPU memory", "20.00 GiB", "smaller batch")),
        (lambda: (_ for _ in ()).throw(MemoryError()), ("out of CPU memory",)),
    ],
)
def test_out_of_memory_is_one_line_and_exit_2(saved, bpa_test_path, monkeypatch, capsys, fail, fragments):
    _fail_evaluation_with(monkeypatch, fail)
    assert main(["eval", str(saved), str(bpa_test_path)]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and err.startswith("lpmace: error: out of "), err
    for fragment in fragments:
        assert fragment in err


def test_other_runtime_errors_still_show_their_traceback(saved, bpa_test_path, monkeypatch):
    _fail_evaluation_with(monkeypatch, lambda: (_ for _ in ()).throw(RuntimeError("a bug")))
    with pytest.raises(RuntimeError, match="a bug"):
        main(["eval", str(saved), str(bpa_test_path)])


def test_ctrl_c_is_one_line_and_exit_130(saved, bpa_test_path, monkeypatch, capsys):
    _fail_evaluation_with(monkeypatch, lambda: (_ for _ in ()).throw(KeyboardInterrupt()))
    assert main(["eval", str(saved), str(bpa_test_path)]) == 130
    assert capsys.readouterr().err == "lpmace: interrupted\n"


@pytest.mark.parametrize("command", ["eval", "demo", "train"])
def test_unknown_device_is_one_line_and_exit_2(saved, bpa_test_path, tmp_path, capsys, command):
    config = tmp_path / "train.yaml"
    config.write_text(f"train_file: {bpa_test_path}\noutput_dir: {tmp_path / 'run'}\n")
    argv = {"eval": ["eval", str(saved), str(bpa_test_path)], "demo": ["demo", "--out", str(tmp_path / "demo")],
            "train": ["train", str(config)]}[command]
    assert main(argv + ["--device", "gpu"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("lpmace: error: ") and "'gpu'" in err and "auto" in err and len(err.splitlines()) == 1
    assert not (tmp_path / "run").exists() and not (tmp_path / "demo").exists()


def test_device_defaults_to_auto_and_help_says_so(monkeypatch, capsys):
    from lpmace.devices import resolve_device

    from lpmace.train.config import TrainConfig

    assert TrainConfig.__dataclass_fields__["device"].default == "auto"
    parser = build_parser()
    for argv in (["eval", "M", "D"], ["md", "S", "--model", "M"], ["bench"], ["quantize", "M", "O"], ["demo"]):
        assert parser.parse_args(argv).device == "auto", argv[0]
    with pytest.raises(SystemExit):
        main(["eval", "--help"])
    assert "default: auto" in capsys.readouterr().out
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert resolve_device("auto") == torch.device("cuda")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device("auto") == torch.device("cpu")
    with pytest.raises(InputError, match="--device cuda: CUDA is not available"):
        resolve_device("cuda")
