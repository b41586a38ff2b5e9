"""Compilation: a wrapper above a model that traces energy → forces (→ stress) into one graph and
compiles it with torch.compile (backend "compiled": `lpmace.backends.use(model, "compiled")`).

    run = Compiled(model)          # call it like the model; the model itself is not changed
    out = run(graph, precision="fp32")

`MACE.compute` computes energies and then forces with `torch.autograd.grad`. `make_fx` runs it
once on fake tensors and records every operator the dispatcher sees, those of the backward pass
included, so the result is a graph of plain operators whose outputs are the energy, the site
energies, the forces and the stress: the derivative has become forward code. The node, edge and
structure counts are symbols in that graph, so one trace serves every batch of the same kind.
Inductor then fuses the small operators around the heavy blocks into a few kernels. Training
differentiates the compiled graph once more (the force loss's parameter gradients, the "double
backward") through AOTAutograd like any other compiled function.

The heavy blocks inside the graph compute with the implementation they hold: `backends.use` sets the
Triton kernels (`lpmace::conv_message`, `conv_grads`, `polynomial_contraction`; opaque operators for
Inductor) on CUDA, and the reference PyTorch ops on the CPU, where Inductor generates C++ (the Triton
interpreter would defeat the purpose).

One trace is kept per model, precision policy, force/stress/training flags, device and "size class"
of the batch, and the blocks' implementations: make_fx fixes sizes 0 and 1, so a batch of one structure, or one without edges, gets
its own trace. Traces live beside the model (a table with weak keys; no trace refers back to the model), not in
it: state dicts and copies of the model never see them. The first call of each kind pays for tracing and compiling
(seconds on the CPU for a small model, about a minute on the GPU). The graph goes to Inductor without
Dynamo and the compiled step is saved whole under ``$LPMACE_CACHE_DIR/steps`` (`lpmace.precompiled`,
default ``~/.cache/lpmace``): a later process with the same model, code and torch loads it in
seconds and traces nothing. Inductor's own cache (`lpmace.cache.cache_dir("inductor")` unless
TORCHINDUCTOR_CACHE_DIR names another folder) serves what is compiled again. A graph input may not
have a size that is an expression of another's (the compiled code binds its size symbols from the
inputs), so ptr enters as ptr[1:], and tables the backward needs are the model's buffers, never
constants of the trace (a GPU constant stops the compiled step from being saved).

`LPMACE_COMPILE_MODE` picks torch.compile's mode on CUDA ("default" unless set: the path above; the
others go through torch.compile and are not saved; "reduce-overhead" adds CUDA graphs, one recording per
distinct batch shape; the trainer records its whole step as one CUDA graph itself); the CPU gets Inductor's defaults, with
index_add left to ATen (`_cpu_inductor`: torch 2.13's C++ code for it corrupts memory). With CUDA graphs the atom and edge counts are
padded to `bucket` sizes (at most 1/8 more; `pad_graph`: dummy atoms in an extra structure whose
edges lie beyond the cutoff and contribute exactly 0), so MD, whose edge count changes a little at
every step, and training batches reuse a few recordings. CUDA graphs reuse their output memory:
the tensors a call returns are valid until the next call (the calculator copies them out at once).
"""

from __future__ import annotations

import contextlib
import functools
import os
import shutil
import warnings
import weakref
from typing import Dict, Optional

import torch

from lpmace import precompiled
from lpmace.cache import use_compile_cache
from lpmace.data.graph import Graph
from lpmace.data.padding import bucket
from lpmace.data.padding import pad_graph as pad_batch
from lpmace.errors import InputError
from lpmace.precision import matmul_mode, resolve_policy

__all__ = ["Compiled", "bucket", "compiled_available", "compiled_forward", "compile_mode", "pad_graph"]

_TRACES: "weakref.WeakKeyDictionary[torch.nn.Module, dict]" = weakref.WeakKeyDictionary()
_GRAPH_FIELDS = ("positions", "edge_index", "unit_shifts", "cell", "batch")
_BATCH_AXIS = (0, 0, 1, 0, 0, 0, 0)  # species, then _GRAPH_FIELDS, then ptr[1:]
_OUTPUTS = ("energy", "node_energy", "forces", "stress")
MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")


