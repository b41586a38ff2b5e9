"""The training step recorded as CUDA graphs (`lpmace.train.cuda_graphs`) trains as the eager step
does: the same losses, weights, skips and restores, on a CUDA machine (`pytest -m gpu`)."""

import json

import pytest
import torch
from small_training import small_config

import lpmace.train.trainer
from lpmace.errors import TrainingFailed
from lpmace.train import Trainer

pytestmark = pytest.mark.gpu


def _train(tmp_path, graphs: bool, *extra):
    trainer = Trainer(small_config(tmp_path, "device=cuda", f"cuda_graphs={str(graphs).lower()}", *extra, n_train=40),
                      log=lambda m: None, warn=lambda m: None)
    assert (trainer.step_graphs is not None) == graphs
    failure = None
    try:
        trainer.run()
    except TrainingFailed as err:
        failure = str(err)
    rows = [json.loads(line) for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    weights = {k: v.detach().double().cpu() for k, v in trainer.model.state_dict().items()}
    return trainer, rows, weights, failure


@pytest.mark.parametrize("backend", ["reference", "triton"])
def test_recorded_steps_follow_the_eager_steps(tmp_path, backend):
    # 30 training structures in batches of 4 and varied sizes: 8 steps an epoch, 24 in all, several shapes
    extra = ("epochs=3", f"backend={backend}", "precision=fp32", "clip_grad=10.0")
    eager, eager_rows, eager_weights, _ = _train(tmp_path / "eager", False, *extra)
    graphs, rows, weights, _ = _train(tmp_path / "graphs", True, *extra)
    counts = graphs.step_graphs.counts
    assert counts["eager"] + counts["replayed"] == 24 and counts["replayed"] >= 12 and counts["recorded"] >= 1
    assert graphs.skipped == eager.skipped == 0
    for a, b in zip(eager_rows, rows, strict=True):
        assert b["train_loss"] == pytest.approx(a["train_loss"], rel=1e-6)
        assert b.get("valid_force_rmse_mev_per_A") == pytest.approx(a.get("valid_force_rmse_mev_per_A"), rel=1e-5)
    for k in eager_weights:
        assert torch.allclose(weights[k], eager_weights[k], rtol=1e-5, atol=1e-6), k


def test_an_fp16_overflow_is_skipped_inside_the_recording_as_outside(tmp_path):
    # a first loss scale of 2^40 overflows fp16 gradients: GradScaler skips and halves until it fits
    extra = ("epochs=2", "backend=triton", "precision=fp16-mixed", f"loss_scale_init={2.0 ** 40}")
    eager, eager_rows, _, _ = _train(tmp_path / "eager", False, *extra)
    graphs, rows, _, _ = _train(tmp_path / "graphs", True, *extra)
    assert graphs.step_graphs.counts["replayed"] > 0
    assert eager.skipped > 0 and graphs.skipped == eager.skipped
    assert graphs.scaler.get_scale() == eager.scaler.get_scale() < 2.0 ** 40
    for a, b in zip(eager_rows, rows, strict=True):
        assert b["train_loss"] == pytest.approx(a["train_loss"], rel=1e-3)  # fp16 forward


def test_non_finite_weights_are_restored_and_recorded_again(tmp_path, monkeypatch):
    # lr 1e38: the first applied steps leave weights near the float32 limit, then infinite ones;
    # each read-back (every 3 steps) restores the epoch's start, which replaces the optimizer's moments
    monkeypatch.setattr(lpmace.train.trainer, "READ_BACK_STEPS", 3)
    extra = ("epochs=1", "backend=triton", "precision=fp32", "lr=1e38", "amsgrad=false")
    eager, _, _, eager_failure = _train(tmp_path / "eager", False, *extra)
    graphs, _, _, failure = _train(tmp_path / "graphs", True, *extra)
    assert eager.restored > 0 and graphs.restored == eager.restored and graphs.skipped == eager.skipped
    assert failure == eager_failure
    counts = graphs.step_graphs.counts
    assert counts["recorded"] > 1  # recorded again after a restore
