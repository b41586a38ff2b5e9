"""The training loop: mixed precision with fp32 master weights, loss scaling, EMA, checkpoints.

One epoch = one pass over the shuffled training graphs. After every `eval_interval` epochs the EMA
weights are validated; `checkpoints/last.pt` is written atomically after every epoch, so a run
killed at any moment resumes (`resume=True`) from the last finished epoch and ends with the same
number of epochs. fp16 policies use dynamic loss scaling (torch.amp.GradScaler): gradients are
unscaled before clipping, and steps whose loss or gradients are not finite are skipped and counted
(the structures of a batch with a non-finite loss are named). A step that leaves a non-finite weight
restores the weights, the EMA and the optimizer from the start of the epoch; the EMA only ever
averages finite weights. An epoch in which at least half of the steps had no effect is warned about.

Steps do not wait for the device. `training_step` skips a non-finite step on the device (fused Adam),
the EMA averages on the device only steps that took effect and left finite weights, and each step's
loss and flags stay on the device (`EpochTally`) until a read-back — every READ_BACK_STEPS steps, at
the end of the epoch, and after every step when a test's `fault` hook is set. (Where torch has no
fused Adam for the device the step reads its skip decision back itself, and with several ranks the
gradient reduction syncs once per step.) What used to happen right after a step happens there: the
counts, the structures named, and the restore of the epoch's start, so a step that leaves non-finite
weights is undone at the next read-back; the steps that ran on those weights until then count as
skipped. Nothing non-finite reaches the EMA, and checkpoints and models are written after the
epoch's last read-back. On one CUDA device the whole step — forward, loss, backward, clipping and the
fused Adam — is recorded as a CUDA graph per batch shape and replayed (`lpmace.train.cuda_graphs`;
batches padded to a few sizes; `cuda_graphs: false` turns it off); the rules above are the same.

A run ends with `TrainingFailed` (the CLI's one error line) instead of a model no one should use: no
step took effect, the EMA weights are not finite, or the final model's validation is not finite.
Ctrl-C abandons the current epoch, says which checkpoint holds the run, and re-raises; `--resume`
continues from there. A fresh run (not a resume) into a folder without a checkpoint starts a fresh
log.jsonl, as the earlier run there never finished an epoch's checkpoint.
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import json
import math
import sys
import time
from pathlib import Path
from typing import Callable, Dict, Optional

import torch
import yaml

from lpmace.atomic import atomic_write_text
from lpmace.cache import compiled_graphs, process_age
from lpmace.compile import compile_mode
from lpmace.conversions import legacy_conversions
from lpmace.datasets import display_stem
from lpmace.devices import resolve_device
from lpmace.errors import InputError, TrainingFailed
from lpmace.io import save
from lpmace.model import MACE, MACEConfig
from lpmace.precision import resolve_policy
from lpmace.train.absent_elements import keep_absent_elements
from lpmace.train.checkpoint import load_checkpoint, save_checkpoint
from lpmace.train.config import TrainConfig
from lpmace.train.correlation import active_correlation, set_correlation
from lpmace.train.cuda_graphs import StepGraphs
from lpmace.train.distributed import DistributedContext, GradientReducer, ShardedLoader
from lpmace.train.ema import EMA
from lpmace.train.health import advice, epoch_warnings, nonfinite_metrics, weights_finite
from lpmace.train.loss import weighted_loss
from lpmace.train.prepare import RunData, build_model, parameter_groups, prepare
from lpmace.train.runlog import append_row, json_safe, row_summary, trim_log
from lpmace.train.step import adam, set_fused, skips_on_device, training_step
from lpmace.train.tally import EpochTally

READ_BACK_STEPS = 25  # steps between two reads of the step records (loss, skips, finite weights)


def peak_memory(device: str) -> dict:
    """Peak memory of this process so far: CUDA allocator peak on GPUs, resident set size on CPUs."""
    if torch.device(device).type == "cuda":
        return {"peak_memory_bytes": torch.cuda.max_memory_allocated(), "peak_memory_kind": "cuda allocated"}
    import resource

    return {"peak_memory_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
            "peak_memory_kind": "process RSS"}


def _warn_on_stderr(message: str):
    from lpmace.cli import warn

    warn(message)


class Trainer:
    """`Trainer(cfg).run()` trains, validates, checkpoints and tests; returns the final metrics.

    `on_epoch(trainer, row)` runs after each epoch's log row (outside the training clock), e.g. for
    a time-to-accuracy curve. `warn(message)` reports what the user should act on (default: an
    `lpmace: warning:` line on stderr). `fault` (tests only) is called with (epoch, step, loss) and
    may return a replacement loss, e.g. an infinite one to exercise the overflow path.
    `data_parallel=False`: train alone in this process even under torchrun, on `cfg.device` (e.g. one
    committee member per rank, `lpmace.active`); the process group, if any, is left alone.
    """

    def __init__(self, cfg: TrainConfig, *, resume: bool = False, log: Callable[[str], None] = print,
                 on_epoch: Optional[Callable] = None, fault: Optional[Callable] = None,
                 warn: Callable[[str], None] = _warn_on_stderr, data_parallel: bool = True):
        # Under torchrun: join the process group; each rank trains on its part of every global batch.
        device = str(resolve_device(cfg.device, "device"))
        self.dist, device = DistributedContext.from_environment(device) if data_parallel else (DistributedContext(),
                                                                                               device)
        if device != cfg.device:
            cfg = dataclasses.replace(cfg, device=device)
        self.cfg, self.fault, self.on_epoch = cfg, fault, on_epoch
        self.log = log if self.dist.is_main else (lambda message: None)
        self.warn = warn if self.dist.is_main else (lambda message: None)
        self.out = Path(cfg.output_dir)
        self.policy = resolve_policy(cfg.precision)
        last = self.out / "checkpoints" / "last.pt"
        if last.exists() and not resume:
            raise InputError(f"{self.out} already holds a run: resume it (--resume) or choose another output_dir")
        if resume and not last.exists():
            raise InputError(f"{last}: no checkpoint to resume from")
        self.data: RunData = prepare(cfg, self.log)
        state = load_checkpoint(last) if resume else None
        mcfg, conversions = self.data.model_config, self.data.conversions
        if state:  # checkpoints before the conversions list kept species compression in model_config
            config, older = legacy_conversions(state["model_config"], {})
            mcfg, conversions = MACEConfig.from_dict(config), state.get("conversions", older)
        self.model: MACE = build_model(mcfg, cfg.seed, self.policy.params, cfg.device, self.data.initial_weights,
                                       conversions)
        from lpmace.backends import resolve, use

        # auto: compiled for a single-process run on CUDA (compiling once pays over a run), else triton
        # (compiled is not measured across processes yet)
        self.backend = resolve(cfg.backend, cfg.device, training=self.dist.world_size == 1)
        self.call_model = use(self.model, self.backend, cfg.device)  # what steps and validation call
        self.dist.broadcast_parameters(self.model)
        if cfg.tensorboard:  # checked on every rank, so that rank 0 cannot fail alone later
            try:
                from torch.utils import tensorboard  # noqa: F401
            except ImportError as err:
                raise InputError("tensorboard: true needs the tensorboard package (pip install tensorboard)") from err
        reduce_dtype = {"fp32": None, "bf16": torch.bfloat16}[cfg.allreduce_dtype]
        self.reduce = GradientReducer(self.dist, reduce_dtype)
        # fused where torch has the kernel: it skips a non-finite step on the device (no sync)
        self.optimizer = adam(parameter_groups(self.model, cfg.weight_decay), cfg.device, lr=cfg.lr,
                              amsgrad=cfg.amsgrad)
        self.fused = skips_on_device(self.optimizer)
        self.scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(
            self.optimizer, mode="min", factor=cfg.scheduler_factor, patience=cfg.scheduler_patience)
        device_type = torch.device(cfg.device).type
        presets = [cfg.precision, *(cfg.precision_schedule or {}).values()]
        self.scaler = torch.amp.GradScaler(device_type, init_scale=cfg.loss_scale_init,
                                           enabled=any(resolve_policy(p).uses_fp16 for p in presets))
        self.ema = EMA(self.model, cfg.ema_decay)
        self.loader = ShardedLoader(self.data.train, cfg.batch_size, seed=cfg.seed, rank=self.dist.rank,
                                    world_size=self.dist.world_size)
        # which training graphs have a stress reference: a batch's compute_stress without reading a tensor
        self.stressed = [g.stress is not None and (g.has_stress is None or bool(g.has_stress.any()))
                         for g in self.data.train]
        self.epoch, self.step, self.elapsed = 0, 0, 0.0
        self.first_step_s = None  # process start -> this invocation's first optimizer step done
        self.compiles_before = compiled_graphs()  # graphs torch.compile compiled before this trainer
        self.skipped, self.restored = 0, 0
        self.applied = 0  # steps whose update survived (not skipped, not rolled back)
        self.best = math.inf
        self.resumed = state is not None
        self.checkpointed = None  # the epoch that checkpoints/last.pt holds (None: no checkpoint yet)
        self.validated = (None, None)  # (epoch, validation metrics of the EMA weights after it)
        if state:
            self._load_state(state)
            if self.dist.is_main:
                self._truncate_log()
            self.log(f"resumed from {last} after epoch {self.epoch}")
        if cfg.foundation_model is not None:  # fine-tuning: elements without training data keep their weights
            present = {int(z) for g in self.data.train for z in g.numbers.tolist()}
            kept = keep_absent_elements(self.model, self.optimizer, present)
            if kept:
                self.log(f"elements without training data keep their weights: {len(kept)} of "
                         f"{len(self.model.config.atomic_numbers)} (lpmace.train.absent_elements)")
        self.policy = resolve_policy(cfg.precision_at(self.epoch + 1))  # the schedule's, also after a resume
        self.step_graphs = None  # CUDA graphs of the step: one CUDA device, a device-side skip, no test fault
        if (cfg.cuda_graphs and torch.device(cfg.device).type == "cuda" and self.dist.world_size == 1
                and self.fused and fault is None and compile_mode() != "reduce-overhead"):
            self.step_graphs = StepGraphs(self.model, self.optimizer, self.model.config.r_max, cfg.device)
        # the order of the last finished epoch (of the first, in a fresh run); run() raises it on schedule
        self.correlation = cfg.correlation_at(max(self.epoch, 1))
        if self.correlation is not None:
            set_correlation(self.model, self.correlation, ema=self.ema, optimizer=self.optimizer)

    # ---- state -------------------------------------------------------------------------------
    def _state(self) -> dict:
        return {
            "model_config": self.model.config.to_dict(), "conversions": list(self.model.conversions),
            "train_config": self.cfg.to_dict(),
            "model": self.model.state_dict(), "ema": self.ema.state_dict(),
            "optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(), "epoch": self.epoch, "step": self.step,
            "elapsed": self.elapsed, "skipped": self.skipped, "restored": self.restored, "best": self.best,
            "applied": self.applied,
            "rng": torch.get_rng_state(),
        }

    def _load_state(self, s: dict):
        self.model.load_state_dict(s["model"])
        self.ema.load_state_dict(s["ema"])
        self.optimizer.load_state_dict(s["optimizer"])
        set_fused(self.optimizer, self.fused)  # a checkpoint of a foreach Adam (lpmace before fused)
        self.scheduler.load_state_dict(s["scheduler"])
        self.scaler.load_state_dict(s["scaler"])
        self.epoch, self.step, self.elapsed = int(s["epoch"]), int(s["step"]), float(s["elapsed"])
        self.skipped, self.restored, self.best = int(s["skipped"]), int(s["restored"]), float(s["best"])
        self.applied = int(s.get("applied", self.step - self.skipped))  # checkpoints before it was kept
        self.checkpointed = self.epoch
        torch.set_rng_state(s["rng"])
        self.loader.epoch = self.epoch

    def _truncate_log(self):
        """Drop log rows of epochs after the checkpoint (written just before a kill); they are redone."""
        trim_log(self.out / "log.jsonl", self.epoch, self.log)

    # ---- one epoch ---------------------------------------------------------------------------
    def _weights(self, epoch: int):
        cfg = self.cfg
        if cfg.stage_two_epoch is not None and epoch >= cfg.stage_two_epoch:
            return cfg.stage_two_energy_weight, cfg.stage_two_forces_weight
        return cfg.energy_weight, cfg.forces_weight

    def loss_function(self, epoch: int, counts: Optional[dict] = None) -> Callable[[dict, object], torch.Tensor]:
        """The loss of a batch in `epoch` (its stage's weights), as `training_step` takes it; `counts`:
        the global batch's, when several ranks share it."""
        cfg = self.cfg
        energy_w, forces_w = self._weights(epoch)

        def loss_of(out: dict, batch) -> torch.Tensor:
            loss = weighted_loss(out, batch, energy_weight=energy_w, forces_weight=forces_w,
                                 stress_weight=cfg.stress_weight, kind=cfg.loss, delta=cfg.huber_delta, counts=counts)
            return loss if self.fault is None else self.fault(epoch, self.step, loss)
        return loss_of

    def _train_epoch(self, bar) -> Optional[float]:
        """One pass over the training graphs; the mean finite loss (None: no step had a finite loss).

        Steps read nothing back: their records stay on the device (`EpochTally`) until every
        READ_BACK_STEPS steps (every step under a test's `fault`) and at the epoch's end."""
        cfg, model = self.cfg, self.model
        epoch = self.epoch + 1
        self._start = ({k: v.detach().clone() for k, v in model.state_dict().items()},
                       copy.deepcopy(self.optimizer.state_dict()),  # state_dict() holds the live moments
                       self.ema.snapshot())
        tally = EpochTally()
        first_step = self.step
        every = 1 if self.fault is not None else READ_BACK_STEPS
        model.train()
        model.elements_checked = True  # prepare() checked every element: the forward reads nothing back
        try:
            self._steps(epoch, tally, every, bar)
        finally:
            model.elements_checked = False
        self._read_back(tally, epoch, bar)
        self.applied += tally.kept
        self._report_epoch(epoch, self.step - first_step, tally.kept, tally.skipped, tally.restored,
                           tally.culprits, tally.nonfinite)
        return tally.total / tally.count if tally.count else None

    def _steps(self, epoch: int, tally: EpochTally, every: int, bar) -> None:
        """The steps of epoch `epoch`, read back every `every` steps."""
        cfg, model = self.cfg, self.model
        # With several ranks each loss term is normalised by the global batch's counts, so the rank
        # losses (and gradients) add up to the single-process ones.
        sharded = self.dist.world_size > 1
        for graph, counts in self.loader:
            forward, indices = {}, list(self.loader.indices)
            if graph is not None:  # None: fewer structures in this global batch than ranks
                forward["compute_stress"] = bool(cfg.stress_weight) and any(self.stressed[i] for i in indices)
            # the reducer sums loss and gradients over ranks (no-op on one)
            run = functools.partial(training_step, self.call_model, policy=self.policy, optimizer=self.optimizer,
                                    scaler=self.scaler, loss_of=self.loss_function(epoch, counts if sharded else None),
                                    clip_grad=cfg.clip_grad, reduce=self.reduce, **forward)
            if self.step_graphs is not None:  # what the recording fixes besides the batch's shape
                key = (self.policy.name, self._weights(epoch), self.correlation, tuple(forward.items()))
                step, graph = self.step_graphs.step(graph, key, run)
            else:
                if graph is not None:
                    graph = graph.to(cfg.device, non_blocking=True)  # no wait for the previous step
                step = run(graph)
            # A finite gradient can still step to non-finite weights (a huge lr): the EMA, which is
            # validated and saved, averages only steps that took effect and left finite weights.
            finite = self.ema.update(model, step.ok)
            tally.add(self.step, step, finite, graph, indices)
            if self.first_step_s is None:
                self._first_step_done()
            self.step += 1
            if bar is not None:
                bar.update(1)
            if len(tally.pending) >= every:
                self._read_back(tally, epoch, bar)

    def _read_back(self, tally: EpochTally, epoch: int, bar) -> None:
        """Read the pending step records (one sync); restore the epoch's start if the weights went
        non-finite since the last read-back."""
        skipped, restored = tally.skipped, tally.restored
        bad_after = tally.read_back()
        self.skipped += tally.skipped - skipped
        self.restored += tally.restored - restored
        if bad_after is not None:
            weights, optimizer, ema = self._start
            self.model.load_state_dict(weights)
            # a copy: it would adopt the snapshot's tensors (new moments: StepGraphs records again)
            self.optimizer.load_state_dict(copy.deepcopy(optimizer))
            self.ema.load_state_dict(ema)
            self.log(f"epoch {epoch}: non-finite weights after step {bad_after}; restored the epoch's start")
        if bar is not None:
            bar.set_postfix(loss=f"{tally.last_loss:.4g}", refresh=False)

    def _first_step_done(self) -> None:
        """Record (and say) how long this process took to finish its first optimizer step: start-up,
        data, model, tracing and compiling included; one device sync, once."""
        if torch.device(self.cfg.device).type == "cuda":
            torch.cuda.synchronize(self.cfg.device)
        self.first_step_s = round(process_age(), 3)
        self.log(f"first step done {self.first_step_s:.1f} s after the process started "
                 f"({compiled_graphs() - self.compiles_before} graphs compiled)")

    def _report_epoch(self, epoch: int, steps: int, kept: int, skipped: int, restored: int,
                      culprits: Dict[int, int], nonfinite: int):
        scale = self.scaler.get_scale() if self.scaler.is_enabled() else None
        for message in epoch_warnings(epoch, steps=steps, kept=kept, skipped=skipped, restored=restored,
                                      culprits=culprits, nonfinite=nonfinite, sources=self.data.train_sources,
                                      loss_scale=scale, hint=self._advice()):
            self.warn(message)

    def _advice(self) -> str:
        return advice(self.optimizer.param_groups[0]["lr"], self.policy)

    # ---- validation / test -------------------------------------------------------------------
    def evaluate(self, graphs, batch_size=None) -> Dict[str, float]:
        """Metrics of the EMA weights on `graphs`; with several ranks each evaluates every
        world_size-th structure and all ranks merge the same predictions (a collective call)."""
        from lpmace.evaluate import evaluate, merge_metrics

        single = self.dist.world_size == 1
        mine = graphs if single else graphs[self.dist.rank::self.dist.world_size]
        metrics = None
        if mine or single:  # one rank with no structures: evaluate's own error
            with self.ema.applied(self.model):
                metrics = evaluate(self.call_model, mine, precision=self.policy,
                                   batch_size=batch_size or self.cfg.valid_batch_size, device=self.cfg.device)
        if single:
            return metrics
        return merge_metrics([m for m in self.dist.gather(metrics) if m is not None])

    def _valid_loss(self, m: dict) -> float:
        e = m.get("energy_rmse_mev_per_atom") or 0.0
        f = m.get("force_rmse_mev_per_A") or 0.0
        return self.cfg.energy_weight * (e / 1000) ** 2 + self.cfg.forces_weight * (f / 1000) ** 2

    # ---- the run -----------------------------------------------------------------------------
    def run(self) -> dict:
        from tqdm import tqdm

        cfg, main = self.cfg, self.dist.is_main
        if main:
            self.out.mkdir(parents=True, exist_ok=True)
            log_file = self.out / "log.jsonl"
            if not self.resumed and log_file.exists():  # no checkpoint (else refused): its rows are void
                log_file.unlink()
                self.log(f"{log_file}: removed the log of an earlier run that left no checkpoint; starting afresh")
            (self.out / "config.yaml").write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False))
        n_params = sum(p.numel() for p in self.model.parameters())
        self.log(f"model: {n_params:,} parameters; precision {self.policy.name}; backend {self.backend}{' (auto)' if cfg.backend == 'auto' else ''}; "
                 f"device {cfg.device}" + (f"; correlation order {self.correlation}" if self.correlation else ""))
        run_start = time.perf_counter()  # wall clock of this invocation (validation included)
        self.writer = None
        if cfg.tensorboard and main:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError as err:
                raise InputError("tensorboard: true needs the tensorboard package (pip install tensorboard)") from err
            self.writer = SummaryWriter(str(self.out / "tensorboard"))
        bar = None
        if cfg.progress and main and sys.stderr.isatty():  # no bar in a log file or a pipe
            bar = tqdm(total=cfg.epochs * len(self.loader), initial=self.epoch * len(self.loader),
                       desc="train", unit="step", dynamic_ncols=True, leave=False)
        try:
            while self.epoch < cfg.epochs:
                if cfg.max_time is not None and self.dist.max(self.elapsed, cfg.device) >= cfg.max_time:
                    self.log(f"max_time {cfg.max_time:g} s reached after epoch {self.epoch}")
                    break
                scheduled = resolve_policy(cfg.precision_at(self.epoch + 1))
                if scheduled.name != self.policy.name:
                    self.log(f"epoch {self.epoch + 1}: precision {self.policy.name} -> {scheduled.name}")
                    self.policy = scheduled
                nu = cfg.correlation_at(self.epoch + 1)
                if nu != self.correlation:
                    self.log(f"epoch {self.epoch + 1}: correlation order {self.correlation} -> {nu}")
                    set_correlation(self.model, nu, ema=self.ema, optimizer=self.optimizer)
                    self.correlation = nu
                start = time.perf_counter()
                train_loss = self._train_epoch(bar)
                self.elapsed += time.perf_counter() - start
                self.epoch += 1
                row = {"epoch": self.epoch, "step": self.step, "train_time_s": round(self.elapsed, 3),
                       "wall_time_s": round(time.perf_counter() - run_start, 3),
                       "train_loss": train_loss, "precision": self.policy.name,
                       "correlation": active_correlation(self.model),
                       "lr": self.optimizer.param_groups[0]["lr"], "loss_scale": self.scaler.get_scale()
                       if self.scaler.is_enabled() else None, "skipped_steps": self.skipped,
                       "restored": self.restored, "first_step_s": self.first_step_s,
                       "compiles": compiled_graphs() - self.compiles_before}
                if self.data.valid and (self.epoch % cfg.eval_interval == 0 or self.epoch == cfg.epochs):
                    metrics = self.evaluate(self.data.valid).to_dict()
                    self.validated = (self.epoch, metrics)
                    row.update({f"valid_{k}": v for k, v in metrics.items() if isinstance(v, (int, float))})
                    vloss = self._valid_loss(metrics)
                    self.scheduler.step(vloss)
                    if vloss < self.best:
                        self.best = vloss
                        if main:
                            with self.ema.applied(self.model):
                                save(self.model, self.out / "best_model.safetensors")
                    if bar is not None:
                        shown = math.nan if train_loss is None else train_loss
                        bar.set_postfix(loss=f"{shown:.4g}", F=f"{metrics.get('force_rmse_mev_per_A', 0):.1f}")
                if main:
                    self._write_log(row)
                if self.on_epoch is not None:
                    self.on_epoch(self, row)
                if self.writer is not None:
                    for key, value in row.items():
                        if isinstance(value, (int, float)) and key != "epoch":
                            self.writer.add_scalar(key, value, self.epoch)
                if main:
                    save_checkpoint(self._state(), self.out / "checkpoints" / "last.pt")
                self.checkpointed = self.epoch
                self.dist.barrier()  # no rank runs ahead of the checkpoint it would resume from
        except KeyboardInterrupt:
            # Whatever the current step or write was, checkpoints/last.pt is the last whole one.
            self.log(self._interrupted_message())
            raise
        finally:
            if bar is not None:
                bar.close()
            if self.writer is not None:
                self.writer.close()
        self._check_final_model()
        if main:
            with self.ema.applied(self.model):
                save(self.model, self.out / "model.safetensors")
        return self._test()

    def _interrupted_message(self) -> str:
        last = self.out / "checkpoints" / "last.pt"
        if self.checkpointed is None:
            return (f"interrupted in epoch {self.epoch + 1}, before the first checkpoint: nothing to resume; "
                    f"start the run again")
        return (f"interrupted in epoch {self.epoch + 1}: {last} holds the run after epoch {self.checkpointed}; "
                f"continue it with `lpmace train CONFIG --resume` (same CONFIG and output_dir)")

    def _check_final_model(self):
        """Refuse to end as a success with a model no one should use (the checkpoint is kept)."""
        where = f"the last checkpoint is {self.out / 'checkpoints' / 'last.pt'}"
        advice = self._advice()
        if self.epoch and self.applied == 0:
            raise TrainingFailed(f"training failed: none of the {self.step} steps took effect (non-finite loss, "
                                 f"gradients or weights); {advice}")
        if not weights_finite(list(self.ema.shadow.values())):
            raise TrainingFailed(f"training failed: the averaged (EMA) weights are not finite; {advice}; {where}")
        if not self.data.valid:
            return  # nothing to validate on (valid_fraction 0 and no valid_file): finite weights is all
        # The latest validation (the last epoch's, unless max_time stopped the run between
        # eval_intervals); one now if this invocation has none, e.g. a resume of a finished run.
        epoch, metrics = self.validated
        if epoch is None:
            metrics = self.evaluate(self.data.valid).to_dict()
        bad = nonfinite_metrics(metrics)
        if bad:
            raise TrainingFailed(f"training failed: the final model's validation is not finite "
                                 f"({', '.join(f'{k} {v}' for k, v in bad.items())}) in {self.policy.name}; "
                                 f"{advice}; {where}")

    def _write_log(self, row: dict):
        append_row(self.out / "log.jsonl", row)
        self.log(row_summary(row))

    def _test(self) -> dict:
        from lpmace.plots import parity_plot

        results = {}
        for name, graphs in self.data.tests.items():
            metrics = self.evaluate(graphs)
            results[name] = metrics.to_dict()
            if not self.dist.is_main:
                continue
            stem = display_stem(name)
            parity_plot(metrics, self.out / f"parity_{stem}.png", f"{stem} ({self.policy.name})")
            d = results[name]
            self.log(f"test {name}: E {d.get('energy_rmse_mev_per_atom', float('nan')):.2f} meV/atom, "
                     f"F {d.get('force_rmse_mev_per_A', float('nan')):.2f} meV/Å (RMSE)")
        summary = {"epochs": self.epoch, "steps": self.step, "train_time_s": self.elapsed,
                   "skipped_steps": self.skipped, "restored": self.restored, "precision": self.policy.name,
                   **peak_memory(self.cfg.device), "test": results}
        if self.dist.is_main:
            atomic_write_text(self.out / "test_metrics.json", json.dumps(json_safe(summary), indent=2))
        self.dist.barrier()
        return summary
