"""The benchmark matrix: every section over every engine, with one progress bar, saving as it goes.

`BenchOptions` is what `lpmace bench` parses; `check` validates all of it (model, data, precisions,
backends, device, sections) before anything is measured or written. The sections of `EXPERIMENTS`
train or build their own models (the seed's experiments: readout quantization, species rank,
progressive correlation, precision schedules) and run only when asked for by name. `run_bench` then runs the sections
in order, writes ``results.json`` after each one (``"complete": false`` until the end, so a run cut
short keeps what it measured) and finally the report. A section that cannot run (mace-torch not
installed, elements the model lacks, a GPU-only backend on a CPU) becomes a ``skipped`` row with
the reason, never a silent gap.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

import numpy as np
import torch

from lpmace import datasets
from lpmace.atomic import atomic_write_text
from lpmace.bench import accuracy, engines, measure, roofline, speed, workloads
from lpmace.bench.choices import EXPERIMENTS, MATRIX, SECTIONS
from lpmace.bench.stability import ENGINES as MD_ENGINES
from lpmace.data import graph_from_configuration, read_configurations
from lpmace.elements import check_configurations
from lpmace.errors import InputError
from lpmace.model import MACE
from lpmace.precision import resolve_policy

__all__ = ["SECTIONS", "BenchOptions", "check", "run_bench"]

BPA_TEST = "3bpa/test_300K.xyz"
# results.json key of each section (train and infer share "speed"); an experiment's module is
# lpmace.bench.<its key>
RESULT_KEY = {"train": "speed", "infer": "speed", "roofline": "roofline", "accuracy": "accuracy",
              "equivariance": "equivariance", "scaling": "scaling", "md": "md", "time-to-accuracy": "time_to_accuracy",
              **{name: name.replace("-", "_") for name in EXPERIMENTS}}


@dataclass(frozen=True)
class BenchOptions:
    out: Path
    model: Optional[str] = None  # lpmace .safetensors, or a mace-torch .model with trust_mace_model
    trust_mace_model: bool = False
    size: str = "medium"
    precisions: tuple = ("fp64", "fp32", "bf16-mixed", "fp16-mixed")
    backends: tuple = ("reference",)
    sections: tuple = tuple(s for s in MATRIX if s != "time-to-accuracy")
    device: str = "cpu"
    quick: bool = False
    compare_mace_torch: bool = False
    data: tuple = ()  # extra extxyz files for the accuracy section (and the periodic MD cell)
    repeats: Optional[int] = None
    warmup: Optional[int] = None
    seed: int = 0
    md_steps: Optional[int] = None
    md_dt_fs: float = 0.5
    species_data: Optional[str] = None  # the folder with rmd17_ethanol/ and si_zuo2020/ (species-rank section)
    tta_budget_s: Optional[float] = None
    tta_target: float = 31.5
    max_atoms: Optional[int] = None
    command: str = "lpmace bench"
    progress: bool = True

    @property
    def n_repeats(self) -> int:
        return self.repeats or (3 if self.quick else 20)

    @property
    def n_warmup(self) -> int:
        return self.warmup if self.warmup is not None else (1 if self.quick else 5)


@dataclass
class Plan:
    """Everything `check` prepared: the model, its mace-torch twin and the data, all validated."""

    options: BenchOptions
    model: MACE
    mace64: Optional[torch.nn.Module]
    description: str
    data: list = field(default_factory=list)  # [(name, [Configuration])]
    skipped: list = field(default_factory=list)


def _load_model(options: BenchOptions, elements: tuple) -> tuple[MACE, Optional[torch.nn.Module], str]:
    from lpmace import interop
    from lpmace.io import load

    if options.model is None:
        if options.compare_mace_torch:
            try:
                config = workloads.build_model(options.size, elements, seed=options.seed).config
                mace64 = workloads.build_mace_torch(config, seed=options.seed)
            except ImportError as err:
                raise InputError(f"--compare-mace-torch needs mace-torch installed ({err}); "
                                 "pip install -r requirements-interop.txt") from None
            model = interop.from_mace_torch(mace64)  # float64: each engine rounds to its own dtype
            return model, mace64, f"{options.size}: random weights (seed {options.seed}) from mace-torch, converted"
        return workloads.build_model(options.size, elements, seed=options.seed), None, \
            f"{options.size}: random weights (seed {options.seed})"
    path = Path(options.model)
    if not path.is_file():
        raise InputError(f"--model {path}: no such file")
    if path.suffix == ".safetensors":
        if options.compare_mace_torch:
            raise InputError(f"--compare-mace-torch needs the mace-torch form of the model: pass the mace-torch "
                             f".model file (with --trust-mace-model) or --size instead of {path}")
        return load(path).float(), None, f"{path.name}"
    if not options.trust_mace_model:
        raise InputError(f"--model {path}: a mace-torch .model file is a pickle that runs code when loaded; "
                         "pass --trust-mace-model if you trust it (or convert it once with lpmace convert)")
    mace = interop.load_mace_torch_model(str(path))
    mace64 = mace.to("cpu", torch.float64)
    return interop.from_mace_torch(mace64), (mace64 if options.compare_mace_torch else None), path.name


def check(options: BenchOptions) -> Plan:
    """Validate every option and input; InputError names what is wrong before anything runs."""
    from lpmace.devices import resolve_device

    unknown = sorted(set(options.sections) - set(SECTIONS))
    if unknown:
        raise InputError(f"--workloads: unknown {unknown}; choose from {', '.join(SECTIONS)}")
    if not options.sections:
        raise InputError("--workloads: nothing to run")
    for p in options.precisions:
        resolve_policy(p)  # InputError naming the preset
    if not options.precisions:
        raise InputError("--precisions: give at least one precision")
    device = resolve_device(options.device)
    for b in options.backends:
        if b not in engines.BACKENDS:
            raise InputError(f"--backends: {b!r} is not available (known: {', '.join(engines.BACKENDS)})")
        if b in ("triton", "compiled"):
            from lpmace.backends import resolve

            resolve(b, device)  # InputError without triton (or a C++ compiler for compiled on a CPU)
            if b == "triton" and device.type != "cuda" and os.environ.get("TRITON_INTERPRET") != "1":
                raise InputError("--backends triton on the CPU needs TRITON_INTERPRET=1 (Triton's interpreter, "
                                 "slow: for checking, not for timing)")
    for name, value in (("--repeats", options.repeats), ("--md-steps", options.md_steps),
                        ("--max-atoms", options.max_atoms)):
        if value is not None and value < 1:
            raise InputError(f"{name} must be at least 1, got {value}")
    if options.tta_budget_s is not None and not options.tta_budget_s > 0:
        raise InputError(f"--tta-budget must be positive, got {options.tta_budget_s}")
    if not (math.isfinite(options.md_dt_fs) and options.md_dt_fs > 0):
        raise InputError(f"--md-dt must be a positive number, got {options.md_dt_fs}")
    if options.out.exists() and not options.out.is_dir():
        raise InputError(f"--out {options.out}: exists and is not a folder")
    if "time-to-accuracy" in options.sections and (options.out / "time_to_accuracy").exists():
        raise InputError(f"--out {options.out}: holds time-to-accuracy runs already; choose another folder")
    if "species-rank" in options.sections:
        from lpmace.bench.species_rank import check_data

        check_data(options.species_data)

    # labels are not needed: accuracy is measured against fp64 on the same structures
    given = [(file, read_configurations(file, energy_key=None, forces_key=None, stress_key=None, virials_key=None))
             for file in options.data]
    # A random model knows H, C, N, O (3BPA) and every element of --data, unless its size names its own
    # elements (mp: Z = 1..89); a given model knows its own. --data is then checked against what it knows.
    elements = sorted(set(workloads.DEFAULT_ELEMENTS) | {int(z) for _, cs in given for c in cs for z in c.numbers})
    model, mace64, description = _load_model(options, tuple(elements))
    known = set(model.config.atomic_numbers)
    plan = Plan(options, model, mace64, description)
    bpa = read_configurations(datasets.path(BPA_TEST), index=":5" if options.quick else ":100")
    if {int(z) for c in bpa for z in c.numbers} <= known:
        plan.data.append((f"3BPA test_300K ({len(bpa)} molecules)", bpa))
    else:
        plan.skipped.append({"section": "accuracy", "what": "3BPA test_300K", "why": "the model lacks H, C, N or O"})
    for file, configs in given:
        check_configurations(configs, known)
        plan.data.append((f"{Path(file).name} ({len(configs)} structures)", configs))
    return plan


def _md_systems(plan: Plan) -> list:
    """A 3BPA molecule (when the model knows its elements) and one periodic cell: the first fully periodic
    structure of --data with at most 256 atoms, else a random box of the model's elements."""
    from ase import Atoms

    def atoms(c):
        return Atoms(numbers=c.numbers, positions=c.positions, cell=c.cell, pbc=c.pbc)

    systems = []
    if plan.data and plan.data[0][0].startswith("3BPA"):
        systems.append(("3BPA molecule (27 atoms)", atoms(plan.data[0][1][0])))
    periodic = [c for _, configs in plan.data for c in configs if c.pbc.all() and len(c.numbers) <= 256]
    if periodic:
        systems.append((f"periodic cell from --data ({len(periodic[0].numbers)} atoms)", atoms(periodic[0])))
    else:
        n = 16 if plan.options.quick else 64  # --quick: small, as every run goes through both MD engines
        box = workloads.random_bulk(n, plan.model.config.atomic_numbers, np.random.default_rng(plan.options.seed))
        systems.append((f"random periodic box ({n} atoms)", atoms(box)))
    return systems


