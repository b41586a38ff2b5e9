"""Model files: `*.safetensors` holding the weights, with the MACEConfig and conversions as JSON metadata.

No pickle anywhere: loading a model file from a stranger reads tensors and a JSON string, and never
runs code. (mace-torch `.model` files are pickles; importing one is `lpmace convert`'s explicit act.)

Metadata keys (all strings, as safetensors requires):
    format          "lpmace-model"
    format_version  "1"
    lpmace_version  the package version that wrote the file
    config          json.dumps(model.config.to_dict()): the physics (MACEConfig)
    conversions     (converted models only) json.dumps(model.conversions): what was done to the built
                    model that changes the stored tensors, in order, e.g.
                    [{"name": "species_compression", "species_rank": 8, "int8_embedding": true, "how": "svd"},
                     {"name": "readout_quantization", "readout": "int8", "layers": {...}, "torchao": "0.18.0"}]
                    (see lpmace.conversions; a quantized layer NAME.weight is stored as NAME.weight.qdata
                    and NAME.weight.scale). `load` builds MACE(config), replays the list through the
                    registry (the structure, so the file's tensors can be checked against it), then
                    loads the tensors.

The backend (reference, Triton, compiled) and compilation are not stored: they are chosen when the
model is run, so a file written on a GPU loads on a CPU. Files written before the conversions list
(config keys species_rank and int8_embedding, metadata key readout_quantization) load as the same
model: those keys are read as the list they stand for.
"""

from __future__ import annotations

import json
import os
import pathlib
import re
from typing import Any

import safetensors
import safetensors.torch
import torch

from lpmace.atomic import atomic_open
from lpmace.conversions import applied, legacy_conversions, rebuild
from lpmace.errors import InputError
from lpmace.model import MACE, MACEConfig

__all__ = ["save", "load", "read_config", "FORMAT", "FORMAT_VERSION"]

FORMAT = "lpmace-model"
FORMAT_VERSION = "1"
_ZIP_MAGIC = b"PK\x03\x04"  # torch.save files (mace-torch .model) are zip archives


def save(model: MACE, path: str | os.PathLike) -> pathlib.Path:
    """Write `model` (weights and config) to `path`, atomically.

    The file is first written to a temporary file in the destination folder and then renamed over
    `path` (os.replace), so a reader sees either the old file or the complete new one, and a
    failure leaves no partial file behind. A missing destination folder raises FileNotFoundError.
    Returns the path written.
    """
    path = pathlib.Path(path)
    from lpmace import __version__

    state = model.state_dict()
    for step, params in applied(model):
        state = step.pack(model, params, state)
    for name, value in state.items():
        if type(value) not in (torch.Tensor, torch.nn.Parameter):  # e.g. torchao's quantized tensors
            raise InputError(f"{name}: a {type(value).__name__}, not a plain tensor: the model was converted "
                             "without recording it in model.conversions (see lpmace.conversions)")
    tensors = {
        name: value.detach().to("cpu").contiguous().clone()  # clone: safetensors refuses shared storage
        for name, value in state.items()
    }
    metadata = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "lpmace_version": __version__,
        "config": json.dumps(model.config.to_dict()),
    }
    if model.conversions:
        metadata["conversions"] = json.dumps(model.conversions)
    payload = safetensors.torch.save(tensors, metadata=metadata)

    with atomic_open(path, "wb") as f:
        f.write(payload)
    return path


def _read(path: pathlib.Path) -> tuple[dict[str, str], dict[str, torch.Tensor]]:
    """The metadata and tensors of a safetensors file; InputError naming the file if it is not one."""
    if not path.is_file():
        # Let the OS word it ("No such file or directory", "Is a directory").
        open(path, "rb").close()
    try:
        with safetensors.safe_open(str(path), framework="pt", device="cpu") as f:
            metadata = f.metadata() or {}
            # copies: the tensors safetensors gives can share the mapped file, which a later write to
            # the same path would change under a model already in memory
            tensors = {name: f.get_tensor(name).clone() for name in f.keys()}
    except (safetensors.SafetensorError, ValueError, RuntimeError) as err:
        with open(path, "rb") as raw:
            is_zip = raw.read(4) == _ZIP_MAGIC
        hint = (
            " (it looks like a torch.save/mace-torch .model file: convert it with "
            "`lpmace convert IN.model OUT.safetensors`)"
            if is_zip
            else ""
        )
        raise InputError(f"{path}: not a readable safetensors file{hint}: {err}") from None
    return metadata, tensors


