"""Pydantic validation errors as the config reports them: ``dotted.key: must be ..., got ...``."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pydantic import ValidationError


def describe(error: Mapping[str, Any]) -> str:
    """One pydantic error as ``must be ..., got ...``."""
    kind = error["type"]
    value = error.get("input")
    if kind in ("extra_forbidden", "unexpected_keyword_argument"):
        return "unknown key"
    if kind in ("float_parsing", "float_type"):
        return f"must be a number, got {value!r}"
    if kind in ("int_parsing", "int_type", "int_from_float"):
        return f"must be an integer, got {value!r}"
    if kind in ("bool_parsing", "bool_type"):
        return f"must be true or false, got {value!r}"
    if kind in ("dict_type", "model_type", "model_attributes_type", "dataclass_type"):
        return f"must be a mapping of keys, got {value!r}"
    message = str(error["msg"])
    for prefix in ("Value error, ", "Assertion failed, "):
        if message.startswith(prefix):
            return message[len(prefix) :]
    message = message.replace("Input should be", "must be", 1)
    message = message[:1].lower() + message[1:]
    return f"{message}, got {value!r}"


def format_errors(exc: ValidationError, prefix: str = "") -> str:
    """Every error of `exc` with its dotted path, on one line."""
    lines = []
    for error in exc.errors(include_url=False):
        path = ".".join(str(p) for p in (prefix, *error["loc"]) if p != "")
        lines.append(f"{path or '(config)'}: {describe(error)}")
    return "; ".join(lines)
