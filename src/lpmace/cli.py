"""The `lpmace` command line: one subcommand per module in `lpmace.commands`.

A subcommand module defines ``HELP`` (one line), ``add_arguments(parser)`` and ``run(args) -> int``
and keeps its heavy imports inside ``run``, so ``lpmace --help`` stays fast. To add one, write the
module and list its name in `COMMANDS`.

Bad input never ends in a traceback: `InputError` and OS errors on user paths are printed as one
``lpmace: error: ...`` line on stderr and the exit status is 2. So is running out of memory (with
what ran out and a hint), since its usual cause is input too big for the machine. Ctrl-C anywhere
prints ``lpmace: interrupted`` and exits 130 (128 + SIGINT, the shell's convention); commands that
can stop cleanly (train, md) catch it themselves first and say what they kept.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from typing import Sequence

from lpmace.errors import InputError

COMMANDS = ("convert", "info", "train", "eval", "precision", "demo", "md", "bench", "quantize", "active")
EXIT_INPUT_ERROR = 2
EXIT_INTERRUPTED = 130


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
    try:
        args = build_parser().parse_args(argv)
        return int(args.run(args) or 0)
    except KeyboardInterrupt:
        print("lpmace: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except InputError as err:
        error(str(err))
    except OSError as err:
        error(f"{err.filename}: {err.strerror}" if err.filename and err.strerror else str(err))
    except (MemoryError, RuntimeError) as err:
        what = _out_of_memory(err)
        if what is None:
            raise
        error(f"out of {what} memory{_request(err)}; use a smaller batch (--batch-size, batch_size=) or "
              "smaller structures, or a machine with more memory")
    return EXIT_INPUT_ERROR


def _out_of_memory(err: BaseException) -> str | None:
    """"GPU" or "CPU" when `err` is torch's or Python's out-of-memory error, else None."""
    import torch  # already imported by any command that could run out of memory

    message = str(err).lower()
    if isinstance(err, torch.OutOfMemoryError) or "cuda out of memory" in message:
        return "GPU"
    if isinstance(err, MemoryError) or any(s in message for s in ("can't allocate memory", "not enough memory",
                                                                    "out of memory", "bad_alloc")):
        return "CPU"
    return None


def _request(err: BaseException) -> str:
    """" (tried to allocate 20.00 GiB)" from torch's message (CUDA words it so, the CPU in bytes), or ""."""
    import re

    if (match := re.search(r"allocate ([\d.]+ [KMGT]?i?B)\b", str(err))) is not None:
        return f" (tried to allocate {match.group(1)})"
    if (match := re.search(r"allocate (\d+) bytes", str(err))) is not None:
        return f" (tried to allocate {int(match.group(1)) / 2**30:.3g} GiB)"
    return ""


if __name__ == "__main__":
    sys.exit(main())
