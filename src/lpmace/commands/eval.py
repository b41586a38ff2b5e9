"""`lpmace eval MODEL DATA.xyz [...]`: errors of a model on labelled extended-XYZ files.

Everything that can be wrong with the input (model file, data files, keys, elements, precision,
device, output folder) is checked before the first structure is evaluated, so a typo fails in a
second, not after an hour. One table row per file; `--json` and `--parity` write the full metrics.
"""

from __future__ import annotations

import argparse

from lpmace.devices import AUTO, DEVICE_HELP

HELP = "energy, force and stress errors of a model on labelled extended-XYZ files"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model", metavar="MODEL.safetensors", help="lpmace model file")
    parser.add_argument("data", nargs="+", metavar="DATA.xyz",
                        help="extended-XYZ file(s) with reference labels; embedded:3bpa/test_300K.xyz "
                             "names a file shipped with lpmace")
    parser.add_argument("--precision", metavar="P",
                        help="preset name or YAML policy (default: the model's, fp64 for float64 weights)")
    for label, default in (("energy", "REF_energy"), ("forces", "REF_forces"), ("stress", "REF_stress")):
        parser.add_argument(f"--{label}-key", default=default, metavar="K",
                            help=f"{label} label in the files (default: %(default)s; 'none': not read)")
    parser.add_argument("--batch-size", type=int, default=16, metavar="N", help="default: %(default)s")
    parser.add_argument("--device", default=AUTO, help=DEVICE_HELP)
    parser.add_argument("--backend", default="auto", metavar="B",
                        help="auto, reference, triton or compiled (lpmace.backends; default: %(default)s)")
    parser.add_argument("--json", metavar="OUT.json", help="write all metrics as JSON")
    parser.add_argument("--parity", metavar="DIR", help="write a parity plot PNG per data file into DIR")


def run(args: argparse.Namespace) -> int:
    import json
    import pathlib
    import re
    import sys

    from lpmace import datasets
    from lpmace.atomic import atomic_write_text, check_writable
    from lpmace.bench.measure import strict_json
    from lpmace.data import graph_from_configuration, read_configurations
    from lpmace.devices import resolve_device
    from lpmace.elements import check_configurations
    from lpmace.errors import InputError
    from lpmace.evaluate import evaluate
    from lpmace.io import load
    from lpmace.plots import parity_plot
    from lpmace.backends import resolve, use
    from lpmace.precision import resolve_policy

    if args.batch_size < 1:
        raise InputError(f"--batch-size must be at least 1, got {args.batch_size}")
    device = resolve_device(args.device)
    backend = resolve(args.backend, device)  # a bad --backend fails before anything is read
    json_path = pathlib.Path(args.json) if args.json else None
    if json_path is not None:
        check_writable(json_path, "--json")
    parity_dir = pathlib.Path(args.parity) if args.parity else None
    if parity_dir is not None and parity_dir.exists() and not parity_dir.is_dir():
        raise InputError(f"{parity_dir}: exists and is not a folder")
    if parity_dir is not None:  # it is created later (with its parents): the nearest existing folder must take it
        existing = next(p for p in (parity_dir, *parity_dir.parents) if p.exists())
        check_writable(existing / "parity.png", "--parity")

    model = load(args.model, device=device)
    policy = resolve_policy(args.precision, default=model.default_precision)
    run = use(model, backend, device)  # the model, or its compiled wrapper
    keys = {f"{label}_key": None if value.lower() == "none" else value
            for label, value in (("energy", args.energy_key), ("forces", args.forces_key),
                                 ("stress", args.stress_key))}
    datasets_graphs = []
    for name in args.data:
        path = datasets.resolve_path(name)
        try:
            configs = read_configurations(path, **keys)
        except InputError as err:  # its hint names the Python argument; name the flag instead
            raise InputError(re.sub(r"set (\w+)_key to null, None in Python,", r"pass --\1-key none", str(err))) from None
        check_configurations(configs, model.config.atomic_numbers)
        datasets_graphs.append((name, [graph_from_configuration(c, model.config.r_max) for c in configs]))

    results = {}
    for name, graphs in datasets_graphs:
        results[name] = evaluate(run, graphs, precision=policy, batch_size=args.batch_size,
                                 device=device, progress=sys.stderr.isatty())
    print(f"model {args.model}, precision {policy.name}, device {device}, backend {backend}")
    print(_table(results))

    if parity_dir is not None:
        parity_dir.mkdir(parents=True, exist_ok=True)
        stems = [datasets.display_stem(name) for name in results]
        for i, (name, metrics) in enumerate(results.items()):
            stem = stems[i] if stems.count(stems[i]) == 1 else f"{i}_{stems[i]}"
            written = parity_plot(metrics, parity_dir / f"parity_{stem}.png", f"{name} ({policy.name})")
            print(f"wrote {written}")
    if json_path is not None:
        payload = {"model": str(args.model), "precision": policy.to_dict(), "device": str(device),
                   "files": {name: m.to_dict() for name, m in results.items()}}
        # Strict JSON (a diverged model's NaN becomes null), which every JSON reader accepts.
        atomic_write_text(json_path, json.dumps(strict_json(payload), indent=2, allow_nan=False) + "\n")
        print(f"wrote {json_path}")
    return 0


def _table(results: dict) -> str:
    """Aligned text table: one row per file; stress columns only when some file has stress."""
    with_stress = any(m.n_stress for m in results.values())
    header = ["file", "configs", "E RMSE", "E MAE", "E RMSE", "E MAE", "F RMSE", "F MAE"]
    units = ["", "", "meV/atom", "meV/atom", "meV", "meV", "meV/Å", "meV/Å"]
    if with_stress:
        header += ["S RMSE", "S MAE"]
        units += ["meV/Å³", "meV/Å³"]
    rows = [header, units]
    for name, m in results.items():
        values = [m.energy_rmse_mev_per_atom, m.energy_mae_mev_per_atom, m.energy_rmse_mev, m.energy_mae_mev,
                  m.force_rmse_mev_per_A, m.force_mae_mev_per_A]
        if with_stress:
            values += [m.stress_rmse_mev_per_A3, m.stress_mae_mev_per_A3]
        rows.append([name, str(m.n_configs)] + ["-" if v is None else f"{v:.2f}" for v in values])
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    return "\n".join(
        "  ".join(cell.ljust(w) if i == 0 else cell.rjust(w) for i, (cell, w) in enumerate(zip(row, widths))).rstrip()
        for row in rows
    )
