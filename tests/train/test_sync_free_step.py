"""The training step without host synchronisation: a non-finite step is skipped on the device (fused
Adam's `found_inf`), a finite one updates exactly as the foreach Adam with the same clipping did,
and the trainer's step loop reads nothing back between its read-backs."""

import copy
import math
import sys

import pytest
import torch
from small_training import small_config

import lpmace.train.trainer
from lpmace.data import collate, graph_from_configuration, read_configurations
from lpmace.precision import resolve_policy
from lpmace.train import Trainer
from lpmace.train.ema import EMA
from lpmace.train.prepare import parameter_groups
from lpmace.train.step import adam, set_fused, skips_on_device, training_step


def _batch(model, bpa_test_path, index):
    return collate([graph_from_configuration(c, model.config.r_max)
                    for c in read_configurations(bpa_test_path, index=index)])


def _forces_loss(out, graph):
    return ((out["forces"].double() - graph.forces) ** 2).mean()


def _state(model, optimizer, ema, scaler):
    """Everything a step may change, copied."""
    opt = {name: {k: v.clone() for k, v in optimizer.state[p].items()} for name, p in model.named_parameters()
           if p in optimizer.state}
    return ({k: v.detach().clone() for k, v in model.named_parameters()}, opt,
            {k: v.clone() for k, v in ema.shadow.items()}, ema.updates, scaler.get_scale() if scaler.is_enabled() else None)


def _nan_gradient(model):
    """A hook that makes one parameter's gradient NaN (the loss stays finite)."""
    first = next(p for name, p in model.named_parameters() if p.requires_grad)
    return first.register_hook(lambda g: g * math.nan)


@pytest.mark.parametrize("fault", ["nan loss", "nan gradient", "fp16 overflow"])
def test_a_non_finite_step_leaves_weights_optimizer_and_ema_unchanged(make_model, bpa_test_path, fault):
    model = make_model(dtype=torch.float32)
    graph = _batch(model, bpa_test_path, ":2")
    optimizer = adam(parameter_groups(model, 1e-3), "cpu", lr=1e-2, amsgrad=True)
    assert skips_on_device(optimizer)  # CPU has the fused kernel: the device-side skip is what is tested
    scaler = torch.amp.GradScaler("cpu", init_scale=1024.0, enabled=fault == "fp16 overflow")
    ema, policy = EMA(model, 0.99), resolve_policy("fp32")
    for _ in range(2):  # optimizer state and EMA count exist before the faulty step
        step = training_step(model, graph, policy, optimizer, scaler, _forces_loss, clip_grad=10.0)
        ema.update(model, step.ok)
    assert step.applied and ema.updates == 2
    before = _state(model, optimizer, ema, scaler)
    loss_of, hook = _forces_loss, None
    if fault == "nan loss":
        loss_of = lambda out, g: _forces_loss(out, g) * math.nan  # noqa: E731
    elif fault == "nan gradient":
        hook = _nan_gradient(model)
    else:  # the scaled loss overflows: the scaler's own found_inf (and its backoff)
        loss_of = lambda out, g: _forces_loss(out, g) * 1e308  # noqa: E731
    step = training_step(model, graph, policy, optimizer, scaler, loss_of, clip_grad=10.0)
    finite = ema.update(model, step.ok)
    if hook is not None:
        hook.remove()
    assert not step.applied and bool(finite)
    assert math.isfinite(step.loss) == (fault != "nan loss")
    weights, opt, shadow, updates, scale = _state(model, optimizer, ema, scaler)
    assert all(torch.equal(before[0][k], weights[k]) for k in weights)
    assert opt.keys() == before[1].keys() and all(
        torch.equal(before[1][n][k], opt[n][k]) for n in opt for k in opt[n])  # moments and step counts
    assert all(torch.equal(before[2][k], shadow[k]) for k in shadow) and updates == before[3] == 2
    assert all(p.grad is None for p in model.parameters())
    if fault == "fp16 overflow":
        assert scale == before[4] / 2  # GradScaler still backs off
    # and the next finite step takes effect again
    step = training_step(model, graph, policy, optimizer, scaler, _forces_loss, clip_grad=10.0)
    assert step.applied and any(not torch.equal(before[0][k], p.detach()) for k, p in model.named_parameters())


