"""`lpmace train CONFIG.yaml [key=value ...]`: train a MACE model (see lpmace.train).

Under torchrun (``torchrun --nproc_per_node N -m lpmace train CONFIG.yaml``) every process is one
data-parallel rank (lpmace.train.distributed); the command line is the same."""

from __future__ import annotations

import argparse

from lpmace.devices import DEVICE_HELP

HELP = "train a model from a YAML config (key=value pairs override it)"


class _OverridesAfterOptions:
    """A parser mixin that accepts `lpmace train CONFIG.yaml --resume lr=0.1`: argparse alone fills
    the `key=value` list before the first option and calls what follows unrecognized; its intermixed
    parse (two passes, options then positionals) does not, but works only when called as the parse
    itself, which the top-level parser does through `parse_known_args`."""

    def parse_known_args(self, args=None, namespace=None):
        if getattr(self, "_in_intermixed_parse", False):  # the intermixed parse's own passes
            return super().parse_known_args(args, namespace)
        self._in_intermixed_parse = True
        try:
            return self.parse_known_intermixed_args(args, namespace)
        finally:
            self._in_intermixed_parse = False


def add_arguments(parser: argparse.ArgumentParser) -> None:
    # the top-level parser builds this subparser, with its own parser class: keep that class's behaviour
    parser.__class__ = type("TrainArgumentParser", (_OverridesAfterOptions, type(parser)), {})
    parser.add_argument("config", metavar="CONFIG.yaml", help="training config (YAML)")
    parser.add_argument("overrides", nargs="*", default=[], metavar="key=value",
                        help="overrides, e.g. epochs=10 model.channels=64 precision=bf16-mixed; "
                             "before or after the options")
    parser.add_argument("--resume", action="store_true",
                        help="continue the run in output_dir; its config may change only in "
                             "epochs, max_time, output_dir, device, backend, progress, tensorboard")
    parser.add_argument("--max-time", type=float, metavar="S", help="stop after S seconds of training")
    parser.add_argument("--out", metavar="DIR", help="output_dir")
    parser.add_argument("--device", help=DEVICE_HELP)
    parser.add_argument("--precision", help="preset name or YAML policy")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def run(args: argparse.Namespace) -> int:
    from lpmace.train import Trainer, load_train_config

    extra = [f"{key}={value}" for key, value in (
        ("max_time", args.max_time), ("output_dir", args.out), ("device", args.device),
        ("precision", args.precision)) if value is not None]
    if args.no_progress:
        extra.append("progress=false")
    cfg = load_train_config(args.config, tuple(args.overrides) + tuple(extra), resume=args.resume)
    trainer = Trainer(cfg, resume=args.resume, log=lambda m: print(m, flush=True))
    try:
        trainer.run()
    finally:
        trainer.dist.close()
    return 0
