"""`lpmace info MODEL.safetensors`: print a model file's config, conversions and parameter count."""

from __future__ import annotations

import argparse

HELP = "print the config and parameter count of an lpmace model file"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model", metavar="MODEL.safetensors", help="lpmace model file")


def run(args: argparse.Namespace) -> int:
    import lpmace.io

    model = lpmace.io.load(args.model)
    parameters = list(model.parameters())
    n_parameters = sum(p.numel() for p in parameters)
    dtypes = ", ".join(sorted({str(p.dtype).removeprefix("torch.") for p in parameters}))
    print(f"file: {args.model}")
    print(f"parameters: {n_parameters:,} ({dtypes or 'none'})")
    for entry in model.conversions:  # in the order they were applied (lpmace.conversions)
        print(_described(entry))
    print("config:")
    for key, value in model.config.to_dict().items():
        print(f"  {key}: {value}")
    return 0


def _described(entry: dict) -> str:
    if entry["name"] == "readout_quantization":
        layers = ", ".join(f"{name}: {mode}" for name, mode in entry["layers"].items())
        return f"readout quantization: {entry['readout']} (torchao {entry.get('torchao')}; {layers})"
    if entry["name"] == "species_compression":
        rank = "full" if entry["species_rank"] is None else entry["species_rank"]
        return (f"species compression: rank {rank}" + (", int8 embedding" if entry["int8_embedding"] else "")
                + (f" ({entry['how']})" if "how" in entry else ""))
    return f"{entry['name']}: " + ", ".join(f"{k}={v}" for k, v in entry.items() if k != "name")
