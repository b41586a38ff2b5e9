"""`lpmace active CONFIG.yaml [--resume] [--out DIR]`: the active-learning loop (lpmace.active)."""

from __future__ import annotations

import argparse

HELP = "active learning: train a committee, sample MD, label its most uncertain frames, repeat"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("config", metavar="CONFIG.yaml", help="active-learning config (YAML)")
    parser.add_argument("--resume", action="store_true",
                        help="continue the run in its output folder (after a kill, or with labels supplied)")
    parser.add_argument("--out", metavar="DIR", help="output folder (the config's output_dir otherwise)")


def run(args: argparse.Namespace) -> int:
    from lpmace.active import ActiveLoop, load_active_config

    cfg, oracle = load_active_config(args.config, args.out)
    loop = ActiveLoop(cfg, oracle, resume=args.resume, log=lambda m: print(m, flush=True))
    try:
        loop.run()
    except KeyboardInterrupt:
        print(f"interrupted: continue with `lpmace active {args.config} --resume"
              f"{f' --out {args.out}' if args.out else ''}`", flush=True)
        raise
    return 0
