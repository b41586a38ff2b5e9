"""GPU check of the fused kernels at real sizes (the CPU tests use Triton's interpreter on small
shapes).

The conv tensor product alone, on the W2 box's edges (128 channels, L = 1 input, max_ell 3): the
Triton operator against its PyTorch implementation, forward, first and second derivatives, with
fp32, bf16 and fp16 operands (relative max difference; both sum in fp32, in different orders).

The model: backend="triton" against "reference" on the medium model (L = 1, 128 channels, max_ell 3,
correlation 3) and ANCHORS.md's W1 batch, per precision:

- force error against an fp64 evaluation of the same weights, for both backends (the kernel may be
  at most 2× the reference path's, flash-attention's rule);
- parameter gradients of a force loss (double backward), triton against reference;
- equivariance of the triton forces under a random rotation.

Backend "compiled" (energy → forces traced and compiled by Inductor, Triton kernels inside) on the
same model: the W1 training step (energies, forces and force-loss parameter gradients against
backend "reference") and the W2 box's inference (forces against "triton"), in fp32 and bf16-mixed,
with the time of the first call (trace + compile) and of the next.

    python benchmarks/check_kernels_gpu.py            # exits 1 if a check fails
    python benchmarks/check_kernels_gpu.py --compiled-only [--size tiny]   # a quick probe
    python benchmarks/check_kernels_gpu.py --kernels-only                  # without compiling
"""

from __future__ import annotations

import argparse
import sys
import time

import numpy as np
import torch

from lpmace.backends import use
from lpmace.bench.accuracy import random_rotation
from lpmace.bench.workloads import build_model, rotate_graph, workloads
from lpmace.kernels.convolution import conv_tensor_product, edge_segments


def check_conv_operator(model, graph) -> int:
    """Triton against reference for the conv operator and two derivatives; returns the failures."""
    interaction = model.interactions[1]
    gen = torch.Generator(device="cuda").manual_seed(0)
    n, e = graph.positions.shape[0], graph.edge_index.shape[1]
    seg = edge_segments(graph.edge_index, n)
    i, n_sh = (interaction.lmax_in + 1) ** 2, (interaction.max_ell + 1) ** 2
    p, c = len(interaction.paths), interaction.channels
    failures = 0
    for dtype in (torch.float32, torch.bfloat16, torch.float16):
        x = torch.randn(n, c, i, device="cuda", generator=gen).to(dtype).requires_grad_()
        y = torch.randn(e, n_sh, device="cuda", generator=gen).requires_grad_()
        w = torch.randn(e, p, c, device="cuda", generator=gen).to(dtype).requires_grad_()
        found = {}
        for impl in ("reference", "triton"):
            out = conv_tensor_product(x, y, w, seg, interaction.lmax_in, interaction.max_ell, impl)
            first = torch.autograd.grad((out * out.detach()).sum(), (x, y, w), create_graph=True)
            second = torch.autograd.grad(sum((g.float() ** 2).sum() for g in first), (x, y, w))
            found[impl] = [out, *first, *second]
        worst = max(float((a.double() - b.double()).abs().max() / b.double().abs().max().clamp_min(1e-30))
                    for a, b in zip(found["triton"], found["reference"]))
        limit = 1e-5 if dtype == torch.float32 else 1e-2  # 16-bit: derivatives are rounded to 16 bits
        failures += not worst < limit
        print(f"conv operator {dtype}: {n} nodes {e} edges, max relative difference triton vs reference over "
              f"forward, 1st and 2nd derivatives {worst:.2e} ({'ok' if worst < limit else 'FAIL'})", flush=True)
    return failures


def _timed(fn):
    torch.cuda.synchronize()
    start = time.perf_counter()
    out = fn()
    torch.cuda.synchronize()
    return out, time.perf_counter() - start


def _step(model, graph, precision, backend):
    out = use(model, backend)(graph, precision=precision, training=True)
    loss = (out["forces"].double() ** 2).sum()
    return out, torch.autograd.grad(loss, list(model.parameters()), allow_unused=True)


def _worst(grads_a, grads_b) -> float:
    return max(float((a - b).abs().max() / a.abs().max().clamp_min(1e-30))
               for a, b in zip(grads_a, grads_b) if a is not None and b is not None)


