"""Quantized readouts for inference: int8 or float8 weights for the readout linears and MLP, by torchao.

Only the readouts are quantized (DESIGN.md: the energy sum stays float64, nothing else changes).
Two steps, as gpt-fast and torchtitan do it: a module swap (`ReadoutLayers.from_readout` writes each
readout as `nn.Linear` layers), then torchao's ``quantize_`` with a filter that names the readout
layers it may convert. What was converted is logged as "converted N/M readout layers".

Modes (`MODES`; the scales are per output channel (per tensor for fp8-dynamic) and symmetric, s_j = max_i |W_ij| / 127.5 for
int8 and max_i |W_ij| / 448 for float8_e4m3fn):

    int8          int8 weights, float32 activations: y = (x @ qᵀ) · s   (torchao Int8WeightOnlyConfig)
    int8-dynamic  int8 weights and per-row int8 activations, int32 products (torch._int_mm); only
                  layers whose in and out widths are multiples of 8 (what cuBLAS' int8 GEMM takes)
    fp8           float8_e4m3fn weights, float32 activations (torchao Float8WeightOnlyConfig)
    fp8-dynamic   float8 weights and activations (torch._scaled_mm): CUDA GPUs of compute
                  capability >= 8.9 only; layers whose widths are multiples of 16

MACE's readouts are tiny (C -> 1 and C -> 16 -> 1): torchao's documentation warns that 8-bit GEMMs
lose to plain ones at such sizes, and `lpmace bench --workloads quantize` measures what they do.
Dynamic modes round the activations, so their forces are straight-through derivatives (see
`lpmace.nn.quantized_readout`), not the exact gradient of the energy they report.

`quantize_readouts` records the conversion on the model (`lpmace.conversions`): {"name":
"readout_quantization", "readout": MODE, "layers": {layer name: mode or "none"}, "torchao": version}.
Model files (`lpmace.io`) store a quantized layer's weight as two tensors, NAME.qdata (int8 or
float8_e4m3fn, [out, in]) and NAME.scale (float32, [out, 1]; [1, 1] for fp8-dynamic).
"""

from __future__ import annotations

import copy
import logging
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional

import torch

from lpmace.conversions import record
from lpmace.errors import InputError
from lpmace.nn.quantized_readout import ReadoutLayers, is_quantized

__all__ = ["MODES", "quantize_readouts", "quantization_info", "unsupported_reason", "readout_layer_names",
           "swap_readouts", "quantize_layers", "packed", "packed_state", "packed_shapes", "load_packed",
           "unpacked_weight"]

logger = logging.getLogger(__name__)
TORCHAO_REQUIREMENT = "torchao==0.18.0"


@dataclass(frozen=True)
class ReadoutMode:
    name: str
    description: str
    weight_dtype: torch.dtype
    dynamic: bool  # activations quantized at run time too
    multiple: int  # layers are converted only if both widths are multiples of this

    def accepts(self, layer: torch.nn.Linear) -> bool:
        return layer.in_features % self.multiple == 0 and layer.out_features % self.multiple == 0


MODES: Dict[str, ReadoutMode] = {
    m.name: m
    for m in (
        ReadoutMode("int8", "int8 weight-only", torch.int8, False, 1),
        ReadoutMode("int8-dynamic", "int8 weights and dynamic int8 activations", torch.int8, True, 8),
        ReadoutMode("fp8", "float8_e4m3fn weight-only", torch.float8_e4m3fn, False, 1),
        ReadoutMode("fp8-dynamic", "float8_e4m3fn weights and dynamic float8 activations (per-tensor scales)",
                    torch.float8_e4m3fn, True, 16),
    )
}


def readout_mode(name: str) -> ReadoutMode:
    if name not in MODES:
        raise InputError(f"unknown readout quantization {name!r} (use one of {', '.join(MODES)})")
    return MODES[name]


def unsupported_reason(mode: str, device: torch.device | str) -> Optional[str]:
    """Why `mode` cannot run on `device`, or None when it can (fp8-dynamic needs an sm_89+ GPU)."""
    device = torch.device(device)
    if readout_mode(mode).name != "fp8-dynamic":
        return None
    if device.type != "cuda":
        return f"fp8-dynamic needs a CUDA GPU of compute capability >= 8.9 (float8 GEMMs), not {device.type}"
    if torch.cuda.get_device_capability(device) < (8, 9):
        major, minor = torch.cuda.get_device_capability(device)
        return f"fp8-dynamic needs a GPU of compute capability >= 8.9, this one has {major}.{minor}"
    return None


def _device(model: torch.nn.Module) -> torch.device:
    """Where the model's readouts live (the device their quantized kernels will run on)."""
    return next(model.readouts.parameters()).device


def _torchao():
    """torchao.quantization, imported on first use (quiet about its CUDA-only extensions on a CPU)."""
    quiet = [logging.getLogger(name) for name in ("torchao", "torch.utils._pytree")]
    levels = [log.level for log in quiet]
    for log in quiet:
        log.setLevel(logging.ERROR)
    try:
        import torchao.quantization as q
    except ImportError as err:
        raise InputError(f"quantized readouts need torchao: pip install '{TORCHAO_REQUIREMENT}' "
                         f"(or lpmace[quant]) ({err})") from None
    finally:
        for log, level in zip(quiet, levels):
            log.setLevel(level)
    return q


