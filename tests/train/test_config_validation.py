"""Training configs: every bad value is refused before any data is read, in one line that names
the key, the value and where it was set (the YAML file or the `key=value` override)."""

import re

import pytest
import yaml

from lpmace import datasets
from lpmace.cli import build_parser, main
from lpmace.errors import InputError
from lpmace.train import Trainer, load_train_config

# Settings that make the CLI cases fail fast if a bad value slipped through: the run would stop at
# the missing training file, with a message that does not name the key under test.
MISSING_DATA = "train_file: /nonexistent/train.xyz\ntest_files: []\n"

BAD_VALUES = [  # key, value (YAML), fragment of the message
    ("clip_grad", "-1", "clip_grad must be a finite number > 0, or null"),
    ("clip_grad", ".inf", "clip_grad must be a finite number > 0"),
    ("forces_weight", "-1000", "forces_weight must be a finite number >= 0, got -1000.0"),
    ("energy_weight", ".nan", "energy_weight must be a finite number >= 0"),
    ("stage_two_forces_weight", "-1", "stage_two_forces_weight must be a finite number >= 0"),
    ("stage_two_epoch", "0", "stage_two_epoch must be an integer >= 1"),
    ("weight_decay", "-1", "weight_decay must be a finite number >= 0"),
    ("loss_scale_init", "0", "loss_scale_init must be a finite number > 0"),
    ("lr", ".inf", "lr must be a finite number > 0"),
    ("lr", "abc", "lr must be a number, got 'abc'"),
    ("lr", "'1e-3'", "lr must be a number, got '1e-3'"),  # quoted: the user asked for a string
    ("scheduler_factor", "2", "scheduler_factor must be in (0, 1)"),
    ("scheduler_factor", "0", "scheduler_factor must be in (0, 1)"),
    ("scheduler_patience", "-1", "scheduler_patience must be an integer >= 0"),
    ("huber_delta", "0", "huber_delta must be a finite number > 0"),
    ("ema_decay", "1", "ema_decay must be in [0, 1)"),
    ("valid_fraction", "1", "valid_fraction must be in [0, 1)"),
    ("epochs", "1.5", "epochs must be an integer, got 1.5"),
    ("epochs", "0", "epochs must be an integer >= 1"),
    ("batch_size", "true", "batch_size must be an integer, got True"),
    ("eval_interval", "0", "eval_interval must be an integer >= 1"),
    ("seed", "-1", "seed must be an integer >= 0"),
    ("max_time", "0", "max_time must be > 0 seconds"),
    ("amsgrad", "1", "amsgrad must be true or false, got 1"),
    ("test_files", "[1, 2]", "test_files must be a list of strings"),
    ("output_dir", "''", "output_dir must be a non-empty string"),
    ("loss", "l3", "loss must be one of mse, huber, got 'l3'"),
    ("backend", "fast", "backend must be one of auto, reference"),
    ("precision", "bf17", "unknown precision 'bf17'"),
    ("model.channels", "eight", "model.channels must be an integer, got 'eight'"),
    ("model.channels", "8.5", "model.channels must be an integer, got 8.5"),
    ("model.channels", "0", "channels must be >= 1, got 0"),
    ("model.max_L", "5", "max_L <= max_ell, got max_L=5"),
    ("model.radial_mlp", "[0, 64]", "radial_mlp widths must be >= 1"),
    ("model.r_max", ".inf", "r_max and avg_num_neighbors must be finite and positive"),
    ("model.correlation", "[3, 3, 3]", "correlation (3, 3, 3) must give one order >= 1 per interaction"),
    ("model.species_rank", "0", "model.species_rank must be an integer >= 1 or null, got 0"),
    ("model.int8_embedding", "2", "model.int8_embedding must be true or false, got 2"),
    ("model.chanels", "8", "unknown model key(s): model.chanels"),
]


def _yaml_setting(key: str, value: str) -> str:
    if key.startswith("model."):
        return f"model:\n  {key.split('.', 1)[1]}: {value}\n"
    return f"{key}: {value}\n"