def compile_mode() -> str:
    mode = os.environ.get("LPMACE_COMPILE_MODE", "default") or "default"
    if mode not in MODES:
        raise InputError(f"LPMACE_COMPILE_MODE must be one of {', '.join(MODES)}, got {mode!r}")
    return mode


def compiled_available(device: torch.device | str) -> Optional[str]:
    """None if backend "compiled" can run on `device`, else the reason it cannot."""
    if torch.device(device).type == "cuda":
        from lpmace.kernels.launch import triton_available

        return None if triton_available() else "backend 'compiled' on CUDA needs the triton package"
    if not _has_compiler(os.environ.get("CXX")):
        return "backend 'compiled' on the CPU needs a C++ compiler (c++, g++ or clang++ on PATH, or $CXX)"
    return None


@functools.lru_cache(maxsize=None)
def _has_compiler(cxx: Optional[str]) -> bool:  # looked up once, not at every forward call
    return any(c and shutil.which(c) for c in (cxx, "c++", "g++", "clang++"))


class Compiled:
    """`model` with its forward compiled: call it as the model (same arguments and outputs); every other
    attribute (config, parameters, `to`, ...) is the model's. Holds no state of its own: the traces
    live beside the model, so two wrappers of one model share them."""

    def __init__(self, model: torch.nn.Module):
        self.model = model

    def __call__(self, graph: Graph, *, precision=None, compute_forces: bool = True, compute_stress: bool = False,
                 training: bool = False) -> Dict[str, Optional[torch.Tensor]]:
        model = self.model
        policy = resolve_policy(precision, default=model.default_precision)
        species = model.species(graph.numbers)  # validates the elements (host work, outside the trace)
        with matmul_mode(policy):
            return compiled_forward(model, graph, species, policy, compute_forces, compute_stress, training)

    def __getattr__(self, name: str):
        try:  # not yet set while copy/pickle rebuild the object: then it has no such attribute
            model = self.__dict__["model"]
        except KeyError:
            raise AttributeError(name) from None
        return getattr(model, name)

    def __repr__(self) -> str:
        return f"Compiled({self.model.__class__.__name__})"


def _step(model, policy, compute_forces, compute_stress, training):
    """The model's `compute` as a function of tensors only (what make_fx traces)."""

    def step(species, positions, edge_index, unit_shifts, cell, batch, ends):
        # ptr enters as ptr[1:]: with ptr itself the structure count would be a size less 1, which a
        # graph compiled without Dynamo cannot bind from its inputs
        ptr = torch.cat([ends.new_zeros(1), ends])
        pbc = torch.zeros(cell.shape[0], 3, dtype=torch.bool, device=cell.device)
        graph = Graph(positions=positions, numbers=species, edge_index=edge_index, unit_shifts=unit_shifts,
                      cell=cell, pbc=pbc, batch=batch, ptr=ptr)
        out = model.compute(graph, species, policy, compute_forces, compute_stress, training)
        return tuple(out[k] for k in _OUTPUTS if out[k] is not None)

    return step


def _state(model: torch.nn.Module) -> Dict[str, torch.Tensor]:
    # remove_duplicate=False: a tensor registered under two names must be an input under both
    return dict([*model.named_parameters(remove_duplicate=False), *model.named_buffers(remove_duplicate=False)])


def _size_class(graph: Graph) -> tuple:
    """make_fx treats sizes 0 and 1 as constants: such batches need a trace of their own."""
    return tuple(min(int(n), 2) for n in (graph.num_atoms, graph.num_edges, graph.num_graphs))


def _replace_sym_numel(graph_module: torch.fx.GraphModule) -> None:
    """make_fx records x.numel() of a dynamic tensor as aten.sym_numel, which torch.compile cannot trace
    again; write it as the product of the sizes."""
    import operator

    graph = graph_module.graph
    for node in list(graph.nodes):
        if node.op == "call_function" and node.target is torch.ops.aten.sym_numel.default:
            with graph.inserting_before(node):
                total = 1
                for d in range(node.args[0].meta["val"].dim()):
                    size = graph.call_function(torch.ops.aten.sym_size.int, (node.args[0], d))
                    total = size if total == 1 else graph.call_function(operator.mul, (total, size))
            node.replace_all_uses_with(total)
            graph.erase_node(node)
    graph_module.recompile()


