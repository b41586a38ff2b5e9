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
and Triton versions, the device (GPU name and compute capability; the CPU's vector ISA), the
model's configuration, the names, shapes, dtypes and `requires_grad` of its parameters and
buffers, and the caller's key (precision policy, force/stress/training flags, size class of the
batch, active correlation orders, kernel implementations, input dtypes). A file that does not load
(another torch build, a truncated write) is deleted and the step compiled again. Batch sizes are
symbols in the compiled code; `lpmace.compile` keys the sizes 0 and 1, which the trace fixes.

`available()` says whether this torch has what it needs (torch >= 2.11: `standalone_compile`,
`CompiledArtifact`, eager lowering of the backward); without it `lpmace.compile` uses
torch.compile as before.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import sys
import warnings
from pathlib import Path
from typing import Callable, Dict, Sequence

import torch

from lpmace.cache import cache_dir

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
    inputs."""

    def __init__(self, fn: Callable):
        self.fn = fn

    def __call__(self, state: Dict[str, torch.Tensor], *inputs: torch.Tensor):
        return self.fn(*state.values(), *inputs)


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
    return f"{device.type} {torch.backends.cpu.get_cpu_capability()}"


def digest(model: torch.nn.Module, state: Dict[str, torch.Tensor], key: Sequence, device: torch.device) -> str:
    """The hex digest naming a compiled step (see the module's docstring)."""
    config = model.config
    config = dataclasses.asdict(config) if dataclasses.is_dataclass(config) else repr(config)
    tensors = [(name, tuple(t.shape), str(t.dtype), bool(t.requires_grad)) for name, t in state.items()]
    text = json.dumps([FORMAT, _source_digest(), torch.__version__, _device_name(device), type(model).__name__,
                       config, tensors, [repr(k) for k in key]], default=repr)
    return hashlib.sha256(text.encode()).hexdigest()


def step_path(name: str) -> Path:
    return cache_dir("steps") / f"{name}.bin"


def load_step(path: Path) -> Precompiled | None:
    """The compiled step saved at `path`, or None when there is none or it does not load (then the
    file is removed: it is rebuilt by the caller)."""
    if not path.is_file():
        return None
    from torch._inductor import CompiledArtifact

    try:
        return Precompiled(CompiledArtifact.load(path=str(path), format="binary"))
    except Exception as error:  # another torch build, a damaged file: compile again
        warnings.warn(f"lpmace: compiled step {path} did not load ({type(error).__name__}: {error}); "
                      "compiling it again", stacklevel=3)
        path.unlink(missing_ok=True)
        return None


def compile_step(graph_module: torch.fx.GraphModule, state: Dict[str, torch.Tensor], inputs: Sequence[torch.Tensor],
                 training: bool, path: Path | None) -> Precompiled:
    """Inductor on make_fx's `graph_module` (symbolic batch sizes) without Dynamo; saved to `path`
    when given. Training steps get their backward compiled now, so the file holds both."""
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
    with torch._guards.tracing(torch._guards.TracingContext(fake_mode)), \
            functorch_config.patch(force_non_lazy_backward_lowering=True), torch.set_grad_enabled(training):
        artifact = standalone_compile(graph_module, examples, dynamic_shapes="from_tracing_context", options={})
    if path is not None:
        try:
            artifact.save(path=str(path), format="binary")  # written to a temporary file, then renamed
        except Exception as error:  # still usable in this process
            warnings.warn(f"lpmace: the compiled step could not be saved to {path} ({type(error).__name__}: "
                          f"{error}); a new process will compile it again", stacklevel=3)
    return Precompiled(artifact)