def _torchao_config(mode: ReadoutMode):
    q = _torchao()
    # set_inductor_config=False: torchao would otherwise change global torch.compile settings.
    if mode.name == "int8":
        return q.Int8WeightOnlyConfig(granularity=q.PerRow(), set_inductor_config=False, version=2)
    if mode.name == "int8-dynamic":
        return q.Int8DynamicActivationInt8WeightConfig(granularity=q.PerRow(), set_inductor_config=False, version=2)
    if mode.name == "fp8":
        return q.Float8WeightOnlyConfig(granularity=q.PerRow(), set_inductor_config=False, version=2)
    # PerTensor: torchao's PerRow float8 GEMM accepts only bfloat16 weights (H100, torchao 0.18), and
    # the readouts' master weights are float32.
    return q.Float8DynamicActivationFloat8WeightConfig(granularity=q.PerTensor(), set_inductor_config=False, version=2)


def _check_unquantized(model: torch.nn.Module) -> None:
    if any(isinstance(r, ReadoutLayers) for r in model.readouts):
        raise InputError("the model's readouts are already quantized: quantize the unquantized model")


def swap_readouts(model: torch.nn.Module, fresh: bool = False) -> None:
    """Replace each readout of `model` (in place) by the same function as `ReadoutLayers`; with
    `fresh`, InputError if one already is (a model is quantized once)."""
    if fresh:
        _check_unquantized(model)
    for t, readout in enumerate(model.readouts):
        if not isinstance(readout, ReadoutLayers):
            model.readouts[t] = ReadoutLayers.from_readout(readout)


def readout_layer_names(model: torch.nn.Module) -> List[str]:
    """Fully qualified names of the readout linears, e.g. ["readouts.0.layers.0", "readouts.1.layers.0", ...]."""
    return [f"readouts.{t}.layers.{i}" for t, r in enumerate(model.readouts) for i in range(len(r.layers))]


def quantize_layers(model: torch.nn.Module, layer_modes: Dict[str, str]) -> None:
    """Quantize the named readout layers of a swapped `model` in place, each with its mode.

    torchao's ``quantize_`` walks the model and converts the `nn.Linear` modules the filter names;
    their weights are first made float32 (the dtype the quantized layers compute in).
    """
    for name in layer_modes.values():
        if name != "none" and (reason := unsupported_reason(name, _device(model))):
            raise InputError(reason)
    q = _torchao()
    for name in sorted(set(layer_modes.values()) - {"none"}):
        selected = {fqn for fqn, m in layer_modes.items() if m == name}
        for fqn in selected:
            model.get_submodule(fqn).float()
        q.quantize_(model, _torchao_config(MODES[name]), filter_fn=lambda module, fqn, chosen=selected: fqn in chosen)
    for fqn, name in layer_modes.items():  # what torchao converted, not what was asked
        readout_name, _, index = fqn.rpartition(".layers.")
        readout = model.get_submodule(readout_name)
        converted = name != "none" and is_quantized(model.get_submodule(fqn).weight)
        readout.modes[int(index)] = name if converted else "none"
        readout.dynamic[int(index)] = converted and MODES[name].dynamic


def quantize_readouts(model: torch.nn.Module, mode: str, *,
                      log: Optional[Callable[[str], None]] = None) -> torch.nn.Module:
    """A copy of `model` whose readout layers are quantized with `mode` (see `MODES`) where they fit.

    The copy lives on the model's device; `model` is unchanged. Logs "converted N/M readout layers".
    """
    spec = readout_mode(mode)
    _check_unquantized(model)
    reason = unsupported_reason(mode, _device(model))
    if reason:
        raise InputError(reason)
    quantized = copy.deepcopy(model)
    swap_readouts(quantized)
    names = readout_layer_names(quantized)
    layer_modes = {n: mode if spec.accepts(quantized.get_submodule(n)) else "none" for n in names}
    quantize_layers(quantized, layer_modes)
    for readout in quantized.readouts:
        readout.requested = mode
    converted = [n for n in names if is_quantized(quantized.get_submodule(n).weight)]
    skipped = [f"{n} ({quantized.get_submodule(n).in_features}->{quantized.get_submodule(n).out_features})"
               for n in names if n not in converted]
    message = f"converted {len(converted)}/{len(names)} readout layers to {mode} ({spec.description})"
    if skipped:
        message += f"; kept in float (widths not multiples of {spec.multiple}): {', '.join(skipped)}"
    (log or logger.info)(message)
    record(quantized, "readout_quantization", **quantization_info(quantized))
    return quantized