def _reattach_saved_outputs(graph_module: torch.fx.GraphModule) -> None:
    """Drop the aten.detach nodes of the trace (values unchanged). make_fx records the tensors autograd
    saved from an op's output (tanh, sigmoid, exp, layer_norm's statistics: their backward reads the
    output) as detach(output), so differentiating the traced forces by the weights (training's force
    loss) missed every term through them: the density blocks' tanh gave parameter gradients 2-5 %
    off (torch 2.13). No detach in the model's own code changes a value or a gradient the trace is
    asked for (positions enter detached already; weights are detached only where no gradient is taken)."""
    graph = graph_module.graph
    for node in list(graph.nodes):
        if node.op == "call_function" and node.target is torch.ops.aten.detach.default:
            node.replace_all_uses_with(node.args[0])
            graph.erase_node(node)
    graph_module.recompile()


def _trace(model, step, state, inputs, device, training: bool = False, path=None, fresh: bool = False):
    """make_fx of `step` with the parameters and buffers as inputs (the optimizer changes them between
    calls), then Inductor: without Dynamo where torch allows it (`lpmace.precompiled`, saved to `path`
    when given), else through torch.compile. Nothing returned refers to the model."""
    from torch._dynamo.source import ConstantSource
    from torch._subclasses.fake_tensor import FakeTensorMode
    from torch.fx.experimental.proxy_tensor import make_fx
    from torch.fx.experimental.symbolic_shapes import DimDynamic, ShapeEnv, StatelessSymbolicContext
    from torch.nn.utils.stateless import _reparametrize_module  # what torch.func.functional_call uses

    def run(state, *inputs):
        with _reparametrize_module(model, state):
            return step(*inputs)

    # Weights and tables keep their sizes; the batch's sizes become symbols, each its own (no duck
    # shapes: 4 structures must not share a symbol with 4 elements).
    fake_mode = FakeTensorMode(shape_env=ShapeEnv(duck_shape=False))
    fake_state = {k: fake_mode.from_tensor(v.detach(), static_shapes=True) for k, v in state.items()}
    fake_inputs = []
    for i, x in enumerate(inputs):  # the atom, edge or structure axis is dynamic, the rest (3, 3x3) static
        sizes = [DimDynamic.DYNAMIC if d == _BATCH_AXIS[i] else DimDynamic.STATIC for d in range(x.dim())]
        context = StatelessSymbolicContext(dynamic_sizes=sizes)
        fake_inputs.append(fake_mode.from_tensor(x, source=ConstantSource(f"batch_{i}"), symbolic_context=context))
    with fake_mode, torch.enable_grad():  # forces are a gradient, whatever the caller's grad mode
        graph_module = make_fx(run, tracing_mode="symbolic")(fake_state, *fake_inputs)
    _replace_sym_numel(graph_module)
    _reattach_saved_outputs(graph_module)
    mode = compile_mode()
    # For tests of the trace on the CPU: LPMACE_COMPILE_BACKEND=aot_eager skips Inductor's code
    # generation, =none runs the traced graph as it is.
    backend = os.environ.get("LPMACE_COMPILE_BACKEND", "inductor")
    if backend == "none":
        return graph_module
    use_compile_cache()
    if backend != "inductor":
        return torch.compile(graph_module, dynamic=True, fullgraph=True, backend=backend)
    if _saves_steps():
        with _aten_index_add_on_cpu() if device.type == "cpu" else contextlib.nullcontext():
            return precompiled.compile_step(graph_module, state, inputs, training, path, fresh=fresh)
    if device.type == "cpu":
        return torch.compile(graph_module, dynamic=True, fullgraph=True, backend=_cpu_inductor)
    return torch.compile(graph_module, dynamic=True, fullgraph=True, mode=None if mode == "default" else mode)


def _cpu_inductor(graph_module, example_inputs):
    """Inductor for the CPU with index_add left to ATen's kernel (`_aten_index_add_on_cpu`)."""
    from torch._inductor.compile_fx import compile_fx

    with _aten_index_add_on_cpu():
        return compile_fx(graph_module, example_inputs)


