"""precompiled step on CUDA: process 1 compiles+saves, process 2 loads. usage: precheck.py SIZE PRECISION"""
import time, sys, os, warnings
t0 = time.perf_counter()
import torch
from lpmace.bench.workloads import build_model, workloads
from lpmace.backends import use
from lpmace.cache import compiled_graphs, process_age
from lpmace import precompiled
print("available", precompiled.available(), torch.__version__, flush=True)
size, precision = sys.argv[1], sys.argv[2]
model = build_model(size).cuda()
w1 = workloads(model.config, quick=False)[0]
g = w1.graph.to("cuda")
run = use(model, "compiled")
t = time.perf_counter()
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    out = run(g, precision=precision, training=True)
    loss = out["energy"].double().square().sum() + out["forces"].double().square().sum()
    loss.backward()
    torch.cuda.synchronize()
for w in caught:
    if "lpmace" in str(w.message): print("WARNING", str(w.message)[:2000])
print(f"first train call {time.perf_counter() - t:.2f} s, process age {process_age():.1f} s, compiled {compiled_graphs()}, loss {loss.item():.6e}", flush=True)
print("grad norms", [round(p.grad.norm().item(), 6) for p in list(model.parameters())[:4]])
ref = model(g, precision=precision, training=True)
lr = ref["energy"].double().square().sum() + ref["forces"].double().square().sum()
print("reference loss", f"{lr.item():.6e}", "forces max diff", (ref["forces"] - out["forces"]).abs().max().item())
for i in range(3):
    t = time.perf_counter(); o = run(g, precision=precision, training=True); l = o["energy"].double().sum() + o["forces"].double().square().sum(); l.backward(); torch.cuda.synchronize()
    print(f"call {i} {1e3*(time.perf_counter()-t):.1f} ms")
t = time.perf_counter()
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    oi = run(g, precision=precision, training=False); torch.cuda.synchronize()
for w in caught:
    if "lpmace" in str(w.message): print("WARNING", str(w.message)[:2000])
ri = model(g, precision=precision)
print(f"infer first call {time.perf_counter()-t:.2f} s, forces max diff {(oi['forces'] - ri['forces']).abs().max().item():.3e}, compiled {compiled_graphs()}")
print("steps dir", sorted(os.listdir(os.path.join(os.environ["LPMACE_CACHE_DIR"], "steps"))))
