"""`lpmace demo`: fp32 vs bf16-mixed vs fp16-mixed training on the embedded 3BPA data, side by side."""

from __future__ import annotations

import argparse
from pathlib import Path

from lpmace.devices import DEVICE_HELP

HELP = "train a small model in fp32, bf16-mixed and fp16-mixed on embedded 3BPA and compare"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--device", default="auto", help=DEVICE_HELP)
    parser.add_argument("--out", default="runs/demo", help="output folder (default: runs/demo)")
    parser.add_argument("--epochs", type=int, default=1, help="epochs per precision (default: 1)")


def run(args: argparse.Namespace) -> int:
    from lpmace.demo import markdown_table, run_demo
    from lpmace.devices import resolve_device
    from lpmace.errors import InputError

    args.device = str(resolve_device(args.device))
    if args.epochs < 1:
        raise InputError("--epochs must be >= 1")
    out = Path(args.out)
    if any((out / p / "checkpoints" / "last.pt").exists() for p in ("fp32", "bf16-mixed", "fp16-mixed")):
        raise InputError(f"{out} already holds demo runs: remove it or pass another --out")
    rows = run_demo(out, device=args.device, epochs=args.epochs, log=lambda m: print(m, flush=True))
    print()
    print(markdown_table(rows, args.device))
    print(f"\nwrote {out / 'summary.json'} and {out / 'summary.md'}")
    return 0
