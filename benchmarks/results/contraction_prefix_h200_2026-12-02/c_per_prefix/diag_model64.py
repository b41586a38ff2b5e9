"""fp64 model: triton vs reference backend, block by block (forward hooks), and forces."""
import torch
from lpmace.backends import use
from lpmace.bench.workloads import build_model, workloads
model = build_model("medium").cuda()
graph = workloads(model.config, quick=False)[0].graph.to("cuda")
seen = {}
def hook(name):
    def f(mod, inp, out):
        seen.setdefault(name, []).append(out.detach().double() if torch.is_tensor(out) else out)
    return f
for i, m in enumerate(model.products):
    m.register_forward_hook(hook(f"product{i}"))
    m.contraction.register_forward_hook(hook(f"contraction{i}"))
for i, m in enumerate(model.interactions):
    m.register_forward_hook(hook(f"interaction{i}"))
res = {}
for backend in ("reference", "triton"):
    seen.clear()
    out = use(model, backend)(graph, precision="fp64")
    res[backend] = ({k: v[0] for k, v in seen.items() if torch.is_tensor(v[0])}, out["forces"].detach().double(), out["energy"].detach().double())
for k in res["reference"][0]:
    a, b = res["reference"][0][k], res["triton"][0].get(k)
    if b is not None and a.shape == b.shape:
        print(k, tuple(a.shape), "%.2e" % ((a - b).norm() / a.norm()).item())
print("energy %.2e forces %.2e" % (((res["reference"][2] - res["triton"][2]).norm() / res["reference"][2].norm()).item(),
      ((res["reference"][1] - res["triton"][1]).norm() / res["reference"][1].norm()).item()))