@pytest.mark.parametrize("dtype, rtol", [(torch.float64, 1e-12), (torch.float32, 1e-6)])
def test_finite_steps_update_as_the_foreach_adam_with_the_same_clipping(make_model, bpa_test_path, dtype, rtol):
    model, reference = make_model(dtype=dtype), make_model(dtype=dtype)
    batches = [_batch(model, bpa_test_path, f"{2 * i}:{2 * i + 2}") for i in range(4)]
    policy = resolve_policy("fp64" if dtype == torch.float64 else "fp32")
    optimizer = adam(parameter_groups(model, 5e-3), "cpu", lr=1e-2, amsgrad=True)
    ema, scaler = EMA(model, 0.99), torch.amp.GradScaler("cpu", enabled=False)
    # the reference: today's path written out — foreach Adam, clip_grad_norm_ (foreach), EMA by hand
    ref_opt = torch.optim.Adam(parameter_groups(reference, 5e-3), lr=1e-2, amsgrad=True, foreach=True)
    shadow = {k: v.detach().clone() for k, v in reference.named_parameters()}
    clip = 0.05  # small: the first steps are clipped
    clipped = 0
    for t, graph in enumerate(batches * 2, start=1):
        step = training_step(model, graph, policy, optimizer, scaler, _forces_loss, clip_grad=clip)
        ema.update(model, step.ok)
        ref_opt.zero_grad(set_to_none=True)
        loss = _forces_loss(reference(graph, precision=policy, training=True), graph)
        loss.backward()
        norm = torch.nn.utils.clip_grad_norm_(reference.parameters(), clip, foreach=True)
        clipped += bool(norm > clip)
        ref_opt.step()
        d = min(0.99, (1 + t) / (10 + t))
        names = list(shadow)
        params = dict(reference.named_parameters())
        torch._foreach_lerp_([shadow[k] for k in names], [params[k].detach() for k in names], 1 - d)
        assert step.loss == pytest.approx(float(loss.detach()), rel=rtol, abs=0)
    assert clipped >= 2
    refs = dict(reference.named_parameters())
    for name, p in model.named_parameters():
        _assert_close(p.detach(), refs[name].detach(), rtol, name)
        _assert_close(ema.shadow[name], shadow[name], rtol, f"EMA {name}")
        for key, value in ref_opt.state[refs[name]].items():
            _assert_close(optimizer.state[p][key].cpu().to(value.dtype), value, 0 if key == "step" else rtol,
                          f"{key} of {name}")


def _assert_close(a, b, rtol, what):
    """|a - b| <= rtol · max|b| over the tensor: the fused kernel rounds fp32 differently by an ulp,
    which Adam's normalised update carries to the smallest elements of a tensor."""
    assert float((a - b).abs().max()) <= rtol * float(b.abs().max()), what


# ---- host reads in the trainer's step loop --------------------------------------------------------

READS = ("item", "tolist", "numpy", "__bool__", "__float__", "__int__", "__index__")
HOST_BATCHING = {"collate", "batch_counts", "_references"}  # the loader builds batches on the host


