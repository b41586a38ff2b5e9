"""The active-learning loop: setup, then rounds of train → sample → select → label → append.

Every phase writes its files whole (temporary file + rename) and then records itself, with its
numbers and wall time, in ``DIR/state.json`` (also written whole). A phase recorded there is never
run again; a phase not recorded is run again from its start, and writes the same files, since each
draws its random numbers from the run's seed, the round and the phase alone (`_rng`). So a run
killed at any moment continues with ``--resume`` with nothing lost or duplicated; inside the train
phase, a member's finished model file is kept and a half-trained member resumes from its last epoch
checkpoint (`lpmace.train.Trainer`). `dataset.xyz` is rebuilt in each append phase from
``initial.xyz`` and the rounds' labelled selections, so it never holds a frame twice.

Under torchrun (``torchrun --nproc_per_node N -m lpmace active CONFIG.yaml``) rank r trains
members r, r + N, r + 2N, ... (`members_of_rank`), each alone in its process (on cuda:LOCAL_RANK
when the device is CUDA); every other phase, and every write of state.json, runs on rank 0 while
the other ranks wait for its decision (`DistributedContext.from_main`). A member's training does
not depend on the rank that runs it, so the run is the sequential one, and a kill of any rank
resumes as above, with or without torchrun and with any number of ranks. Every rank must see
``output_dir`` (one machine, or a shared filesystem).

Sampling (`sample.engine`) runs every trajectory of a round together on the torch MD engine
(`lpmace.dynamics.run_dynamics` with the committee as the force field, the spread in each sample), or
one trajectory after another through ASE's integrators (`lpmace.md.run_md`) with the `Committee` as
the calculator; either way a frame records the committee's mean forces and spread.
"""

from __future__ import annotations

import datetime
import json
import time
from pathlib import Path
from typing import Callable, Optional

import numpy as np

from lpmace.active.config import ENERGY_KEY, FORCES_KEY, TRAIN_DEFAULTS, ActiveConfig, member_train_config
from lpmace.active.frames import rattled_crystals, read_frames, read_labelled, with_labels, write_frames
from lpmace.active.selection import random_frames, select, spearman
from lpmace.atomic import atomic_write_text
from lpmace.committee import frame_uncertainty
from lpmace.errors import InputError
from lpmace.train.distributed import DistributedContext

PHASES = ("train", "sample", "select", "label", "append")
STATE_VERSION = 1
# config keys a resumed run may change: more rounds, a moved folder, an oracle fixed after it failed,
# another machine (the device; with sample.engine auto a re-run sample phase then follows the device)
RESUMABLE = ("rounds", "output_dir", "oracle", "oracle_kwargs", "device")
# how long ranks 1.. wait for rank 0's sampling and labelling (an oracle may be a slow DFT code)
RANK_WAIT = datetime.timedelta(days=7)


def members_of_rank(committee: int, rank: int, world_size: int) -> list[int]:
    """The committee members rank `rank` of `world_size` trains: rank, rank + world_size, ..."""
    return list(range(rank, committee, world_size))


def same_frames(labelled, wanted, tolerance: float = 1e-4) -> bool:
    """The same atoms at the same places, frame by frame and in order: equal elements, and positions
    within `tolerance` Å of each other up to lattice translations along periodic directions (labelling
    codes often return positions wrapped into the cell)."""
    from ase.geometry import find_mic

    if len(labelled) != len(wanted):
        return False
    for a, b in zip(labelled, wanted):
        if len(a) != len(b) or not np.array_equal(a.numbers, b.numbers):
            return False
        difference = a.positions - b.positions
        if b.pbc.any():
            difference, _ = find_mic(difference, b.cell, b.pbc)
        if not np.all(np.linalg.norm(difference, axis=1) <= tolerance):
            return False
    return True


def _carry_info(labelled, wanted) -> None:
    """The loop's own per-frame keys (al_*) of each wanted frame onto its labelled copy."""
    for a, b in zip(labelled, wanted):
        a.info.update({k: v for k, v in b.info.items() if k.startswith("al_")})


