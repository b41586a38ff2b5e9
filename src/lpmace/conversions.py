"""Conversions: what is done to a built MACE that changes how its weights are stored, kept as a list.

`MACE(config)` builds the physics (`MACEConfig`). A conversion then swaps some modules for another
stored form of the same function; each one appends {"name": NAME, **parameters} (plain JSON) to the
model's ordered list `model.conversions`:

    compressed = compress(model, species_rank=2)          # lpmace.compress
    compressed.conversions == [{"name": "species_compression", "species_rank": 2,
                                "int8_embedding": False, "how": "svd"}]

`lpmace.io.save` writes the list into the file's metadata; `lpmace.io.load` builds MACE(config), gives
it each conversion's structure in order (`rebuild`: which modules hold which tensors of which shapes;
the weights are the file's), checks the file's tensors against that, and fills it. Registered:

    species_compression   species_rank (null or 1..elements), int8_embedding (bool), how ("svd" from
                          trained weights, "random" to train from scratch; lpmace.compress)
    readout_quantization  readout (mode), layers ({layer: mode or "none"}), torchao (version)
                          (lpmace.quantize; torchao is imported only for a model that has it)

Backend and compilation are not conversions: they choose how the same tensors are computed with,
when the model runs, so they are not stored (a file written on a GPU loads on a CPU).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional, Tuple

import torch

from lpmace.errors import InputError

__all__ = ["CONVERSIONS", "Conversion", "conversion", "applied", "record", "rebuild", "legacy_conversions"]


def _same(model, params, value):
    return value


@dataclass(frozen=True)
class Conversion:
    """name; keys: the parameters it takes (all required unless in `optional`); rebuild(model, params):
    give a freshly built model this conversion's structure, in place (weights arbitrary); shapes(model,
    params, expected) and pack(model, params, state): the file's tensors {name: (shape, dtype or None)}
    and the tensors to write when they differ from the state dict; fill(model, params, tensors,
    device): load the checked file tensors into the rebuilt model (None: load_state_dict does)."""

    name: str
    keys: Tuple[str, ...]
    rebuild: Callable[[torch.nn.Module, dict], None]
    optional: Tuple[str, ...] = ()
    shapes: Callable[[torch.nn.Module, dict, dict], dict] = _same
    pack: Callable[[torch.nn.Module, dict, dict], dict] = _same
    fill: Optional[Callable] = None

    def checked(self, entry: dict) -> dict:
        """The parameters of a list entry; InputError unless it names exactly this conversion's keys."""
        params = {k: v for k, v in entry.items() if k != "name"}
        missing = [k for k in self.keys if k not in params and k not in self.optional]
        unknown = sorted(set(params) - set(self.keys))
        if missing or unknown:
            raise InputError(f"conversion {self.name}: " + "; ".join(
                ([f"missing parameter(s) {', '.join(missing)}"] if missing else [])
                + ([f"unknown parameter(s) {', '.join(unknown)}"] if unknown else [])))
        return params


def _species_rebuild(model, params) -> None:
    from lpmace.compress import check_compression, compress_element_weights

    rank, int8, how = params["species_rank"], params["int8_embedding"], params.get("how", "random")
    check_compression(rank, int8, how, len(model.config.atomic_numbers))
    # "random" draws the structure without an SVD: the start of a compressed model trained from
    # scratch, and the same shapes as "svd" for a file whose weights are about to be loaded.
    compress_element_weights(model, rank, int8, how="random")


def _readout_rebuild(model, params) -> None:
    from lpmace import quantize

    quantize.swap_readouts(model, fresh=True)
    quantize.layer_modes_from_info(params, model)


def _readout_shapes(model, params, expected) -> dict:
    from lpmace import quantize

    return quantize.packed_shapes(quantize.layer_modes_from_info(params, model), expected)


def _readout_pack(model, params, state) -> dict:
    from lpmace import quantize

    return quantize.packed(state)


def _readout_fill(model, params, tensors, device):
    from lpmace import quantize

    modes = quantize.layer_modes_from_info(params, model)
    return quantize.load_packed(model, modes, tensors, device, str(params.get("readout")))


CONVERSIONS: Dict[str, Conversion] = {
    c.name: c for c in (
        Conversion("species_compression", ("species_rank", "int8_embedding", "how"), _species_rebuild,
                   optional=("how",)),
        Conversion("readout_quantization", ("readout", "layers", "torchao"), _readout_rebuild,
                   optional=("torchao",), shapes=_readout_shapes, pack=_readout_pack, fill=_readout_fill),
    )
}


def conversion(name: object) -> Conversion:
    if not isinstance(name, str) or name not in CONVERSIONS:
        raise InputError(f"unknown conversion {name!r:.80} (known: {', '.join(CONVERSIONS)})")
    return CONVERSIONS[name]


def applied(model: torch.nn.Module) -> List[Tuple[Conversion, dict]]:
    """(Conversion, parameters) of each entry of `model.conversions`, in the order they were applied."""
    return [(conversion(e["name"]), {k: v for k, v in e.items() if k != "name"})
            for e in getattr(model, "conversions", [])]


def record(model: torch.nn.Module, name: str, **params) -> None:
    """Append {"name": name, **params} to `model.conversions` (params must be plain JSON)."""
    json.dumps(params)  # TypeError here, not when the model is saved
    model.conversions = [*getattr(model, "conversions", []), {"name": name, **params}]


def rebuild(model: torch.nn.Module, entries: object) -> torch.nn.Module:
    """Give a freshly built `model` the structure of the conversions `entries` (a list of
    {"name": ..., **params}, in the order they were applied), in place, and record them on it.
    Returns `model`. InputError for an unknown name or bad parameters."""
    if not isinstance(entries, list) or not all(isinstance(e, dict) for e in entries):
        raise InputError(f"conversions must be a list of objects with a 'name', got {entries!r:.80}")
    for entry in entries:
        step = conversion(entry.get("name"))
        params = step.checked(entry)
        step.rebuild(model, params)
        record(model, step.name, **params)
    return model


def legacy_conversions(config: dict, metadata: Dict[str, str]) -> Tuple[dict, list]:
    """(physics-only config dict, conversions list) of a file written before conversions were listed:
    its config's species_rank / int8_embedding and its "readout_quantization" metadata key."""
    config = dict(config)
    entries = []
    rank, int8 = config.pop("species_rank", None), config.pop("int8_embedding", False)
    if rank is not None or int8:
        entries.append({"name": "species_compression", "species_rank": rank, "int8_embedding": int8})
    if "readout_quantization" in metadata:
        try:
            info = json.loads(metadata["readout_quantization"])
        except json.JSONDecodeError as err:
            raise InputError(f"malformed 'readout_quantization' metadata ({err})") from None
        if not isinstance(info, dict):
            raise InputError("'readout_quantization' metadata must be an object with a 'layers' object")
        entries.append({"name": "readout_quantization", **{k: v for k, v in info.items() if k != "name"}})
    return config, entries
