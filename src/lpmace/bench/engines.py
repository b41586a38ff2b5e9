"""Engines: one way of evaluating the benchmark model (code × backend × precision) behind one interface,
so every section measures lpmace and mace-torch the same way.

An engine turns a host `Graph` into device inputs once (`prepare`), then evaluates them (`infer`:
energy [n_graphs], forces [n_atoms, 3], stress [n_graphs, 3, 3] when asked) or builds a training step
(`train_step`: energy + forces + loss + backward through the forces + Adam step, on its own copy of
the weights; for lpmace the trainer's own step, `lpmace.train.step.training_step`, on CUDA recorded
as a CUDA graph as the trainer does, `lpmace.train.cuda_graphs`). lpmace engines
run the model under a precision preset, on CUDA inference replayed from a CUDA graph as the calculator
does (`lpmace.cuda_graphs.ForwardGraphs`; the first call eager, the second recorded, both among the
warm-up calls); mace-torch engines run the same weights, converted by
`lpmace.interop`, with e3nn (float32/float64) or cuEquivariance.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Callable, Optional

import torch

from lpmace.compile import compile_mode
from lpmace.data.graph import Graph
from lpmace.errors import InputError
from lpmace.model import MACE
from lpmace.precision import resolve_policy

__all__ = ["BACKENDS", "Engine", "lpmace_engine", "mace_torch_engines"]

# lpmace's ways of computing the model (lpmace.backends; "auto" is one of these, resolved).
BACKENDS = ("reference", "triton", "compiled")
FORCES_WEIGHT = 1000.0  # the MACE paper's 3BPA recipe: λE = 1, λF = 1000


@dataclass
class Engine:
    code: str  # "lpmace" or "mace-torch"
    backend: str
    precision: str
    prepare: Callable[[Graph], object]
    infer: Callable[[object, bool], dict]  # (inputs, compute_stress) -> {"energy", "forces", "stress"}
    train_step: Optional[Callable[[object], Callable[[], None]]] = None
    # `infer` without CUDA graphs where `infer` replays them (see `infer_unrecorded`)
    unrecorded: Optional[Callable[[object, bool], dict]] = None
    release: Callable[[], None] = lambda: None  # drops what the engine keeps between calls (recordings)

    @property
    def infer_unrecorded(self) -> Callable[[object, bool], dict]:
        """Inference that launches its kernels one by one: for what a call allocates (a replay allocates
        nothing, its memory was taken at recording), FLOP counts, accuracy, and the scaling curve (no
        recording per size)."""
        return self.unrecorded or self.infer

    @property
    def label(self) -> str:
        return f"{self.code} {self.backend} {self.precision}"

    def row(self) -> dict:
        return {"code": self.code, "backend": self.backend, "precision": self.precision}


def _loss(energy: torch.Tensor, forces: torch.Tensor) -> torch.Tensor:
    """The training loss on zero labels: λE·mean(E²) + λF·mean(F²) (the step costs what a real one does)."""
    return (energy.double() ** 2).mean() + FORCES_WEIGHT * (forces.double() ** 2).mean()


def lpmace_engine(model: MACE, precision: str, backend: str, device: str) -> Engine:
    """`model` under `precision` with `backend`. Parameters are copied in the policy's parameter dtype."""
    if backend not in BACKENDS:
        raise InputError(f"backend {backend!r} is not available (known: {', '.join(BACKENDS)})")
    from lpmace.backends import use

    policy = resolve_policy(precision)
    weights = copy.deepcopy(model).to(device=device, dtype=policy.params)
    eager = use(weights, backend, device)
    run = eager
    if torch.device(device).type == "cuda":  # as the calculator runs it
        from lpmace.cuda_graphs import ForwardGraphs

        run = ForwardGraphs(weights, eager, device)

    def infer(graph: Graph, compute_stress: bool) -> dict:
        return run(graph, precision=policy, compute_stress=compute_stress)

    def unrecorded(graph: Graph, compute_stress: bool) -> dict:  # `infer` as it was before recordings
        return eager(graph, precision=policy, compute_stress=compute_stress)

    def train_step(graph: Graph) -> Callable[[], None]:
        from lpmace.train.step import adam, training_step

        trained = copy.deepcopy(weights)
        trained.elements_checked = True  # as in the trainer, whose data are checked when read
        run_trained = use(trained, backend, device)
        optimizer = adam(trained.parameters(), device, lr=1e-3, amsgrad=True)  # the trainer's (fused) Adam
        scaler = torch.amp.GradScaler(torch.device(device).type, enabled=policy.uses_fp16)

        def run(batch: Graph):  # the trainer's step (`lpmace.train.step`), on zero labels
            return training_step(run_trained, batch, policy, optimizer, scaler,
                                 lambda out, _: _loss(out["energy"], out["forces"]))

        if torch.device(device).type != "cuda" or compile_mode() == "reduce-overhead":
            return lambda: run(graph)
        from lpmace.train.cuda_graphs import StepGraphs

        # as the trainer on one GPU: the whole step recorded as a CUDA graph (first call eager)
        graphs = StepGraphs(trained, optimizer, trained.config.r_max, device)
        return lambda: graphs.step(graph, "bench", run)

    graphed = run is not eager
    return Engine("lpmace", backend, policy.name, prepare=lambda g: g.to(device), infer=infer, train_step=train_step,
                  unrecorded=unrecorded if graphed else None, release=run.clear if graphed else lambda: None)


