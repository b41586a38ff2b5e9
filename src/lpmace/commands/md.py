"""`lpmace md STRUCTURE --model M.safetensors [...]`: NVE or NVT molecular dynamics with an lpmace model.

All input (structure, model, elements, precision, device, output folders, numbers) is checked
before any output file is created, so a rejected run leaves no file behind. The structure goes
through the same validation as training data (`lpmace.data.Configuration`); one atom is refused
(see `lpmace.md`). The trajectory and the CSV are then written at their final paths, appended and
flushed at every sample, so whatever happens later (Ctrl-C, a scheduler's SIGTERM, kill -9, a
crash) they hold every sample so far, readable. SIGINT and SIGTERM stop the run cleanly after the
current step; a second one acts as usual. A run stopped as unstable keeps its outputs (valid data
up to that step) and exits 3; a run stopped by a signal exits 128 + its number (130, 143).
"""

from __future__ import annotations

import argparse

from lpmace.devices import DEVICE_HELP

HELP = "run NVE or NVT molecular dynamics on a structure with an lpmace model"
EXIT_UNSTABLE = 3
from lpmace.commands._md_outputs import BATCHED_CSV_HEADER, CSV_HEADER  # noqa: F401  (the command's formats)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.epilog = ("--out and --log are written as the run goes (every sample flushed); Ctrl-C or SIGTERM "
                     "stops after the current step and keeps them. "
                     f"exit status: 0 finished, 2 bad input, {EXIT_UNSTABLE} MD became unstable (non-finite "
                     "energy/forces/positions or total energy off by more than 1 eV/atom; outputs up to that "
                     "step are kept), 130 stopped by SIGINT, 143 stopped by SIGTERM")
    parser.add_argument("structure", metavar="STRUCTURE", help="any file ASE reads (the frame --index names)")
    parser.add_argument("--model", required=True, metavar="M.safetensors", help="lpmace model file")
    parser.add_argument("--index", type=int, default=0, metavar="I", help="frame of STRUCTURE (default: %(default)s)")
    parser.add_argument("--precision", metavar="P",
                        help="preset name or YAML policy (default: the model's, fp64 for float64 weights)")
    parser.add_argument("--ensemble", choices=("nve", "nvt"), default="nve",
                        help="nve: velocity Verlet; nvt: Langevin (default: %(default)s)")
    parser.add_argument("--steps", type=int, default=1000, metavar="N", help="default: %(default)s")
    parser.add_argument("--dt", type=float, default=0.5, metavar="FS", help="time step in fs (default: %(default)s)")
    parser.add_argument("--temperature", type=float, default=300.0, metavar="K",
                        help="initial Maxwell-Boltzmann temperature and NVT target (default: %(default)s)")
    parser.add_argument("--friction", type=float, default=0.01, metavar="1/fs",
                        help="Langevin friction for nvt (default: %(default)s)")
    parser.add_argument("--seed", type=int, default=0, metavar="S",
                        help="seed of initial velocities and Langevin noise (default: %(default)s)")
    parser.add_argument("--out", default="traj.xyz", metavar="traj.xyz",
                        help="extended-XYZ trajectory with energy and forces (default: %(default)s)")
    parser.add_argument("--log", default="md.csv", metavar="md.csv",
                        help="CSV of step, time, energies, temperature (default: %(default)s)")
    parser.add_argument("--interval", type=int, default=10, metavar="K",
                        help="write a frame and a CSV row every K steps (default: %(default)s)")
    parser.add_argument("--device", default="auto", help=DEVICE_HELP)
    parser.add_argument("--backend", default="auto", metavar="B",
                        help="auto, reference, triton or compiled (lpmace.backends; default: %(default)s)")
    parser.add_argument("--engine", choices=("torch", "ase"), default=None,
                        help="torch: lpmace.dynamics, the whole step on the device; ase: lpmace.Calculator with "
                             "ASE's integrators (default: torch on CUDA, ase otherwise)")
    parser.add_argument("--skin", type=float, default=None, metavar="Å",
                        help="Verlet-list skin of the torch engine (default: 1.0)")
    parser.add_argument("--state-dtype", choices=("float64", "float32"), default=None,
                        help="dtype of positions and momenta on the torch engine (default: float64)")
    parser.add_argument("--all-frames", action="store_true",
                        help="run every frame of STRUCTURE as one batched set of systems (torch engine; the CSV "
                             "gets a system column, frames a system tag)")