@pytest.mark.parametrize("source", ["file", "override"])
@pytest.mark.parametrize("key, value, fragment", BAD_VALUES)
def test_bad_value_is_refused_naming_key_value_and_source(tmp_path, source, key, value, fragment):
    config = tmp_path / "train.yaml"
    if source == "file":
        config.write_text(_yaml_setting(key, value))
        overrides, where = (), f"{config}: "
    else:
        config.write_text("epochs: 3\n")
        overrides, where = (f"{key}={value}",), f"override {key}={value}: "
    with pytest.raises(InputError) as err:
        load_train_config(str(config), overrides)
    assert str(err.value).startswith(where)
    assert fragment in str(err.value)


def test_energy_and_forces_weights_both_zero_are_refused_naming_both_overrides(tmp_path):
    with pytest.raises(InputError) as err:
        load_train_config(None, ("energy_weight=0", "forces_weight=0.0"))
    assert str(err.value).startswith("override energy_weight=0, override forces_weight=0.0: ")
    assert "both 0" in str(err.value)
    # the stage-two weights only count when stage two is on
    assert load_train_config(None, ("stage_two_energy_weight=0", "stage_two_forces_weight=0")).stage_two_epoch is None
    with pytest.raises(InputError, match="stage_two_energy_weight and stage_two_forces_weight are both 0"):
        load_train_config(None, ("stage_two_epoch=5", "stage_two_energy_weight=0", "stage_two_forces_weight=0"))


def test_an_override_replacing_a_file_value_is_named_as_the_source(tmp_path):
    config = tmp_path / "train.yaml"
    config.write_text("model:\n  channels: 8\n  max_L: 0\n")
    with pytest.raises(InputError, match=r"^override model\.channels=-8: model: channels must be >= 1"):
        load_train_config(str(config), ("model.channels=-8",))
    # the file's model section set max_L=0; an override of max_ell makes the pair wrong: both named
    with pytest.raises(InputError, match=rf"^{re.escape(str(config))}, override model.max_ell=-1: model: need 0 <= max_L"):
        load_train_config(str(config), ("model.max_ell=-1",))


@pytest.mark.parametrize("text, key, expected", [
    ("lr: 1e-3\n", "lr", 1e-3),  # YAML 1.1 (PyYAML) would read a string
    ("weight_decay: 5e-7\n", "weight_decay", 5e-7),
    ("lr: 1\n", "lr", 1.0),
    ("epochs: 2.0\n", "epochs", 2),
    ("test_files: other.xyz\n", "test_files", ("other.xyz",)),  # one file is a one-file list
    ("test_files: null\n", "test_files", ()),
    ("forces_key: null\n", "forces_key", None),  # a file without forces
    ("clip_grad: null\n", "clip_grad", None),
    ("model:\n  radial_mlp: 32\n", "model", {"radial_mlp": [32]}),
])
def test_values_are_read_as_their_declared_type(tmp_path, text, key, expected):
    config = tmp_path / "train.yaml"
    config.write_text(text)
    value = getattr(load_train_config(str(config)), key)
    assert value == expected and type(value) is type(expected)


def test_override_exponent_is_a_float():
    assert load_train_config(None, ("lr=5e-4",)).lr == 5e-4


