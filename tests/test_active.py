"""`lpmace active`: selection, resume after a kill in each phase, oracle errors, config errors, members
trained in parallel under torchrun (2 gloo ranks), and the CPU target (examples/active_cu_emt.yaml: the
test force RMSE falls, selected frames beat random ones)."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from ase.calculators.emt import EMT

from lpmace.active import ActiveLoop, load_active_config
from lpmace.active.loop import members_of_rank
from lpmace.active.frames import read_frames, with_labels, write_frames
from lpmace.active.selection import random_frames, select, spearman
from lpmace.cli import main
from lpmace.errors import InputError

EXAMPLE = Path(__file__).parents[1] / "examples" / "active_cu_emt.yaml"
SMALL = {  # a loop of a few seconds: 2 rounds of 2 members
    "seed": 3, "rounds": 2, "committee": 2, "oracle": "ase.calculators.emt:EMT",
    "structures": {"repeat": 1, "count": 6, "test_count": 4, "rattle": 0.08},
    "train": {"epochs": 4, "batch_size": 3,
              "model": {"channels": 4, "max_L": 0, "correlation": 2, "max_ell": 1, "radial_mlp": [4],
                        "num_bessel": 4, "r_max": 4.0, "num_interactions": 2, "readout_mlp": 4}},
    "retrain_epochs": 2,
    "sample": {"temperatures_K": [900], "starts": 2, "steps": 20, "dt_fs": 4.0, "interval": 2},
    "select": {"k": 3, "min_separation_fs": 8, "random": 3},
    "device": "cpu",
}


class RaisingOracle(EMT):
    """EMT that fails on the loop's sampled frames (they carry al_role), not on the starting data."""

    def calculate(self, atoms=None, properties=("energy",), system_changes=()):
        if atoms is not None and "al_role" in atoms.info:
            raise RuntimeError("SCF did not converge")
        super().calculate(atoms, properties, system_changes)


def write_config(path: Path, out: Path, **changes) -> Path:
    data = {**SMALL, "output_dir": str(out), **changes}
    path.write_text(yaml.safe_dump(data))
    return path


def run_loop(config: Path, *, resume=False, on_phase=None, log=lambda m: None) -> str:
    cfg, oracle = load_active_config(str(config))
    return ActiveLoop(cfg, oracle, resume=resume, log=log, on_phase=on_phase).run()


# ---- selection ------------------------------------------------------------------------------------
def test_selection_takes_the_most_uncertain_frames_apart_in_time():
    u = np.array([0.9, 0.8, 0.1, 0.7, 0.85, 0.05])
    traj = np.array([0, 0, 0, 1, 1, 1])
    time_fs = np.array([10.0, 20.0, 30.0, 10.0, 60.0, 70.0])
    # 0.9 (traj 0, 10 fs); 0.85 (traj 1, 60 fs); 0.8 is 10 fs from the first: skipped; 0.7 (traj 1, 10 fs)
    assert select(u, traj, time_fs, k=3, threshold=0.0, min_separation_fs=15) == [0, 4, 3]
    assert select(u, traj, time_fs, k=5, threshold=0.75, min_separation_fs=0) == [0, 4, 1]
    assert select(u, traj, time_fs, k=5, threshold=0.95, min_separation_fs=0) == []
    # above max_uncertainty (the frames a blow-up makes look most uncertain) nothing is taken
    assert select(u, traj, time_fs, k=3, threshold=0.0, min_separation_fs=15, max_uncertainty=0.86) == [4, 1, 3]
    assert select(u, traj, time_fs, k=3, threshold=0.5, min_separation_fs=0, max_uncertainty=0.6) == []


def test_selection_and_random_draw_are_deterministic_for_a_seed():
    rng = np.random.default_rng(5)
    u, traj, t = rng.random(200), rng.integers(0, 4, 200), rng.random(200) * 100
    picks = [select(u, traj, t, k=10, threshold=0.2, min_separation_fs=5) for _ in range(2)]
    assert picks[0] == picks[1] and len(picks[0]) == 10
    draws = [random_frames(200, 8, np.random.default_rng([1, 2, 2])) for _ in range(2)]
    assert draws[0] == draws[1] and len(set(draws[0])) == 8
    assert random_frames(200, 8, np.random.default_rng([2, 2, 2])) != draws[0]
    chosen = picks[0]
    for seed in range(20):  # the comparison frames are never the selected ones
        drawn = random_frames(200, 50, np.random.default_rng(seed), exclude=chosen)
        assert len(set(drawn)) == 50 and not set(drawn) & set(chosen)
    assert random_frames(12, 8, np.random.default_rng(0), exclude=range(6)) == list(range(6, 12))