def run(args: argparse.Namespace) -> int:
    import json
    import pathlib
    import sys

    from lpmace.atomic import atomic_write_text
    from lpmace.backends import resolve
    from lpmace.devices import resolve_device
    from lpmace.dynamics.engine import WARMUP_STEPS
    from lpmace.elements import check_known_elements
    from lpmace.errors import InputError
    from lpmace.io import load
    from lpmace.commands._md_outputs import Outputs, StopOnSignal
    from lpmace.precision import resolve_policy

    out_path, log_path, summary_path = _check_arguments(args)
    device = resolve_device(args.device)
    engine = args.engine or ("torch" if device.type == "cuda" else "ase")
    if engine == "ase":
        for flag, given in (("--skin", args.skin is not None), ("--state-dtype", args.state_dtype is not None),
                            ("--all-frames", args.all_frames)):
            if given:
                raise InputError(f"{flag} needs --engine torch (the ase engine runs one structure through "
                                 "lpmace.Calculator)")

    path = pathlib.Path(args.structure)
    configs = _read_frames(path) if args.all_frames else [_read_structure(path, args.index)]
    model = load(args.model, device=device)
    for config in configs:
        check_known_elements(config.numbers, model.config.atomic_numbers, config.source)
    structures = [_starting_geometry(config, model.config.r_max) for config in configs]
    policy = resolve_policy(args.precision, default=model.default_precision)
    resolve(args.backend, device)  # an unknown or unavailable backend: InputError before any file
    if args.ensemble == "nve" and policy.is_16bit:
        from lpmace.cli import warn

        warn(f"precision {policy.name} computes forces with 16-bit parts, which are not the gradient of one "
             "energy: NVE does not conserve the total energy (every 16-bit policy drifted 20-170x fp32's, "
             "docs/experiments/md_precision.md); use fp32 (or fp64) for NVE")

    outputs = Outputs(out_path, log_path, args.dt, batched=args.all_frames)
    summary_path.unlink(missing_ok=True)  # an earlier run's summary must not describe these outputs
    source = configs[0].source if len(configs) == 1 else str(path)
    try:
        with StopOnSignal() as stop:
            run_engine = _run_torch if engine == "torch" else _run_ase
            result = run_engine(model, structures, args, device, policy, outputs, stop)
    except InputError as err:  # raised before the first sample, so no file exists yet
        raise InputError(f"{source}: {err}") from None
    finally:
        outputs.close()
    atomic_write_text(summary_path, json.dumps(result.summary(), indent=1) + "\n")

    print(f"model {args.model}, precision {policy.name}, device {device}, engine {engine}, {args.ensemble}, "
          f"{len(structures)} system{'s' if len(structures) > 1 else ''}, {result.atoms} atoms, dt {args.dt:g} fs")
    for number, system in enumerate(result.systems):
        if len(result.systems) > 1:
            print(f"system {number} ({system.n_atoms} atoms)")
        print(_summary(system))
    steady = result.steady_ms_per_step
    print(f"wall time        {result.ms_per_step:.3g} ms/step" + (" (all systems)" if len(structures) > 1 else "")
          + ("" if steady is None else f"; {steady:.3g} ms/step after the first {WARMUP_STEPS} steps"))
    if engine == "torch":
        print(f"model time       {result.model_ms_per_step:.3g} ms/step, "
              f"{result.neighbour_list_builds} neighbour list builds")
    frames = sum(len(system.steps) for system in result.systems)
    print(f"wrote {out_path} ({frames} frames), {log_path} and {summary_path}")
    last = max(int(system.steps[-1]) for system in result.systems)
    if result.interrupted:
        print(f"lpmace: md stopped by {stop.name} at step {result.steps} of {args.steps}; "
              f"{out_path} and {log_path} hold steps 0 to {last} ({frames} samples)", file=sys.stderr)
        return 128 + stop.signal_number
    unstable = [(number, system) for number, system in enumerate(result.systems) if not system.stable]
    for number, system in unstable:
        which = f"system {number}: " if len(result.systems) > 1 else ""
        print(f"lpmace: {which}MD became unstable at step {system.unstable_step}: {system.reason}", file=sys.stderr)
    return EXIT_UNSTABLE if unstable else 0