class HostReads:
    """Counts reads of tensor values by Python (item, tolist, bool(), float(), ...) while active, by the
    function that asked (the innermost lpmace frame), leaving out the loader's host-side batch
    building. On a GPU each would be a device sync. (Syncs inside torch's C++ ops are not seen.)"""

    def __init__(self):
        self.calls = []

    def __enter__(self):
        self.saved = {name: getattr(torch.Tensor, name) for name in READS}
        for name, method in self.saved.items():
            setattr(torch.Tensor, name, self._counting(name, method))
        return self

    def __exit__(self, *exc):
        for name, method in self.saved.items():
            setattr(torch.Tensor, name, method)

    def _counting(self, name, method):
        def read(tensor, *args, **kwargs):
            frame, functions = sys._getframe(1), []
            while frame is not None:
                if "lpmace" in frame.f_code.co_filename:
                    functions.append(frame.f_code.co_name)
                frame = frame.f_back
            if not HOST_BATCHING.intersection(functions):
                self.calls.append((name, functions[0] if functions else "?", tuple(functions)))
            return method(tensor, *args, **kwargs)
        return read


def test_the_step_loop_reads_the_device_only_at_its_read_backs(tmp_path, monkeypatch):
    every = 3
    monkeypatch.setattr(lpmace.train.trainer, "READ_BACK_STEPS", every)
    trainer = Trainer(small_config(tmp_path, "epochs=1", "clip_grad=10", n_train=40), log=lambda m: None,
                      warn=lambda m: None)
    assert trainer.fault is None and trainer.fused  # the default path
    steps = len(trainer.loader)
    assert steps > every and steps % every  # read-backs at steps 3, 6 and the epoch's end
    with HostReads() as reads:
        loss = trainer._train_epoch(None)
    assert trainer.step == steps and trainer.skipped == 0 and loss > 0
    outside = [call for call in reads.calls if "read_back" not in call[2]]
    assert outside == []
    assert len(reads.calls) == math.ceil(steps / every)  # one read (of all pending records) per read-back
    assert {call[:2] for call in reads.calls} == {("tolist", "read_back")}


def test_non_finite_weights_are_restored_at_the_next_read_back_and_never_reach_the_ema(tmp_path, monkeypatch):
    # lr = inf from step 1 on, without a fault hook (which would read back every step): the weights
    # go non-finite at step 1, are noticed at the read-back after step 3, and the epoch's start is
    # restored; the EMA never averages them in.
    monkeypatch.setattr(lpmace.train.trainer, "READ_BACK_STEPS", 4)
    messages = []
    trainer = Trainer(small_config(tmp_path, "epochs=1", n_train=40), log=messages.append, warn=messages.append)
    steps = len(trainer.loader)
    real_step = lpmace.train.trainer.training_step

    def infinite_lr_at_step_1(*args, **kwargs):
        for group in trainer.optimizer.param_groups:
            group["lr"] = math.inf if trainer.step == 1 else 0.01
        return real_step(*args, **kwargs)

    monkeypatch.setattr(lpmace.train.trainer, "training_step", infinite_lr_at_step_1)
    seen = []
    real_update = trainer.ema.update

    def watched_update(model, ok=None):
        finite = real_update(model, ok)
        seen.append(all(bool(torch.isfinite(v).all()) for v in trainer.ema.shadow.values()))
        return finite

    trainer.ema.update = watched_update
    trainer._train_epoch(None)
    assert all(seen) and len(seen) == steps
    assert trainer.restored == 1 and any("non-finite weights after step 1; restored" in m for m in messages)
    # steps 1 (the culprit), 2 and 3 (on its weights, before the read-back) had no effect; the rest trained
    assert trainer.skipped == 3 and trainer.applied == steps - 4
    assert all(bool(torch.isfinite(p).all()) for p in trainer.model.parameters())
    assert not any("skipped for a non-finite loss" in m for m in messages)  # steps 2, 3 name no structures


