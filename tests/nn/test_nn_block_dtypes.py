"""Every block computes in the dtype it is given, whatever the dtype of its parameters.

The precision policy chooses the compute dtype from outside: the composite blocks (interaction,
product) and the heavy blocks take the policy or their `policy.block(...)` dtypes, the simple ones the
dtype of their input. A block that silently up- or down-casts breaks that contract. Each block is run
with float32 and float64 parameters on float32 and float64 inputs (with the fp32 or fp64 policy): the
output must have that dtype, and the float32 result must agree with the float64 one to float32
precision (a block that casts its result back after computing in float16/bfloat16 would fail that).
"""

from __future__ import annotations

import pytest
import torch

from lpmace.nn.interaction import Interaction
from lpmace.nn.linear import ElementLinear, EquivariantLinear
from lpmace.nn.product import Product, SymmetricContraction
from lpmace.nn.radial import RadialEmbedding, RadialMLP
from lpmace.nn.readout import LinearReadout, MLPReadout
from lpmace.nn.edges import Edges
from lpmace.o3.spherical_harmonics import SphericalHarmonics
from lpmace.precision import PRESETS

N_ATOMS, N_EDGES, CHANNELS, N_ELEMENTS, MAX_ELL, NUM_BESSEL = 5, 12, 4, 3, 2, 6


def inputs(seed: int = 0) -> dict:
    """Float64 inputs of every block: a random graph of N_ATOMS atoms and N_EDGES edges."""
    g = torch.Generator().manual_seed(seed)
    vectors = torch.randn(N_EDGES, 3, generator=g, dtype=torch.float64)
    lengths = vectors.norm(dim=-1, keepdim=True)
    species = torch.randint(0, N_ELEMENTS, (N_ATOMS,), generator=g)
    return {
        "vectors": vectors,
        "lengths": lengths,
        "edge_sh": SphericalHarmonics(MAX_ELL).double()(vectors),
        "edge_radial": RadialEmbedding(5.0, NUM_BESSEL, 5)(lengths),
        "edge_index": torch.randint(0, N_ATOMS, (2, N_EDGES), generator=g),
        "species": species,
        "one_hot": torch.nn.functional.one_hot(species, N_ELEMENTS).double(),
        "h0": torch.randn(N_ATOMS, CHANNELS, 1, generator=g, dtype=torch.float64),
        "h1": torch.randn(N_ATOMS, CHANNELS, 4, generator=g, dtype=torch.float64),
        "a": torch.randn(N_ATOMS, CHANNELS, (MAX_ELL + 1) ** 2, generator=g, dtype=torch.float64),
    }


def interaction(lmax_in: int, residual: bool):
    block = Interaction(
        channels=CHANNELS, lmax_in=lmax_in, max_ell=MAX_ELL, lmax_sc=1, num_elements=N_ELEMENTS,
        num_bessel=NUM_BESSEL, radial_mlp=(8,), avg_num_neighbors=3.0, residual=residual,
    )
    h = "h0" if lmax_in == 0 else "h1"
    return block, lambda x: block(x[h], x["one_hot"], Edges(x["edge_index"], x["edge_sh"], x["edge_radial"], N_ATOMS),
                                  policy_of(x))


def product(with_skip: bool):
    block = Product(CHANNELS, MAX_ELL, 1, 3, N_ELEMENTS)
    return block, lambda x: block(x["a"], x["species"], x["h1"] if with_skip else None, policy_of(x))


def policy_of(x: dict):
    """The policy that computes everything in the dtype of the inputs (fp32 or fp64)."""
    return PRESETS["fp64" if x["a"].dtype == torch.float64 else "fp32"]


def contraction():
    block = SymmetricContraction(CHANNELS, MAX_ELL, 2, 3, N_ELEMENTS)
    return block, lambda x: block(x["a"], x["species"], policy_of(x).block("contraction"))


def simple(block, key: str, *extra: str):
    return block, lambda x: block(x[key], *(x[e] for e in extra))


BLOCKS = {
    "interaction-first-residual": lambda: interaction(0, True),
    "interaction-first-plain": lambda: interaction(0, False),
    "interaction-later": lambda: interaction(1, True),
    "product-with-skip": lambda: product(True),
    "product-no-skip": lambda: product(False),
    "symmetric-contraction": contraction,
    "equivariant-linear": lambda: simple(EquivariantLinear([CHANNELS] * 3, 6, 2), "a"),
    "element-linear": lambda: simple(ElementLinear(CHANNELS, 6, 2, 1, N_ELEMENTS), "a", "one_hot"),
    "radial-embedding": lambda: simple(RadialEmbedding(5.0, NUM_BESSEL, 5), "lengths"),
    "radial-mlp": lambda: simple(RadialMLP([NUM_BESSEL, 8, 8, 10]), "edge_radial"),
    "linear-readout": lambda: simple(LinearReadout(CHANNELS), "a"),
    "mlp-readout": lambda: simple(MLPReadout(CHANNELS, 5), "a"),
    "spherical-harmonics": lambda: simple(SphericalHarmonics(3), "vectors"),
}


def as_dtype(x: dict, dtype: torch.dtype) -> dict:
    return {k: v.to(dtype) if v.is_floating_point() else v for k, v in x.items()}


def outputs(result) -> list:
    """The tensors a block returns (Interaction returns (A, sc) with sc possibly None)."""
    items = result if isinstance(result, tuple) else (result,)
    return [t for t in items if t is not None]


@pytest.mark.parametrize("name", sorted(BLOCKS))
@pytest.mark.parametrize("param_dtype", [torch.float32, torch.float64], ids=["params32", "params64"])
def test_block_computes_in_input_dtype(name, param_dtype):
    torch.manual_seed(0)
    block, call = BLOCKS[name]()
    block.to(param_dtype)
    x = inputs()
    with torch.no_grad():
        results = {dtype: outputs(call(as_dtype(x, dtype))) for dtype in (torch.float32, torch.float64)}
    for dtype, tensors in results.items():
        assert tensors, name
        for t in tensors:
            assert t.dtype == dtype, f"{name} with {param_dtype} parameters: {dtype} in, {t.dtype} out"
    for single, double in zip(results[torch.float32], results[torch.float64]):
        assert double.abs().max() > 0, name
        torch.testing.assert_close(single.double(), double, rtol=1e-4, atol=1e-5 * float(double.abs().max()))


@pytest.mark.parametrize("name", ["interaction-later", "product-with-skip", "symmetric-contraction"])
def test_float64_input_is_computed_in_float64_even_with_float32_parameters(name):
    """Parameters are cast to the input dtype, not the input to the parameters' dtype: fp32 weights on
    fp64 input give the fp64 evaluation of those same (fp32-representable) weights."""
    torch.manual_seed(0)
    block32, call32 = BLOCKS[name]()
    torch.manual_seed(0)
    block64, call64 = BLOCKS[name]()
    block64.load_state_dict(block32.state_dict())  # same fp32-representable weights
    block64.double()
    x = inputs(1)
    with torch.no_grad():
        pairs = list(zip(outputs(call32(x)), outputs(call64(x))))
    assert pairs
    for a, b in pairs:
        torch.testing.assert_close(a, b, rtol=1e-13, atol=1e-13)
