"""Prediction rows as the store keeps them: text every database takes, features as valid JSON
(not relying on the service's validation: a lone surrogate in one id made SQLite refuse a whole
batch, and NaN in the features JSON made rows that `json_valid` rejects)."""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Mapping
from typing import Any

logger = logging.getLogger(__name__)


def safe_text(value: Any) -> str | None:
    """Text that encodes as UTF-8 and has no NUL (PostgreSQL refuses NUL, SQLite surrogates):
    backslash escapes ('\\ud800'), the same for the same input (feedback finds its prediction)."""
    if value is None:
        return None
    text = value if isinstance(value, str) else str(value)
    if "\x00" in text:
        text = text.replace("\x00", "\\x00")
    if text.isascii():
        return text
    # (only what UTF-8 cannot encode, a lone surrogate, is escaped)
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


def json_value(value: Any) -> Any:
    """A value JSON can hold: non-finite numbers and missing values are null, other objects
    (dates, decimals, ...) their text. (The usual feature values, floats and text, first.)"""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, str):
        return safe_text(value)
    if value is None or isinstance(value, bool | int):
        return value
    if isinstance(value, Mapping):
        return {safe_text(k): json_value(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [json_value(v) for v in value]
    if hasattr(value, "item"):  # numpy scalars
        try:
            plain = value.item()
        except (TypeError, ValueError):
            plain = value
        if plain is not value and type(plain) is not type(value):
            return json_value(plain)
    if type(value).__name__ in ("NAType", "NaTType"):  # pandas' missing values
        return None
    return safe_text(value)


def features_json(features: Any) -> str | None:
    """The model's input row as valid JSON text (RFC 8259: no NaN/Infinity), None if absent;
    JSON text is parsed and cleaned, other text is not stored (logged)."""
    if features is None:
        return None
    if isinstance(features, str | bytes):
        try:
            features = json.loads(features)
        except ValueError:
            logger.warning("prediction store: features are not JSON, not stored")
            return None
    return _STRICT.encode(json_value(features))


_STRICT = json.JSONEncoder(allow_nan=False)  # built once: every stored row passes through it


def _number(value: Any, kind: type) -> Any:
    """`value` as a plain int/float; what cannot be converted is left for the database to
    refuse (that row alone)."""
    if value is None or type(value) is kind:
        return value
    try:
        return kind(value)
    except (TypeError, ValueError, OverflowError):
        return value


def clean_prediction(row: Mapping[str, Any]) -> dict[str, Any]:
    """One prediction row ready to insert: the table's columns, safe text, valid features JSON."""
    probability = _number(row.get("probability"), float)
    if isinstance(probability, float) and not math.isfinite(probability):
        probability = None
    return {
        "request_id": safe_text(row.get("request_id")),
        "created_at": _number(row.get("created_at"), float),
        "variant": safe_text(row.get("variant")),
        "model_version": safe_text(row.get("model_version")),
        "label": _number(row.get("label"), int),
        "probability": probability,
        "latency_ms": _number(row.get("latency_ms"), float),
        "error": safe_text(row.get("error")),
        "features": features_json(row.get("features")),
        "shadow_of": safe_text(row.get("shadow_of")),
    }
