"""Registers and SASS instructions of the layer-2 bf16 conv kernels, compiled for sm_90 on a CPU by the
installed Triton and its ptxas/cuobjdump/nvdisasm (no GPU; the H200 runs Triton 3.6, so the counts are
indicative):

- grads for each set of wanted outputs (what `convolution_triton.SPLIT` launches apart);
- the message with and without Y contracted with the CG literals first (commit 1971942's `y_first`,
  read from git, since removed).

    PYTHONPATH=src python benchmarks/results/conv_layers_h200_mp_2026-12-03/sass_registers.py
"""
import importlib.util
import os
import re
import subprocess
import sys
import tempfile

import triton
from triton.backends.compiler import GPUTarget

from lpmace.kernels import convolution_triton as ct

BIN = os.path.join(os.path.dirname(triton.__file__), "backends/nvidia/bin")


def build(text, kernel, constants):
    """(registers, SASS instructions, FP32 FFMA/FMUL/FADD) of `kernel` in the generated source `text`."""
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "k.py")
        with open(path, "w") as f:
            f.write(text)
        spec = importlib.util.spec_from_file_location("k", path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        fn = getattr(module, kernel)
        sig = {a: ("*bf16" if a in ("g_ptr", "x_ptr", "w_ptr", "dx_ptr", "dw_ptr", "out_ptr") else
                   "*fp32" if a in ("y_ptr", "dy_ptr") else "*i64" if a.endswith("_ptr") else
                   "i32" if a in ("N", "E") else "constexpr") for a in fn.arg_names}
        src = triton.compiler.ASTSource(fn=fn, signature=sig,
                                        constexprs={(fn.arg_names.index(k),): v for k, v in constants.items()})
        out = triton.compile(src, target=GPUTarget("cuda", 90, 32), options={"num_warps": 1})
        cubin = os.path.join(tmp, "k.cubin")
        with open(cubin, "wb") as f:
            f.write(out.asm["cubin"])
        usage = subprocess.run([f"{BIN}/cuobjdump", "--dump-resource-usage", cubin], capture_output=True, text=True)
        sass = subprocess.run([f"{BIN}/nvdisasm", cubin], capture_output=True, text=True).stdout
    ops = re.findall(r"/\*[0-9a-f]{4,}\*/\s+(?:@!?P\d\s+)?([A-Z][A-Z0-9]*)", sass)
    registers = int(re.search(r"REG:(\d+)", usage.stdout).group(1))
    return registers, len(ops), sum(ops.count(k) for k in ("FFMA", "FMUL", "FADD"))


print(f"triton {triton.__version__}")
text = ct.source(1, 3, (2, 1), (1, 1), (1, 1))  # the defaults of layer 2, bf16: message 2 edges/step, AHEAD 1
for want in ((True, True, True), (False, False, True), (True, True, False)):
    constants = dict(C=128, BLOCK_C=64, STAGES=1, LANES=2, WANT_X=want[0], WANT_Y=want[1], WANT_W=want[2])
    print(f"grads, layer 2 bf16, WANT_X/Y/W {want}: registers, SASS instructions, FP32 ops", build(text, "grads", constants))
old = subprocess.run(["git", "show", "1971942:src/lpmace/kernels/convolution_triton.py"], capture_output=True, text=True)
if old.returncode:
    sys.exit(f"git show 1971942 failed: {old.stderr.strip()}")
with tempfile.TemporaryDirectory() as tmp:
    path = os.path.join(tmp, "convolution_triton_1971942.py")
    with open(path, "w") as f:
        f.write(old.stdout)
    spec = importlib.util.spec_from_file_location("convolution_triton_1971942", path)
    then = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(then)
for first in (False, True):
    text = then.source(1, 3, (2, 1), (1, 1), (1, 0), first)
    print(f"message, layer 2 bf16, Y first {first}: registers, SASS instructions, FP32 ops",
          build(text, "message", dict(C=128, BLOCK_C=64, STAGES=1)))