def test_spearman_is_rank_correlation():
    x = np.array([1.0, 2.0, 3.0, 4.0])
    assert spearman(x, x ** 3) == pytest.approx(1.0)  # monotone, not linear
    assert spearman(x, -x) == pytest.approx(-1.0)


# ---- resume ---------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def sequential(tmp_path_factory) -> Path:
    """The run folder of SMALL run in this process, members one after another."""
    folder = tmp_path_factory.mktemp("whole")
    run_loop(write_config(folder / "c.yaml", folder / "run"))
    return folder / "run"


@pytest.fixture(scope="module")
def uninterrupted(sequential):
    return (sequential / "dataset.xyz").read_text()


class Killed(Exception):
    pass


@pytest.mark.parametrize("at", [(0, "setup"), (1, "train"), (1, "sample"), (1, "select"), (1, "label"),
                                (1, "append"), (2, "train"), (2, "append")])
def test_a_kill_after_any_phase_resumes_to_the_same_dataset(tmp_path, uninterrupted, at):
    config = write_config(tmp_path / "c.yaml", tmp_path / "run")

    def kill(r, phase, moment):  # its files are written, state.json does not know yet
        if (r, phase) == at and moment == "done":
            raise Killed

    with pytest.raises(Killed):
        run_loop(config, on_phase=kill)
    with pytest.raises(InputError, match="--resume"):
        run_loop(config)  # a second fresh start is refused
    assert run_loop(config, resume=True) == "finished"
    assert (tmp_path / "run" / "dataset.xyz").read_text() == uninterrupted
    state = json.loads((tmp_path / "run" / "state.json").read_text())
    assert [state["rounds"][r]["append"]["dataset_size"] for r in ("1", "2")] == [9, 12]


def test_members_share_their_statistics_so_one_compiled_step_serves_them_all(sequential):
    """Members differ in their weights but not in the data's statistics (one validation split), so the
    digest naming a compiled step (`lpmace.precompiled.digest`) is the same for every member."""
    from lpmace import precompiled
    from lpmace.compile import _state
    from lpmace.io import load

    members = [load(sequential / "round_1" / f"member_{m}" / "model.safetensors") for m in (0, 1)]
    assert members[0].config == members[1].config
    weights = [dict(m.named_parameters()) for m in members]
    assert any(not torch.equal(weights[0][k], weights[1][k]) for k in weights[0])  # different seeds
    key = ("fp32", True, False, True, "cpu")
    digests = {precompiled.digest(m, _state(m), key, torch.device("cpu")) for m in members}
    assert len(digests) == 1


def test_the_torch_engine_samples_every_trajectory_with_the_committees_spread(tmp_path):
    """sample.engine torch: all trajectories in one run; each frame's forces and spread are the
    committee's at its positions, and a sample phase run again writes the same frames."""
    from lpmace.committee import Committee
    from lpmace.data.batching import graph_from_atoms

    config = write_config(tmp_path / "c.yaml", tmp_path / "run", rounds=1,
                          sample={**SMALL["sample"], "engine": "torch", "temperatures_K": [600, 900]})

    def kill(r, phase, moment):
        if (r, phase, moment) == (1, "sample", "done"):
            raise Killed

    with pytest.raises(Killed):
        run_loop(config, on_phase=kill)
    first = (tmp_path / "run" / "round_1" / "sampled.xyz").read_text()
    assert run_loop(config, resume=True) == "finished"
    assert (tmp_path / "run" / "round_1" / "sampled.xyz").read_text() == first  # deterministic for the seed
    sample = json.loads((tmp_path / "run" / "state.json").read_text())["rounds"]["1"]["sample"]
    assert sample["engine"] == "torch" and sample["md_steps"] == 4 * 20 and sample["neighbour_list_builds"] >= 1
    frames = read_frames(tmp_path / "run" / "round_1" / "sampled.xyz")
    assert len(frames) == 4 * 10 and sorted({f.info["al_traj"] for f in frames}) == [0, 1, 2, 3]
    assert sorted({f.info["al_temperature_K"] for f in frames}) == [600, 900]
    committee = Committee(sorted((tmp_path / "run" / "round_1").glob("member_*/model.safetensors")), precision="fp32")
    for frame in frames[::7]:
        out = committee.evaluate(graph_from_atoms(frame, committee.r_max))
        np.testing.assert_allclose(frame.arrays["al_forces"], out["forces"].numpy(), rtol=0, atol=2e-5)
        np.testing.assert_allclose(frame.arrays["al_forces_std"], out["forces_std"].numpy(), rtol=0, atol=2e-5)
        assert frame.info["al_uncertainty"] == pytest.approx(float(out["forces_std"].max()), abs=2e-5)


