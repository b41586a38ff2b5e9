"""foundation_model: a run starts from a model file's weights and config, and refuses contradictions."""

import pytest
import torch

from lpmace.cli import main
from lpmace.errors import InputError
from lpmace.io import load, save
from lpmace.model import MACE, MACEConfig
from lpmace.train import Trainer, load_train_config

from small_training import small_config

# The architecture of test_trainer's SMALL, with statistics no data would give (so that taking them
# from the data instead of the file shows).
ARCH = dict(channels=8, max_L=0, correlation=(2, 2), max_ell=2, radial_mlp=(16,), num_bessel=6, r_max=4.0)


def foundation(path, atomic_numbers=(1, 6, 7, 8), **features):
    e0 = {1: -13.6, 6: -1029.5, 7: -1485.0, 8: -2042.0, 14: -4.6}
    config = MACEConfig(atomic_numbers=atomic_numbers, E0s=[e0[z] for z in atomic_numbers],
                        avg_num_neighbors=9.5, scale=0.5, shift=-4.0, **ARCH, **features)
    torch.manual_seed(123)  # not the run's seed, so a fresh initialisation cannot pass for the file
    save(MACE(config), path)
    return path


def foundation_config(tmp_path, *extra, atomic_numbers=(1, 6, 7, 8)):
    path = foundation(tmp_path / "foundation.safetensors", atomic_numbers)
    # small_config's model.* keys repeat the file's architecture: accepted, as they agree
    return small_config(tmp_path, f"foundation_model={path}", *extra)


def test_run_starts_from_the_file_weights_and_config(tmp_path):
    cfg = foundation_config(tmp_path, "epochs=1", "lr=1.0e-12")
    file = load(tmp_path / "foundation.safetensors")
    trainer = Trainer(cfg, log=lambda m: None)
    assert trainer.model.config == file.config  # statistics too: not the data's avg_num_neighbors/scale
    for name, value in file.state_dict().items():
        assert torch.equal(trainer.model.state_dict()[name], value), name
    trainer.run()  # the EMA starts there too: a negligible step leaves the saved model at the file's
    trained = load(tmp_path / "run" / "model.safetensors")
    for name, value in file.state_dict().items():
        torch.testing.assert_close(trained.state_dict()[name], value, rtol=0, atol=1e-8)


def test_without_model_keys_the_default_architecture_does_not_contradict(tmp_path):
    path = foundation(tmp_path / "f.safetensors")
    cfg = load_train_config(None, (f"foundation_model={path}",))
    assert cfg.model == {}


@pytest.mark.parametrize("extra, fragment", [
    (("model.channels=16",), "model.channels=16 contradicts foundation_model"),
    (("model.correlation=3",), "model.correlation=3 contradicts"),
    (("correlation_schedule={1: 1, 2: 2}",), "correlation_schedule cannot start from a foundation_model"),
])
def test_contradictions_are_refused_naming_the_key(tmp_path, extra, fragment):
    with pytest.raises(InputError, match=fragment):
        Trainer(foundation_config(tmp_path, *extra), log=lambda m: None)


def test_training_elements_must_be_the_model_s(tmp_path):
    cfg = foundation_config(tmp_path, atomic_numbers=(1, 6, 8))
    with pytest.raises(InputError, match=r"train\.xyz:frame \d+: element\(s\) N not in foundation_model"):
        Trainer(cfg, log=lambda m: None)


