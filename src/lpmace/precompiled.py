"""Compiled steps kept on disk, so that a new process starts computing in seconds.

`lpmace.compile` traces `MACE.compute` into one graph of plain operators with make_fx (seconds)
and compiles it with Inductor. Through torch.compile a new process would also trace that graph
again with Dynamo, even when Inductor finds every kernel in its cache: tens of seconds for the
`medium` model (18 s of the 30 s a warm process needed before its first training step on the
H200, 2026-12-01). Here the traced graph goes to Inductor directly (`standalone_compile`: the
forward, and for training the backward, compiled at once) and the result is written whole to
``cache_dir("steps")/<digest>.bin``; a later process with the same digest loads it and traces
nothing.

The digest names everything the compiled code depends on: lpmace's own source files, the torch
and Triton versions, the device (GPU name and compute capability; the CPU's architecture and the
vector ISA Inductor compiles for), the model's configuration, conversions and every module's plain
Python attributes (constants of the trace), the names, types, shapes, dtypes and `requires_grad` of
its parameters and buffers, deterministic mode, autocast and Inductor's configuration, and the
caller's key (precision policy, force/stress/training flags, size class of the
batch, active correlation orders, kernel implementations, input dtypes). A file that does not load
(another torch build, a truncated write) is deleted and the step compiled again. Batch sizes are
symbols in the compiled code; `lpmace.compile` keys the sizes 0 and 1, which the trace fixes, and
checks before every call the conditions on the sizes that the trace and Inductor assumed (saved
beside the step as ``<digest>-<variant>.guards``; on a GPU, Inductor picks 32-bit indexing when the
example's tensors are small enough and guards it): a batch they refuse gets a variant compiled for
it, as Dynamo would recompile. Inputs are made contiguous first (the code asserts the traced strides).

`available()` says whether this torch has what it needs (torch >= 2.11: `standalone_compile`,
`CompiledArtifact`, eager lowering of the backward); without it `lpmace.compile` uses
torch.compile as before.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import platform
import sys
import warnings
from pathlib import Path
from typing import Callable, Dict, Sequence

import torch

from lpmace.cache import cache_dir, is_temporary

__all__ = ["Precompiled", "available", "compile_step", "digest", "load_step", "step_path"]

FORMAT = "lpmace-step-v1"


@functools.lru_cache(maxsize=None)
def available() -> bool:
    import torch._functorch.config as functorch_config
    import torch._inductor

    return (hasattr(torch._inductor, "standalone_compile") and hasattr(torch._inductor, "CompiledArtifact")
            and hasattr(functorch_config, "force_non_lazy_backward_lowering"))


class Precompiled:
    """A compiled step called like a torch.compile'd trace: ``run(state, *inputs)``. The compiled
    code takes the flat list of make_fx's placeholders: the state's tensors in its order, then the
    inputs. `guards` is the condition on the inputs' sizes under which the code is right (the trace's
    and Inductor's: e.g. 32-bit indexing chosen for the example's sizes on a GPU), a Python
    expression in ``L['t0']``, ``L['t1']``, ... (torch's ShapeEnv.produce_guards_expression), or None;
    `accepts` checks it, Dynamo's guards done by hand: a batch it refuses gets another variant."""

    def __init__(self, fn: Callable, guards: str | None):
        from torch.fx.experimental.symbolic_shapes import SYMPY_INTERP  # what the expression may call

        self.fn, self.guards, self._names = fn, guards, SYMPY_INTERP
        self._check = None if guards is None else compile(guards, "<lpmace step guards>", "eval")
        self.refused: set = set()  # input sizes the compiled code asserted against (`refuse`)

    def accepts(self, inputs: Sequence[torch.Tensor]) -> bool:
        if self.refused and _sizes(inputs) in self.refused:
            return False
        if self._check is None:
            return True
        return bool(eval(self._check, self._names, {"L": {f"t{i}": x for i, x in enumerate(inputs)}}))

    def refuse(self, inputs: Sequence[torch.Tensor]) -> bool:
        """Refuse inputs of these sizes from now on (the code asserted a size its guards did not name);
        False if they were refused already."""
        sizes = _sizes(inputs)
        if sizes in self.refused:
            return False
        self.refused.add(sizes)
        return True

    def __call__(self, state: Dict[str, torch.Tensor], *inputs: torch.Tensor):
        return self.fn(*state.values(), *inputs)


def _sizes(inputs: Sequence[torch.Tensor]) -> tuple:
    return tuple(None if x is None else tuple(x.shape) for x in inputs)


@functools.lru_cache(maxsize=None)
def _source_digest() -> str:
    """sha256 over lpmace's Python files (paths and contents): an edited model changes every digest."""
    root = Path(__file__).resolve().parent
    h = hashlib.sha256()
    for path in sorted(root.rglob("*.py")):
        h.update(str(path.relative_to(root)).encode())
        h.update(path.read_bytes())
    return h.hexdigest()


def _device_name(device: torch.device) -> str:
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        triton = sys.modules.get("triton") or __import__("triton")
        return f"cuda {props.name} sm{props.major}{props.minor} triton {triton.__version__}"
    from torch._inductor.cpu_vec_isa import pick_vec_isa  # what Inductor's C++ is compiled for

    return f"{device.type} {platform.machine()} {pick_vec_isa()}"


def _plain_attributes(model: torch.nn.Module) -> list:
    """Each module's class and its plain Python attributes (numbers, strings, flags: what a trace
    writes into the code as constants, such as a readout's quantization mode), in module order."""
    plain = (bool, int, float, str, type(None), tuple, list, torch.dtype)
    return [(name, type(m).__qualname__, sorted((k, repr(v)) for k, v in vars(m).items()
                                                if isinstance(v, plain) and k != "training" and not k.startswith("_")))
            for name, m in model.named_modules()]


def _compiler_settings() -> list:
    """Global settings that change what Inductor generates or what make_fx records."""
    import torch._inductor.config as inductor_config

    return [torch.are_deterministic_algorithms_enabled(), torch.is_autocast_enabled("cuda"),
            torch.is_autocast_enabled("cpu"), sorted(inductor_config.save_config_portable().items())]


def digest(model: torch.nn.Module, state: Dict[str, torch.Tensor], key: Sequence, device: torch.device) -> str:
    """The hex digest naming a compiled step (see the module's docstring)."""
    config = model.config
    config = dataclasses.asdict(config) if dataclasses.is_dataclass(config) else repr(config)
    tensors = [(name, type(t).__name__, tuple(t.shape), str(t.dtype), bool(t.requires_grad))
               for name, t in state.items()]
    text = json.dumps([FORMAT, _source_digest(), torch.__version__, _device_name(device), type(model).__name__,
                       config, repr(getattr(model, "conversions", None)), _plain_attributes(model), tensors,
                       _compiler_settings(), [repr(k) for k in key]], default=repr)
    return hashlib.sha256(text.encode()).hexdigest()


def step_path(name: str, variant: int = 0) -> Path | None:
    """Where the compiled step `name` (a digest) is kept; a batch that the first variant's guards
    refuse gets variant 1, and so on. None when the cache folder is a temporary one (nothing saved
    there would be found again)."""
    folder = cache_dir("steps")
    return None if is_temporary(folder) else folder / f"{name}-{variant}.bin"


def _guards_path(path: Path) -> Path:
    return path.with_suffix(".guards")


def load_step(path: Path) -> Precompiled | None:
    """The compiled step saved at `path` (with its guards beside it), or None when there is none or
    it does not load (then the files are removed: the caller compiles the step again)."""
    if not path.is_file():
        return None
    from torch._inductor import CompiledArtifact

    try:
        guards = json.loads(_guards_path(path).read_text())["guards"]
        return Precompiled(CompiledArtifact.load(path=str(path), format="binary"), guards)
    except Exception as error:  # another torch build, a damaged or half-deleted pair: compile again
        warnings.warn(f"lpmace: compiled step {path} did not load ({type(error).__name__}: {error}); "
                      "compiling it again", stacklevel=3)
        path.unlink(missing_ok=True)
        _guards_path(path).unlink(missing_ok=True)
        return None


def _guards(shape_env, placeholders) -> str | None:
    """The conditions on the inputs' sizes under which the compiled code is right, as a Python
    expression (`Precompiled`): those on the symbolic sizes, and every size the compile fixed to a
    number. torch leaves the fixed ones out by default (Dynamo checks them apart, by its tensor
    guards): on an H200 a step compiled at 144 padded atoms, its atom count fixed, accepted 104 by its
    guards and its code asserted. Strides and storage offsets stay out (inputs are made contiguous)."""
    import re

    from torch._dynamo.source import LocalSource

    sources = [LocalSource(f"t{i}") for i in range(len(placeholders))]
    symbolic = shape_env.produce_guards(placeholders, sources, ignore_static=True)
    fixed = [g for g in shape_env.produce_guards(placeholders, sources, ignore_static=False)
             if g not in symbolic and re.fullmatch(r"L\['t\d+'\]\.size\(\)\[\d+\] == \d+", g)]
    return " and ".join(symbolic + fixed) or None


def uncached():
    """A context in which Inductor compiles anew: its caches (FX graph, AOTAutograd) read and write an
    empty temporary folder. Turning them off instead would leave nothing to save: torch gathers the
    artifact that `CompiledArtifact.save` writes through those caches."""
    import tempfile

    from torch._inductor.runtime.cache_dir_utils import temporary_cache_dir

    return temporary_cache_dir(tempfile.mkdtemp(prefix="lpmace-uncached-"))


def compile_step(graph_module: torch.fx.GraphModule, state: Dict[str, torch.Tensor], inputs: Sequence[torch.Tensor],
                 training: bool, path: Path | None, fresh: bool = False) -> Precompiled:
    """Inductor on make_fx's `graph_module` (symbolic batch sizes) without Dynamo; saved to `path`
    when given. Training steps get their backward compiled now, so the file holds both. `fresh`:
    without Inductor's caches (`uncached`), for a variant that replaces a step whose code refused
    sizes its guards accepted: a cached compile of the same graph returned that same code (H200)."""
    import torch._functorch.config as functorch_config
    from torch._inductor import standalone_compile

    placeholders = [n for n in graph_module.graph.nodes if n.op == "placeholder"]
    values = [*state.values(), *inputs]
    if len(placeholders) != len(values):
        raise RuntimeError(f"lpmace: the trace has {len(placeholders)} inputs, the step {len(values)}")
    fake_mode = placeholders[0].meta["val"].fake_mode
    # make_fx saw detached weights; the compiled step must know which ones training differentiates
    examples = [fake_mode.from_tensor(v, static_shapes=True) if training and i < len(state) and v.requires_grad
                else node.meta["val"] for i, (node, v) in enumerate(zip(placeholders, values))]
    import contextlib

    with torch._guards.tracing(torch._guards.TracingContext(fake_mode)), \
            functorch_config.patch(force_non_lazy_backward_lowering=True), torch.set_grad_enabled(training), \
            uncached() if fresh else contextlib.nullcontext():
        artifact = standalone_compile(graph_module, examples, dynamic_shapes="from_tracing_context", options={})
    # the conditions on the batch's sizes the trace and Inductor assumed (the weights' are static)
    try:
        guards = _guards(fake_mode.shape_env, examples[len(state):])
    except Exception as error:  # not seen; without its guards the step is not saved
        warnings.warn(f"lpmace: the compiled step's guards could not be written ({type(error).__name__}: "
                      f"{error}); it is not saved", stacklevel=3)
        guards, path = None, None
    if not Precompiled(artifact, guards).accepts(inputs):  # not seen: it would compile at every call
        warnings.warn("lpmace: the compiled step's guards refuse the batch it was compiled for; it is "
                      f"not saved and its guards are not checked ({guards})", stacklevel=3)
        guards, path = None, None
    if path is not None:
        from torch._inductor.codecache import write_atomic

        try:  # each written to a temporary file, then renamed; the guards first
            write_atomic(str(_guards_path(path)), json.dumps({"guards": guards}))
            artifact.save(path=str(path), format="binary")
        except Exception as error:  # still usable in this process; no guards left without their step
            _guards_path(path).unlink(missing_ok=True)
            warnings.warn(f"lpmace: the compiled step could not be saved to {path} ({type(error).__name__}: "
                          f"{error}); a new process will compile it again", stacklevel=3)
    return Precompiled(artifact, guards)
