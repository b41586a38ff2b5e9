"""Is W2 inference host-bound? wall per call with a sync each call, wall per call back to back, GPU busy per call."""
import sys, time, torch
from torch.profiler import ProfilerActivity, profile
from lpmace.backends import use
from lpmace.bench.workloads import build_model, workloads
size = sys.argv[1] if len(sys.argv) > 1 else "medium"
model = build_model(size).cuda()
w2 = workloads(model.config, quick=False)[1]
g = w2.graph.to("cuda")
for prec in ("fp32", "bf16-mixed"):
    m = __import__("copy").deepcopy(model).to(dtype=torch.float32)
    run = use(m, "compiled", "cuda")
    for _ in range(3):
        run(g, precision=prec)
    torch.cuda.synchronize()
    t = []
    for _ in range(20):
        t0 = time.perf_counter(); run(g, precision=prec); torch.cuda.synchronize(); t.append(time.perf_counter() - t0)
    t.sort()
    t0 = time.perf_counter()
    for _ in range(20):
        run(g, precision=prec)
    host = (time.perf_counter() - t0) / 20
    torch.cuda.synchronize(); thru = (time.perf_counter() - t0) / 20
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(5):
            run(g, precision=prec)
        torch.cuda.synchronize()
    busy = sum(e.device_time for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA) / 1e3 / 5
    n = sum(1 for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA) / 5
    print(f"{size} {prec}: synced median {1e3*t[10]:.2f} ms (min {1e3*t[0]:.2f}); back to back: host issue {1e3*host:.2f} ms/call, "
          f"throughput {1e3*thru:.2f} ms/call; GPU busy {busy:.2f} ms/call in {n:.0f} kernels/copies", flush=True)
