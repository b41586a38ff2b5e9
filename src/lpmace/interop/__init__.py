"""Interoperability with mace-torch (import of its models)."""

from lpmace.interop.mace_torch import (
    TRUST_WARNING,
    config_from_mace_torch,
    from_mace_torch,
    load_mace_torch_model,
    mace_torch_inputs,
)

__all__ = ["from_mace_torch", "config_from_mace_torch", "load_mace_torch_model", "mace_torch_inputs", "TRUST_WARNING"]
