"""Roofline: the FLOP/s and bytes/s one inference achieves, against the device's peaks.

FLOPs are counted by `torch.utils.flop_counter.FlopCounterMode`, which counts matrix products
(mm, bmm, addmm, einsum lowered to them, convolutions) and lpmace's fused kernels (their own
formula), not elementwise work; bytes are the sizes
of every operator's tensor inputs and outputs (views excluded), i.e. the traffic with no cache reuse
and no fusion. Both are counted once on the host-side dispatch of one call, so they hold for any
device. Achieved rates divide them by the measured median time.

Peaks are dense (no sparsity) datasheet figures of the few GPUs listed in `PEAKS`, keyed by the
dtype of the policy's matrix products; an unknown device gets None, not a guess.
"""

from __future__ import annotations

from typing import Callable, Optional

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from lpmace.precision import resolve_policy

__all__ = ["PEAKS", "count_flop_and_bytes", "device_peaks", "roofline_row"]

# TFLOP/s by matmul kind and TB/s of memory bandwidth; NVIDIA datasheets, dense figures (the
# datasheets print sparse tensor-core numbers, twice these). H100 SXM5 and H200 SXM: "NVIDIA H100
# Tensor Core GPU" and "NVIDIA H200 Tensor Core GPU" datasheets (H100 SXM figures as quoted in
# shared/ANCHORS.md); A100: "NVIDIA A100 Tensor Core GPU". fp64 is the FP64 tensor-core figure.
PEAKS = {
    "H100 80GB HBM3": {"fp64": 67.0, "fp32": 67.0, "tf32": 495.0, "bf16": 989.0, "fp16": 989.0, "tb_per_s": 3.35},
    "H100 PCIe": {"fp64": 51.0, "fp32": 51.0, "tf32": 378.0, "bf16": 756.0, "fp16": 756.0, "tb_per_s": 2.0},
    "H200": {"fp64": 67.0, "fp32": 67.0, "tf32": 495.0, "bf16": 989.0, "fp16": 989.0, "tb_per_s": 4.8},
    "A100-SXM4-80GB": {"fp64": 19.5, "fp32": 19.5, "tf32": 156.0, "bf16": 312.0, "fp16": 312.0, "tb_per_s": 2.039},
}


class _ByteCounter(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.bytes = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if not getattr(func, "is_view", False):
            leaves = tree_flatten((args, kwargs or {}, out))[0]
            self.bytes += sum(t.numel() * t.element_size() for t in leaves if isinstance(t, torch.Tensor))
        return out


_REGISTERED = []


def _count_fused_ops() -> None:
    """Teach FlopCounterMode the fused kernels' FLOPs (once; imported here, not at lpmace's import,
    because the flop counter imports triton, whose interpreter mode must be chosen before that)."""
    if _REGISTERED:
        return
    from torch.utils.flop_counter import register_flop_formula

    from lpmace.kernels import convolution, polynomial

    register_flop_formula(torch.ops.lpmace.polynomial_contraction)(polynomial.flop_count)
    register_flop_formula(torch.ops.lpmace.conv_message)(convolution.flop_count)
    _REGISTERED.append(True)


def count_flop_and_bytes(fn: Callable[[], object]) -> tuple[int, int]:
    """(FLOPs of matrix products and fused kernels, operator bytes) of one call of `fn` (forward and
    any autograd inside it)."""
    from torch.utils.flop_counter import FlopCounterMode

    _count_fused_ops()

    counter = _ByteCounter()
    with FlopCounterMode(display=False) as flops, counter:
        fn()
    return int(flops.get_total_flops()), int(counter.bytes)


def device_peaks(device_name: str) -> Optional[dict]:
    """The PEAKS entry whose key is in `device_name` (e.g. "NVIDIA H100 80GB HBM3"), else None."""
    for key, peaks in PEAKS.items():
        if key in device_name:
            return peaks
    return None


def _peak_kind(precision: str) -> str:
    try:
        policy = resolve_policy(precision)
    except Exception:  # mace-torch rows name a plain dtype
        return precision
    if policy.name == "tf32":
        return "tf32"
    return {torch.float64: "fp64", torch.float32: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}[policy.linear]


def roofline_row(speed_row: dict, flop: int, nbytes: int, device_name: str) -> dict:
    """The schema's roofline row for one timed inference (`speed_row`) of `flop` FLOPs and `nbytes` bytes."""
    peaks = device_peaks(device_name)
    seconds = speed_row["median_ms"] / 1000.0 if speed_row.get("median_ms") else None
    tflops = flop / seconds / 1e12 if seconds else None
    tbs = nbytes / seconds / 1e12 if seconds else None
    peak_flop = peaks.get(_peak_kind(speed_row["precision"])) if peaks else None
    peak_bw = peaks["tb_per_s"] if peaks else None
    return {
        "workload": speed_row["workload"], "code": speed_row["code"], "backend": speed_row["backend"],
        "precision": speed_row["precision"], "flop": flop, "bytes": nbytes, "median_ms": speed_row.get("median_ms"),
        "achieved_tflop_per_s": tflops, "achieved_tb_per_s": tbs, "peak_tflop_per_s": peak_flop,
        "peak_tb_per_s": peak_bw,
        "fraction_of_peak_flop": tflops / peak_flop if tflops is not None and peak_flop else None,
        "fraction_of_peak_bandwidth": tbs / peak_bw if tbs is not None and peak_bw else None,
    }
