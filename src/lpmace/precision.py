"""Precision policies: the one place that decides which dtype each part of MACE computes in.

A `PrecisionPolicy` names a dtype per component of the model (see COMPONENTS) and whether fp32
matmuls may use TF32 tensor cores. Blocks cast their inputs at their boundaries to the dtype the
policy names; there is no global autocast and no change of torch's default dtype. The same weights
run under any policy: precision is an argument of the forward pass, not a property of the model.

Floors (DESIGN.md "Numerics", refused with the reason when a policy asks for less):
- spherical harmonics and CG tables in >= float32: 16-bit tables break equivariance;
- accumulation (neighbour sums, contraction sums) in >= float32;
- the energy sum and E0s in float64: E0s are ~10³ eV per atom, bf16 has 8 mantissa bits;
- geometry (positions, edge vectors) in >= float32: vectors are differences of close numbers;
- parameters (master weights) in >= float32;
- learned neighbour densities (the divisors of density-normalised messages) in >= float32.
Parts listed in FOLLOWS (the ZBL repulsion, distance transforms, the pair-energy sum) are not set
on their own: they compute in the dtype of the component they follow, under its floor.
"""

from __future__ import annotations

import dataclasses
import math
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Union

import torch

from lpmace.errors import InputError

COMPONENTS: Dict[str, str] = {
    "geometry": "positions, cell, edge vectors and lengths",
    "radial": "Bessel basis and cutoff envelope",
    "radial_mlp": "radial MLP (per-edge tensor-product weights)",
    "spherical_harmonics": "spherical harmonics Y(r̂) of edge directions",
    "cg": "Clebsch-Gordan and symmetric-contraction tables",
    "tensor_product": "operands of the conv tensor product (Eq. 8)",
    "contraction": "operands of the symmetric contraction (Eq. 10-11)",
    "linear": "equivariant linears, embedding and skip connections",
    "readout": "readout linears and MLP",
    "accumulate": "neighbour sums and contraction accumulators",
    "density": "learned neighbour densities dividing the messages (density blocks)",
    "energy": "site-energy sum and E0s",
    "params": "master weights and optimizer state",
}

# Parts that are not set on their own: each computes in the dtype of the component it follows, whose
# floor is theirs (at least float32 for the geometry, float64 for the energy).
FOLLOWS: Dict[str, tuple] = {
    "distance_transform": ("geometry", "Agnesi distance transform of edge lengths"),
    "pair_repulsion": ("geometry", "ZBL pair repulsion per edge"),
    "pair_energy": ("energy", "neighbour sum of the pair repulsion"),
}

DTYPES: Dict[str, torch.dtype] = {
    "float64": torch.float64,
    "float32": torch.float32,
    "bfloat16": torch.bfloat16,
    "float16": torch.float16,
}
_ALIASES = {"fp64": "float64", "fp32": "float32", "bf16": "bfloat16", "fp16": "float16",
            "double": "float64", "float": "float32", "half": "float16"}
_BITS = {torch.float64: 64, torch.float32: 32, torch.bfloat16: 16, torch.float16: 16}
_FLOORS = {
    "geometry": (torch.float32, "edge vectors are differences of positions (DESIGN.md rule 4)"),
    "spherical_harmonics": (torch.float32, "16-bit spherical harmonics break equivariance (rule 2)"),
    "cg": (torch.float32, "16-bit CG tables break equivariance (rule 2)"),
    "accumulate": (torch.float32, "every reduction accumulates in at least float32 (rule 3)"),
    "energy": (torch.float64, "E0s are ~1e3 eV per atom: the energy sum is float64 (rule 1)"),
    "params": (torch.float32, "master weights and optimizer state are at least float32 (rule 5)"),
    "density": (torch.float32, "a neighbour density sums up to hundreds of edge terms and divides "
                               "every message of its atom"),
}


def parse_dtype(value: Union[str, torch.dtype], where: str = "dtype") -> torch.dtype:
    """'bf16', 'bfloat16', torch.bfloat16 ... -> torch.dtype; anything else is an InputError."""
    if isinstance(value, torch.dtype):
        if value in _BITS:
            return value
        raise InputError(f"{where}: unsupported dtype {value}")
    name = _ALIASES.get(str(value).lower(), str(value).lower())
    if name not in DTYPES:
        raise InputError(f"{where}: unknown dtype {value!r} (use one of {', '.join(DTYPES)})")
    return DTYPES[name]