def _mace_engine(build: Callable[[], torch.nn.Module], atomic_numbers, dtype: torch.dtype, backend: str,
                 device: str) -> Engine:
    """A mace-torch engine; `build()` makes a module with the benchmark weights on `device`. Training
    steps get a freshly built module (not a deepcopy: cuEquivariance modules do not survive one)."""
    from lpmace.interop import mace_torch_inputs

    module = build()

    def prepare(graph: Graph) -> dict:
        inputs = mace_torch_inputs(graph.to(device), atomic_numbers)
        return {k: v.to(dtype) if torch.is_floating_point(v) else v for k, v in inputs.items()}

    def infer(inputs: dict, compute_stress: bool) -> dict:
        out = module(dict(inputs), training=False, compute_force=True, compute_stress=compute_stress)
        return {"energy": out["energy"], "forces": out["forces"], "stress": out.get("stress")}

    def train_step(inputs: dict) -> Callable[[], None]:
        trained = build()
        optimizer = torch.optim.Adam(trained.parameters(), lr=1e-3, amsgrad=True)

        def step() -> None:
            optimizer.zero_grad(set_to_none=True)
            out = trained(dict(inputs), training=True, compute_force=True)
            _loss(out["energy"], out["forces"]).backward()
            optimizer.step()
        return step

    name = {torch.float32: "fp32", torch.float64: "fp64"}[dtype]
    return Engine("mace-torch", backend, name, prepare=prepare, infer=infer, train_step=train_step)


def mace_torch_engines(mace64: torch.nn.Module, atomic_numbers, device: str, skipped: list) -> list[Engine]:
    """mace-torch e3nn fp32 and fp64, and cuEquivariance fp32 when it imports (CUDA only), all with the
    weights of the float64 module `mace64`. What could not be built is appended to `skipped`."""
    engines = []
    for dtype in (torch.float32, torch.float64):
        def e3nn(dtype=dtype):
            return copy.deepcopy(mace64).to(device=device, dtype=dtype)
        engines.append(_mace_engine(e3nn, atomic_numbers, dtype, "e3nn", device))
    if not str(device).startswith("cuda"):
        skipped.append({"section": "speed", "what": "mace-torch cueq fp32", "why": "cuEquivariance runs on CUDA only"})
        return engines

    def cueq():
        from mace.cli.convert_e3nn_cueq import run as to_cueq

        old = torch.get_default_dtype()
        try:  # the converter sets torch's global default dtype; lpmace never leaves it changed
            return to_cueq(copy.deepcopy(mace64).to(torch.float32), device=device).to(device=device,
                                                                                      dtype=torch.float32)
        finally:
            torch.set_default_dtype(old)

    try:
        engines.append(_mace_engine(cueq, atomic_numbers, torch.float32, "cueq", device))
    except Exception as err:  # cuequivariance absent or failing to convert: report it, measure the rest
        skipped.append({"section": "speed", "what": "mace-torch cueq fp32", "why": f"{type(err).__name__}: {err}"[:300]})
    return engines
