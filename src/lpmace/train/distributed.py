"""Data-parallel training on torch.distributed: every rank holds the whole model and all the data, and
takes its share of each global batch.

The global batches are the single-process ones (the same seeded permutation, `batch_size` structures
each), so a run's trajectory does not depend on the number of ranks: each global batch is split
across ranks by atoms (`shard`: largest structure first to the rank with the fewest atoms), every
loss term is normalised by the global batch's counts (`batch_counts`), and the gradients (with the
loss value appended) are summed across ranks in one all-reduce of a flat buffer in the parameters'
dtype, float32 for the mixed policies (`GradientReducer`; with ``allreduce_dtype: bf16`` the buffer
travels in bfloat16, half the bytes, at the price of rounding the gradient sum; the logged loss is summed in the
parameters' dtype, float32 for the mixed policies). That keeps double
backward and loss scaling outside DDP's hooks: the step is the single-process step plus one
collective. Validation and test structures are split across ranks and their predictions gathered,
so every rank computes the same metrics. Rank 0 alone writes logs, checkpoints and models.

Launch with torchrun (it sets RANK, WORLD_SIZE, LOCAL_RANK; under SLURM, run torchrun in each task):

    torchrun --nproc_per_node 4 -m lpmace train config.yaml

NCCL on CUDA devices (one per local rank), gloo on CPUs. NCCL_NVLS_ENABLE=0 and
TORCH_SYMM_MEM_DISABLE_MULTICAST=1 are set unless already set: NVLink multicast is off on the
machines this was measured on.

Out of scope: one huge system across GPUs (domain decomposition). It would need a spatial partition
of the atoms with halo regions of `num_interactions × r_max` (MACE's receptive field), exchange of
halo node features after every interaction (forward) and of their gradients (backward, twice for
forces), and a force/virial reduction over the halo atoms; LAMMPS' ML-IAP/Kokkos interface provides
the halo exchange for MACE-style models.
"""

from __future__ import annotations

import dataclasses
import datetime
import os
from typing import Iterator, Optional, Sequence

import numpy as np
import torch

from lpmace.data import collate
from lpmace.data.graph import Graph

__all__ = ["DistributedContext", "GradientReducer", "ShardedLoader", "batch_counts", "shard"]


@dataclasses.dataclass(frozen=True)
class DistributedContext:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    joined: bool = False  # this context joined torchrun's group (and leaves it in `close`)

    @property
    def enabled(self) -> bool:
        return torch.distributed.is_available() and torch.distributed.is_initialized()

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @staticmethod
    def from_environment(device: str, timeout: Optional[datetime.timedelta] = None
                         ) -> tuple["DistributedContext", str]:
        """Join the process group torchrun describes (LOCAL_RANK set) and return (context, device);
        without torchrun: a single-process context and `device` unchanged. `timeout`: how long a
        collective (a barrier) may wait for the other ranks (None: torch's default)."""
        if "LOCAL_RANK" not in os.environ:
            return DistributedContext(), device
        local_rank = int(os.environ["LOCAL_RANK"])
        cuda = torch.device(device).type == "cuda"
        if cuda:
            os.environ.setdefault("NCCL_NVLS_ENABLE", "0")
            os.environ.setdefault("TORCH_SYMM_MEM_DISABLE_MULTICAST", "1")
            torch.cuda.set_device(local_rank)
            device = f"cuda:{local_rank}"
        if not torch.distributed.is_initialized():
            torch.distributed.init_process_group("nccl" if cuda else "gloo",
                                                 **({"timeout": timeout} if timeout is not None else {}))
        context = DistributedContext(torch.distributed.get_rank(), torch.distributed.get_world_size(), local_rank,
                                     joined=True)
        return context, device

    def close(self) -> None:
        """Leave the process group (at the end of a torchrun worker); a context that did not join it
        (a single-process one inside a torchrun worker) leaves it alone."""
        if self.joined and self.enabled:
            torch.distributed.destroy_process_group()

    def from_main(self, obj):
        """Rank 0's `obj` on every rank (every rank waits for rank 0 here)."""
        return self.gather(obj)[0]

    def barrier(self) -> None:
        if self.enabled and self.world_size > 1:
            torch.distributed.barrier()

    def broadcast_parameters(self, module: torch.nn.Module) -> None:
        """Make every rank start from rank 0's parameters (they are equal already when seeded alike)."""
        if self.enabled and self.world_size > 1:
            for tensor in module.state_dict().values():
                torch.distributed.broadcast(tensor, 0)

    def max(self, value: float, device: str) -> float:
        """The largest `value` over ranks (so that every rank takes the same decision)."""
        if not (self.enabled and self.world_size > 1):
            return value
        t = torch.tensor([value], dtype=torch.float64, device=device)
        torch.distributed.all_reduce(t, op=torch.distributed.ReduceOp.MAX)
        return float(t)

    def gather(self, obj) -> list:
        """[obj of rank 0, obj of rank 1, ...] on every rank."""
        if not (self.enabled and self.world_size > 1):
            return [obj]
        out = [None] * self.world_size
        torch.distributed.all_gather_object(out, obj)
        return out