def check_compiled(model, train_graph, infer_graph) -> int:
    failures = 0
    reference = use(model, "reference")(train_graph, precision="fp64")["forces"].double()
    rms = reference.pow(2).mean().sqrt()
    for precision in ("fp32", "bf16-mixed"):
        (ref, ref_grads), _ = _timed(lambda: _step(model, train_graph, precision, "reference"))
        (out, grads), first = _timed(lambda: _step(model, train_graph, precision, "compiled"))
        _, second = _timed(lambda: _step(model, train_graph, precision, "compiled"))
        err = {k: float((o["forces"].double() - reference).pow(2).mean().sqrt() / rms) for k, o in
               (("reference", ref), ("compiled", out))}
        worst = _worst(ref_grads, grads)
        ok = err["compiled"] <= 2 * err["reference"] + 1e-12 and worst < (1e-3 if precision == "fp32" else 0.2)
        failures += not ok
        print(f"compiled training step {precision}: force error vs fp64 reference {err['reference']:.3e} "
              f"compiled {err['compiled']:.3e}; max relative param-grad difference {worst:.2e} "
              f"({'ok' if ok else 'FAIL'}); first call {first:.1f} s, next {second * 1e3:.1f} ms", flush=True)
        tri = use(model, "triton")(infer_graph, precision=precision)["forces"].double()
        out, first = _timed(lambda: use(model, "compiled")(infer_graph, precision=precision))
        _, second = _timed(lambda: use(model, "compiled")(infer_graph, precision=precision))
        diff = float((out["forces"].double() - tri).pow(2).mean().sqrt() / tri.pow(2).mean().sqrt())
        ok = diff < (1e-5 if precision == "fp32" else 5e-2)
        failures += not ok
        print(f"compiled inference {precision} ({infer_graph.num_atoms} atoms): forces vs triton, relative RMS "
              f"{diff:.2e} ({'ok' if ok else 'FAIL'}); first call {first:.1f} s, next {second * 1e3:.1f} ms",
              flush=True)
    return failures


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--compiled-only", action="store_true", help="only the backend 'compiled' checks")
    parser.add_argument("--kernels-only", action="store_true", help="skip the backend 'compiled' checks")
    parser.add_argument("--size", default="medium", help="bench model size (default: %(default)s)")
    args = parser.parse_args()
    model = build_model(args.size).cuda()
    graph = workloads(model.config, quick=False)[0].graph.to("cuda")
    box = workloads(model.config, quick=False)[1].graph.to("cuda")
    if args.compiled_only:
        return 1 if check_compiled(model, graph, box) else 0
    failures = check_conv_operator(model, box)
    reference = use(model, "reference")(graph, precision="fp64")["forces"].double()
    rms = reference.pow(2).mean().sqrt()
    for precision in ("fp64", "fp32", "bf16-mixed", "fp16-mixed"):
        errors, grads = {}, {}
        for backend in ("reference", "triton"):
            out, grads[backend] = _step(model, graph, precision, backend)
            errors[backend] = float((out["forces"].double() - reference).pow(2).mean().sqrt() / rms)
        worst = _worst(grads["reference"], grads["triton"])
        ok = errors["triton"] <= 2 * errors["reference"] + 1e-12
        failures += not ok
        print(f"{precision}: force error vs fp64 reference {errors['reference']:.3e} triton {errors['triton']:.3e} "
              f"({'ok' if ok else 'FAIL: over 2x'}); max relative param-grad difference {worst:.2e}", flush=True)
    rotation = random_rotation(np.random.default_rng(0)).cuda()
    f = use(model, "triton")(graph, precision="fp32")["forces"].double()
    f_rot = use(model, "triton")(rotate_graph(graph, rotation), precision="fp32")["forces"].double()
    equivariance = float((f_rot - f @ rotation.T).pow(2).mean().sqrt() / f.pow(2).mean().sqrt())
    print(f"triton fp32 equivariance error {equivariance:.2e}", flush=True)
    failures += not equivariance < 1e-4
    if not args.kernels_only:
        failures += check_compiled(model, graph, box)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