def _config_from_metadata(path: pathlib.Path, metadata: dict[str, str]) -> tuple[MACEConfig, list]:
    """The file's MACEConfig and conversions list (older files' keys read as the list)."""
    if metadata.get("format") != FORMAT:
        raise InputError(
            f"{path}: not an lpmace model file (metadata 'format' is "
            f"{metadata.get('format')!r}, expected {FORMAT!r})"
        )
    if metadata.get("format_version") != FORMAT_VERSION:
        raise InputError(
            f"{path}: unsupported lpmace model format_version {metadata.get('format_version')!r} "
            f"(this lpmace reads {FORMAT_VERSION!r})"
        )
    try:
        raw = json.loads(metadata["config"])
    except (KeyError, json.JSONDecodeError) as err:
        raise InputError(f"{path}: missing or malformed 'config' metadata ({err})") from None
    if not isinstance(raw, dict):
        raise InputError(f"{path}: 'config' metadata is not a JSON object")
    try:
        raw, conversions = legacy_conversions(raw, metadata)
    except InputError as err:
        raise InputError(f"{path}: {err}") from None
    if "conversions" in metadata:
        if conversions:
            raise InputError(f"{path}: 'conversions' metadata and the older species_rank, int8_embedding or "
                             "readout_quantization keys cannot both be given")
        try:
            conversions = json.loads(metadata["conversions"])
        except json.JSONDecodeError as err:
            raise InputError(f"{path}: malformed 'conversions' metadata ({err})") from None
    try:
        return MACEConfig.from_dict(_tuples(raw)), conversions
    except (InputError, TypeError, ValueError) as err:
        raise InputError(f"{path}: bad model config: {err}") from None


def _tuples(value: Any) -> Any:
    """JSON has no tuples: MACEConfig's sequence fields come back as lists; make them tuples again."""
    if isinstance(value, list):
        return tuple(_tuples(v) for v in value)
    if isinstance(value, dict):
        return {k: _tuples(v) for k, v in value.items()}
    return value


def read_config(path: str | os.PathLike) -> MACEConfig:
    """The MACEConfig stored in an lpmace model file (validated; weights are not checked)."""
    path = pathlib.Path(path)
    metadata, _ = _read(path)
    return _config_from_metadata(path, metadata)[0]


def load(path: str | os.PathLike, device: str | torch.device = "cpu") -> MACE:
    """Read a model written by `save`; the weights keep the dtypes they were saved in.

    Raises InputError naming the file when it is not an lpmace safetensors model, its config or
    conversions are invalid, or its tensors do not match the model the config and conversions
    describe (missing, extra, or of the wrong shape).
    """
    path = pathlib.Path(path)
    metadata, tensors = _read(path)
    config, conversions = _config_from_metadata(path, metadata)
    _check_sizes(path, config, tensors)
    try:
        model = MACE(config)
    except (InputError, TypeError, ValueError) as err:
        raise InputError(f"{path}: bad model config: {err}") from None

    try:
        rebuild(model, conversions)  # the structure; the weights come from the file below
        expected = {name: (tuple(t.shape), None) for name, t in model.state_dict().items()}
        for step, params in applied(model):
            expected = step.shapes(model, params, expected)
    except InputError as err:
        raise InputError(f"{path}: {err}") from None
    _check_tensors(path, expected, tensors)
    _check_floating(path, model.state_dict(), tensors)
    fill = [(step, params) for step, params in applied(model) if step.fill is not None]
    if fill:
        (step, params), = fill  # a model's readouts are quantized once (rebuild refuses a second time)
        try:
            return step.fill(model, params, tensors, device)
        except InputError as err:
            raise InputError(f"{path}: {err}") from None

    # assign=True keeps the saved dtypes, so a save/load round trip is bit-identical.
    model.load_state_dict(tensors, strict=True, assign=True)
    return model.to(device)


