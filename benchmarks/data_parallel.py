"""Data-parallel training on GPUs: plain `lpmace train` against torchrun with 1..N ranks, same config.

For each run: epochs' training time (s), throughput (configurations/s and atoms/s over the training
epochs after the first, which includes warm-up), final train loss and validation force RMSE. The
1-rank torchrun run must reproduce the plain run (same global batches, same loss normalisation);
more ranks split every global batch by atoms.

    python benchmarks/data_parallel.py --out DIR [--ranks 1,2] [--batch-size 5] [--epochs 3] [--precision fp32]

Every launch sets NCCL_NVLS_ENABLE=0 and TORCH_SYMM_MEM_DISABLE_MULTICAST=1.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path


def run(out: Path, ranks: int, args) -> dict:
    common = ["-m", "lpmace", "train", os.devnull, f"epochs={args.epochs}", f"batch_size={args.batch_size}",
              f"precision={args.precision}", "device=cuda", "test_files=[]", "progress=false",
              f"output_dir={out}", "valid_batch_size=50"]
    if ranks == 0:
        cmd = [sys.executable, *common]
    else:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(ranks), *common]
    env = dict(os.environ, NCCL_NVLS_ENABLE="0", TORCH_SYMM_MEM_DISABLE_MULTICAST="1", OMP_NUM_THREADS="4")
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        return {"ranks": ranks, "error": proc.stderr[-2000:]}
    rows = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    times = [b["train_time_s"] - a["train_time_s"] for a, b in zip([{"train_time_s": 0.0}] + rows, rows)]
    later = times[1:] or times
    configs_per_epoch = 450  # the default 450/50 split of the embedded 3BPA train_300K
    return {"ranks": ranks or "plain", "epoch_times_s": times, "train_loss": [r["train_loss"] for r in rows],
            "valid_force_rmse": [r.get("valid_force_rmse_mev_per_A") for r in rows],
            "configs_per_s": configs_per_epoch / (sum(later) / len(later)),
            "atoms_per_s": 27 * configs_per_epoch / (sum(later) / len(later))}


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True)
    ap.add_argument("--ranks", default="1,2")
    ap.add_argument("--batch-size", type=int, default=5)
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--precision", default="fp32")
    ap.add_argument("--plain", action="store_true", help="also run plain lpmace train (no torchrun)")
    args = ap.parse_args()
    out = Path(args.out)
    results = []
    for ranks in ([0] if args.plain else []) + [int(r) for r in args.ranks.split(",")]:
        results.append(run(out / f"ranks_{ranks or 'plain'}_bs{args.batch_size}_{args.precision}", ranks, args))
        print(json.dumps(results[-1]), flush=True)
    (out / f"data_parallel_bs{args.batch_size}_{args.precision}.json").write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