def _save(results: dict, out: Path) -> None:
    atomic_write_text(out / "results.json", json.dumps(measure.strict_json(results), indent=1, allow_nan=False) + "\n")


def run_bench(options: BenchOptions, plan: Optional[Plan] = None, log: Callable[[str], None] = print) -> dict:
    """Run the sections of `options` and write results.json and the report into options.out."""
    from tqdm import tqdm

    from lpmace.bench.report import write_report

    plan = plan or check(options)
    o, device, model = options, options.device, plan.model
    cfg = model.config
    described = cfg.to_dict() | ({"conversions": model.conversions} if model.conversions else {})
    o.out.mkdir(parents=True, exist_ok=True)
    results = {
        "schema": 1, "complete": False, "environment": measure.environment(device, o.command),
        "settings": {"model": plan.description, "model_config": described,
                     "parameters": sum(p.numel() for p in model.parameters()), "precisions": list(o.precisions),
                     "backends": list(o.backends), "workloads": list(o.sections), "quick": o.quick,
                     "repeats": o.n_repeats, "warmup": o.n_warmup, "seed": o.seed},
        "skipped": list(plan.skipped),
    }
    skipped = results["skipped"]
    for section in MATRIX:  # the experiments are not part of the default run: no row when not asked for
        if section not in o.sections:
            why = "--quick leaves it out" if o.quick and section == "time-to-accuracy" else "not in --workloads"
            skipped.append({"section": RESULT_KEY[section], "what": section, "why": why})
    ours = [engines.lpmace_engine(model, p, b, device) for b in o.backends for p in o.precisions]
    reference = engines.lpmace_engine(model, "fp64", "reference", device)
    theirs = []
    if o.compare_mace_torch and plan.mace64 is not None:
        theirs = engines.mace_torch_engines(plan.mace64, cfg.atomic_numbers, device, skipped)
    elif not o.compare_mace_torch:
        skipped.append({"section": "speed", "what": "mace-torch", "why": "not requested (--compare-mace-torch)"})
    everyone = ours + theirs
    loads = workloads.workloads(cfg, quick=o.quick, seed=o.seed)
    sizes = speed.scaling_sizes(device, o.quick, o.max_atoms)
    md_precisions = list(dict.fromkeys(["fp64", *o.precisions]))
    total = {"train": len(everyone), "infer": len(everyone), "roofline": len(everyone),
             "accuracy": len(everyone) * (len(plan.data) + 1), "equivariance": len(everyone),
             "scaling": len(everyone) * len(sizes),
             "md": 2 * len(md_precisions) * len(o.backends) * len(MD_ENGINES),
             "time-to-accuracy": len(o.precisions) * len(o.backends) + int(o.compare_mace_torch),
             **{name: 1 for name in EXPERIMENTS}}
    # disable=None: no bar when stderr is not a terminal (a log file gets no carriage-return clutter)
    bar = tqdm(total=sum(total[s] for s in o.sections), desc="bench", unit="run",
               disable=None if o.progress else True, dynamic_ncols=True)

    def tick(what: str) -> None:
        bar.set_postfix_str(what[:60], refresh=False)
        bar.update(1)

    def guarded(section: str, what: str, fn, default=None):
        """fn(), or `default` with a skipped row saying why (an OOM or error ends this part, not the run)."""
        try:
            return fn()
        except Exception as err:  # noqa: BLE001 — reported in the results, the rest is still measured
            why = "OOM" if measure.is_out_of_memory(err) else f"{type(err).__name__}: {err}"
            skipped.append({"section": section, "what": what, "why": why[:300]})
            return default

    try:
        chosen = [w for w in loads if w.kind in o.sections]
        if chosen:
            results["speed"] = speed.speed_rows(everyone, chosen, device, repeats=o.n_repeats, warmup=o.n_warmup,
                                                tick=tick)
            _save(results, o.out)
        if "roofline" in o.sections:
            results["roofline"] = _roofline(everyone, loads, results.get("speed", []), results["environment"], tick,
                                            guarded)
            name = results["environment"]["device_name"]
            if roofline.device_peaks(name) is None:
                skipped.append({"section": "roofline", "what": "peak FLOP/s and bandwidth",
                                "why": f"{name!r} is not in the table of known devices (lpmace.bench.roofline.PEAKS)"})
        if "accuracy" in o.sections:
            sets = [(name, [graph_from_configuration(c, cfg.r_max) for c in configs]) for name, configs in plan.data]
            w2 = next(w for w in loads if w.kind == "infer")
            sets.append((f"W2 box ({w2.graph.num_atoms} atoms)", [w2.graph]))
            results["accuracy"] = guarded("accuracy", "accuracy against fp64",
                                          lambda: accuracy.accuracy_rows(everyone, reference, sets, tick=tick), [])
            _save(results, o.out)
        if "equivariance" in o.sections:
            first = plan.data[0][1][0] if plan.data else None
            graph = graph_from_configuration(first, cfg.r_max) if first is not None else loads[0].graph
            results["equivariance"] = []
            for engine in everyone:
                tick(f"equivariance {engine.label}")
                row = guarded("equivariance", engine.label,
                              lambda e=engine: accuracy.equivariance_row(e, graph, seed=o.seed))
                if row is not None:
                    results["equivariance"].append(row)
            _save(results, o.out)
        if "scaling" in o.sections:
            results["scaling"] = speed.scaling_rows(everyone, cfg, sizes, device, repeats=min(o.n_repeats, 5),
                                                    warmup=min(o.n_warmup, 2), seed=o.seed, tick=tick)
            _save(results, o.out)
        if "md" in o.sections:
            from lpmace.bench.stability import md_stability

            # both engines (ASE's and the torch one) on the same systems, seed, steps and dt
            steps = o.md_steps or (20 if o.quick else (1000 if device.startswith("cuda") else 200))
            results["md"] = []
            for backend in o.backends:
                results["md"] += guarded("md", f"NVE runs, backend {backend}", lambda b=backend: md_stability(
                    model, md_precisions, device=device, systems=_md_systems(plan), steps=steps, dt_fs=o.md_dt_fs,
                    seed=o.seed, progress=tick, backend=b), [])
            _save(results, o.out)
        if "time-to-accuracy" in o.sections:
            results["time_to_accuracy"] = guarded("time_to_accuracy", "time-to-accuracy",
                                                  lambda: _time_to_accuracy(plan, tick))
            _save(results, o.out)
        for name in (e for e in EXPERIMENTS if e in o.sections):
            tick(name)
            found = guarded(RESULT_KEY[name], name, lambda n=name: _experiment(plan, n))
            if found is not None:
                results[RESULT_KEY[name]] = found
            _save(results, o.out)
        results["complete"] = True
    finally:
        bar.close()
        _save(results, o.out)
        written = write_report(results, o.out)  # also after an interruption: the report of what was measured
    log(f"wrote {o.out / 'results.json'}, " + ", ".join(str(p) for p in written.values()))
    return results


