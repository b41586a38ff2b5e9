"""Training that goes wrong: divergence, non-finite structures, torn logs, a full disk, Ctrl-C.

Each ends either in a usable model or in one clear error; never in exit 0 with a broken model.
"""

import errno
import json
import math

import pytest
import torch
from small_training import small_config

import lpmace.train.checkpoint
import lpmace.train.trainer
from lpmace.data import read_configurations
from lpmace.errors import TrainingFailed
from lpmace.io import load
from lpmace.train import Trainer


def _strict_rows(path):
    """Log rows parsed as strict JSON: a bare NaN or Infinity is an error."""
    def refuse(name):
        raise ValueError(f"{name} in {path}")
    return [json.loads(line, parse_constant=refuse) for line in path.read_text().splitlines()]


def test_one_step_to_infinite_weights_is_rolled_back_in_the_ema_too(tmp_path):
    # lr = inf for step 1 only: Adam steps the weights to inf/NaN from a finite gradient. The EMA (the
    # validated and saved weights) must roll back with the model, and the run then trains on.
    trainer = None

    def infinite_lr_at_step_1(epoch, step, loss):
        for group in trainer.optimizer.param_groups:
            group["lr"] = math.inf if step == 1 else 0.01
        return loss

    trainer = Trainer(small_config(tmp_path, "epochs=2", n_train=16), log=lambda m: None, warn=lambda m: None,
                      fault=infinite_lr_at_step_1)
    trainer.run()
    assert trainer.restored == 1
    saved = load(tmp_path / "run" / "model.safetensors").state_dict()
    assert all(torch.isfinite(v).all() for v in saved.values())
    rows = _strict_rows(tmp_path / "run" / "log.jsonl")
    assert math.isfinite(rows[-1]["valid_force_rmse_mev_per_A"])


def test_infinite_lr_fails_instead_of_saving_an_untrained_model(tmp_path):
    # The config refuses lr=.inf (tests/train/test_config_validation.py); an lr that becomes infinite
    # during the run (set here by the fault hook at every step) is what the trainer must survive.
    messages = []
    trainer = None

    def infinite_lr(epoch, step, loss):
        for group in trainer.optimizer.param_groups:
            group["lr"] = math.inf
        return loss

    trainer = Trainer(small_config(tmp_path, "epochs=2", n_train=12), log=messages.append,
                      warn=messages.append, fault=infinite_lr)
    with pytest.raises(TrainingFailed, match="none of the 6 steps took effect.*lower lr"):
        trainer.run()
    assert not (tmp_path / "run" / "model.safetensors").exists()
    assert all(torch.isfinite(v).all() for v in trainer.ema.shadow.values())
    assert any("restored the epoch's start" in m for m in messages)


def test_fp16_run_with_non_finite_validation_fails_and_logs_valid_json(tmp_path):
    # lr=100 in fp16: the weights grow until every fp16 forward overflows; validation is NaN.
    trainer = Trainer(small_config(tmp_path, "epochs=2", "lr=100", "precision=fp16-mixed", n_train=12),
                      log=lambda m: None, warn=lambda m: None)
    with pytest.raises(TrainingFailed, match="validation is not finite.*wider precision than fp16-mixed"):
        trainer.run()
    rows = _strict_rows(tmp_path / "run" / "log.jsonl")
    assert rows[-1]["valid_force_rmse_mev_per_A"] is None  # NaN written as null
    assert not (tmp_path / "run" / "model.safetensors").exists()


def test_epoch_of_skipped_steps_warns_and_logs_no_loss(tmp_path):
    messages, warnings = [], []
    trainer = Trainer(small_config(tmp_path, "epochs=2", n_train=12), log=messages.append, warn=warnings.append,
                      fault=lambda epoch, step, loss: loss * math.inf if epoch == 1 else loss)
    trainer.run()  # epoch 2 trains: the run succeeds
    rows = _strict_rows(tmp_path / "run" / "log.jsonl")
    assert rows[0]["train_loss"] is None and rows[1]["train_loss"] > 0
    assert any(m.startswith("epoch 1, loss n/a") for m in messages)
    assert any("epoch 1: only 0 of 3 steps took effect" in w for w in warnings)
    assert not any("epoch 2: only" in w for w in warnings)


def test_structure_with_non_finite_prediction_is_named(tmp_path, monkeypatch):
    train = tmp_path / "train.xyz"  # written by small_config
    cfg = small_config(tmp_path, "epochs=1", f"valid_file={train}", n_train=12)  # every frame trains
    target = read_configurations(train)[5]
    positions = torch.tensor(target.positions)
    real_loss = lpmace.train.trainer.weighted_loss

    def poisoned_loss(out, graph, **kwargs):  # as if structure 5 made the model produce NaN
        for j in range(graph.num_graphs):
            mine = graph.positions[graph.ptr[j]:graph.ptr[j + 1]]
            if mine.shape == positions.shape and torch.equal(mine, positions):
                energy = out["energy"].clone()
                energy[j] = math.nan
                out["energy"] = energy  # in the trainer's dict: the model's output
        return real_loss(out, graph, **kwargs)

    monkeypatch.setattr(lpmace.train.trainer, "weighted_loss", poisoned_loss)
    warnings = []
    trainer = Trainer(cfg, log=lambda m: None, warn=warnings.append)
    trainer.run()
    assert trainer.skipped == 1
    named = [w for w in warnings if "non-finite loss" in w]
    assert len(named) == 1 and f"from {target.source} (" in named[0]  # that one, not its batch


