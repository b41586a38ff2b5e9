"""One active-learning round of an `lpmace active` config driven through mace-torch, as users do it
today (mace-torch has no loop): `mace_run_train` once per committee member, then ASE MD with
mace-torch's committee calculator (`MACECalculator(model_paths=[...])`) from the same starts.

    python benchmarks/active/mace_torch_round.py benchmarks/active/cu_h200.yaml --out /tmp/mace_round \
        [--md-systems 2] [--cueq]

The data are the lpmace run's own: this script runs the loop's setup phase (`ActiveLoop._setup`:
the same seed gives the same initial.xyz and test.xyz as `lpmace active` with that config), trains
each member with the flags `lpmace bench` uses for mace-torch (`_mace_arguments`: the config's model
and recipe, float32, E0s fitted as mace-torch's "average"), for the config's round-1 epochs,
and times each process whole (start-up included, as a user waits for it); mace-torch takes its
validation split from each member's `--seed`, so unlike lpmace's members (one shared split) each
member holds out other frames. Sampling runs ASE's Langevin (velocity Verlet for `ensemble: nve`)
at the config's dt, friction and steps with the committee calculator, on `--md-systems`
of the round's starts (one trajectory after another, as ASE does: its time per trajectory does not
depend on how many follow), and gives the time per trajectory and its extrapolation to the
config's temperatures x starts. The committee's test force RMSE against the oracle is computed on
test.xyz as the loop computes lpmace's. Selection and labelling are the loop's own code for either
framework and are not repeated here. Writes ``OUT/mace_torch_round.json``.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve()
sys.path.insert(0, str(HERE.parents[2] / "src"))

from lpmace.active import ActiveLoop, load_active_config  # noqa: E402
from lpmace.active.config import FORCES_KEY, member_train_config  # noqa: E402
from lpmace.active.frames import read_frames  # noqa: E402
from lpmace.bench.time_to_accuracy import _mace_arguments, _mace_executable  # noqa: E402


def train_members(cfg, data: Path, out: Path, device: str) -> tuple[list[Path], list[float]]:
    executable = _mace_executable()
    if executable is None:
        sys.exit("mace_run_train not found: install mace-torch")
    paths, seconds = [], []
    for m in range(cfg.committee):
        work = out / f"member_{m}"
        work.mkdir(parents=True, exist_ok=True)
        member = member_train_config(cfg, train_file=str(data / "dataset.xyz"), output_dir=str(work),
                                     seed=cfg.seed + m, device=device)
        args = _mace_arguments(member, "float32", device, work)
        args[args.index("--name") + 1] = f"member_{m}"
        start = time.perf_counter()
        with open(work / "mace_run_train.log", "w") as log:
            rc = subprocess.run([executable, *args], cwd=work, stdout=log, stderr=subprocess.STDOUT).returncode
        seconds.append(time.perf_counter() - start)
        print(f"member {m}: mace_run_train rc {rc} in {seconds[-1]:.1f} s", flush=True)
        if rc != 0:
            sys.exit(f"mace_run_train failed: {work / 'mace_run_train.log'}")
        paths.append(work / f"member_{m}.model")
    return paths, seconds


def test_rmse(calc, test) -> float:
    errors = []
    for frame in test:
        atoms = frame.copy()
        atoms.calc = calc
        errors.append(atoms.get_forces() - frame.arrays[FORCES_KEY])
    return 1000 * float(np.sqrt(np.mean(np.concatenate(errors) ** 2)))


def sample(cfg, calc, starts, temperatures) -> list[dict]:
    """ASE Langevin MD of each start with the committee; per trajectory its wall time and uncertainties."""
    from ase import units
    from ase.md.langevin import Langevin
    from ase.md.verlet import VelocityVerlet

    from lpmace.md import initialize_velocities

    s, out = cfg.sample, []
    for i, (atoms, temperature) in enumerate(zip(starts, temperatures)):
        atoms = atoms.copy()
        atoms.calc = calc
        initialize_velocities(atoms, temperature, np.random.default_rng(i))
        if s.ensemble == "nve":
            dyn = VelocityVerlet(atoms, timestep=s.dt_fs * units.fs)
        else:
            dyn = Langevin(atoms, timestep=s.dt_fs * units.fs, temperature_K=temperature,
                           friction=s.friction_per_fs / units.fs, rng=np.random.default_rng(100 + i))
        uncertainty = []

        def record():
            comm = calc.results.get("forces_comm")
            if comm is not None:
                uncertainty.append(float(np.linalg.norm(np.std(comm, axis=0), axis=-1).max()))

        dyn.attach(record, interval=s.interval)
        start = time.perf_counter()
        dyn.run(s.steps)
        wall = time.perf_counter() - start
        out.append({"temperature_K": temperature, "steps": s.steps, "wall_s": wall, "ms_per_step": 1e3 * wall / s.steps,
                    "frames": len(uncertainty), "mean_uncertainty_eV_per_A": float(np.mean(uncertainty)) if uncertainty else None})
        print(f"trajectory {i} at {temperature} K: {s.steps} steps in {wall:.1f} s", flush=True)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("config")
    parser.add_argument("--out", required=True)
    parser.add_argument("--md-systems", type=int, default=2, help="trajectories run (spread over the temperatures)")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--cueq", action="store_true", help="also sample with cuEquivariance (enable_cueq=True)")
    args = parser.parse_args()
    from mace.calculators import MACECalculator

    out = Path(args.out)
    cfg, oracle = load_active_config(args.config, output_dir=str(out / "data"))
    loop = ActiveLoop(cfg, oracle)
    loop.out.mkdir(parents=True, exist_ok=True)
    began = time.perf_counter()
    loop._setup(0)
    setup_s = time.perf_counter() - began
    paths, train_s = train_members(cfg, loop.out, out, args.device)

    test = read_frames(loop.out / "test.xyz")
    dataset = read_frames(loop.out / "dataset.xyz")
    trajectories = len(cfg.sample.temperatures_K) * cfg.sample.starts
    temperatures = [cfg.sample.temperatures_K[round(i * (len(cfg.sample.temperatures_K) - 1) / max(args.md_systems - 1, 1))]
                    for i in range(args.md_systems)]
    starts = [dataset[i] for i in np.random.default_rng(cfg.seed).choice(len(dataset), args.md_systems, replace=False)]
    result = {"config": args.config, "committee": cfg.committee, "epochs": cfg.train.get("epochs"),
              "train_size": len(dataset), "setup_s": setup_s, "train_s_per_member": train_s, "train_s": sum(train_s),
              "trajectories_in_round": trajectories, "sampling": {}}
    save = lambda: (out / "mace_torch_round.json").write_text(json.dumps(result, indent=1))  # noqa: E731
    save()  # after each stage: a run stopped by a time limit keeps what it measured
    for cueq in [False, True] if args.cueq else [False]:
        name = "cueq" if cueq else "e3nn"
        began = time.perf_counter()
        calc = MACECalculator(model_paths=[str(p) for p in paths], device=args.device, default_dtype="float32",
                              enable_cueq=cueq)
        load_s = time.perf_counter() - began
        began = time.perf_counter()
        rmse = test_rmse(calc, test)
        test_s = time.perf_counter() - began
        result["sampling"][name] = {"load_s": load_s, "test_force_rmse_meV_per_A": rmse, "test_eval_s": test_s}
        print(f"{name}: test force RMSE {rmse:.1f} meV/Å", flush=True)
        save()
        runs = sample(cfg, calc, starts, temperatures)
        per_trajectory = float(np.mean([r["wall_s"] for r in runs]))
        result["sampling"][name].update(trajectories=runs, s_per_trajectory=per_trajectory,
                                        sample_s_extrapolated=per_trajectory * trajectories)
        print(f"{name}: {per_trajectory:.1f} s per trajectory, {per_trajectory * trajectories:.0f} s for "
              f"{trajectories}", flush=True)
        save()


if __name__ == "__main__":
    main()
