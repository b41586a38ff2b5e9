"""Model files: save/load round trip, validation of foreign or damaged files, atomic writes."""

from __future__ import annotations

import json
import os

import pytest
import safetensors
import safetensors.torch
import torch

import lpmace.io
from lpmace.data import collate, graph_from_configuration, read_configurations
from lpmace.errors import InputError


@pytest.fixture
def saved(model, tmp_path):
    path = tmp_path / "model.safetensors"
    lpmace.io.save(model, path)
    return path


def _rewrite(src, dst, *, drop=(), add=None, metadata_update=None):
    """Copy a safetensors file with tensors dropped/added or metadata changed."""
    with safetensors.safe_open(str(src), framework="pt") as f:
        metadata = dict(f.metadata())
        tensors = {k: f.get_tensor(k) for k in f.keys() if k not in drop}
    tensors.update(add or {})
    metadata.update(metadata_update or {})
    safetensors.torch.save_file(tensors, str(dst), metadata=metadata)
    return dst


def test_round_trip_gives_identical_energies_and_forces(model, saved, bpa_test_path):
    configs = read_configurations(bpa_test_path, energy_key="REF_energy", forces_key="REF_forces")[:4]
    graph = collate([graph_from_configuration(c, model.config.r_max) for c in configs])
    loaded = lpmace.io.load(saved)

    assert loaded.config == model.config  # tuples survive JSON
    for name, tensor in model.state_dict().items():
        assert loaded.state_dict()[name].dtype == tensor.dtype, name
        assert torch.equal(loaded.state_dict()[name], tensor), name
    before, after = model(graph), loaded(graph)
    assert torch.equal(before["energy"], after["energy"])
    assert torch.equal(before["forces"], after["forces"])


def test_round_trip_keeps_float32_weights(make_model, tmp_path):
    model = make_model(torch.float32)
    path = lpmace.io.save(model, tmp_path / "m32.safetensors")
    assert lpmace.io.load(path).dtype == torch.float32


def test_metadata_names_format_and_config(model, saved):
    with safetensors.safe_open(str(saved), framework="pt") as f:
        metadata = f.metadata()
    assert metadata["format"] == lpmace.io.FORMAT
    assert metadata["format_version"] == lpmace.io.FORMAT_VERSION
    assert json.loads(metadata["config"]) == model.config.to_dict()


def test_read_config_matches(model, saved):
    assert lpmace.io.read_config(saved) == model.config


def test_foreign_safetensors_file_is_rejected_by_name(tmp_path):
    path = tmp_path / "other.safetensors"
    safetensors.torch.save_file({"weight": torch.zeros(3)}, str(path), metadata={"format": "pt"})
    with pytest.raises(InputError, match="not an lpmace model") as info:
        lpmace.io.load(path)
    assert str(path) in str(info.value)


def test_truncated_file_is_rejected_by_name(saved, tmp_path):
    data = saved.read_bytes()
    path = tmp_path / "truncated.safetensors"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(InputError) as info:
        lpmace.io.load(path)
    assert str(path) in str(info.value)


def test_torch_save_file_gets_a_convert_hint(model, tmp_path):
    path = tmp_path / "pickled.model"
    torch.save({"x": torch.zeros(2)}, path)
    with pytest.raises(InputError, match="lpmace convert") as info:
        lpmace.io.load(path)
    assert str(path) in str(info.value)


def test_missing_tensor_is_named(model, saved, tmp_path):
    victim = sorted(model.state_dict())[0]
    path = _rewrite(saved, tmp_path / "missing.safetensors", drop=[victim])
    with pytest.raises(InputError, match="missing tensor") as info:
        lpmace.io.load(path)
    assert str(path) in str(info.value) and victim in str(info.value)


def test_extra_tensor_is_named(saved, tmp_path):
    path = _rewrite(saved, tmp_path / "extra.safetensors", add={"stowaway": torch.zeros(1)})
    with pytest.raises(InputError, match="stowaway") as info:
        lpmace.io.load(path)
    assert str(path) in str(info.value)


def test_wrong_shape_is_named(model, saved, tmp_path):
    name, tensor = next(iter(model.state_dict().items()))
    path = _rewrite(saved, tmp_path / "shape.safetensors", add={name: torch.zeros(tensor.numel() + 1)})
    with pytest.raises(InputError, match="shape") as info:
        lpmace.io.load(path)
    assert str(path) in str(info.value) and name in str(info.value)


