"""The `lpmace` command line: one subcommand per module in `lpmace.commands`.

A subcommand module defines ``HELP`` (one line), ``add_arguments(parser)`` and ``run(args) -> int``
and keeps its heavy imports inside ``run``, so ``lpmace --help`` stays fast. To add one, write the
module and list its name in `COMMANDS`.

Bad input never ends in a traceback: `InputError` and OS errors on user paths are printed as one
``lpmace: error: ...`` line on stderr and the exit status is 2.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from typing import Sequence

from lpmace.errors import InputError

COMMANDS = ("convert", "info", "train", "eval", "precision", "demo", "md", "bench", "quantize")
EXIT_INPUT_ERROR = 2


def build_parser() -> argparse.ArgumentParser:
    from lpmace import __version__

    parser = argparse.ArgumentParser(
        prog="lpmace",
        description="Low-precision training and inference for MACE interatomic potentials.",
    )
    parser.add_argument("--version", action="version", version=f"lpmace {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in COMMANDS:
        module = importlib.import_module(f"lpmace.commands.{name}")
        sub = subparsers.add_parser(name, help=module.HELP, description=module.HELP)
        module.add_arguments(sub)
        sub.set_defaults(run=module.run)
    return parser


def error(message: str) -> None:
    """Print one `lpmace: error:` line on stderr (newlines in the message are flattened)."""
    print(f"lpmace: error: {' '.join(str(message).split())}", file=sys.stderr)


def warn(message: str) -> None:
    print(f"lpmace: warning: {' '.join(str(message).split())}", file=sys.stderr)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit status (0 ok, 2 bad input or usage)."""
    args = build_parser().parse_args(argv)
    try:
        return int(args.run(args) or 0)
    except InputError as err:
        error(str(err))
    except OSError as err:
        error(f"{err.filename}: {err.strerror}" if err.filename and err.strerror else str(err))
    return EXIT_INPUT_ERROR


if __name__ == "__main__":
    sys.exit(main())