def _check_arguments(args):
    """(out, log, summary) paths after the checks of every number and path (InputError for the first wrong one)."""
    import math
    import pathlib

    from lpmace.errors import InputError

    if args.steps < 0:
        raise InputError(f"--steps must be at least 0, got {args.steps}")
    if args.interval < 1:
        raise InputError(f"--interval must be at least 1, got {args.interval}")
    for flag, value in (("--dt", args.dt), ("--friction", args.friction)):
        if not (math.isfinite(value) and value > 0):
            raise InputError(f"{flag} must be a positive number, got {value}")
    if not (math.isfinite(args.temperature) and args.temperature >= 0):
        raise InputError(f"--temperature must be a number >= 0, got {args.temperature}")
    if args.skin is not None and not (math.isfinite(args.skin) and args.skin >= 0):
        raise InputError(f"--skin must be a number >= 0, got {args.skin}")
    if args.all_frames and args.index != 0:
        raise InputError(f"--all-frames runs every frame of STRUCTURE; it cannot be combined with --index {args.index}")
    out_path, log_path = pathlib.Path(args.out), pathlib.Path(args.log)
    summary_path = log_path.with_name(log_path.stem + ".summary.json")
    if out_path.resolve() == log_path.resolve():
        raise InputError(f"--out and --log name the same file {out_path}")
    if out_path.resolve() == summary_path.resolve():
        raise InputError(f"--out {out_path} is the summary file of --log {log_path}")
    for flag, path in (("--out", out_path), ("--log", log_path), ("--log's summary", summary_path)):
        if not path.parent.is_dir():
            raise InputError(f"{flag} {path}: folder {path.parent} does not exist")
        if path.is_dir():
            raise InputError(f"{flag} {path}: is a folder")
    return out_path, log_path, summary_path


def _run_ase(model, structures, args, device, policy, outputs, stop):
    """The one structure through `lpmace.Calculator` and ASE's integrators (`lpmace.md.run_md`)."""
    import sys

    from lpmace.calculator import Calculator
    from lpmace.dynamics import DynamicsResult
    from lpmace.md import run_md

    (atoms,) = structures
    calculator = Calculator(model, device=device, precision=policy, backend=args.backend)
    result = run_md(atoms, calculator, ensemble=args.ensemble, steps=args.steps, dt_fs=args.dt,
                    temperature_K=args.temperature, friction_per_fs=args.friction, seed=args.seed,
                    interval=args.interval, on_sample=outputs.write, should_stop=stop.requested,
                    progress=sys.stderr.isatty())
    advanced = result.steps_done if result.stable else result.unstable_step
    # the calculator builds a neighbour list at each force call: one per step and one at the start
    return DynamicsResult(systems=(result,), steps=advanced, atoms=len(atoms), wall_s=result.wall_s,
                          model_ms_per_step=None, neighbour_list_builds=advanced + 1,
                          interrupted=result.interrupted, engine="ase")


