"""What every Triton kernel of lpmace needs around its launch: availability, the CPU interpreter
check, the launch device, accumulation dtypes and block sizes."""

from __future__ import annotations

import contextlib
import os

import torch

from lpmace.errors import InputError


def triton_available() -> bool:
    try:
        import triton  # noqa: F401
    except ImportError:
        return False
    return True


def accumulate_dtype(dtype: torch.dtype) -> torch.dtype:
    """float64 for float64 operands, else float32 (16-bit operands accumulate in float32)."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def next_power_of_2(x: int) -> int:
    return 1 << max(int(x) - 1, 0).bit_length()


def require_interpreter(device: torch.device) -> None:
    """Triton runs CPU tensors only in its interpreter, which must be chosen before triton is imported."""
    if device.type != "cuda" and os.environ.get("TRITON_INTERPRET") != "1":
        raise InputError("backend 'triton' on the CPU runs the Triton interpreter only when TRITON_INTERPRET=1 "
                         "is set before Python starts; use backend 'reference' on a CPU, or a CUDA device")


def launch_context(device: torch.device):
    """Triton launches on the current CUDA device: make it the tensors' device."""
    return torch.cuda.device(device) if device.type == "cuda" else contextlib.nullcontext()


def segments(index: torch.Tensor, count: int) -> tuple:
    """(ptr [count + 1], perm [n]): the entries of `index` (values in [0, count)) grouped by value, without
    a host sync: perm sorts them (stable), and value v owns perm[ptr[v]:ptr[v+1]]. ptr[v] = entries with
    value < v: searchsorted, not bincount, so no data-dependent shape (traceable, capturable)."""
    perm = torch.argsort(index, stable=True)
    values = torch.arange(count + 1, dtype=index.dtype, device=index.device)
    return torch.searchsorted(torch.index_select(index, 0, perm), values), perm


def element_grouping(species: torch.Tensor, elements: int) -> torch.Tensor:
    """The nodes grouped by element, without a host sync: [n + S + 1] int64, the nodes in element order
    (a stable sort) followed by node_ptr (element s owns order[node_ptr[s]:node_ptr[s+1]]). `species`
    must lie in [0, S) (the model's are checked when read): nodes outside it get no element, and the
    kernels leave their rows unwritten.

    A model forms it once per call (`lpmace.model.MACE.site_energies`) and hands it to every kernel that
    walks nodes by element (`element_blocks`): a training step's 14 launches then share one sort, where
    each used to sort for itself (on an H200 a one-block radix sort of ~27 µs for a W1 batch). (A
    counting sort, a cumulative sum of the one-hot species, was slower on the H200 even once per call:
    `medium` W1 step 8.13 against 7.57 ms, session 38.)"""
    node_ptr, order = segments(species, elements)
    return torch.cat([order.to(torch.int64), node_ptr.to(torch.int64)])


def element_blocks(species: torch.Tensor, elements: int, block: int, grouping: torch.Tensor | None = None) -> tuple:
    """Nodes grouped by element, each element's nodes cut into blocks of `block`, without a host sync:
    (order, node_ptr, block_ptr, programs). order [n] sorts the nodes by element (stable); element s
    owns order[node_ptr[s]:node_ptr[s+1]] and programs block_ptr[s]:block_ptr[s+1]. `programs` is an
    upper bound of the blocks (a grid size): programs past the last block must store nothing.

    `grouping`: `element_grouping(species, elements)` formed once by the caller (empty or None: formed
    here)."""
    n = species.shape[0]
    if grouping is None or grouping.numel() == 0:
        grouping = element_grouping(species, elements)
    elif grouping.shape[0] != n + elements + 1:
        raise ValueError(f"an element grouping of {n} nodes and {elements} elements has {n + elements + 1} "
                         f"entries, not {grouping.shape[0]}")
    order, node_ptr = grouping[:n], grouping[n:]
    block_ptr = node_ptr  # blocks of one node
    if block != 1:
        block_ptr = torch.zeros(elements + 1, dtype=torch.int64, device=species.device)
        torch.cumsum((node_ptr.diff() + block - 1) // block, 0, out=block_ptr[1:])
    return order, node_ptr, block_ptr, (n + block - 1) // block + elements
