import sys, torch
sys.path.insert(0, "tests")
from conftest import tiny_model
import lpmace, lpmace.io
from lpmace import datasets
from lpmace.data import graph_from_configuration, read_configurations, collate
cfgs = read_configurations(datasets.path("3bpa/test_300K.xyz"))[:2]
m = tiny_model(max_ell=1, max_L=0).to("cuda")
g1 = graph_from_configuration(cfgs[0], 4.0).to("cuda")
g2 = collate([graph_from_configuration(c, 4.0) for c in cfgs]).to("cuda")
for name, g in (("one", g1), ("two", g2)):
    for b in ("reference", "triton", "compiled"):
        out = m(g, precision="fp64", backend=b)
        print(name, b, out["energy"].tolist(), float(out["forces"][0, 0]), flush=True)
from lpmace.quantize import quantize_readouts
mq = tiny_model(torch.float32, readout_mlp=8).to("cuda")
q = quantize_readouts(mq, "fp8-dynamic")
a, b2 = q(g1), q(g1)
print("fp8 repeat equal", torch.equal(a["energy"], b2["energy"]), torch.equal(a["forces"], b2["forces"]))
lpmace.io.save(q, "/tmp/q.safetensors")
c = lpmace.io.load("/tmp/q.safetensors", device="cuda")(g1)
print("fp8 roundtrip dE", float(c["energy"] - a["energy"]), "dF", float((c["forces"] - a["forces"]).abs().max()))
qs = dict(q.named_parameters()); ls = dict(lpmace.io.load("/tmp/q.safetensors", device="cuda").named_parameters())
for k in qs:
    if not torch.equal(qs[k].float() if qs[k].dtype != ls[k].dtype else qs[k], ls[k].float() if qs[k].dtype != ls[k].dtype else ls[k]):
        print("param differs", k, qs[k].dtype, ls[k].dtype)
for k, v in q.named_buffers():
    print("buffer", k, v.dtype)
