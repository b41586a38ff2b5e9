"""Typed training-config values: YAML read as YAML 1.2 reads numbers, and each value converted to
its field's declared type or refused with a message naming the key (`typed`).

`lpmace.train.config` declares the fields and their ranges; this module knows only types.
"""

from __future__ import annotations

import re
import typing
from typing import Any, Union

import yaml

from lpmace.errors import InputError


class ConfigLoader(yaml.SafeLoader):
    """PyYAML's safe loader, reading ``1e-3`` as a float as YAML 1.2 does (YAML 1.1, PyYAML's
    rule, wants a dot and a signed exponent, ``1.0e-3``, and reads ``1e-3`` as a string)."""


ConfigLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)[eE][-+]?[0-9]+$"),
    list("-+0123456789."),
)


class ConfigValueError(InputError):
    """A bad value for `keys` (dotted for model keys: ``model.channels``); `load_train_config`
    prefixes the message with where those keys were set."""

    def __init__(self, keys, message: str):
        self.keys = (keys,) if isinstance(keys, str) else tuple(keys)
        self.message = message
        super().__init__(f"training config: {message}")


def _describe(hint) -> str:
    if typing.get_origin(hint) is Union:
        return " or ".join("null" if arm is type(None) else _describe(arm) for arm in typing.get_args(hint))
    if typing.get_origin(hint) is tuple:
        return f"a list of {_describe(typing.get_args(hint)[0]).split(' ', 1)[1]}s"
    if typing.get_origin(hint) is dict:
        return "a mapping"
    return {bool: "true or false", int: "an integer", float: "a number", str: "a string"}[hint]


_NO = object()  # _convert's "not of this type"


def _convert(value, hint):
    """`value` as type `hint`, or _NO. An integer is a number; a number is an integer only when it
    has no fraction (1.5 epochs is refused, not rounded); a single item is a one-element list."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if hint is Any:
        return value
    if origin is Union:
        for arm in args:
            if arm is type(None):
                if value is None:
                    return None
                continue
            converted = _convert(value, arm)
            if converted is not _NO:
                return converted
        return _NO
    if isinstance(value, bool) and hint is not bool:
        return _NO  # YAML true is no number
    if hint in (bool, str):
        return value if isinstance(value, hint) else _NO
    if hint is int:
        if isinstance(value, float) and value.is_integer():
            return int(value)
        return value if isinstance(value, int) else _NO
    if hint is float:
        return float(value) if isinstance(value, (int, float)) else _NO
    if origin is tuple:
        items = [_convert(v, args[0]) for v in (value if isinstance(value, (list, tuple)) else [value])]
        return _NO if any(v is _NO for v in items) else tuple(items)
    if origin is dict:
        return value if isinstance(value, dict) else _NO
    raise TypeError(f"no conversion to {hint}")


def typed(key: str, value, hint):
    """`value` as the declared type `hint` (e.g. ``Optional[float]``), or ConfigValueError naming `key`."""
    converted = _convert(value, hint)
    if converted is _NO:
        raise ConfigValueError(key, f"{key} must be {_describe(hint)}, got {value!r}")
    return converted
