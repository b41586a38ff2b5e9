"""`lpmace active CONFIG.yaml [--resume] [--out DIR]`: the active-learning loop (lpmace.active).

Under torchrun (``torchrun --nproc_per_node N -m lpmace active CONFIG.yaml``) the committee's members
are trained N at a time, one process per rank; the command line is the same."""

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
        loop.dist.barrier()  # every rank done before any leaves: gloo aborts a rank that leaves while a peer still sends
    except KeyboardInterrupt:
        if loop.dist.is_main:
            print(f"interrupted: continue with `lpmace active {args.config} --resume"
                  f"{f' --out {args.out}' if args.out else ''}`", flush=True)
        raise
    finally:
        loop.close()
    return 0
