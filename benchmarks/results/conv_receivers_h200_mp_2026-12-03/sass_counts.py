"""SASS instructions of the grads kernel, ∂Y summed with one tl.sum per harmonic (LANES 0) and with the
butterfly (LANES 1 or 2), compiled on a CPU for sm_90 by the installed Triton and its ptxas (no GPU).

    python benchmarks/results/conv_receivers_h200_mp_2026-12-03/sass_counts.py
"""
import importlib.util
import os
import re
import subprocess
import tempfile

import triton
from triton.backends.compiler import GPUTarget

from lpmace.kernels import convolution_triton as ct


def counts(lmax_in, lanes, per_lane):
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "k.py")
        with open(path, "w") as f:
            f.write(ct.source(lmax_in, 3))
        spec = importlib.util.spec_from_file_location("k", path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        fn = module.grads
        wide = "*bf16" if per_lane == 2 else "*fp32"
        sig = {a: (wide if a in ("g_ptr", "x_ptr", "w_ptr", "dx_ptr", "dw_ptr") else "*fp32" if a in ("y_ptr", "dy_ptr")
                   else "*i64" if a.endswith("_ptr") else "i32" if a in ("N", "E") else "constexpr") for a in fn.arg_names}
        const = dict(C=128, BLOCK_C=32 * per_lane, WANT_X=True, WANT_Y=True, WANT_W=True, STAGES=1, LANES=lanes)
        src = triton.compiler.ASTSource(fn=fn, signature=sig, constexprs={(fn.arg_names.index(k),): v for k, v in const.items()})
        out = triton.compile(src, target=GPUTarget("cuda", 90, 32), options={"num_warps": 1})
        cubin = os.path.join(tmp, "k.cubin")
        with open(cubin, "wb") as f:
            f.write(out.asm["cubin"])
        sass = subprocess.run([os.path.join(os.path.dirname(triton.__file__), "backends/nvidia/bin/nvdisasm"), cubin],
                              capture_output=True, text=True).stdout
    ops = re.findall(r"/\*[0-9a-f]{4,}\*/\s+(?:@!?P\d\s+)?([A-Z][A-Z0-9]*)", sass)
    return len(ops), ops.count("SHFL")


print(f"triton {triton.__version__}")
for lmax_in, per_lane in ((1, 1), (1, 2), (0, 1), (0, 2)):
    rows = [counts(lmax_in, lanes, per_lane) for lanes in (0, per_lane)]
    print(f"layer {lmax_in + 1}, {per_lane} channel(s) per lane: instructions {rows[0][0]} -> {rows[1][0]}, "
          f"SHFL {rows[0][1]} -> {rows[1][1]}")