def test_resume_drops_a_torn_last_log_line(tmp_path):
    Trainer(small_config(tmp_path, "epochs=1", n_train=12), log=lambda m: None).run()
    log = tmp_path / "run" / "log.jsonl"
    log.write_text(log.read_text() + '{"epoch": 2, "step": 6, "train_ti')  # killed mid-write
    messages = []
    Trainer(small_config(tmp_path, "epochs=2", n_train=12), resume=True, log=messages.append).run()
    assert [row["epoch"] for row in _strict_rows(log)] == [1, 2]
    assert any("torn last line" in m for m in messages)


def test_fresh_run_into_a_folder_with_a_log_but_no_checkpoint_starts_a_fresh_log(tmp_path):
    # a run killed after writing epoch 1's log row and before its checkpoint
    (tmp_path / "run").mkdir(parents=True)
    (tmp_path / "run" / "log.jsonl").write_text('{"epoch": 1, "step": 3, "train_loss": 5.0}\n')
    Trainer(small_config(tmp_path, "epochs=1", n_train=12), log=lambda m: None).run()
    assert [row["epoch"] for row in _strict_rows(tmp_path / "run" / "log.jsonl")] == [1]


def test_full_disk_during_a_checkpoint_keeps_the_old_one_and_says_where(tmp_path, monkeypatch, capsys):
    import yaml

    from lpmace.cli import main

    cfg = small_config(tmp_path, "epochs=2", n_train=12)
    real_save, calls = torch.save, []

    def save_on_a_full_disk(state, f):
        calls.append(state["epoch"])
        if len(calls) == 1:
            return real_save(state, f)
        f.write(b"PK\x03\x04")  # a partial write, then the disk is full
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(lpmace.train.checkpoint.torch, "save", save_on_a_full_disk)
    cfg_path = tmp_path / "cfg.yaml"
    cfg_path.write_text(yaml.safe_dump({**cfg.to_dict(), "output_dir": str(tmp_path / "run")}))
    assert main(["train", str(cfg_path)]) == 2
    err = capsys.readouterr().err
    last = tmp_path / "run" / "checkpoints" / "last.pt"
    assert err.count("\n") == 1 and err.startswith(f"lpmace: error: {last}: could not write the checkpoint")
    assert "No space left on device" in err and "--resume" in err
    monkeypatch.undo()
    assert lpmace.train.checkpoint.load_checkpoint(last)["epoch"] == 1
    assert [p.name for p in last.parent.iterdir()] == ["last.pt"]  # no temporary file left


def test_ctrl_c_keeps_the_last_checkpoint_and_says_how_to_resume(tmp_path):
    def ctrl_c_in_epoch_2(epoch, step, loss):
        if epoch == 2:
            raise KeyboardInterrupt
        return loss

    messages = []
    trainer = Trainer(small_config(tmp_path, "epochs=2", n_train=12), log=messages.append, fault=ctrl_c_in_epoch_2)
    with pytest.raises(KeyboardInterrupt):
        trainer.run()
    last = tmp_path / "run" / "checkpoints" / "last.pt"
    assert messages[-1].startswith(f"interrupted in epoch 2: {last} holds the run after epoch 1")
    assert "--resume" in messages[-1]
    resumed = Trainer(small_config(tmp_path, "epochs=2", n_train=12), resume=True, log=lambda m: None)
    assert resumed.epoch == 1
    resumed.run()
    assert [row["epoch"] for row in _strict_rows(tmp_path / "run" / "log.jsonl")] == [1, 2]


def test_ctrl_c_before_the_first_checkpoint_says_there_is_nothing_to_resume(tmp_path):
    def ctrl_c(epoch, step, loss):
        raise KeyboardInterrupt

    messages = []
    trainer = Trainer(small_config(tmp_path, "epochs=1", n_train=12), log=messages.append, fault=ctrl_c)
    with pytest.raises(KeyboardInterrupt):
        trainer.run()
    assert "before the first checkpoint: nothing to resume" in messages[-1]


def test_structure_names_give_each_file_once_and_count_the_rest():
    from lpmace.train.health import structure_names

    sources = [f"a.xyz:frame {i}" for i in range(20)] + ["b.xyz:frame 0"]
    assert structure_names([3, 17, 20, 4], sources) == "a.xyz:frame 3, 17, b.xyz:frame 0, a.xyz:frame 4"
    assert structure_names(list(range(10)), sources, limit=2) == "a.xyz:frame 0, 1 and 8 more"


def test_no_progress_bar_when_stderr_is_not_a_terminal(tmp_path, capsys):
    # progress=true (the default) draws a bar on a terminal only: a log file or a pipe gets none
    Trainer(small_config(tmp_path, "epochs=1", "progress=true", n_train=8), log=lambda m: None,
            warn=lambda m: None).run()
    err = capsys.readouterr().err
    assert "train:" not in err and "step/s" not in err and "it/s" not in err, err
