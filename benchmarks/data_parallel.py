"""Data-parallel training on GPUs: plain `lpmace train` against torchrun with 1..N ranks, same config.

For each run: epochs' training time (s), throughput (configurations/s and atoms/s over the training
epochs after the first, which includes warm-up), train loss and validation force RMSE per epoch.
The 1-rank torchrun run must reproduce the plain run (same global batches, same loss
normalisation); more ranks split every global batch by atoms.

Strong scaling (--ranks) keeps the global batch (--batch-size) for every rank count; weak scaling
(--weak-ranks) multiplies it by the rank count (a fixed per-GPU batch). Efficiency is throughput /
(ranks × the 1-rank throughput at --batch-size), so --ranks must include 1.

    python benchmarks/data_parallel.py --out DIR [--ranks 1,2] [--weak-ranks 2] [--batch-size 32] \
        [--epochs 4] [--precision fp32] [--train-file FILE --energy-key K --forces-key K --e0s fit]

Every launch sets NCCL_NVLS_ENABLE=0 and TORCH_SYMM_MEM_DISABLE_MULTICAST=1.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
from pathlib import Path


def mean_atoms(path: str) -> float:
    from lpmace.data import read_configurations
    from lpmace.datasets import resolve_path

    configs = read_configurations(resolve_path(path), energy_key=None, forces_key=None)
    return sum(len(c.numbers) for c in configs) / len(configs)


def run(out: Path, ranks: int, batch: int, args) -> dict:
    common = ["-m", "lpmace", "train", os.devnull, f"epochs={args.epochs}", f"batch_size={batch}",
              f"precision={args.precision}", "device=cuda", "backend=triton", "test_files=[]", "progress=false",
              f"output_dir={out}", "valid_batch_size=50", f"train_file={args.train_file}",
              f"energy_key={args.energy_key}", f"forces_key={args.forces_key}", f"model={args.model}"]
    if args.e0s:
        common += [f"e0s={args.e0s}", "isolated_atoms_file=null"]
    if ranks == 0:
        cmd = [sys.executable, *common]
    else:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(ranks), *common]
    env = dict(os.environ, NCCL_NVLS_ENABLE="0", TORCH_SYMM_MEM_DISABLE_MULTICAST="1", OMP_NUM_THREADS="4")
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        return {"ranks": ranks, "batch_size": batch, "error": proc.stderr[-2000:]}
    rows = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    times = [b["train_time_s"] - a["train_time_s"] for a, b in zip([{"train_time_s": 0.0}] + rows, rows)]
    later = times[1:] or times
    found = re.search(r"data: (\d+) train", proc.stdout + proc.stderr)
    configs_per_epoch = int(found.group(1)) if found else float("nan")
    per_s = configs_per_epoch / (sum(later) / len(later))
    return {"ranks": ranks or "plain", "batch_size": batch, "precision": args.precision,
            "epoch_times_s": times, "train_loss": [r["train_loss"] for r in rows],
            "valid_force_rmse": [r.get("valid_force_rmse_mev_per_A") for r in rows],
            "configs_per_epoch": configs_per_epoch, "configs_per_s": per_s, "atoms_per_s": per_s * args.atoms}


def plot(out: Path) -> Path:
    """Throughput against GPUs per dataset, precision and mode, from every JSON result in `out`."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for f in sorted(out.glob("data_parallel_*.json")) for r in json.loads(f.read_text())
            if isinstance(r.get("ranks"), int) and "configs_per_s" in r]
    datasets = sorted({r["dataset"] for r in rows})
    fig, axes = plt.subplots(1, len(datasets), figsize=(5 * len(datasets), 4), squeeze=False)
    for ax, dataset in zip(axes[0], datasets):
        for precision in sorted({r["precision"] for r in rows}):
            for mode, style in (("strong", "o-"), ("weak", "s--")):
                mine = [r for r in rows if (r["dataset"], r["precision"]) == (dataset, precision)
                        and (r["mode"] == mode or r["ranks"] == 1)]
                mine.sort(key=lambda r: r["ranks"])
                if len(mine) > 1:
                    ax.plot([r["ranks"] for r in mine], [r["atoms_per_s"] for r in mine], style,
                            label=f"{precision}, {mode} (global batch {', '.join(str(r['batch_size']) for r in mine)})")
        one = [r["atoms_per_s"] for r in rows if r["dataset"] == dataset and r["ranks"] == 1]
        ranks = sorted({r["ranks"] for r in rows})
        ax.plot(ranks, [max(one) * k for k in ranks], ":", color="grey", label="ideal (best 1-GPU × GPUs)")
        ax.set(title=dataset, xlabel="GPUs", ylabel="training atoms / s", xticks=ranks)
        ax.legend(fontsize=7)
    fig.tight_layout()
    path = out / "data_parallel_scaling.png"
    fig.savefig(path, dpi=120)
    return path


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True)
    ap.add_argument("--ranks", default="1,2")
    ap.add_argument("--batch-size", type=int, default=5, help="global batch (per-GPU batch for --weak-ranks)")
    ap.add_argument("--weak-ranks", default="", help="rank counts run with a global batch of ranks x --batch-size")
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--precision", default="fp32")
    ap.add_argument("--plain", action="store_true", help="also run plain lpmace train (no torchrun)")
    ap.add_argument("--train-file", default="embedded:3bpa/train_300K.xyz")
    ap.add_argument("--energy-key", default="REF_energy")
    ap.add_argument("--forces-key", default="REF_forces")
    ap.add_argument("--e0s", default=None, help="e.g. fit (for data without isolated atoms)")
    ap.add_argument("--model", default="{channels: 128, max_L: 1, correlation: 3}")
    ap.add_argument("--tag", default="3bpa")
    ap.add_argument("--plot-only", action="store_true", help="only draw the plot from the JSON files in --out")
    args = ap.parse_args()
    if args.plot_only:
        print(plot(Path(args.out)))
        return 0
    args.atoms = mean_atoms(args.train_file)
    out = Path(args.out)
    plan = [("strong", r) for r in ([0] if args.plain else []) + [int(r) for r in args.ranks.split(",")]]
    plan += [("weak", int(r)) for r in args.weak_ranks.split(",") if r]
    results = []
    for mode, ranks in plan:
        batch = args.batch_size * ranks if mode == "weak" else args.batch_size
        name = f"{args.tag}_{mode}_ranks{ranks or 'plain'}_bs{batch}_{args.precision}"
        results.append({"dataset": args.tag, "mode": mode, **run(out / name, ranks, batch, args)})
        base = next((r for r in results if r["ranks"] == 1 and r["mode"] == "strong" and "configs_per_s" in r), None)
        if base and "configs_per_s" in results[-1] and isinstance(results[-1]["ranks"], int):
            results[-1]["efficiency"] = results[-1]["configs_per_s"] / (results[-1]["ranks"] * base["configs_per_s"])
        print(json.dumps(results[-1]), flush=True)
    (out / f"data_parallel_{args.tag}_bs{args.batch_size}_{args.precision}.json").write_text(
        json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
