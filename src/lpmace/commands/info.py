"""`lpmace info MODEL.safetensors`: print a model file's config and parameter count."""

from __future__ import annotations

import argparse

HELP = "print the config and parameter count of an lpmace model file"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model", metavar="MODEL.safetensors", help="lpmace model file")


def run(args: argparse.Namespace) -> int:
    import lpmace.io
    from lpmace.quantize import quantization_info

    model = lpmace.io.load(args.model)
    parameters = list(model.parameters())
    n_parameters = sum(p.numel() for p in parameters)
    dtypes = ", ".join(sorted({str(p.dtype).removeprefix("torch.") for p in parameters}))
    print(f"file: {args.model}")
    print(f"parameters: {n_parameters:,} ({dtypes or 'none'})")
    quantization = quantization_info(model)
    if quantization is not None:
        layers = ", ".join(f"{name}: {mode}" for name, mode in quantization["layers"].items())
        print(f"readout quantization: {quantization['readout']} (torchao {quantization['torchao']}; {layers})")
    print("config:")
    for key, value in model.config.to_dict().items():
        print(f"  {key}: {value}")
    return 0