@contextlib.contextmanager
def _aten_index_add_on_cpu():
    """Inductor for the CPU with index_add left to ATen's kernel, while this context is open.

    Inductor (torch 2.13) decomposes index_add into an atomic scatter-add; when that store lands in a
    2-D tiled loop (a transposed operand, e.g. the backward of index_select(a, 2, monomials) in the
    symmetric contraction) and the kernel runs on more than one thread, the tiled loop's offset is
    added to the store index twice (CppTile2DKernel.store transforms the index, then
    CppVecKernel.store's ops.index_expr transforms it again): the adds land in the wrong rows and
    past the end of the buffer, a heap corruption that aborted CPU training (pytorch/pytorch#191837;
    reproduction in tests/kernels/test_compiled_backend.py). The ATen index_add has no such path.

    The decomposition is taken out of Inductor's own table while it compiles, not handed over as a
    table of our own: an explicit table enters the FX graph cache's key, which cannot hash it
    (its operators hold pybind functions), so every process compiled everything again. Inductor's
    and AOTAutograd's caches do key on the post-grad pass `_ATEN_INDEX_ADD` (a no-op), so what is
    compiled here is never mistaken for a graph compiled with the decomposition."""
    from torch._inductor import config as inductor_config
    from torch._inductor import decomposition

    table = decomposition.decompositions
    kept = {op: table.pop(op) for op in _ATEN_ON_CPU if op in table}
    try:
        with inductor_config.patch(post_grad_custom_post_pass=_aten_index_add()):
            yield
    finally:
        table.update(kept)


@functools.lru_cache(maxsize=None)
def _aten_index_add():
    """A post-grad pass that changes nothing; its uuid marks the CPU compiles' cache entries."""
    from torch._inductor.custom_graph_pass import CustomGraphPass

    class AtenIndexAdd(CustomGraphPass):
        def __call__(self, graph) -> None:
            return None

        def uuid(self) -> str:
            return "lpmace: aten.index_add not decomposed on the CPU (pytorch/pytorch#191837), v1"

    return AtenIndexAdd()


_ATEN_ON_CPU = (torch.ops.aten.index_add.default,)


def pad_graph(graph: Graph, species: torch.Tensor, r_max: float):
    """(graph, species) padded for CUDA graphs (`lpmace.data.padding.pad_graph`); the dummy atoms are
    of element 0."""
    padded = pad_batch(graph, r_max)
    return padded, torch.cat([species, species.new_zeros(padded.num_atoms - graph.num_atoms)])


def _saves_steps() -> bool:
    """Whether a step goes to Inductor without Dynamo and is saved (`lpmace.precompiled`): Inductor, the
    default mode, a torch that can."""
    backend = os.environ.get("LPMACE_COMPILE_BACKEND") or "inductor"
    return backend == "inductor" and compile_mode() == "default" and precompiled.available()


def _load_or_trace(model, key: tuple, state, inputs, device, variants: list, fresh: bool = False):
    """A compiled step of `key` for these inputs, appended to `variants` (those of `key` so far, none
    of which accepts the inputs): loaded from lpmace's cache of compiled steps when a process saved
    one there (`lpmace.precompiled`), else traced and compiled now (and saved)."""
    policy, compute_forces, compute_stress, training = key[:4]
    path = None
    if _saves_steps():
        use_compile_cache()
        name = precompiled.digest(model, state, key, device)
        while (path := precompiled.step_path(name, len(variants))) is not None:
            loaded = precompiled.load_step(path)
            if loaded is None:
                break
            variants.append(loaded)
            if loaded.accepts(inputs):
                return loaded
    step = _step(model, policy, compute_forces, compute_stress, training)
    # a variant after the first exists because an earlier one refused these inputs: Inductor's own
    # cache may hand back that one's code (`_call`), so it is compiled without it
    variants.append(_trace(model, step, state, inputs, device, training, path, fresh or bool(variants)))
    return variants[-1]