def test_missing_foundation_file_is_one_line_and_exit_2(tmp_path, capsys):
    assert main(["train", "/dev/null", f"foundation_model={tmp_path / 'none.safetensors'}",
                 f"output_dir={tmp_path / 'run'}"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("lpmace: error: foundation_model ") and "no such file" in err


def test_a_compressed_foundation_model_keeps_its_compression(tmp_path):
    from lpmace.compress import compress

    path = foundation(tmp_path / "foundation.safetensors")
    save(compress(load(path), species_rank=2), path)
    file = load(path)
    trainer = Trainer(small_config(tmp_path, f"foundation_model={path}", "model.species_rank=2"), log=lambda m: None)
    assert trainer.model.conversions == file.conversions != []
    for name, value in file.state_dict().items():
        assert torch.equal(trainer.model.state_dict()[name], value), name
    with pytest.raises(InputError, match="model.species_rank=3 contradicts foundation_model .* species_rank 2"):
        Trainer(small_config(tmp_path / "other", f"foundation_model={path}", "model.species_rank=3"),
                log=lambda m: None)


# What foundation models add (MP-0b, MPA-0, OMAT-0, MH-1): ZBL, the Agnesi transform, apply_cutoff=False
FEATURES = dict(pair_repulsion=True, distance_transform="agnesi", apply_cutoff=False)
FEATURE_KEYS = ("model.pair_repulsion=true", "model.distance_transform=agnesi", "model.apply_cutoff=false")


def test_a_model_section_may_repeat_the_foundation_features_but_not_contradict_them(tmp_path):
    path = foundation(tmp_path / "zbl.safetensors", **FEATURES)
    trainer = Trainer(small_config(tmp_path, f"foundation_model={path}", *FEATURE_KEYS), log=lambda m: None)
    assert trainer.model.config == load(path).config
    with pytest.raises(InputError, match="model.pair_repulsion=False contradicts foundation_model .* pair_repulsion True"):
        Trainer(small_config(tmp_path / "other", f"foundation_model={path}", "model.pair_repulsion=false"),
                log=lambda m: None)
    with pytest.raises(InputError, match="model.distance_transform='none' contradicts"):
        Trainer(small_config(tmp_path / "third", f"foundation_model={path}", "model.distance_transform=none"),
                log=lambda m: None)


def test_foundation_features_train_from_scratch(tmp_path):
    trainer = Trainer(small_config(tmp_path, "epochs=1", *FEATURE_KEYS), log=lambda m: None)
    config = trainer.model.config
    assert (config.pair_repulsion, config.distance_transform, config.apply_cutoff) == (True, "agnesi", False)
    assert trainer.model.pair_repulsion is not None and trainer.model.distance_transform is not None
    trainer.run()
    trained = load(tmp_path / "run" / "model.safetensors")
    assert trained.config == config
    assert torch.isfinite(trained(trainer.data.valid[0])["energy"]).all()


def test_an_unknown_distance_transform_is_refused_naming_the_key(tmp_path):
    with pytest.raises(InputError, match="model.distance_transform.*soft"):
        small_config(tmp_path, "model.distance_transform=soft")


def test_foundation_head_needs_a_foundation_model(tmp_path):
    with pytest.raises(InputError, match="override foundation_head=pbe: foundation_head is set but foundation_model is not"):
        small_config(tmp_path, "foundation_head=pbe")
    path = foundation(tmp_path / "f.safetensors")
    with pytest.raises(InputError, match="foundation_head 'pbe': foundation_model .* lpmace model with one head"):
        Trainer(small_config(tmp_path, f"foundation_model={path}", "foundation_head=pbe"), log=lambda m: None)


@pytest.mark.parametrize("species_rank", [None, 2])
def test_elements_without_training_data_keep_their_weights(tmp_path, species_rank):
    from lpmace.compress import compress

    path = foundation(tmp_path / "foundation.safetensors", atomic_numbers=(1, 6, 7, 8, 14))  # 3BPA has no Si
    if species_rank is not None:
        save(compress(load(path), species_rank=species_rank), path)
    extra = () if species_rank is None else (f"model.species_rank={species_rank}",)
    trainer = Trainer(small_config(tmp_path, f"foundation_model={path}", "epochs=1", "ema_decay=0.0", *extra),
                      log=lambda m: None)
    trainer.run()
    start, trained = load(path).state_dict(), load(tmp_path / "run" / "model.safetensors").state_dict()
    rows = [name for name in start if name.startswith("embedding") or ".skip.weights." in name
            or ".contraction.weights." in name]
    rows = [name for name in rows if species_rank is None or name.endswith(".A")]  # low rank: B is shared
    assert len(rows) >= 4
    for name in rows:  # weight decay alone would move Si's rows of the skip and contraction weights
        assert torch.equal(trained[name][4], start[name][4]), name
    assert any(not torch.equal(trained[name][:4], start[name][:4]) for name in rows)
