"""`lpmace demo`: fp32 vs bf16-mixed vs fp16-mixed fine-tuning of a small pretrained model on the embedded
3BPA data, side by side (lpmace.demo)."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from lpmace.devices import DEVICE_HELP

HELP = "fine-tune a small pretrained model in fp32, bf16-mixed and fp16-mixed on embedded 3BPA and compare"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--device", default="auto", help=DEVICE_HELP)
    parser.add_argument("--out", default="runs/demo", help="output folder (default: runs/demo)")
    parser.add_argument("--epochs", type=int, default=6,
                        help="fine-tuning epochs of 10 steps per precision (default: 6)")


def run(args: argparse.Namespace) -> int:
    import shutil

    from lpmace.demo import DEMO_PRECISIONS, run_demo
    from lpmace.devices import resolve_device
    from lpmace.errors import InputError

    args.device = str(resolve_device(args.device))
    if args.epochs < 1:
        raise InputError("--epochs must be >= 1")
    out = Path(args.out)
    previous = [out / p for p in DEMO_PRECISIONS if (out / p / "checkpoints" / "last.pt").exists()]
    if previous:  # the demo's own earlier runs (a run folder with a checkpoint): run again from scratch
        print(f"demo: replacing the earlier demo runs in {out}", flush=True)
        for folder in previous:
            shutil.rmtree(folder)
    start = time.perf_counter()
    run_demo(out, device=args.device, epochs=args.epochs, log=lambda m: print(m, flush=True))
    print()
    print((out / "summary.md").read_text(), end="")
    print(f"\nwrote {out / 'summary.json'} and {out / 'summary.md'} ({time.perf_counter() - start:.0f} s in all)")
    return 0
