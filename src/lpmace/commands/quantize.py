"""`lpmace quantize MODEL OUT [--readout MODE]`: a model file whose readouts compute with 8-bit weights.

Only the readout linears and MLP are quantized (torchao, see `lpmace.quantize`); everything else,
and the float64 energy sum, is as in MODEL. OUT is an ordinary lpmace model file: `lpmace eval`,
`lpmace md` and `lpmace.Calculator` load it like any other (torchao must be installed).
"""

from __future__ import annotations

import argparse

from lpmace.commands import check_model_paths
from lpmace.devices import DEVICE_HELP

HELP = "quantize a model's readouts (int8 / float8 weights, torchao) into a new model file"
READOUT_MODES = ("int8", "int8-dynamic", "fp8", "fp8-dynamic")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model", metavar="MODEL.safetensors", help="lpmace model file to quantize")
    parser.add_argument("output", metavar="OUT.safetensors", help="quantized model file to write")
    parser.add_argument("--readout", default="int8", metavar="MODE",
                        help=f"{' | '.join(READOUT_MODES)} (default: %(default)s); fp8-dynamic needs a "
                             "CUDA GPU of compute capability >= 8.9")
    parser.add_argument("--device", default="auto", help="device to quantize on: " + DEVICE_HELP)
    parser.add_argument("--force", action="store_true", help="overwrite OUT if it exists")


def run(args: argparse.Namespace) -> int:
    import pathlib

    from lpmace.devices import resolve_device
    from lpmace.errors import InputError

    source, target = pathlib.Path(args.model), pathlib.Path(args.output)
    if args.readout not in READOUT_MODES:
        raise InputError(f"--readout {args.readout!r}: unknown mode (use one of {', '.join(READOUT_MODES)})")
    check_model_paths(source, target, args.force)
    if target.exists() and target.resolve() == source.resolve():
        raise InputError(f"{target}: is the input model; write the quantized model to another file")
    device = resolve_device(args.device)

    import lpmace.io
    from lpmace.quantize import quantize_readouts, unsupported_reason

    reason = unsupported_reason(args.readout, device)
    if reason:
        raise InputError(f"--readout {args.readout}: {reason}")
    model = lpmace.io.load(source, device=device)
    try:
        quantized = quantize_readouts(model, args.readout, log=print)
    except InputError as err:
        raise InputError(f"{source}: {err}") from None
    lpmace.io.save(quantized, target)
    print(f"wrote {target} ({target.stat().st_size:,} bytes; {source} has {source.stat().st_size:,})")
    return 0
