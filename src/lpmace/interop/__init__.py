"""Interoperability with mace-torch (import of its models)."""

from lpmace.interop.mace_torch import TRUST_WARNING, config_from_mace_torch, from_mace_torch, load_mace_torch_model

__all__ = ["from_mace_torch", "config_from_mace_torch", "load_mace_torch_model", "TRUST_WARNING"]