@pytest.mark.parametrize("when", ["a member's first epoch checkpoint", "round 1's train phase recorded"])
def test_a_real_kill_9_resumes_to_the_same_dataset(tmp_path, uninterrupted, when):
    config = write_config(tmp_path / "c.yaml", tmp_path / "run")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(Path(__file__).parents[1] / "src")}
    command = [sys.executable, "-m", "lpmace", "active", str(config)]
    process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    state, checkpoint = tmp_path / "run" / "state.json", tmp_path / "run" / "round_1" / "member_0" / "checkpoints"
    deadline = time.time() + 120
    while time.time() < deadline and process.poll() is None:
        if (checkpoint.exists() if when.startswith("a member") else state.exists() and '"1"' in state.read_text()):
            break
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.wait()
    done = subprocess.run(command + ["--resume"], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "run" / "dataset.xyz").read_text() == uninterrupted


# ---- oracles --------------------------------------------------------------------------------------
def test_an_oracle_import_path_that_does_not_exist_is_one_line_before_any_work(tmp_path, capsys):
    config = write_config(tmp_path / "c.yaml", tmp_path / "run", oracle="ase.calculators.nowhere:DFT")
    assert main(["active", str(config)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "ase.calculators.nowhere" in err
    assert not (tmp_path / "run").exists()


def test_an_oracle_that_raises_is_one_line_and_leaves_the_round_intact(tmp_path, capsys, uninterrupted):
    config = write_config(tmp_path / "c.yaml", tmp_path / "run", oracle="test_active:RaisingOracle")
    assert main(["active", str(config)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "SCF did not converge" in err and "round 1" in err
    state = json.loads((tmp_path / "run" / "state.json").read_text())
    assert set(state["rounds"]["1"]) == {"train", "sample", "select"}  # label not recorded
    assert not (tmp_path / "run" / "round_1" / "labelled.xyz").exists()
    write_config(config, tmp_path / "run")  # the oracle fixed: the run continues where it stopped
    assert main(["active", str(config), "--resume"]) == 0
    assert (tmp_path / "run" / "dataset.xyz").read_text() == uninterrupted


def test_oracle_none_asks_for_labels_and_resumes_with_them(tmp_path, uninterrupted):
    whole = tmp_path / "labelled_elsewhere"
    run_loop(write_config(tmp_path / "a.yaml", whole, rounds=1))
    config = write_config(tmp_path / "c.yaml", tmp_path / "run", oracle="none", rounds=1,
                          data_file=str(whole / "initial.xyz"), test_file=str(whole / "test.xyz"))
    assert run_loop(config) == "waiting"
    to_label = read_frames(tmp_path / "run" / "round_1" / "to_label.xyz")
    labelled = []
    for atoms in to_label:
        atoms.calc = EMT()
        labelled.append(with_labels(atoms, atoms.get_potential_energy(), atoms.get_forces()))
    write_frames(tmp_path / "run" / "round_1" / "labelled.xyz", labelled)
    assert run_loop(config, resume=True) == "finished"
    frames = (tmp_path / "run" / "dataset.xyz").read_text()
    assert frames == (whole / "dataset.xyz").read_text()


# ---- config ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("changes, named", [
    ({"rounds": 0}, "rounds"), ({"comittee": 3}, "comittee"), ({"committee": 1}, "committee"),
    ({"sample": {"dt_fs": -1}}, "sample.dt_fs"), ({"sample": {"precision": "fp7"}}, "sample.precision"),
    ({"select": {"k": 2.5}}, "select.k"), ({"select": {"max_uncertainty": 0}}, "select.max_uncertainty"), ({"train": {"lr": -1}}, "lr"), ({"train": {"epoks": 3}}, "train.epoks"),
    ({"train": {"train_file": "x.xyz"}}, "train.train_file"), ({"structures": {"crystal": "fcx"}}, "structures.crystal"),
    ({"oracle": "EMT"}, "oracle"), ({"oracle": "none"}, "data_file"),
    ({"sample": {"engine": "gpu"}}, "sample.engine"), ({"train": {"split_seed": 1}}, "train.split_seed"),
])
def test_a_bad_config_key_or_value_is_one_line_naming_it_before_any_work(tmp_path, capsys, changes, named):
    config = write_config(tmp_path / "c.yaml", tmp_path / "run", **changes)
    assert main(["active", str(config)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and named in err and str(config) in err, err
    assert not (tmp_path / "run").exists()


# ---- the CPU target -------------------------------------------------------------------------------
@pytest.mark.slow
def test_the_cu_emt_example_learns_and_selects_better_than_random(tmp_path):
    start = time.perf_counter()
    assert main(["active", str(EXAMPLE), "--out", str(tmp_path / "run")]) == 0
    wall = time.perf_counter() - start
    report = json.loads((tmp_path / "run" / "report.json").read_text())
    rows = report["rounds"]
    assert [r["round"] for r in rows] == [1, 2, 3]
    assert rows[2]["test_force_rmse_meV_per_A"] < rows[0]["test_force_rmse_meV_per_A"]
    for row in rows:
        assert row["selected_force_rmse_meV_per_A"] > row["random_force_rmse_meV_per_A"], row
    assert [r["train_size"] for r in rows] == [8, 14, 20]
    assert all((tmp_path / "run" / name).stat().st_size > 0 for name in ("report.md", "report.png", "dataset.xyz"))
    assert wall < 300


# ---- members in parallel under torchrun -------------------------------------------------------------
def test_ranks_share_the_members_round_robin():
    assert members_of_rank(5, 0, 2) == [0, 2, 4] and members_of_rank(5, 1, 2) == [1, 3]
    assert members_of_rank(2, 2, 3) == []  # more ranks than members: the last ones wait
    for committee, ranks in ((3, 1), (4, 4), (7, 3), (2, 5)):
        members = sorted(m for rank in range(ranks) for m in members_of_rank(committee, rank, ranks))
        assert members == list(range(committee)), (committee, ranks)


def _active_command(config: Path, ranks: int, resume: bool = False) -> tuple[list, dict]:
    args = ["-m", "lpmace", "active", str(config)] + (["--resume"] if resume else [])
    # --standalone: torchrun's rendezvous store binds port 0 itself and the ranks join it, so no port is
    # picked here and released before torchrun binds it (tests/train/test_distributed.py does the same)
    launch = ["-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(ranks)] if ranks else []
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(Path(__file__).parents[1] / "src")}
    env.pop("TORCH_DISABLE_SHARE_RDZV_TCP_STORE", None)  # the ranks must join torchrun's own store
    return [sys.executable, *launch, *args], env


def _models_equal_bitwise(a: Path, b: Path) -> None:
    from safetensors.torch import load_file

    for r in (1, 2):
        for m in range(SMALL["committee"]):
            name = f"round_{r}/member_{m}/model.safetensors"
            x, y = load_file(a / name), load_file(b / name)
            assert x.keys() == y.keys()
            for key in x:  # the same seeded single-process training, one thread: the same bits
                assert torch.equal(x[key], y[key]), (name, key)


def test_two_gloo_ranks_train_the_sequential_committee(tmp_path, sequential):
    config = write_config(tmp_path / "c.yaml", tmp_path / "run")
    command, env = _active_command(config, 2)
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "member 1 trained on rank 1" in done.stdout + done.stderr
    assert (tmp_path / "run" / "dataset.xyz").read_text() == (sequential / "dataset.xyz").read_text()
    _models_equal_bitwise(sequential, tmp_path / "run")
    state = json.loads((tmp_path / "run" / "state.json").read_text())
    assert [state["rounds"][r]["train"]["ranks"] for r in ("1", "2")] == [2, 2]
    assert json.loads((tmp_path / "run" / "report.json").read_text())["rounds"][0]["ranks"] == 2
    assert not list((tmp_path / "run").rglob("*.tmp*"))


def _rank_pid(launcher: int, rank: int) -> int:
    """The pid of torchrun worker `rank` (a child of the launcher with RANK=rank in its environment)."""
    children = Path(f"/proc/{launcher}/task/{launcher}/children").read_text().split()
    for pid in children:
        environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
        if f"RANK={rank}".encode() in environ:
            return int(pid)
    raise AssertionError(f"no rank {rank} among {children}")


@pytest.mark.parametrize("kill, checkpoint, resume_ranks", [
    ("rank 1", "round_1/member_0/checkpoints", 0),  # torchrun ends the other rank; resumed without torchrun
    ("every process", "round_2/member_1/checkpoints", 2),  # mid warm start; resumed under torchrun
])
def test_a_kill_9_in_the_parallel_train_phase_resumes_to_the_same_dataset(tmp_path, sequential, kill,
                                                                          checkpoint, resume_ranks):
    config = write_config(tmp_path / "c.yaml", tmp_path / "run")
    command, env = _active_command(config, 2)
    process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                               start_new_session=True)
    try:
        deadline = time.time() + 300
        while time.time() < deadline and process.poll() is None and not (tmp_path / "run" / checkpoint).exists():
            time.sleep(0.05)
        assert process.poll() is None, "the run ended before the kill"
        if kill == "rank 1":
            os.kill(_rank_pid(process.pid, 1), signal.SIGKILL)
            assert process.wait(timeout=120) != 0  # torchrun stops rank 0 and fails
        else:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
    state = json.loads((tmp_path / "run" / "state.json").read_text())
    assert "train" not in state["rounds"].get(checkpoint.split("/")[0][len("round_"):], {})  # killed in it
    command, env = _active_command(config, resume_ranks, resume=True)
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert (tmp_path / "run" / "dataset.xyz").read_text() == (sequential / "dataset.xyz").read_text()
    _models_equal_bitwise(sequential, tmp_path / "run")


def test_labelled_frames_are_recognised_wrapped_into_the_cell_and_not_when_moved():
    from ase.build import bulk

    from lpmace.active.loop import same_frames

    frame = bulk("Cu", "fcc", a=3.6, cubic=True).repeat(2)
    frame.positions += np.random.default_rng(0).normal(0.0, 0.1, frame.positions.shape)
    outside = frame.copy()
    outside.positions += np.array([1, -2, 0]) @ frame.cell.array  # another image: the same structure
    wrapped = outside.copy()
    wrapped.wrap()
    assert same_frames([outside], [frame]) and same_frames([wrapped], [frame])
    moved = wrapped.copy()
    moved.positions[3] += [0.01, 0.0, 0.0]
    assert not same_frames([moved], [frame])
    other = wrapped.copy()
    other.numbers[0] = 28
    assert not same_frames([other], [frame])
    assert not same_frames([wrapped], [frame, frame])


def test_labels_written_before_a_kill_are_not_asked_for_again(tmp_path, uninterrupted):
    """A kill after labelled.xyz is written whole but before the phase is recorded: the resumed run
    uses those labels (an oracle that now fails on every sampled frame is never called for them)."""
    config = write_config(tmp_path / "c.yaml", tmp_path / "run", rounds=2)

    def kill(r, phase, moment):
        if (r, phase) == (1, "label") and moment == "done":
            raise Killed

    with pytest.raises(Killed):
        run_loop(config, on_phase=kill)
    state = json.loads((tmp_path / "run" / "state.json").read_text())
    assert "label" not in state["rounds"]["1"] and (tmp_path / "run" / "round_1" / "labelled.xyz").exists()
    write_config(config, tmp_path / "run", rounds=1, oracle="test_active:RaisingOracle")
    assert run_loop(config, resume=True) == "finished"  # round 1 ends without the oracle
    state = json.loads((tmp_path / "run" / "state.json").read_text())
    assert state["rounds"]["1"]["append"]["dataset_size"] == 9


def test_a_label_depends_on_its_frame_alone():
    """EMT keeps its neighbour list between calls: without a reset, a frame's label moved in its last
    digits with the frames labelled before it (a resumed run labels after another history)."""
    from ase.build import bulk

    from lpmace.active.oracle import label

    rng = np.random.default_rng(0)
    first = bulk("Cu", "fcc", a=3.61, cubic=True).repeat(2)
    first.positions += rng.normal(0, 0.1, first.positions.shape)
    frames = [first]
    for _ in range(6):
        frames.append(frames[-1].copy())
        frames[-1].positions += rng.normal(0, 0.02, first.positions.shape)
    after_others = label(EMT(), frames, "EMT", "test")
    for i, frame in enumerate(frames):
        alone = label(EMT(), [frame], "EMT", "test")[0]
        assert alone[0] == after_others[i][0] and np.array_equal(alone[1], after_others[i][1])


def test_a_run_begun_before_a_config_key_existed_resumes(tmp_path, sequential):
    """state.json of a run begun before sample.engine existed: its absence is not a change of config."""
    import shutil

    run = tmp_path / "run"
    shutil.copytree(sequential, run)
    state = json.loads((run / "state.json").read_text())
    del state["config"]["sample"]["engine"]
    (run / "state.json").write_text(json.dumps(state))
    config = write_config(tmp_path / "c.yaml", run)
    assert run_loop(config, resume=True) == "finished"
    changed = write_config(tmp_path / "d.yaml", run, sample={**SMALL["sample"], "steps": 30})
    with pytest.raises(InputError, match="differs from the run's in sample"):
        run_loop(changed, resume=True)
