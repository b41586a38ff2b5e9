# the trainer's own epoch, eager vs CUDA graphs: per-step loss as EpochTally.add sees it
import sys, pathlib, shutil, torch
sys.path.insert(0, "tests/train")
from small_training import small_config
from lpmace.train import Trainer
from lpmace.train.tally import EpochTally
seen = []
orig = EpochTally.add
def add(self, step, result, finite, graph, indices):
    seen.append((step, float(result.total), float(result.local_loss), bool(result.ok), bool(finite), graph.num_atoms, graph.num_graphs, len(indices)))
    return orig(self, step, result, finite, graph, indices)
EpochTally.add = add
out = {}
for tag, graphs in (("eager", False), ("graphs", True)):
    p = pathlib.Path("/tmp/diag2") / tag; shutil.rmtree(p, ignore_errors=True)
    t = Trainer(small_config(p, "epochs=1", "device=cuda", "precision=fp32", "backend=triton", "clip_grad=10.0",
                             f"cuda_graphs={str(graphs).lower()}"), log=lambda m: None, warn=lambda m: None)
    seen.clear()
    loss = t._train_epoch(None)
    out[tag] = list(seen)
    print(tag, "epoch loss", loss, t.step_graphs.counts if t.step_graphs else None, flush=True)
for a, b in zip(out["eager"], out["graphs"]):
    print("eager", a, "\ngraphs", b, flush=True)
