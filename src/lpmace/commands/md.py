"""`lpmace md STRUCTURE --model M.safetensors [...]`: NVE or NVT molecular dynamics with an lpmace model.

All input (structure, model, elements, precision, device, output folders, numbers) is checked
before the first step; outputs are written to temporary files beside their destinations and renamed
at the end, so a rejected run leaves no file behind and an existing file is replaced only by a
finished one. A run stopped as unstable keeps its outputs (valid data up to that step) and exits 3.
"""

from __future__ import annotations

import argparse

from lpmace.devices import DEVICE_HELP

HELP = "run NVE or NVT molecular dynamics on a structure with an lpmace model"
EXIT_UNSTABLE = 3
CSV_HEADER = ("step", "time_fs", "potential_eV", "kinetic_eV", "total_eV", "temperature_K")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.epilog = (f"exit status: 0 finished, 2 bad input, {EXIT_UNSTABLE} MD became unstable (non-finite "
                     "energy/forces/positions or total energy off by more than 1 eV/atom; outputs up to that "
                     "step are kept)")
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
                        help="auto, reference, triton or compiled (lpmace.kernels; default: %(default)s)")


def run(args: argparse.Namespace) -> int:
    import math
    import pathlib
    import sys

    from lpmace.calculator import Calculator
    from lpmace.devices import resolve_device as _device
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
    device = _device(args.device)

    atoms = _read_structure(pathlib.Path(args.structure), args.index)
    model = load(args.model, device=device)
    known = {int(z) for z in model.config.atomic_numbers}
    unknown = sorted({int(z) for z in atoms.numbers} - known)
    if unknown:
        from ase.data import chemical_symbols

        names = ", ".join(chemical_symbols[z] if 0 < z < len(chemical_symbols) else f"Z={z}" for z in unknown)
        raise InputError(f"{args.structure}: element(s) {names} unknown to the model "
                         f"(it knows {', '.join(chemical_symbols[z] for z in sorted(known))})")
    policy = resolve_policy(args.precision, default=model.default_precision)
    calculator = Calculator(model, device=device, precision=policy, backend=args.backend)

    with _Outputs(out_path, log_path, args.dt) as outputs:
        result = run_md(atoms, calculator, ensemble=args.ensemble, steps=args.steps, dt_fs=args.dt,
                        temperature_K=args.temperature, friction_per_fs=args.friction, seed=args.seed,
                        interval=args.interval, on_sample=outputs.write, progress=sys.stderr.isatty())

    print(f"model {args.model}, precision {policy.name}, device {device}, {args.ensemble}, "
          f"{result.n_atoms} atoms, dt {args.dt:g} fs")
    print(_summary(result))
    print(f"wrote {out_path} ({len(result.steps)} frames) and {log_path}")
    if not result.stable:
        print(f"lpmace: MD became unstable at step {result.unstable_step}: {result.reason}", file=sys.stderr)
        return EXIT_UNSTABLE
    return 0


def _read_structure(path, index: int):
    """Frame `index` of `path` as ase.Atoms; InputError naming the file when ASE cannot read it."""
    import ase.io

    from lpmace.errors import InputError

    if not path.is_file():
        open(path, "rb").close()  # let the OS word it ("No such file or directory", "Is a directory")
    try:
        atoms = ase.io.read(path, index=index)
    except IndexError:
        raise InputError(f"{path}: has no frame {index}") from None
    except Exception as err:  # noqa: BLE001 -- ASE raises many types for unreadable files; all mean "not a structure"
        raise InputError(f"{path}: not a structure file ASE can read ({type(err).__name__}: {err})") from None
    if len(atoms) == 0:
        raise InputError(f"{path}: frame {index} has no atoms")
    # Only the geometry: labels in the file (REF_forces, ...) would be stale in every later frame.
    return ase.Atoms(numbers=atoms.numbers, positions=atoms.positions, cell=atoms.cell, pbc=atoms.pbc)


class _Outputs:
    """Trajectory and CSV written to temporary files beside their destinations; renamed on leaving
    normally (also after an unstable run), deleted on an exception."""

    def __init__(self, out_path, log_path, dt_fs: float) -> None:
        self.paths = (out_path, log_path)
        self._dt_fs = dt_fs

    def __enter__(self):
        import os
        import tempfile

        self.temps = []
        for path in self.paths:
            fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
            os.close(fd)
            self.temps.append(tmp)
        self.csv = open(self.temps[1], "w")
        self.csv.write(",".join(CSV_HEADER) + "\n")
        return self

    def write(self, step: int, atoms) -> None:
        import ase.io

        # Format "extxyz" explicitly: the temporary name ends in .tmp.
        ase.io.write(self.temps[0], atoms, format="extxyz", append=True)
        potential, kinetic = atoms.get_potential_energy(), atoms.get_kinetic_energy()
        self.csv.write(f"{step},{step * self._dt_fs:.6g},{potential:.10f},{kinetic:.10f},"
                       f"{potential + kinetic:.10f},{atoms.get_temperature():.4f}\n")

    def __exit__(self, exc_type, exc, tb) -> None:
        import os

        self.csv.close()
        for tmp, path in zip(self.temps, self.paths):
            if exc_type is None:
                os.replace(tmp, path)
            else:
                try:
                    os.unlink(tmp)
                except FileNotFoundError:
                    pass


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