@dataclass(frozen=True)
class PrecisionPolicy:
    """One dtype per model component plus the fp32 matmul mode. Validated on construction."""

    name: str
    geometry: torch.dtype = torch.float32
    radial: torch.dtype = torch.float32
    radial_mlp: torch.dtype = torch.float32
    spherical_harmonics: torch.dtype = torch.float32
    cg: torch.dtype = torch.float32
    tensor_product: torch.dtype = torch.float32
    contraction: torch.dtype = torch.float32
    linear: torch.dtype = torch.float32
    readout: torch.dtype = torch.float32
    accumulate: torch.dtype = torch.float32
    energy: torch.dtype = torch.float64
    params: torch.dtype = torch.float32
    density: torch.dtype = torch.float32
    tf32: bool = False

    def __post_init__(self):
        for comp in COMPONENTS:
            object.__setattr__(self, comp, parse_dtype(getattr(self, comp), f"precision {self.name!r}: {comp}"))
        for comp, (floor, why) in _FLOORS.items():
            got = getattr(self, comp)
            if _BITS[got] < _BITS[floor]:
                raise InputError(
                    f"precision {self.name!r}: {comp}={dtype_name(got)} is below the floor "
                    f"{dtype_name(floor)}: {why}"
                )

    @property
    def uses_fp16(self) -> bool:
        """True when some component is float16: training needs dynamic loss scaling."""
        return any(getattr(self, c) == torch.float16 for c in COMPONENTS)

    @property
    def is_16bit(self) -> bool:
        return any(_BITS[getattr(self, c)] == 16 for c in COMPONENTS)

    def follows(self, name: str) -> torch.dtype:
        """The dtype of a part that follows a component (FOLLOWS): e.g. the ZBL repulsion computes in
        the geometry dtype, so in at least float32 (float64 where positions are float64)."""
        return getattr(self, FOLLOWS[name][0])

    def block(self, name: str) -> "BlockDtypes":
        """The dtypes of the block that computes component `name` (one of COMPONENTS): its operands are
        rounded to the component's dtype; the heavy equivariant blocks ("tensor_product", "contraction")
        form their products and sums in at least the accumulate dtype (what a fused kernel does in
        registers); the matmul blocks compute in the operand dtype (the GEMM accumulates inside)."""
        if name not in COMPONENTS:
            raise InputError(f"precision {self.name!r}: no component {name!r} (known: {', '.join(COMPONENTS)})")
        operand = getattr(self, name)
        accumulate = widest(operand, self.accumulate)
        math = accumulate if name in _SUMMED_IN_ACCUMULATE else operand
        return BlockDtypes(operand=operand, math=math, table=self.cg, accumulate=accumulate)

    def to_dict(self) -> dict:
        out = {c: dtype_name(getattr(self, c)) for c in COMPONENTS}
        return {"name": self.name, **out, "tf32": self.tf32}

    def table(self) -> str:
        """A printable table: component, dtype, what it covers."""
        rows = [f"precision policy: {self.name}", f"{'component':<20} {'dtype':<9} covers"]
        rows += [f"{c:<20} {dtype_name(getattr(self, c)):<9} {COMPONENTS[c]}" for c in COMPONENTS]
        rows += [f"{n:<20} {dtype_name(self.follows(n)):<9} {what} (follows {c})" for n, (c, what) in FOLLOWS.items()]
        rows.append(f"{'tf32 matmuls':<20} {'on' if self.tf32 else 'off':<9} fp32 matmuls on TF32 tensor cores")
        return "\n".join(rows)


_SUMMED_IN_ACCUMULATE = ("tensor_product", "contraction")


@dataclass(frozen=True)
class BlockDtypes:
    """What one block computes in (`PrecisionPolicy.block`):
    operand     inputs and weights are rounded to this;
    math        products are formed in this (the block's output dtype);
    table       CG and coefficient tables are held in this (rounded, then widened to `math`);
    accumulate  sums (neighbour sums, contraction sums, skip additions) run in this."""

    operand: torch.dtype
    math: torch.dtype
    table: torch.dtype
    accumulate: torch.dtype


def dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).replace("torch.", "")


def _mixed(name: str, low: torch.dtype) -> PrecisionPolicy:
    return PrecisionPolicy(
        name, radial_mlp=low, tensor_product=low, contraction=low, linear=low, readout=low
    )