def _run_torch(model, structures, args, device, policy, outputs, stop):
    """All structures together on `device` (`lpmace.dynamics.run_dynamics`)."""
    import sys

    import torch

    from lpmace.dynamics import run_dynamics

    return run_dynamics(
        model, structures, ensemble=args.ensemble, steps=args.steps, dt_fs=args.dt, temperature_K=args.temperature,
        friction_per_fs=args.friction, seed=args.seed, interval=args.interval, precision=policy, device=device,
        backend=args.backend, skin=1.0 if args.skin is None else args.skin,
        state_dtype=torch.float32 if args.state_dtype == "float32" else torch.float64,
        on_sample=lambda system, step, atoms: outputs.write(step, atoms, system), should_stop=stop.requested,
        progress=sys.stderr.isatty())


def _read_frames(path):
    """Every frame of `path` as `Configuration`s (sources "path:frame i"); InputError naming the file."""
    import ase.io

    from lpmace.errors import InputError

    if not path.is_file():
        open(path, "rb").close()  # let the OS word it ("No such file or directory", "Is a directory")
    try:
        frames = ase.io.read(path, index=":")
    except Exception as err:  # noqa: BLE001 -- ASE raises many types for unreadable files; all mean "not a structure"
        raise InputError(f"{path}: not a structure file ASE can read ({type(err).__name__}: {err})") from None
    if not frames:
        raise InputError(f"{path}: holds no structure")
    return [_configuration(atoms, f"{path}:frame {index}") for index, atoms in enumerate(frames)]


def _read_structure(path, index: int):
    """Frame `index` of `path` (any format ASE reads) as a `Configuration` (geometry only, validated
    like training data, source "path:frame i"); InputError naming the file for anything wrong."""
    import ase.io

    from lpmace.errors import InputError

    if not path.is_file():
        open(path, "rb").close()  # let the OS word it ("No such file or directory", "Is a directory")
    try:
        atoms = ase.io.read(path, index=index)
    except (IndexError, StopIteration):  # ASE's readers signal "no such frame" either way
        count = _count_frames(path)
        raise InputError(f"{path}: has {count} structure{'s' if count != 1 else ''}, "
                         f"--index {index} is out of range") from None
    except Exception as err:  # noqa: BLE001 -- ASE raises many types for unreadable files; all mean "not a structure"
        raise InputError(f"{path}: not a structure file ASE can read ({type(err).__name__}: {err})") from None
    return _configuration(atoms, f"{path}:frame {index}")


def _configuration(atoms, source: str):
    """The geometry of `atoms` as a validated `Configuration` named `source` (InputError if invalid)."""
    from lpmace.data import Configuration

    return Configuration(numbers=atoms.numbers, positions=atoms.positions, cell=atoms.cell.array, pbc=atoms.pbc,
                         source=source)


def _starting_geometry(config, r_max: float):
    """ase.Atoms to integrate from `config`, after the checks every structure a model sees gets
    (overlapping atoms, in the graph builder), so their error names this file. Only the geometry:
    labels in the file (REF_forces, ...) would be stale in every later frame."""
    import ase

    from lpmace.data import graph_from_configuration

    graph_from_configuration(config, r_max)
    return ase.Atoms(numbers=config.numbers, positions=config.positions, cell=config.cell, pbc=config.pbc)


def _count_frames(path) -> int:
    import ase.io

    return sum(1 for _ in ase.io.iread(path, index=":"))


def _summary(result) -> str:
    import math

    lines = [
        f"steps            {result.steps_done} of {result.steps_requested}",
        f"simulated time   {result.simulated_time_ps:.4g} ps",
    ]
    if result.ensemble == "nve":
        drift = result.drift_meV_per_atom_per_ps
        lines.append(f"energy drift     {'n/a' if math.isnan(drift) else f'{drift:.4g}'} meV/atom/ps")
    lines += [
        f"E_total std      {result.fluctuation_meV_per_atom:.4g} meV/atom",
        f"mean temperature {result.mean_temperature_K:.1f} K",
    ]
    return "\n".join(lines)
