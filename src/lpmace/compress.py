"""Compressed species embeddings: convert a MACE's element-dependent weights (a module swap).

    compressed = compress(model, species_rank=8, int8_embedding=True)

returns a new model whose embedding, skip connections and symmetric-contraction weights are stored
as W[z] = A[z]·B of rank 8 (truncated SVD of the model's weights, the best rank-8 approximation of
each; at species_rank = number of elements A = I and B = W, so the outputs are unchanged) and whose
embedding table (here its coordinates A) is held in int8. `how="random"` instead draws fresh factors,
to train a compressed model from scratch. The model's conversions list records the compression
("species_compression", see `lpmace.conversions`), so `lpmace.io.save`/`load` round-trip it; its
config (physics only) is unchanged. The weights the swap touches are found by walking the model
(see `element_weight_slots`).
"""

from __future__ import annotations

import copy
from typing import Iterator, Optional, Tuple

import torch

from lpmace.conversions import record
from lpmace.errors import InputError
from lpmace.nn.element_weights import (Int8ElementTable, LowRankElementWeight, check_species_rank, element_weight,
                                       factorise)
from lpmace.nn.linear import ElementLinear
from lpmace.nn.product import SymmetricContraction

__all__ = ["compress", "compress_element_weights", "check_compression", "element_weight_slots",
           "element_weight_storage"]


def element_weight_slots(model: torch.nn.Module) -> Iterator[Tuple[torch.nn.Module, str, str]]:
    """(owner, attribute, role) of every element-dependent weight store: the embedding (one weight)
    and the `weights` containers of the skip connections and symmetric contractions (role "skip" or
    "contraction"; one weight per degree / per (L, ν)); not the contractions of an element-agnostic
    product."""
    yield model, "embedding", "embedding"
    for module in model.modules():
        if isinstance(module, ElementLinear):
            yield module, "weights", "skip"
        elif isinstance(module, SymmetricContraction) and not getattr(model.config, "agnostic_product", False):
            yield module, "weights", "contraction"  # (an element-agnostic product has one set: nothing to compress)


def _converted(w, rank: Optional[int], int8: bool, how: str):
    if rank is None:
        if int8:
            return Int8ElementTable.quantize(element_weight(w))
        return w if isinstance(w, torch.nn.Parameter) else torch.nn.Parameter(element_weight(w).detach().clone())
    low_rank = factorise(element_weight(w), rank, how)
    if int8:  # the per-element coordinates in int8; the shared basis stays float
        low_rank = LowRankElementWeight(Int8ElementTable.quantize(low_rank.A), low_rank.B.detach())
    return low_rank


def _container(items):
    """ParameterList/Dict while every weight is a full tensor (the uncompressed layout and names)."""
    full = all(isinstance(v, torch.nn.Parameter) for v in (items.values() if isinstance(items, dict) else items))
    if isinstance(items, dict):
        return torch.nn.ParameterDict(items) if full else torch.nn.ModuleDict(items)
    return torch.nn.ParameterList(items) if full else torch.nn.ModuleList(items)


@torch.no_grad()
def compress_element_weights(model: torch.nn.Module, species_rank: Optional[int], int8_embedding: bool,
                             how: str = "svd") -> None:
    """Swap, in place, every element weight for its stored form: full (species_rank None), rank
    `species_rank` (`factorise` with `how`: "svd" of the current weights or "random" initialisation),
    and the embedding for an int8 table if `int8_embedding`. The model's config is not changed."""
    for owner, name, role in element_weight_slots(model):
        stored = getattr(owner, name)
        int8 = int8_embedding and role == "embedding"
        if role == "embedding":
            new = _converted(stored, species_rank, int8, how)
        elif isinstance(stored, (torch.nn.ParameterDict, torch.nn.ModuleDict)):
            items = {k: _converted(v, species_rank, False, how) for k, v in stored.items()}
            new = stored if all(items[k] is v for k, v in stored.items()) else _container(items)
        else:
            items = [_converted(v, species_rank, False, how) for v in stored]
            new = stored if all(a is b for a, b in zip(items, stored, strict=True)) else _container(items)
        if new is not stored:
            delattr(owner, name)
            setattr(owner, name, new)


def check_compression(species_rank, int8_embedding, how: str, num_elements: int) -> None:
    """InputError unless species_rank is None or 1..num_elements, int8_embedding a bool and how
    "svd" or "random"."""
    check_species_rank(species_rank, num_elements)
    if not isinstance(int8_embedding, bool):
        raise InputError(f"int8_embedding must be true or false, got {int8_embedding!r}")
    if how not in ("svd", "random"):
        raise InputError(f"species compression: how must be 'svd' or 'random', got {how!r}")


def compress(model: torch.nn.Module, species_rank: Optional[int] = None, int8_embedding: bool = False,
             how: str = "svd"):
    """A copy of `model` (a MACE) with its element weights at rank `species_rank` (None: full) and,
    if `int8_embedding`, an int8 embedding table; `model` is not changed. how="svd" approximates the
    model's weights (works from any stored form: full, low rank, int8), how="random" draws fresh
    factors to train from. InputError for a rank outside 1..number of elements."""
    check_compression(species_rank, int8_embedding, how, len(model.config.atomic_numbers))
    out = copy.deepcopy(model)
    compress_element_weights(out, species_rank, int8_embedding, how=how)
    record(out, "species_compression", species_rank=species_rank, int8_embedding=int8_embedding, how=how)
    return out


def element_weight_storage(model: torch.nn.Module) -> dict:
    """What the element-dependent weights of `model` take: {"numel": stored numbers (int8 values
    and scales included), "bytes": their storage in the dtypes they are held in}."""
    tensors = []
    for owner, name, role in element_weight_slots(model):
        stored = getattr(owner, name)
        weights = [stored] if role == "embedding" else list(stored.values() if hasattr(stored, "values") else stored)
        for w in weights:
            if isinstance(w, torch.Tensor):
                tensors.append(w)
            else:
                tensors += list(w.parameters()) + list(w.buffers())
    return {"numel": sum(t.numel() for t in tensors), "bytes": sum(t.numel() * t.element_size() for t in tensors)}