@pytest.mark.parametrize(
    "config, match",
    [
        ("{not json", "config"),
        ('{"atomic_numbers": [1], "bogus_key": 3}', "bogus_key"),
        ('{"atomic_numbers": [1, 1]}', "atomic_numbers"),
        ("[1, 2]", "config"),
    ],
)
def test_bad_config_is_rejected_by_name(saved, tmp_path, config, match):
    path = _rewrite(saved, tmp_path / "badconfig.safetensors", metadata_update={"config": config})
    with pytest.raises(InputError, match=match) as info:
        lpmace.io.load(path)
    assert str(path) in str(info.value)


def test_unknown_format_version_is_rejected(saved, tmp_path):
    path = _rewrite(saved, tmp_path / "future.safetensors", metadata_update={"format_version": "99"})
    with pytest.raises(InputError, match="format_version"):
        lpmace.io.load(path)


def test_missing_file_raises_file_not_found(tmp_path):
    with pytest.raises(FileNotFoundError):
        lpmace.io.load(tmp_path / "nope.safetensors")


def test_save_into_missing_folder_fails_and_leaves_nothing(model, tmp_path):
    target = tmp_path / "no" / "such" / "dir" / "model.safetensors"
    with pytest.raises(FileNotFoundError):
        lpmace.io.save(model, target)
    assert list(tmp_path.iterdir()) == []


def test_failed_save_keeps_the_old_file_and_no_temporary(make_model, saved, monkeypatch):
    old = saved.read_bytes()

    def failing_replace(src, dst):
        raise OSError("disk on fire")

    monkeypatch.setattr(os, "replace", failing_replace)
    with pytest.raises(OSError, match="disk on fire"):
        lpmace.io.save(make_model(seed=1), saved)
    assert saved.read_bytes() == old
    assert [p.name for p in saved.parent.iterdir()] == [saved.name]


def test_save_overwrites_atomically_with_new_weights(make_model, saved):
    other = make_model(seed=1)
    lpmace.io.save(other, saved)
    loaded = lpmace.io.load(saved)
    name = next(iter(other.state_dict()))
    assert torch.equal(loaded.state_dict()[name], other.state_dict()[name])
    assert [p.name for p in saved.parent.iterdir()] == [saved.name]


@pytest.mark.parametrize("umask", [0o022, 0o077, 0o002])
def test_saved_files_get_the_permissions_the_umask_allows(model, tmp_path, umask):
    from lpmace.atomic import atomic_write_text

    old = os.umask(umask)
    try:
        model_file = lpmace.io.save(model, tmp_path / "model.safetensors")
        text_file = atomic_write_text(tmp_path / "metrics.json", "{}\n")
    finally:
        os.umask(old)
    for path in (model_file, text_file):
        assert path.stat().st_mode & 0o777 == 0o666 & ~umask


@pytest.mark.parametrize(
    "change, fragment",
    [
        ({"channels": 10**12}, "channels"),  # would allocate terabytes before any shape is compared
        ({"correlation": [40, 2]}, "correlation"),
        ({"max_ell": 400, "max_L": 1}, "max_ell"),
    ],
)
def test_config_asking_for_an_absurd_model_is_refused_before_building_it(saved, tmp_path, monkeypatch, change,
                                                                         fragment):
    config = json.loads(lpmace.io._read(saved)[0]["config"])
    config.update(change)
    path = _rewrite(saved, tmp_path / "absurd.safetensors", metadata_update={"config": json.dumps(config)})
    monkeypatch.setattr(lpmace.io, "MACE", lambda config: pytest.fail("built the model before checking the config"))
    with pytest.raises(InputError, match=fragment) as info:
        lpmace.io.load(path)
    assert str(path) in str(info.value)


def test_integer_weights_are_named(model, saved, tmp_path):
    name = "readouts.0.weight"
    integer = model.state_dict()[name].round().to(torch.int32)
    path = _rewrite(saved, tmp_path / "int.safetensors", drop=(name,), add={name: integer})
    with pytest.raises(InputError, match=rf"{name} \(torch.int32\)") as info:
        lpmace.io.load(path)
    assert str(path) in str(info.value)