def _roofline(everyone, loads, speed_rows, env, tick, guarded) -> list:
    rows = []
    infer = next(w for w in loads if w.kind == "infer")
    for engine in everyone:
        tick(f"roofline {engine.label}")
        timed = next((r for r in speed_rows if r["workload"] == infer.name and r["code"] == engine.code
                      and r["backend"] == engine.backend and r["precision"] == engine.precision), None)
        if timed is None or timed["status"] != "ok":
            continue
        counted = guarded("roofline", engine.label, lambda e=engine: roofline.count_flop_and_bytes(
            lambda x=e.prepare(infer.graph): e.infer_unrecorded(x, False)))
        if counted is not None:
            rows.append(roofline.roofline_row(timed, *counted, env["device_name"]))
    return rows


def _time_to_accuracy(plan: Plan, tick) -> dict:
    from lpmace.bench.time_to_accuracy import time_to_accuracy

    o, cfg = plan.options, plan.model.config
    budget = o.tta_budget_s or (120.0 if o.device.startswith("cuda") else 60.0)
    overrides = [f"model.r_max={cfg.r_max}", f"model.num_bessel={cfg.num_bessel}", f"model.channels={cfg.channels}",
                 f"model.max_L={cfg.max_L}", f"model.max_ell={cfg.max_ell}",
                 f"model.correlation={cfg.correlation[0]}", f"model.num_interactions={cfg.num_interactions}",
                 f"model.radial_mlp={list(cfg.radial_mlp)}", f"model.readout_mlp={cfg.readout_mlp}"]
    return time_to_accuracy(list(o.precisions), device=o.device, budget_s=budget, out_dir=o.out / "time_to_accuracy",
                            overrides=overrides, target_mev_per_A=o.tta_target,
                            compare_mace_torch=o.compare_mace_torch, progress=tick,
                            test_limit=100 if o.quick else None, backends=list(o.backends))


def _experiment(plan: Plan, name: str) -> dict:
    """One experiment section: {"settings", "rows"} from its module's `run`, plus its wall time."""
    import importlib
    import time

    o = plan.options
    extra = {"species-rank": {"data": o.species_data},
             "quantize": {"model": plan.model, "origin": plan.description} if o.model else {}}.get(name, {})
    start = time.perf_counter()
    module = importlib.import_module(f"lpmace.bench.{RESULT_KEY[name]}")
    found = module.run(device=o.device, quick=o.quick, progress=o.progress, seed=o.seed, **extra)
    return {**found, "seconds": time.perf_counter() - start}

