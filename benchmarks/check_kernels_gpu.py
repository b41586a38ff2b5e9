"""GPU check of the fused symmetric contraction at real sizes (the CPU tests use Triton's interpreter on
small shapes): backend="triton" against "reference" on the medium model (L = 1, 128 channels,
max_ell 3, correlation 3) and ANCHORS.md's W1 batch, per precision:

- force error against an fp64 evaluation of the same weights, for both backends (the kernel may be
  at most 2× the reference path's, flash-attention's rule);
- parameter gradients of a force loss (double backward), triton against reference;
- equivariance of the triton forces under a random rotation.

    python benchmarks/check_kernels_gpu.py            # exits 1 if a check fails
"""

from __future__ import annotations

import sys

import numpy as np
import torch

from lpmace.bench.accuracy import random_rotation
from lpmace.bench.workloads import build_model, rotate_graph, workloads


def main() -> int:
    model = build_model("medium").cuda()
    graph = workloads(model.config, quick=False)[0].graph.to("cuda")
    reference = model(graph, precision="fp64", backend="reference")["forces"].double()
    rms = reference.pow(2).mean().sqrt()
    failures = 0
    for precision in ("fp64", "fp32", "bf16-mixed", "fp16-mixed"):
        errors, grads = {}, {}
        for backend in ("reference", "triton"):
            out = model(graph, precision=precision, backend=backend, training=True)
            errors[backend] = float((out["forces"].double() - reference).pow(2).mean().sqrt() / rms)
            loss = (out["forces"].double() ** 2).sum()
            grads[backend] = torch.autograd.grad(loss, list(model.parameters()), allow_unused=True)
        worst = max(float((a - b).abs().max() / a.abs().max().clamp_min(1e-30))
                    for a, b in zip(grads["reference"], grads["triton"]) if a is not None and b is not None)
        ok = errors["triton"] <= 2 * errors["reference"] + 1e-12
        failures += not ok
        print(f"{precision}: force error vs fp64 reference {errors['reference']:.3e} triton {errors['triton']:.3e} "
              f"({'ok' if ok else 'FAIL: over 2x'}); max relative param-grad difference {worst:.2e}", flush=True)
    rotation = random_rotation(np.random.default_rng(0)).cuda()
    f = model(graph, precision="fp32", backend="triton")["forces"].double()
    f_rot = model(rotate_graph(graph, rotation), precision="fp32", backend="triton")["forces"].double()
    equivariance = float((f_rot - f @ rotation.T).pow(2).mean().sqrt() / f.pow(2).mean().sqrt())
    print(f"triton fp32 equivariance error {equivariance:.2e}", flush=True)
    failures += not equivariance < 1e-4
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