_CONTRACTION = re.compile(r"products\.(\d+)\.contraction\.weights\.L(\d+)_nu(\d+)\b")


def _check_sizes(path: pathlib.Path, config: MACEConfig, tensors: dict[str, torch.Tensor]) -> None:
    """Refuse a config the file's own tensors cannot belong to, before MACE(config) allocates.

    Building the model allocates what the config asks for (weights, and coupling tables that grow
    steeply with correlation and max_ell) before the shapes can be compared, so an edited or damaged
    config could ask for terabytes. What the tensors show is checked first: the correlation order of
    each layer and max_L (from the contraction weights' names, LL_nuN), and no width larger than the
    largest tensor dimension in the file (the radial MLP's output is at least (max_ell + 1) * channels).
    """
    orders: dict[int, int] = {}
    max_l = 0
    for name in tensors:
        if (match := _CONTRACTION.match(name)) is not None:
            layer, degree_l, nu = (int(g) for g in match.groups())
            orders[layer] = max(orders.get(layer, 0), nu)
            max_l = max(max_l, degree_l)
    found = tuple(orders.get(i, 0) for i in range(max(orders, default=-1) + 1))
    if found != tuple(config.correlation):
        raise InputError(f"{path}: config correlation {list(config.correlation)} does not match the contraction "
                         f"weights in the file (correlation {list(found)}): the config or the tensors are damaged")
    if config.num_interactions > 1 and max_l != config.max_L:
        raise InputError(f"{path}: config max_L {config.max_L} does not match the contraction weights in the file "
                         f"(max_L {max_l}): the config or the tensors are damaged")
    largest = max((max(t.shape, default=1) for t in tensors.values()), default=0)
    widths = {"channels": config.channels, "num_bessel": config.num_bessel,
              "radial_mlp": max(config.radial_mlp, default=1),
              "(max_ell + 1) * channels": (config.max_ell + 1) * config.channels}
    if config.num_interactions > 1:  # one interaction: the only readout is linear, readout_mlp has no tensor
        widths["readout_mlp"] = config.readout_mlp
    for key, width in widths.items():
        if width > largest:
            raise InputError(f"{path}: config {key} = {width} is larger than any tensor dimension in the file "
                             f"(at most {largest}): the config or the tensors are damaged")


def _check_floating(path: pathlib.Path, reference: dict[str, torch.Tensor], tensors: dict[str, torch.Tensor]) -> None:
    """InputError naming the tensors stored as integers where the model has floating-point weights
    (an integer weight would fail deep inside the first model call)."""
    wrong = [f"{name} ({t.dtype})" for name, t in tensors.items()
             if name in reference and reference[name].is_floating_point() and not t.is_floating_point()]
    if wrong:
        raise InputError(f"{path}: weights must be floating point; integer tensor(s): {', '.join(wrong[:5])}"
                         + (f" and {len(wrong) - 5} more" if len(wrong) > 5 else ""))


def _check_tensors(path: pathlib.Path, expected: dict, tensors: dict[str, torch.Tensor]) -> None:
    """InputError naming `path` unless `tensors` are exactly the `expected` {name: (shape, dtype or None)}."""
    missing = sorted(set(expected) - set(tensors))
    extra = sorted(set(tensors) - set(expected))
    if missing or extra:
        parts = []
        if missing:
            parts.append(f"missing tensor(s) {', '.join(missing)}")
        if extra:
            parts.append(f"unexpected tensor(s) {', '.join(extra)}")
        raise InputError(f"{path}: tensors do not match the config: {'; '.join(parts)}")
    wrong = [
        f"{name} {tuple(tensors[name].shape)} (expected {shape})"
        for name, (shape, _) in expected.items()
        if tuple(tensors[name].shape) != shape
    ]
    if wrong:
        raise InputError(f"{path}: tensor shapes do not match the config: {', '.join(wrong)}")
    wrong = [f"{name} {tensors[name].dtype} (expected {dtype})" for name, (_, dtype) in expected.items()
             if dtype is not None and tensors[name].dtype != dtype]
    if wrong:
        raise InputError(f"{path}: tensor dtypes do not match the quantization: {', '.join(wrong)}")