def test_cli_refuses_a_bad_override_in_one_line_before_anything_is_written(tmp_path, capsys):
    config = tmp_path / "train.yaml"
    config.write_text(MISSING_DATA)
    out = tmp_path / "run"
    assert main(["train", str(config), "clip_grad=-1", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert err.startswith("lpmace: error: override clip_grad=-1: clip_grad must be a finite number > 0")
    assert not out.exists()


def test_cli_refuses_a_bad_file_value_in_one_line_before_anything_is_written(tmp_path, capsys):
    config = tmp_path / "train.yaml"
    config.write_text(MISSING_DATA + "model:\n  channels: eight\n")
    out = tmp_path / "run"
    assert main(["train", str(config), "epochs=2", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err == f"lpmace: error: {config}: model.channels must be an integer, got 'eight'\n"
    assert not out.exists()


def test_overrides_may_follow_the_options():
    args = build_parser().parse_args(["train", "cfg.yaml", "--resume", "lr=0.1", "--out", "x", "epochs=3"])
    assert (args.config, args.overrides, args.resume, args.out) == ("cfg.yaml", ["lr=0.1", "epochs=3"], True, "x")


def _frames(n: int) -> list:
    """The first n molecules of the embedded 3BPA training file (27 atoms: 29 lines each)."""
    lines = datasets.path("3bpa/train_300K.xyz").read_text().splitlines(keepends=True)
    return ["".join(lines[29 * i : 29 * (i + 1)]) for i in range(n)]


def _tiny_run_config(tmp_path, *extra) -> str:
    (tmp_path / "train.xyz").write_text("".join(_frames(8)))
    config = tmp_path / "train.yaml"
    config.write_text(yaml.safe_dump({
        "train_file": str(tmp_path / "train.xyz"), "valid_fraction": 0.25, "test_files": [], "epochs": 1,
        "batch_size": 3, "progress": False, "output_dir": str(tmp_path / "run"),
        "model": {"channels": 8, "max_L": 0, "correlation": 2, "max_ell": 1, "radial_mlp": [8], "num_bessel": 4},
    }))
    return str(config)


def test_unknown_element_in_a_test_file_is_refused_before_training(tmp_path):
    config = _tiny_run_config(tmp_path)
    frame = _frames(1)[0].splitlines(keepends=True)
    frame[2] = "Si" + frame[2].lstrip()[1:]  # the first atom (a C, N or O) becomes silicon
    test_file = tmp_path / "test_si.xyz"
    test_file.write_text("".join(frame))
    cfg = load_train_config(config, (f"test_files=[{test_file}]",))
    with pytest.raises(InputError, match=rf"^{re.escape(str(test_file))}:frame 0: element\(s\) Si not in the training data"):
        Trainer(cfg, log=lambda m: None)
    assert not (tmp_path / "run").exists()


def test_isolated_atoms_file_without_an_element_is_named(tmp_path):
    config = _tiny_run_config(tmp_path)
    iso = tmp_path / "iso_CH.xyz"
    iso.write_text("".join(datasets.path("3bpa/iso_atoms.xyz").read_text().splitlines(keepends=True)[:6]))
    cfg = load_train_config(config, (f"isolated_atoms_file={iso}",))
    with pytest.raises(InputError, match=rf"^{re.escape(str(iso))}: no isolated-atom energy for N, O"):
        Trainer(cfg, log=lambda m: None)


def test_resume_refuses_a_changed_model_and_keeps_config_yaml(tmp_path, capsys):
    config = _tiny_run_config(tmp_path)
    assert main(["train", config, "--no-progress"]) == 0
    saved = tmp_path / "run" / "config.yaml"
    before = saved.read_bytes()
    capsys.readouterr()

    assert main(["train", config, "model.channels=16", "lr=0.5", "--resume"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("lpmace: error: --resume: ")
    assert "model.channels is 16 (override model.channels=16) but 8 in" in err
    assert "lr is 0.5 (override lr=0.5) but 0.01 in" in err
    assert saved.read_bytes() == before

    # a config file edited since the run started is refused too, naming the file
    with open(config, "a") as f:
        f.write("weight_decay: 0.1\n")
    with pytest.raises(InputError, match=rf"weight_decay is 0.1 \({re.escape(config)}\) but 5e-07 in"):
        load_train_config(config, resume=True)

    # how long the run goes on may change, and config.yaml then records it
    assert main(["train", _tiny_run_config(tmp_path), "--resume", "epochs=2", "--no-progress"]) == 0
    assert yaml.safe_load(saved.read_text())["epochs"] == 2
    assert yaml.safe_load(before)["epochs"] == 1


def test_missing_property_hint_names_the_yaml_null(tmp_path):
    from lpmace.data import read_configurations

    (tmp_path / "no_forces.xyz").write_text("".join(_frames(1)).replace("REF_forces", "other_forces"))
    with pytest.raises(InputError, match="set forces_key to null"):
        read_configurations(tmp_path / "no_forces.xyz")