def _call(model, key: tuple, state, inputs, device, variants: list):
    """The outputs of the first variant of `key` that accepts `inputs` (loaded or compiled when none does).

    A step's guards may miss a size its code assumed: on an H200 (torch 2.11, 2026-12-02) training steps
    compiled while every batch had 352 (a tiny model: 144) padded atoms accepted a batch of 320 (104) by
    their guards, and their code then stopped at its size assertion ("expected size 104==144") before
    computing anything; their guards named no condition on the atom count. Such a step refuses those
    sizes from then on and the next variant serves them, with a warning: loaded if one was saved, else
    compiled without Inductor's caches (`precompiled.uncached`, as every variant after the first; with
    them, the same graph came back with the same code) and saved. A third such failure for one call is
    raised. The guards also name the input sizes the compile fixed (`precompiled.compile_step`), yet on
    the H200 steps still refused this way (a 1-D tensor: a step compiled for 320 padded atoms handed
    352; which tensor is not known, the warning now names the statement): this recovery is what
    serves those batches, a compile each.
    benchmarks/results/active_round_h200_2026-12-02: d_shapes, e_no_fx_cache, f_two_rounds."""
    for attempt in range(3):
        compiled = next((c for c in variants if _accepts(c, inputs)), None)
        if compiled is None:
            compiled = _load_or_trace(model, key, state, inputs, device, variants)
        try:
            return compiled(state, *inputs)
        except AssertionError as error:
            if (attempt == 2 or not isinstance(compiled, precompiled.Precompiled) or "expected size" not in str(error)
                    or not compiled.refuse(inputs)):
                raise
            warnings.warn(f"lpmace: a compiled step's code refused a batch its guards accepted ({error}{_where(error)}); "
                          "compiling a variant for these sizes", stacklevel=3)
    raise AssertionError("unreachable")


def _where(error: BaseException) -> str:
    """Where in the compiled code an assertion stopped: its file, line and statement (which tensor)."""
    import traceback

    frames = traceback.extract_tb(error.__traceback__)
    return f"; at {frames[-1].filename}:{frames[-1].lineno}: {frames[-1].line}" if frames else ""


def _accepts(compiled, inputs) -> bool:
    """Whether a compiled step serves these inputs: a saved step checks its guards; torch.compile's
    (Dynamo) checks its own and recompiles."""
    return compiled.accepts(inputs) if isinstance(compiled, precompiled.Precompiled) else True


def compiled_forward(model, graph: Graph, species, policy, compute_forces: bool, compute_stress: bool,
                     training: bool) -> Dict[str, Optional[torch.Tensor]]:
    """`MACE.compute` through the compiled graph of this kind of call (traced and compiled on first use)."""
    device = graph.positions.device
    n, g = graph.num_atoms, graph.num_graphs
    padded = compile_mode() == "reduce-overhead"  # CUDA graphs: few distinct shapes
    if padded:
        graph, species = pad_graph(graph, species, model.config.r_max)
    # contiguous: the compiled code asserts the strides it was traced with
    inputs = tuple(x.contiguous() for x in (species, *(getattr(graph, f) for f in _GRAPH_FIELDS), graph.ptr[1:]))
    state = {k: v.contiguous() for k, v in _state(model).items()}
    # a training call without gradients is an inference call (the reference backend would refuse it)
    training = training and torch.is_grad_enabled()
    # What the trace fixes besides the flags: the tensors' names (a quantized or compressed model has
    # other modules) and the active correlation orders (lpmace.train.correlation changes them).
    orders = tuple(m.active_correlation for m in model.modules() if hasattr(m, "active_correlation"))
    implementations = tuple(m.implementation for m in model.modules() if hasattr(m, "IMPLEMENTATIONS"))
    key = (policy, compute_forces, compute_stress, training, str(device), model.dtype, _size_class(graph),
           tuple(state), orders, implementations, compile_mode(), os.environ.get("LPMACE_COMPILE_BACKEND"),
           tuple(x.dtype for x in inputs),  # a cast to the same dtype is not traced
           tuple(t.requires_grad for t in state.values()) if training else ())  # frozen weights: no gradient
    variants = _TRACES.setdefault(model, {}).setdefault(key, [])
    from torch.fx.experimental import _config as fx_config

    # torch.compile traces the graph again on first use and on new sizes: no duck shapes there either
    with torch.set_grad_enabled(training), fx_config.patch(use_duck_shape=False):
        values = iter(_call(model, key, state, inputs, device, variants))
    wanted = {"energy": True, "node_energy": True, "forces": compute_forces, "stress": compute_stress}
    out = {k: next(values) if wanted[k] else None for k in _OUTPUTS}
    if padded:  # drop the dummy structure and its atoms
        rows = {"energy": g, "node_energy": n, "forces": n, "stress": g}
        out = {k: None if v is None else v[: rows[k]] for k, v in out.items()}
    return out