class WaitingForLabels(Exception):
    """oracle: none: the frames to label are written; the run stops until labelled.xyz is there."""


def _rng(seed: int, *stream: int) -> np.random.Generator:
    return np.random.default_rng([seed, *stream])


class ActiveLoop:
    """`ActiveLoop(cfg, oracle).run()` runs (or continues) the loop in ``cfg.output_dir``.

    `on_phase(round, phase, moment)` (tests) is called with moment "start" before a phase's work and
    "done" after its files are written but before state.json records it: raising there is a kill
    (on rank 0 only, under torchrun). Under torchrun, every rank constructs the loop and calls `run`;
    `close()` leaves the process group at the end.
    """

    def __init__(self, cfg: ActiveConfig, oracle, *, resume: bool = False, log: Callable[[str], None] = print,
                 on_phase: Optional[Callable[[int, str, str], None]] = None):
        from lpmace.devices import resolve_device

        self.cfg, self.oracle, self.on_phase = cfg, oracle, on_phase or (lambda *a: None)
        # under torchrun: this rank's device (cuda:LOCAL_RANK on CUDA); cfg.device stays as given
        self.dist, self.device = DistributedContext.from_environment(str(resolve_device(cfg.device, "device")),
                                                                     timeout=RANK_WAIT)
        self.log = log if self.dist.is_main else (lambda message: None)
        self.member_log = log  # every rank reports its own members
        self.out = Path(cfg.output_dir)
        self.state_path = self.out / "state.json"
        if self.state_path.exists() and not resume:
            raise InputError(f"{self.out} already holds an active-learning run: continue it with --resume "
                             "or choose another output_dir (--out)")
        if resume and not self.state_path.exists():
            raise InputError(f"{self.state_path}: no run to resume")
        self.state = self._read_state() if resume else {"version": STATE_VERSION, "config": cfg.to_dict(), "rounds": {}}
        if resume:
            self._check_config()
        self.state["config"] = cfg.to_dict()

    # ---- state -------------------------------------------------------------------------------
    def _read_state(self) -> dict:
        try:
            state = json.loads(self.state_path.read_text())
        except (OSError, json.JSONDecodeError) as err:
            raise InputError(f"{self.state_path}: cannot read the run's state ({err})") from None
        if not isinstance(state, dict) or state.get("version") != STATE_VERSION:
            raise InputError(f"{self.state_path}: not an lpmace active-learning state (version {STATE_VERSION})")
        return state

    def _check_config(self) -> None:
        now = self.cfg.to_dict()
        then = _with_new_keys(self.state["config"], now)  # a run begun before a key existed
        changed = sorted(k for k in set(then) | set(now) if k not in RESUMABLE and then.get(k) != now.get(k))
        if changed:
            raise InputError(f"--resume: the config differs from the run's in {', '.join(changed)} "
                             f"({self.state_path}); a resumed run may change only {', '.join(RESUMABLE)}")

    def close(self) -> None:
        """Leave torchrun's process group (nothing without torchrun)."""
        self.dist.close()

    def _record(self, key: tuple, value: dict) -> None:
        target = self.state
        for part in key[:-1]:
            target = target.setdefault(part, {})
        target[key[-1]] = value
        atomic_write_text(self.state_path, json.dumps(self.state, indent=1))

    def _round(self, r: int) -> dict:
        return self.state["rounds"].get(str(r), {})

    def _dir(self, r: int) -> Path:
        return self.out / f"round_{r}"

    # ---- the run -----------------------------------------------------------------------------
    def run(self) -> str:
        """Run what is left; "finished", or "waiting" (oracle none: labels asked for).

        Rank 0 decides which phases are left (its state.json); the others follow its decisions."""
        main = self.dist.is_main
        self.dist.barrier()  # every rank has looked at output_dir before rank 0 writes there
        if main:
            self.out.mkdir(parents=True, exist_ok=True)
            atomic_write_text(self.state_path, json.dumps(self.state, indent=1))  # a run exists from here on
            if "setup" not in self.state:
                self._phase(0, "setup", self._setup, ("setup",))
        for r in range(1, self.cfg.rounds + 1):
            if main:
                self._dir(r).mkdir(exist_ok=True)
            for phase in PHASES:
                if not self.dist.from_main(phase not in self._round(r)):
                    continue
                key = ("rounds", str(r), phase)
                if phase == "train":  # every rank trains its members
                    self._phase(r, phase, self._train, key)
                    continue
                outcome = "done"
                if main:
                    try:
                        self._phase(r, phase, getattr(self, f"_{phase}"), key)
                    except WaitingForLabels as wait:
                        self.log(str(wait))
                        outcome = "waiting"
                if self.dist.from_main(outcome) == "waiting":
                    return "waiting"
        if not main:
            return "finished"
        self._report()
        self.log(f"done: {self.cfg.rounds} rounds; report in {self.out / 'report.md'}")
        return "finished"

    def _phase(self, r: int, phase: str, work: Callable[[int], Optional[dict]], key: tuple) -> None:
        """Run `work` (on the ranks that run it; it returns the numbers on rank 0, which records them)."""
        if self.dist.is_main:
            self.on_phase(r, phase, "start")
        start = time.perf_counter()
        result = work(r)
        if not self.dist.is_main:
            return
        result["wall_s"] = round(time.perf_counter() - start, 3)
        self.on_phase(r, phase, "done")
        self._record(key, result)
        self.log(f"round {r} {phase}: " + ", ".join(f"{k} {_short(v)}" for k, v in result.items()
                                                      if not isinstance(v, (list, dict))))
        if phase == "append":
            self._report()

    def _report(self) -> None:
        from lpmace.active.report import write_reports

        write_reports(self.out, self.state)

    # ---- phases ------------------------------------------------------------------------------
    def _labelled(self, frames, what: str):
        from lpmace.active.oracle import label

        if self.oracle is None:
            raise InputError(f"generating {what} needs an oracle (oracle: none): give data_file and test_file")
        return [with_labels(f, e, F) for f, (e, F) in zip(frames, label(self.oracle, frames, self.cfg.oracle, what))]

    def _setup(self, _r: int) -> dict:
        cfg, s = self.cfg, self.cfg.structures
        if cfg.data_file is not None:
            initial = read_labelled(Path(cfg.data_file))
        else:
            initial = self._labelled(rattled_crystals(s, s.count, s.rattle, _rng(cfg.seed, 0)), "the starting data")
        if cfg.test_file is not None:
            test = read_labelled(Path(cfg.test_file))
        else:
            rattle = s.rattle if s.test_rattle is None else s.test_rattle
            test = self._labelled(rattled_crystals(s, s.test_count, rattle, _rng(cfg.seed, 1)), "the test set")
        write_frames(self.out / "initial.xyz", initial)
        write_frames(self.out / "test.xyz", test)
        write_frames(self.out / "dataset.xyz", initial)
        return {"initial": len(initial), "test": len(test)}

    def _member_paths(self, r: int) -> list[Path]:
        return [self._dir(r) / f"member_{m}" / "model.safetensors" for m in range(self.cfg.committee)]

    def _committee(self, r: int):
        from lpmace.committee import Committee

        return Committee(self._member_paths(r), device=self.device, precision=self.cfg.sample.precision,
                         backend=self.cfg.backend)

    def _train(self, r: int) -> Optional[dict]:
        """Train this rank's members; on rank 0, once every rank is done, the committee's test errors."""
        from lpmace.train import Trainer

        cfg, ranks = self.cfg, self.dist.world_size
        where = f" on rank {self.dist.rank}" if ranks > 1 else ""
        for m in members_of_rank(cfg.committee, self.dist.rank, ranks):
            model_file = self._member_paths(r)[m]
            if model_file.exists():
                continue  # trained before a kill
            warm = str(self._member_paths(r - 1)[m]) if r > 1 else None
            member_cfg = member_train_config(cfg, train_file=str(self.out / "dataset.xyz"),
                                             output_dir=str(model_file.parent), seed=cfg.seed + m, warm_start=warm,
                                             device=self.device)
            resume = (model_file.parent / "checkpoints" / "last.pt").exists()
            start = time.perf_counter()
            trainer = Trainer(member_cfg, resume=resume, log=lambda message: None, warn=self.member_log,
                              data_parallel=False)
            trainer.run()
            self.member_log(f"round {r}: member {m} trained{where} ({member_cfg.epochs} epochs"
                            f"{', warm start' if warm else ''}) in {time.perf_counter() - start:.1f} s")
        self.dist.barrier()  # every member's model is written
        if not self.dist.is_main:
            return None
        test = self._test_metrics(r)
        train = {**TRAIN_DEFAULTS, **cfg.train}
        return {"train_size": len(read_frames(self.out / "dataset.xyz")), "precision": train.get("precision", "fp32"),
                "epochs": cfg.retrain_epochs if r > 1 else train["epochs"], "ranks": ranks, **test}

    def _test_metrics(self, r: int) -> dict:
        """The committee's errors against the oracle's labels on the held-out test set."""
        from lpmace.data import graph_from_configuration, read_configurations
        from lpmace.data.batching import collate

        committee = self._committee(r)
        configs = read_configurations(self.out / "test.xyz", energy_key=ENERGY_KEY, forces_key=FORCES_KEY,
                                      stress_key=None)
        force_errors, energy_errors, uncertainty = [], [], []
        for start in range(0, len(configs), 16):
            graph = collate([graph_from_configuration(c, committee.r_max) for c in configs[start:start + 16]])
            out = committee.evaluate(graph)
            force_errors.append((out["forces"] - graph.forces).numpy())
            atoms = (graph.ptr[1:] - graph.ptr[:-1]).double()
            energy_errors.append(((out["energy"] - graph.energy) / atoms).numpy())
            uncertainty += [frame_uncertainty(out["forces_std"][graph.batch == g].numpy()) for g in range(graph.num_graphs)]
        rms = lambda x: float(np.sqrt(np.mean(np.concatenate(x) ** 2)))  # noqa: E731
        return {"test_force_rmse_meV_per_A": 1000 * rms(force_errors),
                "test_energy_rmse_meV_per_atom": 1000 * rms(energy_errors),
                "test_mean_uncertainty_eV_per_A": float(np.mean(uncertainty))}

    def _sample_engine(self) -> str:
        engine = self.cfg.sample.engine
        if engine == "auto":
            import torch

            return "torch" if torch.device(self.device).type == "cuda" else "ase"
        return engine

    def _sample(self, r: int) -> dict:
        import ase

        cfg, s = self.cfg, self.cfg.sample
        committee = self._committee(r)
        dataset = read_frames(self.out / "dataset.xyz")
        rng = _rng(cfg.seed, r, 1)
        starts, temperatures, seeds = [], [], []
        for temperature in s.temperatures_K:
            chosen = rng.choice(len(dataset), size=min(s.starts, len(dataset)), replace=False)
            for start in chosen:
                starts.append(ase.Atoms(dataset[start].numbers, dataset[start].positions, cell=dataset[start].cell,
                                        pbc=dataset[start].pbc))
                temperatures.append(temperature)
                seeds.append(int(rng.integers(2**31)))
        frames = []

        def keep(traj, step, atoms, forces, forces_std, energy_std_per_atom):
            if step == 0:
                return  # the start structure is already in the dataset
            frame = ase.Atoms(atoms.numbers, atoms.positions, cell=atoms.cell, pbc=atoms.pbc)
            frame.info.update(al_round=r, al_traj=traj, al_step=step, al_time_fs=step * s.dt_fs,
                              al_temperature_K=temperatures[traj], al_uncertainty=frame_uncertainty(forces_std),
                              al_energy_std_per_atom=energy_std_per_atom)
            frame.arrays["al_forces"] = np.array(forces, dtype=np.float64)
            frame.arrays["al_forces_std"] = np.array(forces_std, dtype=np.float64)
            frames.append(frame)

        engine = self._sample_engine()
        sample = getattr(self, f"_sample_{engine}")
        counts = sample(committee, starts, temperatures, seeds, keep)
        frames.sort(key=lambda f: (f.info["al_traj"], f.info["al_step"]))
        if not frames:
            raise InputError(f"round {r}: the committee's MD kept no frame (every trajectory unstable at once); "
                             "lower sample.dt_fs or the temperatures")
        write_frames(self._dir(r) / "sampled.xyz", frames)
        u = np.array([f.info["al_uncertainty"] for f in frames])
        return {"frames": len(frames), **counts, "mean_uncertainty_eV_per_A": float(u.mean()),
                "precision": s.precision, "engine": engine}

    def _sample_ase(self, committee, starts, temperatures, seeds, keep) -> dict:
        """One trajectory after another through ASE (trajectory t with seeds[t])."""
        from lpmace.md import run_md

        s, unstable, steps = self.cfg.sample, 0, 0
        for traj, (atoms, temperature, seed) in enumerate(zip(starts, temperatures, seeds)):
            def on_sample(step, atoms, traj=traj):
                res = committee.results
                keep(traj, step, atoms, res["forces"], res["forces_std"], res["energy_std_per_atom"])

            result = run_md(atoms, committee, ensemble=s.ensemble, steps=s.steps, dt_fs=s.dt_fs,
                            temperature_K=temperature, friction_per_fs=s.friction_per_fs,
                            seed=seed, interval=s.interval, on_sample=on_sample)
            unstable += not result.stable
            steps += result.steps_done
        return {"md_steps": steps, "unstable_trajectories": unstable}

    def _sample_torch(self, committee, starts, temperatures, seeds, keep) -> dict:
        """Every trajectory at once on the torch engine (system t starts from seeds[0] + t)."""
        from lpmace.dynamics import run_dynamics

        s = self.cfg.sample

        def on_sample(traj, step, atoms):
            keep(traj, step, atoms, atoms.get_forces(apply_constraint=False), atoms.arrays["forces_std"],
                 atoms.info["energy_std_per_atom"])

        result = run_dynamics(committee, starts, ensemble=s.ensemble, steps=s.steps, dt_fs=s.dt_fs,
                              temperature_K=[float(t) for t in temperatures], friction_per_fs=s.friction_per_fs,
                              seed=seeds[0], interval=s.interval, device=self.device, backend=self.cfg.backend,
                              on_sample=on_sample)
        return {"md_steps": sum(r.steps_done for r in result.systems),
                "unstable_trajectories": sum(not r.stable for r in result.systems),
                "ms_per_step": round(result.ms_per_step, 3), "steady_ms_per_step": result.steady_ms_per_step,
                "model_ms_per_step": round(result.model_ms_per_step, 3),
                "neighbour_list_builds": result.neighbour_list_builds}

    def _select(self, r: int) -> dict:
        cfg, c = self.cfg, self.cfg.select
        frames = read_frames(self._dir(r) / "sampled.xyz")
        info = lambda key: np.array([f.info[key] for f in frames])  # noqa: E731
        chosen = select(info("al_uncertainty"), info("al_traj"), info("al_time_fs"), k=c.k, threshold=c.threshold,
                        min_separation_fs=c.min_separation_fs, max_uncertainty=c.max_uncertainty)
        drawn = random_frames(len(frames), c.random, _rng(cfg.seed, r, 2), exclude=chosen)
        atomic_write_text(self._dir(r) / "selection.json", json.dumps({"selected": chosen, "random": drawn}))
        return {"selected": len(chosen), "random": len(drawn), "selected_indices": chosen, "random_indices": drawn}

    def _label(self, r: int) -> dict:
        folder, sel = self._dir(r), self._round(r)["select"]
        frames = read_frames(folder / "sampled.xyz")
        wanted = [frames[i] for i in sel["selected_indices"] + sel["random_indices"]]
        for i, frame in enumerate(wanted):
            frame.info["al_role"] = "selected" if i < len(sel["selected_indices"]) else "random"
        if self.oracle is not None:
            done = folder / "labelled.xyz"  # whole, from a run stopped before it recorded the phase
            labelled = read_labelled(done) if done.exists() else None
            if labelled is None or not same_frames(labelled, wanted):
                labelled = self._labelled(wanted, f"round {r}")
                write_frames(done, labelled)
            _carry_info(labelled, wanted)
        else:
            labelled = self._external_labels(r, wanted)
        return self._label_metrics(wanted, labelled, len(sel["selected_indices"]))

    def _external_labels(self, r: int, wanted) -> list:
        folder = self._dir(r)
        given = folder / "labelled.xyz"
        if not given.exists():
            if not (folder / "to_label.xyz").exists():
                write_frames(folder / "to_label.xyz", wanted)
            raise WaitingForLabels(
                f"round {r}: {len(wanted)} frames to label in {folder / 'to_label.xyz'}; write them, in the same "
                f"order, with energies and forces ({ENERGY_KEY}/{FORCES_KEY} or ASE's energy/forces) to {given}, "
                "then run `lpmace active CONFIG --resume`")
        labelled = read_labelled(given)
        if not same_frames(labelled, wanted):
            raise InputError(f"{given}: its {len(labelled)} frames are not the {len(wanted)} frames of "
                             f"{folder / 'to_label.xyz'} in the same order")
        _carry_info(labelled, wanted)
        return labelled

    def _label_metrics(self, wanted, labelled, n_selected: int) -> dict:
        """True force errors of the committee mean (stored at sampling) against the labels."""
        errors = [1000 * float(np.sqrt(np.mean((w.arrays["al_forces"] - lab.arrays[FORCES_KEY]) ** 2)))
                  for w, lab in zip(wanted, labelled)]
        u = [float(w.info["al_uncertainty"]) for w in wanted]
        sel, rnd = errors[:n_selected], errors[n_selected:]
        rms = lambda x: float(np.sqrt(np.mean(np.square(x)))) if x else None  # noqa: E731
        return {"selected_force_rmse_meV_per_A": rms(sel), "random_force_rmse_meV_per_A": rms(rnd),
                "spearman_uncertainty_error": spearman(np.array(u), np.array(errors)),
                "frame_uncertainty_eV_per_A": u, "frame_force_rmse_meV_per_A": errors,
                "frame_role": ["selected"] * len(sel) + ["random"] * len(rnd)}

    def _append(self, r: int) -> dict:
        dataset = read_labelled(self.out / "initial.xyz")
        for q in range(1, r + 1):
            n = len(self._round(q)["select"]["selected_indices"])
            for frame in read_labelled(self._dir(q) / "labelled.xyz")[:n]:
                for key in [k for k in frame.arrays if k.startswith("al_")]:
                    del frame.arrays[key]  # the committee's forces at sampling: not a label
                dataset.append(frame)
        write_frames(self.out / "dataset.xyz", dataset)
        return {"dataset_size": len(dataset), "added": len(self._round(r)["select"]["selected_indices"])}


def _with_new_keys(then: dict, now: dict) -> dict:
    """`then` (a run's config) with the keys it lacks taken from `now`, in nested sections too: a key
    added to lpmace after the run began (sample.engine, 2026-12-02) is not a change of config."""
    merged = dict(then)
    for key, value in now.items():
        if key not in merged:
            merged[key] = value
        elif isinstance(value, dict) and isinstance(merged[key], dict):
            merged[key] = _with_new_keys(merged[key], value)
    return merged


def _short(value) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)
