"""Data-parallel training: the sharded step equals the single-process step; torchrun with 2 gloo ranks
follows the 1-process trajectory; checkpoints resume across different numbers of ranks."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

from lpmace import datasets
from lpmace.data import collate, graph_from_configuration, read_configurations
from lpmace.train.distributed import batch_counts, shard
from lpmace.train.loss import weighted_loss


def test_shard_balances_atoms_and_keeps_every_structure_once():
    atoms = [27, 9, 30, 9, 12, 27]
    parts = shard(atoms, 2)
    assert sorted(i for p in parts for i in p) == list(range(6))
    loads = [sum(atoms[i] for i in p) for p in parts]
    assert abs(loads[0] - loads[1]) <= max(atoms)  # greedy, largest first
    assert loads == [60, 54]  # by hand: 30→0, 27→1, 27→1, 12→0, 9→0, 9→0
    assert shard(atoms, 2) == parts  # deterministic
    assert shard([5], 3) == [[0], [], []]


def test_rank_losses_add_up_to_the_global_loss_and_gradients(make_model):
    configs = read_configurations(datasets.path("3bpa/train_300K.xyz"), index=":5")
    model = make_model()
    graphs = [graph_from_configuration(c, model.config.r_max) for c in configs]
    weights = {"energy_weight": 1.0, "forces_weight": 1000.0, "stress_weight": 1.0}

    def loss_and_grads(graph, counts=None):
        out = model(graph, precision="fp64", training=True)
        loss = weighted_loss(out, graph, counts=counts, **weights)
        return loss, torch.autograd.grad(loss, list(model.parameters()), allow_unused=True)

    whole, whole_grads = loss_and_grads(collate(graphs))
    counts = batch_counts(graphs)
    assert counts == {"energy": 5, "forces": 3 * 135, "stress": 0}
    total, total_grads = 0.0, None
    for part in shard([g.num_atoms for g in graphs], 3):
        if not part:
            continue
        loss, grads = loss_and_grads(collate([graphs[i] for i in part]), counts)
        total = total + loss
        total_grads = grads if total_grads is None else [
            None if a is None else a + b for a, b in zip(total_grads, grads)]
    torch.testing.assert_close(total, whole, rtol=1e-12, atol=0)
    for a, b in zip(total_grads, whole_grads):
        if b is not None:
            torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-14)


# ---- torchrun end to end ---------------------------------------------------------------------------

TINY = ["model.channels=8", "model.max_L=1", "model.correlation=2", "model.max_ell=2", "model.radial_mlp=[8]",
        "model.num_bessel=4", "model.r_max=4.0", "batch_size=3", "valid_fraction=0.25", "precision=fp64",
        "test_files=[]", "progress=false", "device=cpu", "valid_batch_size=4"]


@pytest.fixture(scope="module")
def small_train(tmp_path_factory):
    import ase.io

    path = tmp_path_factory.mktemp("data") / "train.xyz"
    frames = ase.io.read(datasets.path("3bpa/train_300K.xyz"), index=":10")
    ase.io.write(path, frames, format="extxyz")
    return path


def _train(out, data, epochs, ranks, resume=False, extra=()):
    args = ["-m", "lpmace", "train", os.devnull, f"train_file={data}", f"epochs={epochs}", f"output_dir={out}",
            *TINY, *extra] + (["--resume"] if resume else [])
    if ranks:
        # --standalone: torchrun's rendezvous store binds port 0 itself and the ranks join that store, so no
        # port is picked here and released before torchrun binds it (another process could take it).
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(ranks), *args]
    else:
        cmd = [sys.executable, *args]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    env.pop("TORCH_DISABLE_SHARE_RDZV_TCP_STORE", None)  # the ranks must join torchrun's own store
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]


def _close(a_dir, b_dir, rtol=1e-8):
    a, b = load_file(a_dir / "model.safetensors"), load_file(b_dir / "model.safetensors")
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=rtol, atol=1e-10, msg=key)


@pytest.fixture(scope="module")
def single(tmp_path_factory, small_train):
    out = tmp_path_factory.mktemp("single")
    return out, _train(out, small_train, 2, 0)


def test_two_gloo_ranks_follow_the_single_process_trajectory(tmp_path, small_train, single):
    one_dir, one = single
    two = _train(tmp_path / "two", small_train, 2, 2)
    assert [r["step"] for r in two] == [r["step"] for r in one]
    for a, b in zip(one, two):
        assert b["train_loss"] == pytest.approx(a["train_loss"], rel=1e-9)
        assert b["valid_force_rmse_mev_per_A"] == pytest.approx(a["valid_force_rmse_mev_per_A"], rel=1e-8)
    _close(one_dir, tmp_path / "two")
    assert not list((tmp_path / "two").glob("*.tmp*"))  # rank 0 wrote atomically, nobody else wrote


@pytest.mark.parametrize("first, second", [(2, 0), (0, 2)])
def test_resume_with_a_different_number_of_ranks(tmp_path, small_train, single, first, second):
    one_dir, one = single
    out = tmp_path / "run"
    _train(out, small_train, 1, first)
    rows = _train(out, small_train, 2, second, resume=True)
    assert [r["epoch"] for r in rows] == [1, 2]
    assert rows[-1]["train_loss"] == pytest.approx(one[-1]["train_loss"], rel=1e-9)
    _close(one_dir, out)


def test_bf16_gradient_all_reduce_stays_close_to_fp32(tmp_path, small_train, single):
    _, one = single
    rows = _train(tmp_path / "bf16", small_train, 2, 2, extra=("allreduce_dtype=bf16",))
    for a, b in zip(one, rows):
        assert b["train_loss"] == pytest.approx(a["train_loss"], rel=1e-2)  # gradients rounded to 8 bits
        assert b["train_loss"] != a["train_loss"]  # ... and it does round them


@pytest.mark.gpu
def test_one_nccl_rank_follows_the_single_process_trajectory(tmp_path, small_train):
    """torchrun on one GPU joins an NCCL process group (the path multi-GPU training takes) and trains
    exactly as a plain CUDA run does."""
    plain = _train(tmp_path / "plain", small_train, 2, 0, extra=("device=cuda",))
    nccl = _train(tmp_path / "nccl", small_train, 2, 1, extra=("device=cuda",))
    assert [r["step"] for r in nccl] == [r["step"] for r in plain]
    for a, b in zip(plain, nccl):
        assert b["train_loss"] == pytest.approx(a["train_loss"], rel=1e-9)
    _close(tmp_path / "plain", tmp_path / "nccl")