_F64 = {c: torch.float64 for c in COMPONENTS}
PRESETS: Dict[str, PrecisionPolicy] = {
    "fp64": PrecisionPolicy("fp64", **_F64),
    "fp32": PrecisionPolicy("fp32"),
    "tf32": PrecisionPolicy("tf32", tf32=True),
    "bf16-mixed": _mixed("bf16-mixed", torch.bfloat16),
    "fp16-mixed": _mixed("fp16-mixed", torch.float16),
    "bf16-full": PrecisionPolicy(
        "bf16-full", radial=torch.bfloat16, radial_mlp=torch.bfloat16, tensor_product=torch.bfloat16,
        contraction=torch.bfloat16, linear=torch.bfloat16, readout=torch.bfloat16,
    ),
    # The seed's layer-wise scaling: fp16 readout and intermediate (radial) MLPs; initial features,
    # spherical harmonics and CG stay fp32.
    "layerwise": PrecisionPolicy("layerwise", radial_mlp=torch.float16, readout=torch.float16),
}


def resolve_policy(spec: Union[str, Path, PrecisionPolicy, None], default: str = "fp64") -> PrecisionPolicy:
    """A preset name, a YAML file path, a PrecisionPolicy or None (-> `default` preset)."""
    if spec is None:
        spec = default
    if isinstance(spec, PrecisionPolicy):
        return spec
    key = str(spec)
    if key in PRESETS:
        return PRESETS[key]
    path = Path(key)
    if path.suffix.lower() in (".yaml", ".yml") or path.exists():
        return policy_from_yaml(path)
    raise InputError(f"unknown precision {key!r}: use a preset ({', '.join(PRESETS)}) or a YAML file")


def policy_from_yaml(path: Union[str, Path]) -> PrecisionPolicy:
    """YAML: optional `base: PRESET` plus component overrides, e.g. `base: bf16-mixed` / `readout: fp32`."""
    import yaml

    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text())
    except FileNotFoundError as err:
        raise InputError(f"{path}: no such precision file") from err
    except yaml.YAMLError as err:
        raise InputError(f"{path}: not valid YAML ({err})") from err
    if not isinstance(data, dict):
        raise InputError(f"{path}: expected a mapping of component: dtype")
    base_name = data.pop("base", "fp32")
    if base_name not in PRESETS:
        raise InputError(f"{path}: base {base_name!r} is not a preset ({', '.join(PRESETS)})")
    allowed = set(COMPONENTS) | {"tf32", "name"}
    unknown = sorted(set(data) - allowed)
    if unknown:
        raise InputError(f"{path}: unknown component(s) {', '.join(unknown)} (known: {', '.join(COMPONENTS)}, tf32)")
    values = {f.name: getattr(PRESETS[base_name], f.name) for f in dataclasses.fields(PrecisionPolicy)}
    values["name"] = str(data.pop("name", path.stem))
    for comp, value in data.items():
        if comp == "tf32" and not isinstance(value, bool):
            raise InputError(f"{path}: tf32 must be true or false, got {value!r}")
        values[comp] = value if comp == "tf32" else parse_dtype(value, f"{path}: {comp}")
    return PrecisionPolicy(**values)


def scaled_weight(weight: torch.Tensor, fan_in: int, dtype: torch.dtype) -> torch.Tensor:
    """weight / sqrt(fan_in) in `dtype`, scaled in the wider of the two dtypes before rounding (so
    fp32 weights under an fp64 policy are the exact fp64 evaluation of those weights)."""
    return (weight.to(widest(weight.dtype, dtype)) / math.sqrt(fan_in)).to(dtype)


def widest(*dtypes: torch.dtype) -> torch.dtype:
    """The dtype with the most bits among `dtypes` (bf16 before fp16 at equal width)."""
    return max(dtypes, key=lambda d: (_BITS[d], d == torch.bfloat16))


@contextmanager
def matmul_mode(policy: PrecisionPolicy):
    """Scoped TF32 switch for CUDA fp32 matmuls (restored on exit; a no-op without CUDA)."""
    if not torch.cuda.is_available():
        yield
        return
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = policy.tf32
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved

PRESET_DESCRIPTIONS: Dict[str, str] = {
    "fp64": "everything in float64: the reference every other preset is measured against",
    "fp32": "everything in float32 except the float64 energy sum and E0s",
    "tf32": "fp32, with fp32 matmuls on TF32 tensor cores (CUDA only; 10-bit mantissa operands)",
    "bf16-mixed": "bfloat16 radial MLP, tensor-product and contraction operands, linears and readout; "
                  "float32 geometry, spherical harmonics, CG tables and accumulation",
    "fp16-mixed": "as bf16-mixed with float16 (more mantissa, less range; training needs loss scaling)",
    "bf16-full": "bf16-mixed plus a bfloat16 radial basis: everything the floors allow in 16 bits",
    "layerwise": "float16 radial MLP and readout only; embedding, linears, harmonics and CG stay float32",
}
