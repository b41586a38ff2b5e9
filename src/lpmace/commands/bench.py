"""`lpmace bench`: speed, memory, accuracy against fp64, equivariance, NVE drift and time-to-accuracy of
one model per precision and backend, optionally next to mace-torch on the same weights, and, when named
in --workloads, the seed's experiments (docs/experiments/); writes results.json, report.md,
report.html and PNG plots into --out."""

from __future__ import annotations

import argparse

from lpmace.devices import DEVICE_HELP

HELP = "benchmark speed, memory and accuracy per precision (optionally against mace-torch); writes a report"


def _list(text: str) -> tuple:
    return tuple(part.strip() for part in text.split(",") if part.strip())


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from lpmace.bench.choices import EXPERIMENTS, MATRIX, SIZES

    parser.epilog = ("Without --model the benchmark model has random weights (seeded) of the chosen --size; "
                     "errors against fp64 then measure the arithmetic, not a fit. --quick: tiny model, few "
                     "repeats, small systems, no time-to-accuracy (a few minutes on a laptop CPU).")
    model = parser.add_mutually_exclusive_group()
    model.add_argument("--model", metavar="PATH",
                       help="lpmace .safetensors model, or a mace-torch .model (needs --trust-mace-model)")
    model.add_argument("--size", choices=sorted(SIZES), default=None,
                       help="random model: small 128x0e, medium 128x0e+128x1o (default), L2 +128x2e, tiny (--quick), "
                            "mp MACE-MP-0 medium's shape (medium with 89 elements, r_max 6, 10 Bessel, 61 neighbours), "
                            "mpa MPA-0 / OMAT-0 medium's (mp with density-normalised blocks, ZBL, Agnesi)")
    parser.add_argument("--trust-mace-model", action="store_true",
                        help="allow loading a mace-torch .model file (a pickle: it can run code)")
    parser.add_argument("--precisions", type=_list, default=None, metavar="P,P,...",
                        help="presets to measure (default: fp64,fp32,bf16-mixed,fp16-mixed)")
    parser.add_argument("--backends", type=_list, default=None, metavar="B,B,...",
                        help="lpmace backends: reference, triton, compiled (default: reference and triton on CUDA with "
                             "triton, else reference)")
    parser.add_argument("--workloads", type=_list, default=None, metavar="W,W,...",
                        help=f"sections among {','.join(MATRIX)} (default: all; --quick: all but time-to-accuracy), "
                             f"and the experiments {','.join(EXPERIMENTS)} (only when named; they train or build "
                             "their own models: docs/experiments/)")
    parser.add_argument("--device", default="auto", help=DEVICE_HELP)
    parser.add_argument("--quick", action="store_true", help="tiny model and systems, 3 repeats")
    parser.add_argument("--out", default="bench", metavar="DIR", help="output folder (default: %(default)s)")
    parser.add_argument("--compare-mace-torch", action="store_true",
                        help="also run mace-torch (e3nn fp32/fp64, cuEquivariance fp32 on CUDA) on the same weights")
    parser.add_argument("--data", action="append", default=[], metavar="FILE",
                        help="extra extxyz structures for the accuracy section (repeatable); a periodic one "
                             "with <= 256 atoms is also the MD cell")
    parser.add_argument("--repeats", type=int, default=None, metavar="N", help="timed repeats (default 20; quick 3)")
    parser.add_argument("--md-steps", type=int, default=None, metavar="N",
                        help="NVE steps per precision (default 1000 on CUDA, 200 on CPU, 20 quick)")
    parser.add_argument("--md-dt", type=float, default=0.5, metavar="FS", help="MD time step (default: %(default)s)")
    parser.add_argument("--tta-budget", type=float, default=None, metavar="S",
                        help="training seconds per precision for time-to-accuracy (default 120 CUDA, 60 CPU)")
    parser.add_argument("--tta-target", type=float, default=31.5, metavar="MEV_PER_A",
                        help="test force RMSE that counts as reached (default: %(default)s, mace-torch fp32's "
                             "36-epoch 3BPA figure in shared/ANCHORS.md)")
    parser.add_argument("--max-atoms", type=int, default=None, metavar="N", help="largest system of the scaling curve")
    parser.add_argument("--seed", type=int, default=0, help="seed of weights and structures (default: %(default)s)")
    parser.add_argument("--species-data", default=None, metavar="DIR",
                        help="folder with rmd17_ethanol/ and si_zuo2020/ (the project's shared/data): the "
                             "training sets of the species-rank section")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def run(args: argparse.Namespace) -> int:
    import pathlib
    import shlex
    import sys

    import torch

    from lpmace.bench.choices import MATRIX
    from lpmace.bench.runner import BenchOptions, check, run_bench
    from lpmace.devices import resolve_device

    device = str(resolve_device(args.device))
    sections = args.workloads or tuple(s for s in MATRIX if not (args.quick and s == "time-to-accuracy"))
    precisions = args.precisions or ("fp64", "fp32", "bf16-mixed", "fp16-mixed")
    from lpmace.kernels import triton_available

    backends = args.backends or (("reference", "triton") if device.startswith("cuda") and triton_available()
                                 else ("reference",))
    options = BenchOptions(
        out=pathlib.Path(args.out), model=args.model, trust_mace_model=args.trust_mace_model,
        size=args.size or ("tiny" if args.quick else "medium"), precisions=precisions, backends=backends,
        sections=sections, device=device, quick=args.quick, compare_mace_torch=args.compare_mace_torch,
        data=tuple(args.data), repeats=args.repeats, seed=args.seed, md_steps=args.md_steps, md_dt_fs=args.md_dt,
        tta_budget_s=args.tta_budget, tta_target=args.tta_target, max_atoms=args.max_atoms,
        species_data=args.species_data,
        command=" ".join(["lpmace", *map(shlex.quote, sys.argv[1:])]), progress=not args.no_progress)
    plan = check(options)
    run_bench(options, plan, log=print)
    return 0
