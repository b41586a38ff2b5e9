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
CSV_HEADER = ("step", "time_fs", "potential_eV", "kinetic_eV", "total_eV", "temperature_K")


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


def run(args: argparse.Namespace) -> int:
    import math
    import pathlib
    import sys

    from lpmace.calculator import Calculator
    from lpmace.devices import resolve_device
    from lpmace.elements import check_known_elements
    from lpmace.errors import InputError
    from lpmace.io import load
    from lpmace.md import run_md
    from lpmace.precision import resolve_policy

    if args.steps < 0:
        raise InputError(f"--steps must be at least 0, got {args.steps}")
    if args.interval < 1:
        raise InputError(f"--interval must be at least 1, got {args.interval}")
    for flag, value in (("--dt", args.dt), ("--friction", args.friction)):
        if not (math.isfinite(value) and value > 0):
            raise InputError(f"{flag} must be a positive number, got {value}")
    if not (math.isfinite(args.temperature) and args.temperature >= 0):
        raise InputError(f"--temperature must be a number >= 0, got {args.temperature}")
    out_path, log_path = pathlib.Path(args.out), pathlib.Path(args.log)
    if out_path.resolve() == log_path.resolve():
        raise InputError(f"--out and --log name the same file {out_path}")
    for flag, path in (("--out", out_path), ("--log", log_path)):
        if not path.parent.is_dir():
            raise InputError(f"{flag} {path}: folder {path.parent} does not exist")
        if path.is_dir():
            raise InputError(f"{flag} {path}: is a folder")
    device = resolve_device(args.device)

    config = _read_structure(pathlib.Path(args.structure), args.index)
    model = load(args.model, device=device)
    check_known_elements(config.numbers, model.config.atomic_numbers, config.source)
    atoms = _starting_geometry(config, model.config.r_max)
    policy = resolve_policy(args.precision, default=model.default_precision)
    calculator = Calculator(model, device=device, precision=policy, backend=args.backend)

    outputs = _Outputs(out_path, log_path, args.dt)
    try:
        with _StopOnSignal() as stop:
            result = run_md(atoms, calculator, ensemble=args.ensemble, steps=args.steps, dt_fs=args.dt,
                            temperature_K=args.temperature, friction_per_fs=args.friction, seed=args.seed,
                            interval=args.interval, on_sample=outputs.write, should_stop=stop.requested,
                            progress=sys.stderr.isatty())
    except InputError as err:  # raised before the first sample, so no file exists yet
        raise InputError(f"{config.source}: {err}") from None
    finally:
        outputs.close()

    print(f"model {args.model}, precision {policy.name}, device {device}, {args.ensemble}, "
          f"{result.n_atoms} atoms, dt {args.dt:g} fs")
    print(_summary(result))
    print(f"wrote {out_path} ({len(result.steps)} frames) and {log_path}")
    if result.interrupted:
        print(f"lpmace: md stopped by {stop.name} at step {result.steps_done} of {result.steps_requested}; "
              f"{out_path} and {log_path} hold steps 0 to {result.steps[-1]} ({len(result.steps)} samples)",
              file=sys.stderr)
        return 128 + stop.signal_number
    if not result.stable:
        print(f"lpmace: MD became unstable at step {result.unstable_step}: {result.reason}", file=sys.stderr)
        return EXIT_UNSTABLE
    return 0


def _read_structure(path, index: int):
    """Frame `index` of `path` (any format ASE reads) as a `Configuration` (geometry only, validated
    like training data, source "path:frame i"); InputError naming the file for anything wrong."""
    import ase.io

    from lpmace.data import Configuration
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
    return Configuration(numbers=atoms.numbers, positions=atoms.positions, cell=atoms.cell.array, pbc=atoms.pbc,
                         source=f"{path}:frame {index}")


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


class _StopOnSignal:
    """While active, SIGINT and SIGTERM ask the MD loop to stop after its current step instead of
    killing the process mid-write; the first signal restores the previous handlers, so a second one
    acts as usual (KeyboardInterrupt, termination). Off the main thread Python cannot install
    handlers, and signals keep their usual effect."""

    def __enter__(self):
        import signal
        import threading

        self.signal_number = 0
        self._previous = {}
        if threading.current_thread() is threading.main_thread():
            self._previous = {s: signal.signal(s, self._handle) for s in (signal.SIGINT, signal.SIGTERM)}
        return self

    def _handle(self, signal_number, frame) -> None:
        self.signal_number = signal_number
        self._restore()

    def _restore(self) -> None:
        import signal

        for number, handler in self._previous.items():
            signal.signal(number, handler)
        self._previous = {}

    def requested(self) -> bool:
        return self.signal_number != 0

    @property
    def name(self) -> str:
        import signal

        return signal.Signals(self.signal_number).name

    def __exit__(self, exc_type, exc, tb) -> None:
        self._restore()


class _Outputs:
    """Trajectory and CSV at their final paths, created at the first sample and appended and flushed
    at every one, so each holds, readable, every sample so far whenever the process ends. A frame
    is formatted in memory and written with one call, so a kill between samples cannot tear it.
    (Flushed to the OS, not fsync'ed: that survives any end of the process, which is what matters
    here; fsync per sample would cost disk latency for the power-cut case only.)"""

    def __init__(self, out_path, log_path, dt_fs: float) -> None:
        self.paths = (out_path, log_path)
        self._dt_fs = dt_fs
        self._files = []

    def _open(self) -> None:
        import os

        try:
            for path in self.paths:
                self._files.append(open(path, "w"))
        except OSError:
            for handle in self._files:  # none half-made: remove what this run created
                handle.close()
                os.unlink(handle.name)
            self._files = []
            raise
        self._files[1].write(",".join(CSV_HEADER) + "\n")
        self._files[1].flush()

    def write(self, step: int, atoms) -> None:
        import io

        import ase.io

        if not self._files:
            self._open()
        trajectory, csv = self._files
        # step and time in the frame's comment line tie each frame to its CSV row.
        atoms.info["step"], atoms.info["time_fs"] = step, step * self._dt_fs
        frame = io.StringIO()
        ase.io.write(frame, atoms, format="extxyz")
        trajectory.write(frame.getvalue())
        trajectory.flush()
        potential, kinetic = atoms.get_potential_energy(), atoms.get_kinetic_energy()
        csv.write(f"{step},{step * self._dt_fs:.6g},{potential:.10f},{kinetic:.10f},"
                  f"{potential + kinetic:.10f},{atoms.get_temperature():.4f}\n")
        csv.flush()

    def close(self) -> None:
        for handle in self._files:
            handle.close()


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
        f"wall time        {result.wall_s_per_step * 1000:.3g} ms/step",
    ]
    return "\n".join(lines)