def shard(atoms: Sequence[int], world_size: int) -> list[list[int]]:
    """Positions 0..len(atoms)-1 of a global batch split into `world_size` parts of nearly equal atom
    counts (largest structure first, to the part with the fewest atoms; ties to the lowest rank).
    Each part keeps the batch's order. Deterministic."""
    parts: list[list[int]] = [[] for _ in range(world_size)]
    load = [0] * world_size
    for i in sorted(range(len(atoms)), key=lambda k: (-atoms[k], k)):
        target = min(range(world_size), key=lambda r: (load[r], r))
        parts[target].append(i)
        load[target] += atoms[i]
    return [sorted(p) for p in parts]


def batch_counts(graphs: Sequence[Graph]) -> dict:
    """What each loss term of a global batch averages over: structures with an energy, force
    components, stress components (`weighted_loss`'s normalisers)."""
    energy = forces = stress = 0
    for g in graphs:
        if g.energy is not None:
            energy += int(g.has_energy.sum()) if g.has_energy is not None else g.num_graphs
        if g.forces is not None:
            flags = g.has_forces if g.has_forces is not None else torch.ones(g.num_graphs, dtype=torch.bool)
            forces += 3 * int((g.ptr[1:] - g.ptr[:-1])[flags].sum())
        if g.stress is not None:
            stress += 9 * (int(g.has_stress.sum()) if g.has_stress is not None else g.num_graphs)
    return {"energy": energy, "forces": forces, "stress": stress}


class ShardedLoader:
    """This rank's part of each global batch: yields (graph or None when the part is empty, global counts).

    Epoch k shuffles with seed ``seed + k`` (`lpmace.data.batches`' permutation), whatever the
    number of ranks; `epoch` can be set to continue a resumed run.
    """

    def __init__(self, graphs: Sequence[Graph], batch_size: int, *, seed: int, rank: int = 0, world_size: int = 1):
        self.graphs, self.batch_size, self.seed = list(graphs), batch_size, seed
        self.rank, self.world_size = rank, world_size
        self.epoch = 0
        self.indices: list = []

    def __len__(self) -> int:
        return -(-len(self.graphs) // self.batch_size)

    def __iter__(self) -> Iterator[tuple[Optional[Graph], dict]]:
        order = np.random.default_rng(self.seed + self.epoch).permutation(len(self.graphs))
        self.epoch += 1
        for start in range(0, len(order), self.batch_size):
            chosen = [self.graphs[i] for i in order[start:start + self.batch_size]]
            mine = shard([g.num_atoms for g in chosen], self.world_size)[self.rank]
            self.indices = [int(order[start + i]) for i in mine]  # which graphs the batch holds, to name them
            yield (collate([chosen[i] for i in mine]) if mine else None), batch_counts(chosen)


class GradientReducer:
    """Sum the gradients and the loss over ranks in one all-reduce of a flat buffer.

    `dtype`: the buffer's dtype for the collective (None: the gradients' own; torch.bfloat16 halves
    the bytes and rounds the sum). Parameters without a gradient contribute zeros.
    """

    def __init__(self, context: DistributedContext, dtype: Optional[torch.dtype] = None):
        self.context, self.dtype = context, dtype

    def __call__(self, parameters: Sequence[torch.nn.Parameter], loss: torch.Tensor) -> torch.Tensor:
        """Sums gradients in place; returns the summed loss (a 0-d tensor)."""
        if not (self.context.enabled and self.context.world_size > 1):
            return loss.detach()
        parameters = [p for p in parameters if p.requires_grad]
        grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in parameters]
        # 1 where this rank has a gradient: a parameter no rank touched keeps grad None (as on one rank)
        present = torch.tensor([p.grad is not None for p in parameters], dtype=grads[0].dtype,
                               device=grads[0].device)
        loss = loss.detach().reshape(1).to(grads[0].dtype)
        if self.dtype is None:  # the loss and the flags ride along with the gradients: one collective
            flat = torch.cat([g.reshape(-1) for g in grads] + [present, loss])
            torch.distributed.all_reduce(flat)
            present, total = flat[-1 - len(parameters):-1], flat[-1]
        else:  # compressed gradients; the loss (for the log) summed on its own at full precision
            wire = torch.cat([g.reshape(-1) for g in grads]).to(self.dtype)
            torch.distributed.all_reduce(wire)
            flat = wire.to(grads[0].dtype)
            tail = torch.cat([present, loss])
            torch.distributed.all_reduce(tail)
            present, total = tail[:-1], tail[-1]
        offset = 0
        for p, g, used in zip(parameters, grads, present.tolist()):
            n = g.numel()
            p.grad = flat[offset:offset + n].view_as(p).clone() if used else None
            offset += n
        return total