def quantization_info(model: torch.nn.Module) -> Optional[dict]:
    """{"readout": mode, "layers": {name: mode}, "torchao": version} of a quantized model, else None."""
    if not any(isinstance(r, ReadoutLayers) for r in model.readouts):
        return None
    layers = {f"readouts.{t}.layers.{i}": mode for t, r in enumerate(model.readouts) for i, mode in enumerate(r.modes)}
    requested = {r.requested for r in model.readouts}
    return {"readout": "/".join(sorted(requested)), "layers": layers, "torchao": _torchao_version()}


def packed(state: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    """`state` with each quantized weight NAME as plain tensors NAME.qdata and NAME.scale."""
    out = {}
    for name, value in state.items():
        if not is_quantized(value):
            out[name] = value
            continue
        zero_point = getattr(value, "zero_point", None)
        if zero_point is not None and bool(zero_point.any()):
            raise InputError(f"{name}: asymmetric quantization (non-zero zero points) cannot be saved")
        out[name + ".qdata"], out[name + ".scale"] = value.qdata, value.scale
    return out


def packed_state(model: torch.nn.Module) -> Dict[str, torch.Tensor]:
    """The state dict of `model` with each quantized weight as plain tensors (`packed`)."""
    return packed(model.state_dict())


def unpacked_weight(qdata: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """The float32 weight [out, in] that int8/float8 `qdata` [out, in] and `scale` [out, 1] (or [1, 1]) stand for."""
    return qdata.to(torch.float32) * scale.to(torch.float32)


def layer_modes_from_info(info: dict, model: torch.nn.Module) -> Dict[str, str]:
    """The {layer name: mode} of a "readout_quantization" conversion's parameters, checked against
    `model` (a swapped MACE of the file's config): every readout layer named once, every mode known."""
    layers = info.get("layers")
    if not isinstance(layers, dict):
        raise InputError(f"readout_quantization: 'layers' must be an object {{layer name: mode}}, got {layers!r:.80}")
    names = readout_layer_names(model)
    if sorted(layers) != sorted(names):
        raise InputError(f"readout_quantization names layers {sorted(layers)}, the model has {names}")
    for name, mode in layers.items():
        if mode != "none" and (not isinstance(mode, str) or mode not in MODES):
            raise InputError(f"readout_quantization layer {name}: unknown mode {mode!r} "
                             f"(known: none, {', '.join(MODES)})")
    return {name: layers[name] for name in names}


def scale_shape(mode: str, out_features: int) -> tuple:
    """Shape of a layer's stored scale: one per output channel, or one per tensor for fp8-dynamic."""
    return (1, 1) if mode == "fp8-dynamic" else (out_features, 1)


def packed_shapes(layer_modes: Dict[str, str], expected: Dict[str, tuple]) -> Dict[str, tuple]:
    """`expected` ({tensor name: (shape, dtype or None for any)} of a swapped model's file) with the
    layers `layer_modes` quantizes stored as NAME.qdata and NAME.scale."""
    expected = dict(expected)
    for fqn, mode in layer_modes.items():
        if mode == "none":
            continue
        shape, _ = expected.pop(fqn + ".weight")
        expected[fqn + ".weight.qdata"] = (shape, MODES[mode].weight_dtype)
        expected[fqn + ".weight.scale"] = (scale_shape(mode, shape[0]), torch.float32)
    return expected


def load_packed(model: torch.nn.Module, layer_modes: Dict[str, str], tensors: Dict[str, torch.Tensor],
                device: torch.device | str, requested: str) -> torch.nn.Module:
    """Fill a swapped `model` from checked file `tensors` and quantize it on `device` as saved.

    The layers are quantized from the stored weights (qdata · scale) and then given the stored
    qdata and scale themselves, so the loaded model computes bit for bit what was saved.
    """
    packed = {f"{fqn}.weight": fqn for fqn, mode in layer_modes.items() if mode != "none"}
    plain = {n: t for n, t in tensors.items() if n.rpartition(".")[0] not in packed}
    model.load_state_dict(plain, strict=False, assign=True)  # assign: the saved dtypes stay
    for name, fqn in packed.items():
        weight = unpacked_weight(tensors[name + ".qdata"], tensors[name + ".scale"])
        model.get_submodule(fqn).weight = torch.nn.Parameter(weight, requires_grad=False)
    model.to(device)
    quantize_layers(model, layer_modes)
    for name, fqn in packed.items():
        weight = model.get_submodule(fqn).weight
        if not is_quantized(weight):
            raise InputError(f"{fqn}: torchao {_torchao_version()} did not quantize this layer as "
                             f"{layer_modes[fqn]}, as the file says it was")
        for part in ("qdata", "scale"):
            stored, built = tensors[f"{name}.{part}"], getattr(weight, part)
            if stored.shape != built.shape or stored.dtype != built.dtype:
                raise InputError(f"{name}.{part}: stored {stored.dtype} {tuple(stored.shape)}, torchao "
                                 f"{_torchao_version()} builds {built.dtype} {tuple(built.shape)}")
            with torch.no_grad():
                built.copy_(stored.to(built.device))
    for readout in model.readouts:
        readout.requested = requested
    return model


def _torchao_version() -> str:
    import torchao

    return torchao.__version__
