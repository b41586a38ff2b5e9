"""`lpmace convert IN.model OUT.safetensors [--head NAME]`: import a mace-torch model into an lpmace
model file. A multi-head model (MH-0, MH-1, fine-tuned multi-head models) keeps the head NAME; without
--head it is refused with the list of its heads.

A mace-torch `.model` file is a pickle: loading it runs whatever code it contains. Converting is
therefore an explicit act of trust in the file, and the command says so before it loads anything.
The output is a safetensors file, which is safe to share.
"""

from __future__ import annotations

import argparse
import pathlib
import re
import warnings

from lpmace.commands import check_model_paths

HELP = "convert a mace-torch .model file (a pickle: trusted input only) to .safetensors"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("input", metavar="IN.model", help="mace-torch model saved with torch.save")
    parser.add_argument("output", metavar="OUT.safetensors", help="lpmace model file to write")
    parser.add_argument("--force", action="store_true", help="overwrite OUT if it exists")
    parser.add_argument("--head", metavar="NAME", default=None,
                        help="the head to keep of a multi-head model (its E0s, scale, shift and readouts)")


def run(args: argparse.Namespace) -> int:
    from lpmace.cli import warn
    from lpmace.errors import InputError

    source, target = pathlib.Path(args.input), pathlib.Path(args.output)
    check_model_paths(source, target, args.force)

    import lpmace.interop
    import lpmace.io

    # The trust warning is printed once, as a plain line, instead of through Python's warnings.
    warn(f"{source}: {lpmace.interop.TRUST_WARNING}")
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=re.escape(lpmace.interop.TRUST_WARNING))
        mace_model = lpmace.interop.load_mace_torch_model(source)
    try:
        model = lpmace.interop.from_mace_torch(mace_model, head=args.head)
    except InputError as err:
        raise InputError(f"{source}: {err}") from None
    lpmace.io.save(model, target)
    n_parameters = sum(p.numel() for p in model.parameters())
    print(f"wrote {target} ({n_parameters:,} parameters)")
    return 0
