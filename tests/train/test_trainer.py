"""Training: it learns, survives overflow and SIGKILL, and refuses bad configs clearly."""

import json
import os
import signal
import subprocess
import sys

import pytest
import torch

from lpmace.errors import InputError
from lpmace.io import load
from lpmace.train import Trainer
from lpmace.train.ema import EMA
from small_training import small_config

def test_short_fp32_training_lowers_validation_force_error(tmp_path):
    cfg = small_config(tmp_path, "epochs=12")
    trainer = Trainer(cfg, log=lambda m: None)
    before = trainer.evaluate(trainer.data.valid).to_dict()["force_rmse_mev_per_A"]
    trainer.run()
    rows = [json.loads(line) for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    after = rows[-1]["valid_force_rmse_mev_per_A"]
    assert [r["epoch"] for r in rows] == list(range(1, 13))
    assert after < 0.6 * before
    assert rows[-1]["wall_time_s"] >= rows[-1]["train_time_s"] > 0
    assert {"lr", "loss_scale", "skipped_steps", "valid_force_mae_mev_per_A"} <= set(rows[-1])
    model = load(tmp_path / "run" / "model.safetensors")
    assert model.config.atomic_numbers == (1, 6, 7, 8)


def test_fp16_overflow_step_is_skipped_and_training_continues(tmp_path):
    # GradScaler starts at loss_scale_init (1024) and may also skip steps that overflow on their own;
    # the counter is read just before and just after the injected step, so only that step is counted.
    skipped_before = {}

    def overflow_at_step_12(epoch, step, loss):
        skipped_before[step] = trainer.skipped
        return loss * float("inf") if step == 12 else loss

    trainer = Trainer(small_config(tmp_path, "epochs=2", "precision=fp16-mixed"), log=lambda m: None,
                      fault=overflow_at_step_12)
    trainer.run()
    assert skipped_before[13] == skipped_before[12] + 1
    assert trainer.epoch == 2
    assert all(torch.isfinite(p).all() for p in trainer.model.parameters())
    rows = [json.loads(line) for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    assert rows[-1]["skipped_steps"] == trainer.skipped


def test_nonfinite_loss_without_scaler_skips_the_step(tmp_path):
    cfg = small_config(tmp_path, "epochs=1")
    trainer = Trainer(cfg, log=lambda m: None, fault=lambda e, s, loss: loss * float("nan") if s == 1 else loss)
    trainer.run()
    assert trainer.skipped == 1 and trainer.restored == 0
    assert all(torch.isfinite(p).all() for p in trainer.model.parameters())


def _run_cli(cfg_path, out, *args):
    env = dict(os.environ, OMP_NUM_THREADS="1")
    return subprocess.Popen([sys.executable, "-m", "lpmace", "train", str(cfg_path), f"output_dir={out}", *args],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)


# The killed run: SIGKILL inside epoch 3 (before its third step), at a fixed point rather than after a sleep.
KILLED_IN_EPOCH_3 = """
import os, signal, sys
from lpmace.train import Trainer, load_train_config

steps_in_epoch_3 = []

def kill(epoch, step, loss):
    if epoch == 3:
        steps_in_epoch_3.append(step)
        if len(steps_in_epoch_3) == 3:
            os.kill(os.getpid(), signal.SIGKILL)
    return loss

Trainer(load_train_config(sys.argv[1], [f"output_dir={sys.argv[2]}"]), log=lambda m: None, fault=kill).run()
"""


def test_sigkill_mid_epoch_then_resume_ends_with_the_same_epochs(tmp_path):
    import yaml

    cfg = small_config(tmp_path, "epochs=8")
    cfg_path = tmp_path / "cfg.yaml"
    d = cfg.to_dict()
    d.pop("output_dir")
    cfg_path.write_text(yaml.safe_dump(d))
    log = tmp_path / "killed" / "log.jsonl"
    killed = subprocess.run([sys.executable, "-c", KILLED_IN_EPOCH_3, str(cfg_path), str(tmp_path / "killed")],
                            capture_output=True, text=True, timeout=300, env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    assert [json.loads(line)["epoch"] for line in log.read_text().splitlines()] == [1, 2]
    resumed = _run_cli(cfg_path, tmp_path / "killed", "--resume")
    _, err = resumed.communicate(timeout=300)
    assert resumed.returncode == 0, err
    epochs = [json.loads(line)["epoch"] for line in log.read_text().splitlines()]
    assert epochs == list(range(1, 9))

    straight = _run_cli(cfg_path, tmp_path / "straight")
    _, err = straight.communicate(timeout=300)
    assert straight.returncode == 0, err
    a = load(tmp_path / "killed" / "model.safetensors").state_dict()
    b = load(tmp_path / "straight" / "model.safetensors").state_dict()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-4, atol=1e-5)


def test_existing_run_is_not_overwritten_without_resume(tmp_path):
    cfg = small_config(tmp_path, "epochs=1")
    Trainer(cfg, log=lambda m: None).run()
    with pytest.raises(InputError, match="resume"):
        Trainer(cfg, log=lambda m: None)


@pytest.mark.parametrize(
    "overrides, match",
    [
        (("epochz=3",), "epochz"),
        (("model.chanels=3",), "model.chanels"),
        (("train_file=/nonexistent/train.xyz",), "/nonexistent/train.xyz"),
        (("energy_key=REF_energyy",), "REF_energyy"),
        (("loss=l3",), "loss"),
        (("precision=bf17",), "bf17"),
        (("epochs=0",), "epochs"),
    ],
)
def test_bad_configs_fail_with_clear_messages(tmp_path, overrides, match):
    with pytest.raises(InputError, match=match):
        cfg = small_config(tmp_path, *overrides)
        Trainer(cfg, log=lambda m: None)


def test_cli_bad_config_exits_2_with_one_line(tmp_path):
    cfg_path = tmp_path / "bad.yaml"
    cfg_path.write_text("epochs: 3\nbatch_sise: 4\n")
    proc = subprocess.run([sys.executable, "-m", "lpmace", "train", str(cfg_path)], capture_output=True, text=True)
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0 and "batch_sise" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_stage_two_weights_apply_from_their_epoch(tmp_path):
    cfg = small_config(tmp_path, "epochs=1", "stage_two_epoch=3", "stage_two_energy_weight=7", "stage_two_forces_weight=9")
    trainer = Trainer(cfg, log=lambda m: None)
    assert trainer._weights(2) == (1.0, 1000.0)
    assert trainer._weights(3) == (7.0, 9.0)


def test_ema_warm_up_and_average():
    model = torch.nn.Linear(1, 1, bias=False)
    with torch.no_grad():
        model.weight.fill_(0.0)
    ema = EMA(model, decay=0.99)
    with torch.no_grad():
        model.weight.fill_(1.0)
    ema.update(model)  # decay_1 = min(0.99, 2/11)
    assert ema.shadow["weight"].item() == pytest.approx(1 - 2 / 11)
    with ema.applied(model):
        assert model.weight.item() == pytest.approx(1 - 2 / 11)
    assert model.weight.item() == 1.0


def test_tensorboard_without_the_package_is_a_clear_error(tmp_path, monkeypatch):
    import torch.utils

    monkeypatch.delattr(torch.utils, "tensorboard", raising=False)
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # import fails, installed or not
    with pytest.raises(InputError, match="tensorboard"):
        Trainer(small_config(tmp_path, "epochs=1", "tensorboard=true"), log=lambda m: None).run()


def test_tensorboard_gets_every_logged_number_per_epoch(tmp_path, monkeypatch):
    """tensorboard is not installed in CI: a stand-in SummaryWriter records what the trainer writes."""
    import types

    import torch.utils

    written, closed = [], []

    class SummaryWriter:
        def __init__(self, log_dir):
            self.log_dir = log_dir

        def add_scalar(self, key, value, step):
            written.append((key, value, step))

        def close(self):
            closed.append(self.log_dir)

    monkeypatch.delattr(torch.utils, "tensorboard", raising=False)
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", types.SimpleNamespace(SummaryWriter=SummaryWriter))
    Trainer(small_config(tmp_path, "epochs=2", "tensorboard=true"), log=lambda m: None).run()
    assert closed == [str(tmp_path / "run" / "tensorboard")]
    rows = [json.loads(line) for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    for row in rows:
        scalars = {key: value for key, value, step in written if step == row["epoch"]}
        assert scalars["train_loss"] == row["train_loss"]
        assert scalars["valid_force_rmse_mev_per_A"] == row["valid_force_rmse_mev_per_A"]
    assert {step for _, _, step in written} == {1, 2}


def test_precision_schedule_switches_at_its_epoch_and_survives_resume(tmp_path):
    schedule = ("precision=bf16-mixed", "precision_schedule={3: fp32}")
    whole = Trainer(small_config(tmp_path / "whole", "epochs=4", *schedule), log=lambda m: None)
    whole.run()
    rows = [json.loads(line) for line in (tmp_path / "whole" / "run" / "log.jsonl").read_text().splitlines()]
    assert [r["precision"] for r in rows] == ["bf16-mixed", "bf16-mixed", "fp32", "fp32"]
    # stop after epoch 3 (already switched), resume to 4: same schedule, same weights as uninterrupted
    Trainer(small_config(tmp_path / "parts", "epochs=3", *schedule), log=lambda m: None).run()
    resumed = Trainer(small_config(tmp_path / "parts", "epochs=4", *schedule), resume=True, log=lambda m: None)
    assert resumed.policy.name == "fp32"
    resumed.run()
    rows = [json.loads(line) for line in (tmp_path / "parts" / "run" / "log.jsonl").read_text().splitlines()]
    assert [r["precision"] for r in rows] == ["bf16-mixed", "bf16-mixed", "fp32", "fp32"]
    a = load(tmp_path / "whole" / "run" / "model.safetensors").state_dict()
    b = load(tmp_path / "parts" / "run" / "model.safetensors").state_dict()
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("schedule, match", [
    ("{3: fp7}", "fp7"),
    ("{0: fp32}", "epoch 0 must be an integer >= 1"),
    ("{3: fp64}", "cannot change the master weights' dtype"),
    ("fp32", "must be a mapping"),
])
def test_bad_precision_schedules_are_refused(tmp_path, schedule, match):
    with pytest.raises(InputError, match=match):
        small_config(tmp_path, f"precision_schedule={schedule}")


def test_a_compressed_model_trains_from_scratch_and_resumes_a_checkpoint_of_older_lpmace(tmp_path):
    """model.species_rank / model.int8_embedding train random factors (a species_compression conversion
    of the built model, recorded in the file); a checkpoint written before the conversions list (the
    compression in its model_config) resumes as the same model."""
    from lpmace.nn.element_weights import Int8ElementTable

    compressed = ("model.species_rank=2", "model.int8_embedding=true")
    Trainer(small_config(tmp_path, "epochs=1", *compressed), log=lambda m: None).run()
    entry = {"name": "species_compression", "species_rank": 2, "int8_embedding": True, "how": "random"}
    model = load(tmp_path / "run" / "model.safetensors")
    assert model.conversions == [entry] and isinstance(model.embedding.A, Int8ElementTable)
    last = tmp_path / "run" / "checkpoints" / "last.pt"
    state = torch.load(last, weights_only=True)
    assert state["conversions"] == [entry] and "species_rank" not in state["model_config"]
    del state["conversions"]
    state["model_config"].update(species_rank=2, int8_embedding=True)
    torch.save(state, last)
    resumed = Trainer(small_config(tmp_path, "epochs=2", *compressed), resume=True, log=lambda m: None)
    assert resumed.model.conversions == [{"name": "species_compression", "species_rank": 2, "int8_embedding": True}]
    assert all(torch.equal(resumed.model.state_dict()[k], v) for k, v in state["model"].items())
    resumed.run()