def test_a_loaded_model_does_not_change_when_its_file_is_overwritten_in_place(make_model, saved):
    # `cp other.safetensors model.safetensors` rewrites the same inode; a model loaded earlier must keep
    # the numbers it was loaded with (safetensors' tensors may share the memory-mapped file).
    loaded = lpmace.io.load(saved)
    before = {k: v.clone() for k, v in loaded.state_dict().items()}
    other = saved.parent / "other.safetensors"
    lpmace.io.save(make_model(seed=1), other)
    with open(saved, "r+b") as f:  # in place: same file, new bytes
        f.write(other.read_bytes())
        f.truncate()
    assert all(torch.equal(before[k], v) for k, v in loaded.state_dict().items())


def test_conversions_are_written_in_order_and_replayed(make_model, tmp_path, bpa_test_path):
    from lpmace.compress import compress

    model = compress(compress(make_model(), species_rank=2), species_rank=3, int8_embedding=True)
    path = lpmace.io.save(model, tmp_path / "converted.safetensors")
    metadata = lpmace.io._read(path)[0]
    assert json.loads(metadata["conversions"]) == model.conversions == [
        {"name": "species_compression", "species_rank": 2, "int8_embedding": False, "how": "svd"},
        {"name": "species_compression", "species_rank": 3, "int8_embedding": True, "how": "svd"}]
    assert "species_rank" not in metadata["config"]
    loaded = lpmace.io.load(path)
    assert loaded.conversions == model.conversions
    graph = graph_from_configuration(read_configurations(bpa_test_path)[0], model.config.r_max)
    assert torch.equal(loaded(graph)["forces"], model(graph)["forces"])
    # a plain model's file has no conversions key, and a deep copy keeps the list
    assert "conversions" not in lpmace.io._read(lpmace.io.save(make_model(), tmp_path / "plain.safetensors"))[0]
    import copy

    assert copy.deepcopy(loaded).conversions == model.conversions


@pytest.mark.parametrize("conversions, match", [
    ('[{"name": "bf16_weights"}]', "unknown conversion 'bf16_weights' \\(known: species_compression, "),
    ('[{"name": "species_compression", "species_rank": 2}]', "species_compression: missing parameter\\(s\\) int8"),
    ('[{"name": "species_compression", "species_rank": 2, "int8_embedding": false, "bits": 4}]',
     "unknown parameter\\(s\\) bits"),
    ('{"name": "species_compression"}', "conversions must be a list of objects"),
    ("[{", "malformed 'conversions' metadata"),
])
def test_bad_conversions_are_refused_naming_the_file(saved, tmp_path, conversions, match):
    bad = _rewrite(saved, tmp_path / "bad.safetensors", metadata_update={"conversions": conversions})
    with pytest.raises(InputError, match=f"^{tmp_path / 'bad.safetensors'}: .*{match}") as err:
        lpmace.io.load(bad)
    assert "\n" not in str(err.value)


def test_a_conversion_the_tensors_do_not_match_is_refused(saved, tmp_path):
    conversions = '[{"name": "species_compression", "species_rank": 2, "int8_embedding": false}]'
    bad = _rewrite(saved, tmp_path / "bad.safetensors", metadata_update={"conversions": conversions})
    with pytest.raises(InputError, match="bad.safetensors: tensors do not match the config: missing tensor"):
        lpmace.io.load(bad)


def test_loading_a_plain_model_imports_neither_quantize_nor_torchao(saved):
    import subprocess
    import sys

    code = ("import sys, lpmace.io; m = lpmace.io.load(sys.argv[1]); "
            "print(sorted(n for n in ('lpmace.quantize', 'torchao') if n in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code, str(saved)], capture_output=True, text=True, check=True,
                         env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
    assert out.stdout.strip() == "[]"


def test_a_one_interaction_model_with_narrow_tensors_loads(tmp_path):
    """One interaction has no MLP readout, so readout_mlp (default 16) is not a width any tensor must
    reach: the size check once refused such a file (found by the active-learning tests)."""
    from lpmace.model import MACE, MACEConfig

    config = MACEConfig(atomic_numbers=(29,), channels=4, max_ell=1, max_L=0, correlation=(2,), num_interactions=1,
                        num_bessel=4, radial_mlp=(8,))
    torch.manual_seed(0)
    model = MACE(config).double()
    assert config.readout_mlp > max(max(t.shape, default=1) for t in model.state_dict().values())
    path = lpmace.io.save(model, tmp_path / "one.safetensors")
    loaded = lpmace.io.load(path)
    for name, tensor in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[name], tensor), name