def test_a_foreach_adam_state_resumes_in_the_fused_adam(make_model, bpa_test_path):
    # checkpoints written before the fused Adam hold a foreach Adam's state (step counts on the host)
    model, reference = make_model(dtype=torch.float64), make_model(dtype=torch.float64)
    graph, policy = _batch(model, bpa_test_path, ":2"), resolve_policy("fp64")
    scaler = torch.amp.GradScaler("cpu", enabled=False)
    old = torch.optim.Adam(parameter_groups(reference, 5e-3), lr=1e-2, amsgrad=True, foreach=True)
    for _ in range(2):
        training_step(reference, graph, policy, old, scaler, _forces_loss)
    model.load_state_dict(reference.state_dict())
    optimizer = adam(parameter_groups(model, 5e-3), "cpu", lr=1e-2, amsgrad=True)
    optimizer.load_state_dict(copy.deepcopy(old.state_dict()))  # as from a file: no shared tensors
    assert not skips_on_device(optimizer)  # load_state_dict took the saved groups' flags
    set_fused(optimizer, True)
    assert skips_on_device(optimizer)
    training_step(model, graph, policy, optimizer, scaler, _forces_loss)
    training_step(reference, graph, policy, old, scaler, _forces_loss)
    for p, q in zip(model.parameters(), reference.parameters()):
        _assert_close(p.detach(), q.detach(), 1e-12, "weights")
        assert float(optimizer.state[p]["step"]) == float(old.state[q]["step"]) == 3


def test_a_second_rollback_in_an_epoch_restores_the_epochs_start_again(tmp_path):
    # lr = inf at two steps of epoch 2: both restore the optimizer of epoch 2's start (the first
    # restore must not hand the snapshot's own tensors to the optimizer, which steps them in place)
    trainer, start, after = None, {}, {}

    def faults(epoch, step, loss):
        first = len(trainer.loader)  # epoch 2's first step
        if step == first:
            start.update(copy.deepcopy(trainer.optimizer.state_dict())["state"])
        if step in (first + 3, first + 5):  # right after the restores at first + 2 and first + 4
            after[step] = copy.deepcopy(trainer.optimizer.state_dict())["state"]
        for group in trainer.optimizer.param_groups:
            group["lr"] = math.inf if step in (first + 2, first + 4) else 0.01
        return loss

    trainer = Trainer(small_config(tmp_path, "epochs=2", n_train=40), log=lambda m: None, warn=lambda m: None,
                      fault=faults)
    trainer.run()
    assert trainer.restored == 2 and len(after) == 2 and start
    for state in after.values():
        assert state.keys() == start.keys()
        assert all(torch.equal(state[i][k], start[i][k]) for i in start for k in start[i])


@pytest.mark.gpu
@pytest.mark.parametrize("backend", ["reference", "triton"])
def test_on_a_gpu_the_step_loop_syncs_only_at_its_read_backs(tmp_path, monkeypatch, backend):
    # torch's sync debug mode raises on any device sync (C++ ones included) outside the read-backs and
    # the first step's timing; the first epoch (Triton compiling and tuning) is not under test.
    from lpmace.train.tally import EpochTally

    def allowed(fn):
        def call(*args, **kwargs):
            mode = torch.cuda.get_sync_debug_mode()
            torch.cuda.set_sync_debug_mode(0)
            try:
                return fn(*args, **kwargs)
            finally:
                torch.cuda.set_sync_debug_mode(mode)
        return call

    monkeypatch.setattr(lpmace.train.trainer, "READ_BACK_STEPS", 3)
    monkeypatch.setattr(EpochTally, "read_back", allowed(EpochTally.read_back))
    monkeypatch.setattr(Trainer, "_first_step_done", allowed(Trainer._first_step_done))
    trainer = Trainer(small_config(tmp_path, "epochs=2", "device=cuda", f"backend={backend}", n_train=40),
                      log=lambda m: None, warn=lambda m: None)
    assert trainer.fused
    trainer._train_epoch(None)
    trainer.epoch += 1
    torch.cuda.set_sync_debug_mode("error")
    try:
        loss = trainer._train_epoch(None)
    finally:
        torch.cuda.set_sync_debug_mode(0)
    assert loss > 0 and trainer.skipped == 0 and trainer.applied == 2 * len(trainer.loader)
