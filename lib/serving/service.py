"""The HTTP model service: the champion and, during a rollout, a canary behind one FastAPI app.

    python -m lib.serving --host 127.0.0.1 --port 8080 --model-name playstore-rating \
        --tracking-uri sqlite:///mlflow.db

Why it looks the way it does:

* Input parsing is hand-written (`parse_app`): `data.parse_records` validates with pandera and
  costs ~22 ms a call. `parse_app` gives the same model inputs as
  `features.model_inputs(data.read_apps(...).apps)` for every value style (tests check it on the
  real files) in a few microseconds, and names the field and the value when it refuses one.
* Routing is a stable hash of the request id (`variant_bucket`), so a caller stays on one variant.
* Concurrent single-row requests are micro-batched (`MicroBatcher`): one `predict_proba` for many
  rows costs about as much as for one. An idle queue is never made to wait.
* `Predictor` serves the model through a compiled form of the shapes training registers:
  FixedThresholdClassifier -> FrozenEstimator -> CalibratedClassifierCV (one calibrated
  classifier) -> StackingClassifier -> Pipeline(ColumnTransformer, estimator), whose blocks are
  ordinal/one-hot encoders, imputers, log1p, scalers and the TF-IDF of the name. It is the same
  arithmetic as scikit-learn without its per-call validation (random forests without per-tree
  joblib, gradient boosting with all trees walked at once, ~20x faster for one row). It is
  checked bit for bit against scikit-learn when the model is loaded; any difference, or any
  unknown step, and the plain scikit-learn model serves instead. Labels are the model's own
  `predict`: the tuned threshold of a FixedThresholdClassifier, not the most probable class.
* Requests may carry the listing's App, Genres, Current Ver and Android Ver (optional): the
  derived inputs come from `features.derived_values`, as in training.
* Predictions are logged through `PredictionStore.submit` (a background writer): no request waits
  on the disk.
* A canary weight can carry a lease: if the deployer does not renew it in time (it crashed), the
  service drops the canary's weight to 0 by itself.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import hmac
import json
import logging
import math
import os
import re
import threading
import time
import uuid
from collections import deque
from collections.abc import AsyncIterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from fastapi import FastAPI, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import Response
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)

from lib import registry
from lib.pipeline.data import ALIASES
from lib.pipeline.features import CATEGORICAL, DERIVED, FEATURE_COLUMNS, TEXT, derived_values
from lib.serving.prediction_store import PredictionStore

logger = logging.getLogger(__name__)

PROJECT = Path(__file__).resolve().parents[1]
CHAMPION_ALIAS = "champion"
MAX_BODY_BYTES = 20 * 1024 * 1024
MAX_INSTANCES = 10_000
LATENCY_BUCKETS = (
    0.001, 0.0025, 0.005, 0.0075, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0,
)  # fmt: skip


# ================================================================================================
# settings


def _default_tracking_uri() -> str:
    """Same default as lib.config: the environment, else the project's SQLite store."""
    default = f"sqlite:///{(PROJECT / 'mlflow.db').as_posix()}"
    return os.environ.get("MLFLOW_TRACKING_URI") or default


def _default_store_url() -> str:
    return f"sqlite:///{(PROJECT / 'predictions.db').as_posix()}"


def _env_admin_token() -> str | None:
    return os.environ.get("SERVING_ADMIN_TOKEN") or None


@dataclass
class ServingSettings:
    """Everything the service needs; the admin token comes from SERVING_ADMIN_TOKEN."""

    model_name: str = "playstore-rating"
    tracking_uri: str = field(default_factory=_default_tracking_uri)
    store_url: str = field(default_factory=_default_store_url)
    admin_token: str | None = field(default_factory=_env_admin_token, repr=False)
    target_threshold: float = 4.0  # feedback: true label = rating > threshold
    max_batch: int = 64  # rows per micro-batched predict call
    batch_wait_ms: float = 2.0  # longest wait for a batch to fill, only when requests queue up
    champion_label: str = "champion"  # variant names in responses, metrics and the store
    canary_label: str = "canary"
    champion_alias: str = CHAMPION_ALIAS
    lease_check_seconds: float = 1.0  # how often the background task looks at the canary lease
    compile_models: bool = True  # False: always the plain scikit-learn pipeline
    access_log: bool = False  # uvicorn's per-request log line costs ~10% of throughput


# ================================================================================================
# input parsing: the model's input row from one app object, in any schema and value style

# (Play Store name, snake_case spellings): the eight required fields, then the optional texts
# the derived inputs and the name come from (data.py reads them stripped, "" if absent).
_FIELDS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("Category", ("category",)),
    ("Content Rating", ("content_rating",)),
    ("Type", ("type",)),
    ("Reviews", ("reviews",)),
    ("Installs", ("installs",)),
    ("Size", ("size_mb", "size")),
    ("Price", ("price",)),
    ("Last Updated", ("last_updated",)),
    ("App", ("app",)),
    ("Genres", ("genres",)),
    ("Current Ver", ("current_ver",)),
    ("Android Ver", ("android_ver",)),
)
_REQUIRED = 8  # the first eight fields must be present
_OPTIONAL_MAX_CHARS = (200, 100, 100, 100)  # App, Genres, Current Ver, Android Ver
_ROW_COLUMNS = [
    *CATEGORICAL, "reviews", "installs", "size_mb", "price", "last_updated_days", *DERIVED, *TEXT,
]  # fmt: skip
if _ROW_COLUMNS != FEATURE_COLUMNS:  # loud, not silently wrong, if the feature set changes
    raise RuntimeError(f"the service parses {_ROW_COLUMNS} but the model wants {FEATURE_COLUMNS}")
_OBJECT_POSITIONS = frozenset(FEATURE_COLUMNS.index(c) for c in (*CATEGORICAL, *TEXT))

_KEY_TO_FIELD: dict[str, int] = {}
for _i, (_name, _snake) in enumerate(_FIELDS):
    _KEY_TO_FIELD[_name] = _i
    for _alias in _snake:
        if ALIASES.get(_alias) != _name:
            raise RuntimeError(f"lib.pipeline.data.ALIASES no longer maps {_alias!r} to {_name!r}")
        _KEY_TO_FIELD[_alias] = _i
_FIELD_NAMES = [
    f"{name} (or {'/'.join(snake)})" for name, snake in _FIELDS[:_REQUIRED]
]  # for "missing field" messages

# Spellings of "no value" (the same list as lib.pipeline.data; a test keeps them equal).
MISSING_TEXT = frozenset(
    ["", "nan", "NaN", "NAN", "NA", "N/A", "n/a", "None", "none", "null", "NULL"]
)
_NUMBER_RE = re.compile(r"[+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?", re.ASCII)
_REVIEWS_JUNK = re.compile(r"[,\s]")
_INSTALLS_JUNK = re.compile(r"[,+\s]")
_PRICE_JUNK = re.compile(r"[$,\s]")
_SIZE_RE = re.compile(r"(\d+(?:\.\d+)?|\.\d+)\s*([kKmMgG])?[bB]?", re.ASCII)
_SIZE_UNIT_MB = {None: 1.0, "k": 1e-3, "K": 1e-3, "m": 1.0, "M": 1.0, "g": 1e3, "G": 1e3}
_ISO_RE = re.compile(
    r"(\d{4})-(\d{1,2})-(\d{1,2})(?:[ T](\d{1,2}):(\d{2})(?::(\d{2})(?:\.(\d+))?)?)?", re.ASCII
)
_WORD_SEPARATORS = re.compile(r"[,\-\s]+")
_DAY_RE = re.compile(r"3[01]|[12]\d|0[1-9]|[1-9]", re.ASCII)
_YEAR_RE = re.compile(r"\d{4}", re.ASCII)
_MONTH_NAMES = [
    "january", "february", "march", "april", "may", "june", "july", "august", "september",
    "october", "november", "december",
]  # fmt: skip
_FULL_MONTHS = {name: i + 1 for i, name in enumerate(_MONTH_NAMES)}
_SHORT_MONTHS = {name[:3]: i + 1 for i, name in enumerate(_MONTH_NAMES)}
_EPOCH = datetime(1970, 1, 1)
# lib.pipeline.data stores dates as datetime64[ns]: the same bounds, in whole days
_FIRST_DAY = datetime(1677, 9, 22)
_LAST_DAY = datetime(2262, 4, 11)

_HINT_REVIEWS = 'is not a number like 159 or "1,000"'
_HINT_INSTALLS = 'is not a number like "1,000+"'
_HINT_PRICE = 'is not a price like 0 or "$4.99"'
_HINT_SIZE = 'is not a size like "19M", "201k", 19.0 or "Varies with device"'
_HINT_DATE = 'is not a date like "January 7, 2018", "March-20-2025" or "2018-01-07"'


class InputError(ValueError):
    """A request the service refuses (HTTP 422); each message names the field and the value."""

    def __init__(self, messages: list[str]) -> None:
        self.messages = messages
        shown = messages[:20]
        more = f"; ... and {len(messages) - 20} more" if len(messages) > 20 else ""
        super().__init__("; ".join(shown) + more)


class _BadValue(Exception):
    pass


def _show(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _wrong_type(key: str, value: Any, expected: str) -> _BadValue:
    return _BadValue(f"{key}: expected {expected}, got {type(value).__name__} {_show(value)}")


def _text_field(key: str, value: Any, required: bool) -> str:
    if isinstance(value, str):
        text = value.strip()
        if required and not text:
            raise _BadValue(f"{key}: empty")
        return text
    if value is None:
        if required:
            raise _BadValue(f"{key}: missing (null)")
        return ""
    raise _wrong_type(key, value, "a string")


def _number(key: str, value: Any, junk: re.Pattern[str], hint: str) -> float:
    """A non-negative count or price, accepting the same spellings as lib.pipeline.data."""
    if isinstance(value, str):
        text = junk.sub("", value.strip())
        if text in MISSING_TEXT:
            raise _BadValue(f"{key}: missing (got {_show(value)})")
        if _NUMBER_RE.fullmatch(text) is None:
            raise _BadValue(f"{key}: {_show(value)} {hint}")
        number = float(text)
    elif isinstance(value, bool) or value is None:
        if value is None:
            raise _BadValue(f"{key}: missing (null)")
        raise _wrong_type(key, value, "a number or a string")
    elif isinstance(value, int):
        try:
            number = float(value)
        except OverflowError:
            raise _BadValue(f"{key}: {_show(value)} is too large") from None
    elif isinstance(value, float):
        if math.isnan(value):
            raise _BadValue(f"{key}: missing (NaN)")
        number = value
    else:
        raise _wrong_type(key, value, "a number or a string")
    if not math.isfinite(number):
        raise _BadValue(f"{key}: {_show(value)} {hint}")
    if number < 0:
        raise _BadValue(f"{key}: {_show(value)} is negative")
    return number


def _size_mb(key: str, value: Any) -> float:
    """Size in MB; `k` is 1/1000 MB, `Varies with device` and empty are NaN (as data.py)."""
    if isinstance(value, str):
        text = value
    elif value is None:
        return math.nan
    elif isinstance(value, bool):
        raise _wrong_type(key, value, "a size (number of MB or a string)")
    elif isinstance(value, (int, float)):  # a number is MB, whatever its repr (5e-05, 1e+16)
        try:
            number = float(value)
        except OverflowError:
            raise _BadValue(f"{key}: {_show(value)} is too large") from None
        if math.isnan(number):
            return math.nan
        if not math.isfinite(number) or number < 0:
            raise _BadValue(f"{key}: {_show(value)} {_HINT_SIZE}")
        return number
    else:
        raise _wrong_type(key, value, "a size (number of MB or a string)")
    text = text.strip().replace(",", "")
    if text in MISSING_TEXT or text.lower() == "varies with device":
        return math.nan
    match = _SIZE_RE.fullmatch(text)
    if match is None:
        raise _BadValue(f"{key}: {_show(value)} {_HINT_SIZE}")
    return float(match[1]) * _SIZE_UNIT_MB[match[2]]


def _date_days(key: str, value: Any) -> float:
    """Days since 1970-01-01 of a date in the Play Store's styles or ISO 8601."""
    if not isinstance(value, str):
        if value is None:
            raise _BadValue(f"{key}: missing (null)")
        raise _wrong_type(key, value, "a date string")
    text = value.strip()
    if text in MISSING_TEXT:
        raise _BadValue(f"{key}: missing (got {_show(value)})")
    iso = _ISO_RE.fullmatch(text)
    try:
        if iso is not None:
            fraction = (iso[7] or "0")[:6].ljust(6, "0")
            when = datetime(
                int(iso[1]), int(iso[2]), int(iso[3]),
                int(iso[4] or 0), int(iso[5] or 0), int(iso[6] or 0), int(fraction),
            )  # fmt: skip
        else:
            parts = _WORD_SEPARATORS.sub(" ", text).strip().split(" ")
            if len(parts) != 3:
                raise ValueError(text)
            month_name, day, year = parts[0].lower(), parts[1], parts[2]
            month = _FULL_MONTHS.get(month_name) or _SHORT_MONTHS.get(month_name)
            if month is None or not _DAY_RE.fullmatch(day) or not _YEAR_RE.fullmatch(year):
                raise ValueError(text)
            when = datetime(int(year), month, int(day))
    except ValueError:
        raise _BadValue(f"{key}: {_show(value)} {_HINT_DATE}") from None
    if not _FIRST_DAY <= when <= _LAST_DAY:
        raise _BadValue(f"{key}: {_show(value)} is outside the supported years 1678..2261")
    return (when - _EPOCH).total_seconds() / 86400.0


def _type_field(key: str, value: Any) -> str:
    if not isinstance(value, str):
        if value is None:
            raise _BadValue(f"{key}: missing (null)")
        raise _wrong_type(key, value, '"Free" or "Paid"')
    low = value.strip().lower()
    if low == "free":
        return "Free"
    if low == "paid":
        return "Paid"
    raise _BadValue(f'{key}: {_show(value)} is not "Free" or "Paid"')


def _optional_text(key: str, value: Any, max_chars: int) -> str:
    """An optional listing text (name, genres, versions): null is "", as pipeline.data reads it."""
    if value is None:
        return ""
    if not isinstance(value, str):
        raise _wrong_type(key, value, "a string or null")
    text = value.strip()
    if len(text) > max_chars:
        raise _BadValue(f"{key}: {len(text)} characters, at most {max_chars}")
    return text


# FEATURE_COLUMNS in order: 3 categories, 4 skewed numbers, days, the derived numbers, the name
Row = tuple[Any, ...]


def parse_app(app: Any) -> Row:
    """One app object (raw Play Store or snake_case keys, any value style) -> the model's row.

    The row is FEATURE_COLUMNS in order, with the semantics of features.model_inputs: the derived
    numbers come from features.derived_values, as in training. App, Genres, Current Ver and
    Android Ver are optional (absent or null reads as empty text). Keys the model does not use
    ("Rating", ...) are ignored. Raises InputError with every problem of the object.
    """
    if not isinstance(app, dict):
        raise InputError([f"expected an app object, got {type(app).__name__} {_show(app)}"])
    found: list[tuple[str, Any] | None] = [None] * len(_FIELDS)
    for key, value in app.items():
        index = _KEY_TO_FIELD.get(key)
        if index is None:
            index = _KEY_TO_FIELD.get(key.strip())
            if index is None:
                continue
        if found[index] is None:  # the first spelling wins, as in lib.pipeline.data
            found[index] = (key, value)
    missing = [_FIELD_NAMES[i] for i, item in enumerate(found[:_REQUIRED]) if item is None]
    if missing:
        raise InputError([f"missing field(s): {', '.join(missing)}"])
    (
        (k_cat, v_cat), (k_cr, v_cr), (k_type, v_type), (k_rev, v_rev), (k_inst, v_inst),
        (k_size, v_size), (k_price, v_price), (k_date, v_date),
    ) = found[:_REQUIRED]  # type: ignore[misc]  # fmt: skip
    errors: list[str] = []
    out: list[Any] = []
    for parse in (
        lambda: _text_field(k_cat, v_cat, True),
        lambda: _text_field(k_cr, v_cr, False),
        lambda: _type_field(k_type, v_type),
        lambda: _number(k_rev, v_rev, _REVIEWS_JUNK, _HINT_REVIEWS),
        lambda: _number(k_inst, v_inst, _INSTALLS_JUNK, _HINT_INSTALLS),
        lambda: _size_mb(k_size, v_size),
        lambda: _number(k_price, v_price, _PRICE_JUNK, _HINT_PRICE),
        lambda: _date_days(k_date, v_date),
    ):
        try:
            out.append(parse())
        except _BadValue as exc:
            errors.append(str(exc))
    texts: list[str] = []
    for item, max_chars in zip(found[_REQUIRED:], _OPTIONAL_MAX_CHARS, strict=True):
        if item is None:
            texts.append("")
            continue
        try:
            texts.append(_optional_text(item[0], item[1], max_chars))
        except _BadValue as exc:
            errors.append(str(exc))
    if errors:
        raise InputError(errors)
    name, genres, current_ver, android_ver = texts
    derived = derived_values(name, genres, current_ver, android_ver, out[3], out[4])
    return (*out, *derived, name)


@dataclass
class ParsedRequest:
    rows: list[Row]
    batch: bool
    request_id: Any  # the body's request_id field, if any (validated later)


def parse_payload(payload: Any) -> ParsedRequest:
    """A /predict body: one app object, a list of them, or {"instances": [...]}."""
    request_id = None
    if isinstance(payload, dict):
        request_id = payload.get("request_id")
        if "instances" in payload:
            items = payload["instances"]
            if not isinstance(items, list):
                raise InputError(
                    [f"instances: expected a list of app objects, got {type(items).__name__}"]
                )
            batch = True
        else:
            items, batch = [payload], False
    elif isinstance(payload, list):
        items, batch = payload, True
    else:
        raise InputError(
            [
                "body: expected an app object, a list of app objects or "
                f'{{"instances": [...]}}, got {type(payload).__name__} {_show(payload)}'
            ]
        )
    if batch and not items:
        raise InputError(["empty batch: send at least one app"])
    if len(items) > MAX_INSTANCES:
        raise InputError([f"batch of {len(items)} apps: at most {MAX_INSTANCES} per request"])
    rows: list[Row] = []
    errors: list[str] = []
    for i, item in enumerate(items):
        try:
            rows.append(parse_app(item))
        except InputError as exc:
            prefix = f"instances[{i}]: " if batch else ""
            errors.extend(prefix + m for m in exc.messages)
    if errors:
        raise InputError(errors)
    return ParsedRequest(rows, batch, request_id)


_CONTROL_CHARS = re.compile(r"[\x00-\x1f\x7f]")


def _request_id(header: str | None, body_value: Any) -> str:
    """The caller's id (header X-Request-ID, else field request_id), else a new uuid4 hex."""
    for where, value in (("X-Request-ID", header), ("request_id", body_value)):
        if value is None or value == "":
            continue
        if isinstance(value, int) and not isinstance(value, bool):
            value = str(value)
        if not isinstance(value, str):
            raise InputError([f"{where}: expected a string, got {type(value).__name__}"])
        value = value.strip()
        if not value or len(value) > 200 or _CONTROL_CHARS.search(value):
            raise InputError([f"{where}: {_show(value)} is not a usable id (1..200 characters)"])
        return value
    return uuid.uuid4().hex


def rows_frame(rows: Sequence[Row]) -> pd.DataFrame:
    """Rows as the model's input frame, with the dtypes of features.model_inputs."""
    columns = list(zip(*rows, strict=True)) if rows else [()] * len(FEATURE_COLUMNS)
    data: dict[str, Any] = {}
    for i, name in enumerate(FEATURE_COLUMNS):
        if i in _OBJECT_POSITIONS:
            data[name] = pd.Series(list(columns[i]), dtype=object)
        else:
            data[name] = np.asarray(columns[i], dtype=np.float64)
    return pd.DataFrame(data)


def variant_bucket(request_id: str) -> int:
    """A stable bucket 0..9999 of a request id: the canary takes the buckets below weight*100."""
    digest = hashlib.blake2b(request_id.encode("utf-8", "surrogatepass"), digest_size=8).digest()
    return int.from_bytes(digest, "big") % 10_000


# ================================================================================================
# prediction: scikit-learn pipeline, or its compiled form checked equal to it


class _Unsupported(Exception):
    """A model part the compiled path does not know: serve with scikit-learn."""


class _Fallback(Exception):
    """An input the compiled path does not handle: this call goes through scikit-learn."""


def _nested(model: Any) -> list[Any]:
    """Every estimator nested in a model: pipelines, column transformers, stacks, wrappers."""
    out = [model]
    children: list[Any] = [step for _, step in getattr(model, "steps", None) or []]
    children += [t for _, t, _ in getattr(model, "transformers_", None) or []]
    children += [t for _, t in getattr(model, "transformer_list", None) or []]
    for attr in ("estimators_", "calibrated_classifiers_"):
        children.extend(getattr(model, attr, None) or [])
    for attr in ("final_estimator_", "estimator_", "estimator"):
        child = getattr(model, attr, None)
        if child is not None and not isinstance(child, str):
            children.append(child)
    for child in children:
        if not isinstance(child, str) and child is not None:
            out.extend(_nested(child))
    return out


def single_threaded(model: Any) -> Any:
    """n_jobs=1 everywhere: thread start-up costs more than it saves on a few rows."""
    seen: set[int] = set()
    for est in _nested(model):
        if id(est) in seen or not hasattr(est, "get_params"):
            continue
        seen.add(id(est))
        try:
            if est.get_params(deep=False).get("n_jobs") not in (None, 1):  # None: one thread
                est.set_params(n_jobs=1)
        except Exception:  # not a plain scikit-learn estimator (e.g. frozen): leave it
            logger.debug("cannot set n_jobs on %r", type(est).__name__)
    return model


def _op_ordinal(enc: Any) -> Any:
    from sklearn.preprocessing import OrdinalEncoder

    if type(enc) is not OrdinalEncoder:
        raise _Unsupported(type(enc).__name__)
    if getattr(enc, "_infrequent_enabled", False) or np.dtype(enc.dtype) != np.float64:
        raise _Unsupported("OrdinalEncoder with infrequent categories or a non-float dtype")
    if enc.handle_unknown not in ("use_encoded_value", "error"):
        raise _Unsupported(f"OrdinalEncoder handle_unknown={enc.handle_unknown!r}")
    maps = []
    for cats in enc.categories_:
        if not all(isinstance(c, str) for c in cats):
            raise _Unsupported("OrdinalEncoder with non-string or missing categories")
        maps.append({c: float(i) for i, c in enumerate(cats)})
    unknown = float(enc.unknown_value) if enc.handle_unknown == "use_encoded_value" else None

    def encode(columns: list[Sequence[Any]]) -> np.ndarray:
        out = np.empty((len(columns[0]), len(columns)), dtype=np.float64)
        for j, (col, mapping) in enumerate(zip(columns, maps, strict=True)):
            for i, value in enumerate(col):
                code = mapping.get(value)
                if code is None:
                    if not isinstance(value, str):
                        raise _Fallback("non-string category")
                    if unknown is None:
                        raise ValueError(f"Found unknown category {value!r} during transform")
                    code = unknown
                out[i, j] = code
        return out

    return encode


def _op_one_hot(enc: Any, dense_output: bool) -> Any:
    """OneHotEncoder (dense output, ignore or infrequent unknowns) as per-column lookup tables.

    Each category's output slice is taken from the encoder itself at compile time, so the
    infrequent-category grouping and `drop` are whatever scikit-learn made of them.
    """
    from sklearn.preprocessing import OneHotEncoder

    if type(enc) is not OneHotEncoder:
        raise _Unsupported(type(enc).__name__)
    if enc.sparse_output and not dense_output:  # a dense ColumnTransformer densifies it anyway
        raise _Unsupported("sparse OneHotEncoder in a sparse ColumnTransformer")
    if enc.handle_unknown not in ("ignore", "infrequent_if_exist"):
        raise _Unsupported(f"OneHotEncoder handle_unknown={enc.handle_unknown!r}")
    if np.dtype(enc.dtype) != np.float64:
        raise _Unsupported("OneHotEncoder with a non-float dtype")
    cats = enc.categories_
    if not all(isinstance(c, str) for col in cats for c in col):
        raise _Unsupported("OneHotEncoder with non-string or missing categories")
    n_in = len(cats)
    width = len(enc.get_feature_names_out())
    # one probe frame per column: every known category, plus one unseen value
    unseen = "\x00__unseen__"
    tables: list[dict[str, np.ndarray]] = []
    slices: list[np.ndarray] = []
    filler = [str(col[0]) for col in cats]
    for j in range(n_in):
        values = [*map(str, cats[j]), unseen]
        frame = np.array([[*filler[:j], v, *filler[j + 1 :]] for v in values], dtype=object)
        full = enc.transform(frame)
        full = np.asarray(full.toarray() if hasattr(full, "toarray") else full, dtype=np.float64)
        varying = np.flatnonzero((full != full[:1]).any(axis=0))
        tables.append(dict(zip(values, full, strict=True)))
        slices.append(varying)
    owner = np.full(width, -1)
    for j, cols in enumerate(slices):
        if (owner[cols] != -1).any():
            raise _Unsupported("OneHotEncoder columns overlap")
        owner[cols] = j
    base = enc.transform(np.array([filler], dtype=object))
    base_row = np.asarray(base.toarray() if hasattr(base, "toarray") else base, np.float64)[0]
    constant = owner == -1
    column_of = [np.flatnonzero(owner == j) for j in range(n_in)]

    def encode(columns: list[Sequence[Any]]) -> np.ndarray:
        n = len(columns[0])
        out = np.empty((n, width), dtype=np.float64)
        out[:, constant] = base_row[constant]
        for j, (col, table) in enumerate(zip(columns, tables, strict=True)):
            idx = column_of[j]
            unknown = table[unseen]
            for i, value in enumerate(col):
                hit = table.get(value)
                if hit is None:
                    if not isinstance(value, str):
                        raise _Fallback("non-string category")
                    hit = unknown
                out[i, idx] = hit[idx]
        return out

    return encode


def _reject_infinite(Z: np.ndarray) -> None:
    if np.isinf(Z).any():  # scikit-learn's check_array(ensure_all_finite="allow-nan") refuses it
        raise ValueError("Input X contains infinity or a value too large for dtype('float64').")


def _numeric_op(step: Any) -> Any:
    from sklearn.impute import SimpleImputer
    from sklearn.preprocessing import FunctionTransformer, StandardScaler

    if type(step) is FunctionTransformer:
        if step.func is None:
            return lambda Z: Z
        if step.func is not np.log1p or step.kw_args:
            raise _Unsupported(f"FunctionTransformer({step.func!r})")
        return np.log1p
    if type(step) is SimpleImputer:
        mv = step.missing_values
        if not (isinstance(mv, float) and math.isnan(mv)) or step.statistics_.dtype.kind != "f":
            raise _Unsupported("SimpleImputer with missing_values other than NaN")
        stats = np.asarray(step.statistics_, dtype=np.float64)
        keep = np.ones(len(stats), dtype=bool) if step.keep_empty_features else ~np.isnan(stats)
        kept_stats = stats[keep]
        indicator = None
        if step.add_indicator:
            ind = step.indicator_
            if getattr(ind, "sparse_", False) is True:
                raise _Unsupported("sparse missing indicator")
            indicator = np.asarray(ind.features_, dtype=np.intp)
        all_kept = bool(keep.all())

        def impute(Z: np.ndarray) -> np.ndarray:
            _reject_infinite(Z)
            mask = np.isnan(Z)
            X = Z if all_kept else Z[:, keep]
            X = np.where(mask if all_kept else mask[:, keep], kept_stats, X)
            if indicator is not None:
                X = np.hstack((X, mask[:, indicator].astype(np.float64)))
            return X

        return impute
    if type(step) is StandardScaler:
        mean = step.mean_ if step.with_mean else None
        scale = step.scale_ if step.with_std else None

        def standardize(Z: np.ndarray) -> np.ndarray:
            _reject_infinite(Z)
            X = np.array(Z, dtype=np.float64)
            if mean is not None:
                X -= mean
            if scale is not None:
                X /= scale
            return X

        return standardize
    raise _Unsupported(type(step).__name__)


def _flatten(step: Any) -> list[Any]:
    from sklearn.pipeline import Pipeline

    if type(step) is Pipeline:
        out: list[Any] = []
        for _, inner in step.steps:
            if inner is None or inner == "passthrough":
                continue
            out.extend(_flatten(inner))
        return out
    return [step]


_TEXT_TRANSFORMERS = frozenset(
    ["TfidfVectorizer", "CountVectorizer", "HashingVectorizer", "TfidfTransformer", "Pipeline",
     "FeatureUnion"]
)  # fmt: skip


def _check_text_transformer(trans: Any) -> None:
    """A text block: scikit-learn's own vectorizers, alone or in a Pipeline / FeatureUnion."""
    for est in _nested(trans):
        module = type(est).__module__
        if type(est).__name__ not in _TEXT_TRANSFORMERS or not module.startswith("sklearn."):
            raise _Unsupported(f"text block with {type(est).__name__}")
        if getattr(est, "_sklearn_output_config", {}).get("transform") not in (None, "default"):
            raise _Unsupported("text block with set_output")


_CATEGORICAL_SET = frozenset(CATEGORICAL)
_TEXT_SET = frozenset(TEXT)


@dataclass
class _Block:
    kind: str  # "categorical", "numeric" or "text"
    columns: list[int]  # positions in FEATURE_COLUMNS (one for a text block)
    encode: Any  # categorical: the encoder on object columns; text: the fitted transformer
    ops: list[Any]  # float64 -> float64 steps


class _Columns:
    """A ColumnTransformer as compiled blocks: rows in, the same matrix scikit-learn makes out."""

    def __init__(self, ct: Any) -> None:
        from sklearn.compose import ColumnTransformer

        if type(ct) is not ColumnTransformer:
            raise _Unsupported(f"first step {type(ct).__name__}")
        if getattr(ct, "_sklearn_output_config", {}).get("transform") not in (None, "default"):
            raise _Unsupported("ColumnTransformer with set_output")
        self.sparse = bool(getattr(ct, "sparse_output_", False))
        self.blocks: list[_Block] = []
        for _, trans, columns in ct.transformers_:
            if isinstance(trans, str) and trans == "drop":
                continue
            self.blocks.append(self._block(trans, columns, not self.sparse))
        if not self.blocks:
            raise _Unsupported("no output columns")

    @staticmethod
    def _block(trans: Any, columns: Any, dense_output: bool) -> _Block:
        scalar = isinstance(columns, str)
        names = [columns] if scalar else list(columns)
        if not names:
            raise _Unsupported("a block without columns")
        if not all(isinstance(c, str) and c in FEATURE_COLUMNS for c in names):
            raise _Unsupported(f"columns {names!r}")
        positions = [FEATURE_COLUMNS.index(c) for c in names]
        passthrough = isinstance(trans, str) and trans == "passthrough"
        if all(c in _TEXT_SET for c in names):
            if not scalar or passthrough:  # a list of text columns gives a 2-D frame, not texts
                raise _Unsupported(f"text columns {names!r} not given as one column name")
            _check_text_transformer(trans)
            try:
                fast = _Tfidf(trans)
            except _Unsupported:
                fast = None  # another vectorizer: its own transform, still exact
            return _Block("text", positions, fast or trans, [])
        kinds = {c in _CATEGORICAL_SET for c in names}
        if len(kinds) > 1 or scalar or any(c in _TEXT_SET for c in names):
            raise _Unsupported(f"a block mixing kinds of columns: {names!r}")
        steps = [] if passthrough else _flatten(trans)
        if kinds == {True}:
            if not steps:
                raise _Unsupported("passthrough of categorical columns")
            first = steps[0]
            if type(first).__name__ == "OneHotEncoder":
                encode = _op_one_hot(first, dense_output)
            else:
                encode = _op_ordinal(first)
            return _Block("categorical", positions, encode, [_numeric_op(s) for s in steps[1:]])
        return _Block("numeric", positions, None, [_numeric_op(s) for s in steps])

    def transform(self, columns: list[Sequence[Any]]) -> Any:
        parts = []
        for block in self.blocks:
            if block.kind == "text":
                texts = list(columns[block.columns[0]])
                if not all(isinstance(t, str) for t in texts):
                    raise _Fallback("non-string text")
                parts.append(block.encode.transform(texts))
                continue
            if block.kind == "categorical":
                Z = block.encode([columns[p] for p in block.columns])
            else:
                Z = np.array([columns[p] for p in block.columns], dtype=np.float64).T
            for op in block.ops:
                Z = op(Z)
            parts.append(Z)
        if self.sparse:  # ColumnTransformer._hstack with a sparse output
            from scipy import sparse

            if len(parts) == 1 and sparse.isspmatrix_csr(parts[0]) and parts[0].has_sorted_indices:
                return parts[0]  # hstack of one CSR block keeps its data and order
            from sklearn.utils import check_array

            converted = [check_array(X, accept_sparse=True, ensure_all_finite=False) for X in parts]
            return sparse.hstack(converted).tocsr()
        from scipy import sparse

        parts = [p.toarray() if sparse.issparse(p) else p for p in parts]
        return np.hstack(parts) if len(parts) > 1 else parts[0]


class _Tfidf:
    """TfidfVectorizer.transform on a list of texts, without its per-call validation.

    The same analyzer, vocabulary and arithmetic (counts, sublinear tf, idf, in-place l2 norm).
    """

    def __init__(self, vec: Any) -> None:
        from sklearn.feature_extraction.text import TfidfVectorizer

        if type(vec) is not TfidfVectorizer or vec.norm not in (None, "l2"):
            raise _Unsupported("text block other than a plain TfidfVectorizer")
        self.analyze = vec.build_analyzer()
        self.vocabulary = vec.vocabulary_
        self.width = len(vec.vocabulary_)
        self.dtype = vec.dtype
        self.binary = vec.binary
        self.sublinear = vec.sublinear_tf
        self.idf = np.asarray(vec.idf_) if vec.use_idf else None
        self.l2 = vec.norm == "l2"

    def transform(self, texts: Sequence[str]) -> Any:
        from scipy import sparse
        from sklearn.utils.sparsefuncs_fast import inplace_csr_row_normalize_l2

        indices: list[int] = []
        values: list[int] = []
        indptr = [0]
        vocabulary = self.vocabulary
        for doc in texts:
            counts: dict[int, int] = {}
            for feature in self.analyze(doc):
                idx = vocabulary.get(feature)
                if idx is not None:
                    counts[idx] = counts.get(idx, 0) + 1
            for idx in sorted(counts):
                indices.append(idx)
                values.append(counts[idx])
            indptr.append(len(indices))
        X = sparse.csr_matrix(
            (np.asarray(values, dtype=self.dtype), np.asarray(indices, dtype=np.int32),
             np.asarray(indptr, dtype=np.int32)),
            shape=(len(texts), self.width), dtype=self.dtype,
        )  # fmt: skip
        if self.binary:
            X.data.fill(1)
        if self.sublinear:
            np.log(X.data, X.data)
            X.data += 1.0
        if self.idf is not None:
            X.data *= self.idf[X.indices]
        if self.l2:
            inplace_csr_row_normalize_l2(X)
        return X


class _Logistic:
    """Binary LogisticRegression's decision_function and predict_proba on a ready matrix."""

    def __init__(self, model: Any) -> None:
        from sklearn.linear_model import LogisticRegression

        if type(model) is not LogisticRegression or len(model.classes_) != 2:
            raise _Unsupported("not a binary LogisticRegression")
        self.coef_t = model.coef_.T if model.coef_.ndim == 2 else model.coef_
        self.intercept = model.intercept_
        self.width = model.coef_.shape[-1]

    def decision(self, X: Any) -> np.ndarray:
        if X.shape[1] != self.width:
            raise ValueError(f"X has {X.shape[1]} features, the model {self.width}")
        scores = X @ self.coef_t + self.intercept  # safe_sparse_dot of a matrix and a dense array
        return scores.reshape(-1) if scores.ndim > 1 and scores.shape[1] == 1 else scores

    def proba(self, X: Any) -> np.ndarray:
        from scipy.special import expit

        prob = self.decision(X)
        prob = expit(prob, out=prob)
        return np.stack([1 - prob, prob], axis=1)


class _Boosting:
    """HistGradientBoostingClassifier (binary, numeric splits): all trees walked at once.

    Each tree's leaf is found as its Cython predictor finds it (NaN follows missing_go_to_left,
    else value <= threshold goes left); the leaf values are added to the baseline one tree after
    another, in the order scikit-learn adds them, so the sum is the same to the last bit.
    """

    def __init__(self, model: Any) -> None:
        from sklearn.ensemble import HistGradientBoostingClassifier

        if type(model) is not HistGradientBoostingClassifier or model.n_trees_per_iteration_ != 1:
            raise _Unsupported("not a binary HistGradientBoostingClassifier")
        nodes = [p.nodes for it in model._predictors for p in it]
        if any(n["is_categorical"].any() for n in nodes):
            raise _Unsupported("gradient boosting with categorical splits")
        offsets = np.cumsum([0] + [len(n) for n in nodes[:-1]])
        allnodes = np.concatenate(nodes)
        self.roots = offsets.astype(np.intp)
        shift = np.repeat(offsets, [len(n) for n in nodes])
        self.left = (allnodes["left"].astype(np.intp) + shift).astype(np.intp)
        self.right = (allnodes["right"].astype(np.intp) + shift).astype(np.intp)
        self.feature = allnodes["feature_idx"].astype(np.intp)
        self.threshold = np.asarray(allnodes["num_threshold"], dtype=np.float64)
        self.missing_left = allnodes["missing_go_to_left"].astype(bool)
        self.is_leaf = allnodes["is_leaf"].astype(bool)
        self.value = np.asarray(allnodes["value"], dtype=np.float64)
        self.baseline = np.asarray(model._baseline_prediction, dtype=np.float64).reshape(-1)
        self.width = model.n_features_in_
        self.loss = model._loss

    def decision(self, X: Any) -> np.ndarray:
        X = np.asarray(X, dtype=np.float64)
        if X.ndim != 2 or X.shape[1] != self.width:
            raise ValueError(f"X has shape {X.shape}, the model wants {self.width} features")
        n = X.shape[0]
        node = np.broadcast_to(self.roots, (n, len(self.roots))).copy()
        rows = np.arange(n)[:, None]
        leaf = self.is_leaf[node]
        while not leaf.all():
            x = X[rows, self.feature[node]]
            left = np.where(np.isnan(x), self.missing_left[node], x <= self.threshold[node])
            node = np.where(leaf, node, np.where(left, self.left[node], self.right[node]))
            leaf = self.is_leaf[node]
        terms = np.empty((n, len(self.roots) + 1), dtype=np.float64)
        terms[:, 0] = self.baseline[0]
        terms[:, 1:] = self.value[node]
        return np.add.accumulate(terms, axis=1)[:, -1]  # one addition after another

    def proba(self, X: Any) -> np.ndarray:
        return self.loss.predict_proba(self.decision(X).reshape(-1, 1))


class _Calibrator:
    """The fitted calibrator's predict without its input validation."""

    def __init__(self, calibrator: Any) -> None:
        from sklearn.calibration import _SigmoidCalibration
        from sklearn.isotonic import IsotonicRegression

        self.sigmoid: tuple[float, float] | None = None
        self.isotonic: Any = None
        if type(calibrator) is _SigmoidCalibration:
            self.sigmoid = (calibrator.a_, calibrator.b_)
        elif type(calibrator) is IsotonicRegression and hasattr(calibrator, "X_thresholds_"):
            if calibrator.out_of_bounds != "clip" or calibrator.X_thresholds_.dtype != np.float64:
                raise _Unsupported("IsotonicRegression without clipping or float64 thresholds")
            self.isotonic = calibrator
        else:
            raise _Unsupported(f"calibrator {type(calibrator).__name__}")

    def __call__(self, T: np.ndarray) -> np.ndarray:
        from scipy.special import expit

        T = np.asarray(T, dtype=np.float64).reshape(-1)
        if self.sigmoid is not None:
            a, b = self.sigmoid
            return expit(-(a * T + b))
        iso = self.isotonic
        T = np.clip(T, iso.X_min_, iso.X_max_)
        return iso.f_(T).astype(T.dtype)


# ------------------------------------------------------------------------ compiled estimators
# Each node answers like the scikit-learn object it stands for, on parsed columns:
# proba(cols) ~ predict_proba(X), decision(cols) ~ decision_function(X) (None: it has none).


class _Node:
    classes: np.ndarray
    has_decision = False

    def proba(self, cols: list[Sequence[Any]]) -> np.ndarray:
        raise NotImplementedError

    def decision(self, cols: list[Sequence[Any]]) -> np.ndarray:
        raise NotImplementedError


class _Forest:
    """RandomForestClassifier.predict_proba without its per-tree joblib wrappers."""

    def __init__(self, final: Any) -> None:
        from sklearn.ensemble._forest import ForestClassifier
        from sklearn.tree import DecisionTreeClassifier

        if type(final).predict_proba is not ForestClassifier.predict_proba or final.n_outputs_ != 1:
            raise _Unsupported("forest with several outputs or its own predict_proba")
        self.trees, self.values = [], []
        for est in final.estimators_:
            if not isinstance(est, DecisionTreeClassifier) or est.n_outputs_ != 1:
                raise _Unsupported("forest of unknown trees")
            self.trees.append(est.tree_)
            self.values.append(np.ascontiguousarray(est.tree_.value[:, 0, : final.n_classes_]))

    def __call__(self, Z: np.ndarray) -> np.ndarray:
        # the same float32 input, the same leaf values, summed in the same order, divided the same
        X32 = np.asarray(Z, dtype=np.float32)
        out = np.zeros((X32.shape[0], self.values[0].shape[1]), dtype=np.float64)
        for tree, value in zip(self.trees, self.values, strict=True):
            out += value.take(tree.apply(X32), axis=0)
        out /= len(self.trees)
        return out


class _PipelineNode(_Node):
    """Pipeline(ColumnTransformer, classifier): compiled columns, then the classifier itself."""

    def __init__(self, pipe: Any) -> None:
        steps = pipe.steps
        if len(steps) != 2:
            raise _Unsupported("a Pipeline that is not (ColumnTransformer, estimator)")
        self.columns = _Columns(steps[0][1])
        final = steps[1][1]
        if not hasattr(final, "predict_proba"):
            raise _Unsupported(f"{type(final).__name__} has no predict_proba")
        self.final = _matrix_estimator(final)
        self.classes = np.asarray(final.classes_)
        self.has_decision = hasattr(final, "decision_function")

    def proba(self, cols: list[Sequence[Any]]) -> np.ndarray:
        return self.final.proba(self.columns.transform(cols))

    def decision(self, cols: list[Sequence[Any]]) -> np.ndarray:
        return self.final.decision(self.columns.transform(cols))


class _Plain:
    """Any other classifier: its own methods on the compiled matrix."""

    def __init__(self, model: Any) -> None:
        self.model = model

    def proba(self, X: Any) -> np.ndarray:
        return self.model.predict_proba(X)

    def decision(self, X: Any) -> np.ndarray:
        return self.model.decision_function(X)


class _ForestEstimator:
    def __init__(self, model: Any) -> None:
        self.proba = _Forest(model)


def _matrix_estimator(model: Any) -> Any:
    """The fastest exact form of a classifier that takes the compiled matrix."""
    from sklearn.ensemble._forest import ForestClassifier

    if isinstance(model, ForestClassifier):
        return _ForestEstimator(model)
    for fast in (_Logistic, _Boosting):
        try:
            return fast(model)
        except _Unsupported:
            pass
    return _Plain(model)


class _StackNode(_Node):
    """StackingClassifier: each estimator's answers side by side, then the final estimator."""

    def __init__(self, stack: Any) -> None:
        if stack.passthrough:
            raise _Unsupported("StackingClassifier with passthrough")
        if isinstance(getattr(stack, "_label_encoder", None), list):
            raise _Unsupported("multilabel StackingClassifier")
        self.classes = np.asarray(stack.classes_)
        self.binary = len(self.classes) == 2
        self.members: list[tuple[_Node, str]] = []
        for est, method in zip(stack.estimators_, stack.stack_method_, strict=True):
            if isinstance(est, str) and est == "drop":
                continue
            if method not in ("predict_proba", "decision_function"):
                raise _Unsupported(f"stack_method {method!r}")
            node = _compile(est)
            if method == "decision_function" and not node.has_decision:
                raise _Unsupported("stack member without decision_function")
            self.members.append((node, method))
        self.final = _matrix_estimator(stack.final_estimator_)
        self.has_decision = hasattr(stack.final_estimator_, "decision_function")

    def meta(self, cols: list[Sequence[Any]]) -> np.ndarray:
        parts = []
        for node, method in self.members:
            preds = node.proba(cols) if method == "predict_proba" else node.decision(cols)
            if preds.ndim == 1:
                parts.append(preds.reshape(-1, 1))
            elif method == "predict_proba" and self.binary:
                parts.append(preds[:, 1:])
            else:
                parts.append(preds)
        return np.hstack(parts)

    def proba(self, cols: list[Sequence[Any]]) -> np.ndarray:
        return self.final.proba(self.meta(cols))

    def decision(self, cols: list[Sequence[Any]]) -> np.ndarray:
        return self.final.decision(self.meta(cols))


class _CalibratedNode(_Node):
    """CalibratedClassifierCV(ensemble=False), binary: _CalibratedClassifier.predict_proba."""

    def __init__(self, model: Any) -> None:
        if len(model.calibrated_classifiers_) != 1:
            raise _Unsupported("CalibratedClassifierCV with several calibrated classifiers")
        cc = model.calibrated_classifiers_[0]
        self.classes = np.asarray(model.classes_)
        if len(self.classes) != 2 or cc.method not in ("sigmoid", "isotonic"):
            raise _Unsupported(f"calibration {cc.method!r} with {len(self.classes)} classes")
        if len(cc.calibrators) != 1 or not np.array_equal(cc.classes, self.classes):
            raise _Unsupported("calibrated classifier with unexpected calibrators or classes")
        inner_classes = np.asarray(cc.estimator.classes_)
        if len(inner_classes) != 2:
            raise _Unsupported("calibrated estimator is not binary")
        self.inner = _compile(cc.estimator)
        self.calibrator = _Calibrator(cc.calibrators[0])
        # _get_response_values: decision_function first, else predict_proba of classes_[-1]
        self.use_decision = hasattr(cc.estimator, "decision_function")
        if self.use_decision and not self.inner.has_decision:
            raise _Unsupported("calibrated estimator's decision_function is not compiled")

    def proba(self, cols: list[Sequence[Any]]) -> np.ndarray:
        if self.use_decision:
            response = np.ravel(self.inner.decision(cols))
        else:
            response = self.inner.proba(cols)[:, -1]
        proba = np.zeros((len(response), 2))
        proba[:, 1] = self.calibrator(response)
        proba[:, 0] = 1.0 - proba[:, 1]
        proba[(1.0 < proba) & (proba <= 1.0 + 1e-5)] = 1.0
        return proba


class _DelegateNode(_Node):
    """FrozenEstimator (and the probabilities of FixedThresholdClassifier): the inner model."""

    def __init__(self, inner: Any, classes: Any) -> None:
        self.inner = _compile(inner)
        self.classes = np.asarray(classes)
        self.has_decision = self.inner.has_decision

    def proba(self, cols: list[Sequence[Any]]) -> np.ndarray:
        return self.inner.proba(cols)

    def decision(self, cols: list[Sequence[Any]]) -> np.ndarray:
        return self.inner.decision(cols)


def _compile(model: Any) -> _Node:
    """The compiled node of a fitted scikit-learn model, or _Unsupported."""
    from sklearn.calibration import CalibratedClassifierCV
    from sklearn.ensemble import StackingClassifier
    from sklearn.frozen import FrozenEstimator
    from sklearn.model_selection import FixedThresholdClassifier
    from sklearn.pipeline import Pipeline

    kind = type(model)
    if kind is FixedThresholdClassifier:
        return _DelegateNode(getattr(model, "estimator_", model.estimator), model.classes_)
    if kind is FrozenEstimator:
        return _DelegateNode(model.estimator, model.classes_)
    if kind is CalibratedClassifierCV:
        return _CalibratedNode(model)
    if kind is StackingClassifier:
        return _StackNode(model)
    if kind is Pipeline:
        return _PipelineNode(model)
    raise _Unsupported(f"{kind.__name__}")


class _Labels:
    """How a model turns its answers into labels, exactly as its `predict` does."""

    def __init__(self, model: Any) -> None:
        from sklearn.model_selection import FixedThresholdClassifier

        self.classes = np.asarray(model.classes_)
        self.threshold: float | None = None
        self.use_predict = False
        self.column = 0
        if type(model) is FixedThresholdClassifier:
            inner = getattr(model, "estimator_", model.estimator)
            method = model._get_response_method()
            if isinstance(method, list):
                method = next((m for m in method if hasattr(inner, m)), None)
            pos_label = model.pos_label
            if method != "predict_proba" or len(self.classes) != 2:
                self.use_predict = True  # decision scores: ask the model itself
                return
            self.threshold = 0.5 if model.threshold == "auto" else float(model.threshold)
            inner_classes = np.asarray(inner.classes_)
            target = inner_classes[-1] if pos_label is None else pos_label
            self.column = int(np.flatnonzero(inner_classes == target)[0])
            if pos_label is None:
                self.index_map = np.array([0, 1])
            else:
                self.index_map = np.array(
                    [
                        np.flatnonzero(self.classes != pos_label)[0],
                        np.flatnonzero(self.classes == pos_label)[0],
                    ]
                )
        elif not _argmax_predict(model):
            self.use_predict = True

    def from_proba(self, proba: np.ndarray) -> np.ndarray:
        if self.threshold is not None:  # _threshold_scores_to_class_labels
            positive = (proba[:, self.column] >= self.threshold).astype(int)
            return self.classes[self.index_map[positive]]
        return self.classes[np.argmax(proba, axis=1)]


def _argmax_predict(model: Any) -> bool:
    """True when `model.predict` is the class of highest predict_proba (no decision rule)."""
    from sklearn.calibration import CalibratedClassifierCV
    from sklearn.ensemble import HistGradientBoostingClassifier
    from sklearn.ensemble._forest import ForestClassifier
    from sklearn.pipeline import Pipeline

    if type(model) is Pipeline:
        return _argmax_predict(model.steps[-1][1])
    if type(model) is CalibratedClassifierCV:
        return True
    if type(model) is HistGradientBoostingClassifier:
        return True
    return isinstance(model, ForestClassifier) and type(model).predict is ForestClassifier.predict


class Predictor:
    """A fitted model ready to serve. `predict(rows)` -> (probability of class 1, labels).

    Labels are what the model's own `predict` gives: the tuned cut of a FixedThresholdClassifier,
    else the class with the highest probability (or the estimator's rule, asked of it).
    """

    def __init__(self, model: Any, compile_model: bool = True) -> None:
        self.model = model
        self.classes = np.asarray(model.classes_)
        hits = np.flatnonzero(self.classes == 1)
        self.positive = int(hits[0]) if len(hits) else len(self.classes) - 1
        self.labels = _Labels(model)
        self.kind = "sklearn"
        self.reason = "compilation disabled" if not compile_model else ""
        self._root: _Node | None = None
        if compile_model:
            self._try_compile()

    # ----------------------------------------------------------------------- compilation

    def _try_compile(self) -> None:
        try:
            self._root = _compile(self.model)
            if not np.array_equal(self._root.classes, self.classes):
                raise _Unsupported("compiled classes differ from the model's")
            self.kind = "compiled"
            problem = self._verify()
        except _Unsupported as exc:
            problem = f"unsupported step: {exc}"
        except Exception as exc:  # compiling must never stop a model from being served
            problem = f"{type(exc).__name__}: {exc}"
        if problem:
            self.kind, self.reason = "sklearn", problem
            self._root = None
            logger.info("serving with scikit-learn (%s)", problem)
        else:
            self.reason = "matches scikit-learn bit for bit on the probe rows"

    def _probe_rows(self, n: int = 240) -> list[Row]:
        """Deterministic rows: known and unseen categories and words, NaNs, zeros, wide ranges."""
        rng = np.random.default_rng(0)
        choices: list[list[str]] = [["a", "b"], ["a", "b"], ["Free", "Paid"]]
        words: list[str] = []
        for est in _nested(self.model):
            for name, values in zip(
                getattr(est, "feature_names_in_", []), getattr(est, "categories_", []),
                strict=False,
            ):  # fmt: skip
                if name in CATEGORICAL:
                    choices[CATEGORICAL.index(name)] = [str(v) for v in values]
            vocabulary = getattr(est, "vocabulary_", None)
            if isinstance(vocabulary, dict):
                words.extend(sorted(k for k in vocabulary if isinstance(k, str))[:400])
        words = words or ["game", "free", "pro"]
        words += ["ünïcode", "日本語", "X2", "PRO", "zzzunseen", "3d", "-"]
        genres = ["Action", "Action;Adventure", "", "NaN", "Puzzle;Brain Games;Casual", ";"]
        versions = ["4.0.3 and up", "Varies with device", "", "1.2.3", "v2", "NaN", "10.0", "7"]
        rows: list[Row] = []
        for k in range(n):
            text = [str(rng.choice(c)) if rng.random() > 0.05 else "__unseen__" for c in choices]
            nums = []
            for j in range(4):
                r = rng.random()
                if r < 0.08:
                    nums.append(math.nan if j == 2 else 0.0)
                elif r < 0.12:
                    nums.append(0.0)
                else:
                    nums.append(float(np.round(10 ** rng.uniform(-2, 9 if j < 2 else 3), 3)))
            days = math.nan if rng.random() < 0.03 else float(rng.uniform(12_000, 21_000))
            name = "" if k % 37 == 5 else " ".join(rng.choice(words, rng.integers(1, 6)))
            if k % 11 == 3:
                name = name.upper()
            texts = (name, str(rng.choice(genres)), str(rng.choice(versions)),
                     str(rng.choice(versions)))  # fmt: skip
            derived = derived_values(*texts, nums[0], nums[1])
            rows.append((*text, *nums, days, *derived, name))
        return rows

    def _verify(self) -> str:
        """'' when the compiled path equals scikit-learn exactly, else what differed."""
        rows = self._probe_rows()
        frame = rows_frame(rows)
        expected = self.model.predict_proba(frame)
        batched = self._compiled_proba(rows)
        if not np.array_equal(expected, batched):
            diff = float(np.nanmax(np.abs(expected - batched)))
            return f"compiled result differs from scikit-learn (max difference {diff:.3g})"
        # one row at a time too: scikit-learn itself may differ in the last bit between one row
        # and a batch (a matrix-vector product is not a matrix-matrix product), so compare each
        # single row with scikit-learn's answer for that single row
        for i in range(24):
            one = self.model.predict_proba(frame.iloc[i : i + 1].reset_index(drop=True))
            if not np.array_equal(one, self._compiled_proba(rows[i : i + 1])):
                return f"compiled result for probe row {i} alone differs from scikit-learn"
        if not self.labels.use_predict:
            labels = self.labels.from_proba(batched)
            if not np.array_equal(labels, self.model.predict(frame)):
                return "labels from the compiled probabilities differ from the model's predict"
        return ""

    # ------------------------------------------------------------------------ prediction

    def _compiled_proba(self, rows: Sequence[Row]) -> np.ndarray:
        assert self._root is not None
        return self._root.proba(list(zip(*rows, strict=True)))

    def predict_proba(self, rows: Sequence[Row]) -> np.ndarray:
        """Class probabilities (columns in `classes` order) for parsed rows."""
        if self._root is not None:
            try:
                return self._compiled_proba(rows)
            except _Fallback:
                pass
        return self.model.predict_proba(rows_frame(rows))

    def predict(self, rows: Sequence[Row]) -> tuple[np.ndarray, np.ndarray]:
        """Probability of class 1 and the label `model.predict` gives, for parsed rows."""
        proba = self.predict_proba(rows)
        if self.labels.use_predict:
            labels = np.asarray(self.model.predict(rows_frame(rows)))
        else:
            labels = self.labels.from_proba(proba)
        return proba[:, self.positive], labels


# ================================================================================================
# micro-batching


@dataclass
class Variant:
    """One loaded model version serving under a name (champion or canary)."""

    name: str
    version: str
    predictor: Predictor
    loaded_at: float = field(default_factory=time.time)

    @property
    def model(self) -> Any:
        return self.predictor.model


@dataclass
class _Job:
    variant: Variant
    rows: list[Row]
    future: asyncio.Future


class MicroBatcher:
    """Gathers concurrent requests for one variant into one predict call in a worker thread.

    The first job never waits. While predictions run, new jobs queue up; when more than one is
    waiting, the batcher waits up to `wait_s` for the batch to fill to `max_rows`, but only while
    some request in the service (`enter`/`leave`) is not queued yet: with 8 clients it stops at
    8 jobs instead of waiting for 64 that cannot come. A failing batch is retried job by job so
    one bad job fails alone.
    """

    def __init__(self, max_rows: int = 64, wait_s: float = 0.002, on_batch: Any = None) -> None:
        self.max_rows = max(1, int(max_rows))
        self.wait_s = max(0.0, float(wait_s))
        self.on_batch = on_batch  # called with the row count of every predict call
        self._jobs: deque[_Job] = deque()
        self._queued_rows = 0
        self._wake: asyncio.Event | None = None
        self._task: asyncio.Task | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._executor = _predict_executor()
        self.calls = 0
        self.active = 0  # requests inside the service (entered, not yet answered)

    def enter(self) -> None:
        """A request came in: it may join the batch being gathered."""
        self.active += 1

    def leave(self) -> None:
        """A request was answered: the gathering may be complete now."""
        self.active -= 1
        if self._wake is not None:
            self._wake.set()

    def start(self) -> None:
        loop = asyncio.get_running_loop()
        if self._task is not None and not self._task.done() and self._loop is loop:
            return
        self._loop = loop
        self._wake = asyncio.Event()
        self._task = loop.create_task(self._run(), name="micro-batcher")

    async def predict(self, variant: Variant, rows: list[Row]) -> tuple[list[float], list[Any]]:
        """Probabilities of class 1 and labels for `rows`, predicted with other waiting rows."""
        self.start()
        future = asyncio.get_running_loop().create_future()
        self._jobs.append(_Job(variant, rows, future))
        self._queued_rows += len(rows)
        self._wake.set()
        return await future

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            while True:
                if not self._jobs:
                    self._wake.clear()
                    await self._wake.wait()
                    continue
                if len(self._jobs) > 1 and self.wait_s > 0 and self._queued_rows < self.max_rows:
                    deadline = loop.time() + self.wait_s
                    while self._queued_rows < self.max_rows and len(self._jobs) < self.active:
                        remaining = deadline - loop.time()
                        if remaining <= 0:
                            break
                        self._wake.clear()
                        try:
                            await asyncio.wait_for(self._wake.wait(), remaining)
                        except TimeoutError:
                            break
                batch = self._take()
                if batch:
                    await self._predict_batch(batch)
        except asyncio.CancelledError:
            self._fail_all(RuntimeError("the service is shutting down"))
            raise

    def _take(self) -> list[_Job]:
        """The first live job and, in order, later live jobs of the same variant."""
        batch: list[_Job] = []
        keep: deque[_Job] = deque()
        rows = 0
        while self._jobs:
            job = self._jobs.popleft()
            self._queued_rows -= len(job.rows)
            if job.future.done():  # the client went away
                continue
            if not batch or (
                job.variant is batch[0].variant and rows + len(job.rows) <= self.max_rows
            ):
                batch.append(job)
                rows += len(job.rows)
                if rows >= self.max_rows:
                    break
            else:
                keep.append(job)
                self._queued_rows += len(job.rows)
        while keep:
            self._jobs.appendleft(keep.pop())
        return batch

    async def _predict_batch(self, batch: list[_Job]) -> None:
        loop = asyncio.get_running_loop()
        predictor = batch[0].variant.predictor
        rows = batch[0].rows if len(batch) == 1 else [r for job in batch for r in job.rows]
        self.calls += 1
        if self.on_batch is not None:
            self.on_batch(len(rows))
        try:
            proba, labels = await loop.run_in_executor(self._executor, predictor.predict, rows)
        except Exception as exc:
            if len(batch) == 1:
                _settle(batch[0].future, exc=exc)
                return
            for job in batch:  # isolate the job(s) that fail
                try:
                    p, lab = await loop.run_in_executor(self._executor, predictor.predict, job.rows)
                except Exception as single_exc:
                    _settle(job.future, exc=single_exc)
                else:
                    _settle(job.future, result=(p.tolist(), lab.tolist()))
            return
        proba_list, label_list = proba.tolist(), labels.tolist()
        start = 0
        for job in batch:
            end = start + len(job.rows)
            _settle(job.future, result=(proba_list[start:end], label_list[start:end]))
            start = end

    def _fail_all(self, exc: BaseException) -> None:
        while self._jobs:
            _settle(self._jobs.popleft().future, exc=exc)
        self._queued_rows = 0

    async def stop(self) -> None:
        if self._task is not None and not self._task.done():
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task
        self._fail_all(RuntimeError("the service is shutting down"))
        await asyncio.get_running_loop().run_in_executor(None, self._executor.shutdown, True)
        self._executor = _predict_executor()


def _one_openmp_thread() -> None:
    """Predict-thread initializer: like n_jobs=1, one OpenMP thread (e.g. gradient boosting).

    omp_set_num_threads is per calling thread, so the rest of the process is not affected.
    """
    try:
        from threadpoolctl import threadpool_limits

        threadpool_limits(limits=1, user_api="openmp")
    except Exception:  # threadpoolctl comes with scikit-learn; without it, keep the default
        logger.debug("could not limit OpenMP threads in the predict thread")


def _predict_executor() -> ThreadPoolExecutor:
    return ThreadPoolExecutor(
        max_workers=1, thread_name_prefix="predict", initializer=_one_openmp_thread
    )


def _settle(future: asyncio.Future, result: Any = None, exc: BaseException | None = None) -> None:
    if future.done():
        return
    if exc is not None:
        future.set_exception(exc)
    else:
        future.set_result(result)


# ================================================================================================
# metrics


class Metrics:
    """Prometheus metrics in the app's own registry (several apps can live in one process)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        labels = ["variant", "model_version"]
        r = self.registry
        self.requests = Counter("model_requests", "Prediction requests", labels, registry=r)
        self.errors = Counter(
            "model_request_errors", "Prediction requests the model failed", labels, registry=r
        )
        self.latency = Histogram(
            "model_request_latency_seconds",
            "Time from request to answer in the service",
            labels,
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.predictions = Counter(
            "model_predictions", "Predicted rows by label", [*labels, "label"], registry=r
        )
        self.canary_weight = Gauge(
            "model_canary_weight", "Percent of request ids routed to the canary", registry=r
        )
        self.invalid = Counter(
            "model_invalid_requests", "Requests refused as invalid input (422)", registry=r
        )
        self.unavailable = Counter(
            "model_unavailable_requests", "Requests answered 503: no champion model", registry=r
        )
        self.lease_expiries = Counter(
            "model_canary_lease_expirations", "Canary leases that ran out", registry=r
        )
        self.batch_rows = Histogram(
            "model_batch_rows",
            "Rows per predict call (micro-batching)",
            buckets=(1, 2, 4, 8, 16, 32, 64, 128, 512, 2048),
            registry=r,
        )
        self._children: dict[tuple[str, str], tuple[Any, Any, Any]] = {}
        self._label_children: dict[tuple[str, str, Any], Any] = {}

    def for_variant(self, variant: Variant) -> tuple[Any, Any, Any]:
        key = (variant.name, variant.version)
        children = self._children.get(key)
        if children is None:
            children = (
                self.requests.labels(*key),
                self.errors.labels(*key),
                self.latency.labels(*key),
            )
            self._children[key] = children
        return children

    def count_labels(self, variant: Variant, labels: list[Any]) -> None:
        counts: dict[Any, int] = {}
        for label in labels:
            counts[label] = counts.get(label, 0) + 1
        for label, n in counts.items():
            key = (variant.name, variant.version, label)
            child = self._label_children.get(key)
            if child is None:
                child = self.predictions.labels(variant.name, variant.version, str(label))
                self._label_children[key] = child
            child.inc(n)


# ================================================================================================
# the service state: models, routing, lease


class AdminError(Exception):
    """An admin request that cannot be applied; routing is left as it was."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


_MLFLOW_LOCK = threading.Lock()


class ModelService:
    """The state behind the app: loaded variants, routing, lease, store, batcher, metrics."""

    def __init__(self, settings: ServingSettings) -> None:
        self.settings = settings
        self.metrics = Metrics()
        self.store = PredictionStore(settings.store_url)
        self.batcher = MicroBatcher(
            settings.max_batch, settings.batch_wait_ms / 1000.0, self.metrics.batch_rows.observe
        )
        self.started = time.monotonic()
        self.champion: Variant | None = None
        self.canary: Variant | None = None
        self.canary_weight = 0.0
        self.lease_seconds: float | None = None
        self.lease_deadline: float | None = None  # time.monotonic()
        self.lease_expired_at: float | None = None  # time.time() of the last expiry
        self.champion_problem = "not loaded yet (the service is starting)"
        self._admin_lock: asyncio.Lock | None = None
        self._lease_task: asyncio.Task | None = None

    # ------------------------------------------------------------------------ MLflow

    def _client(self) -> Any:
        from mlflow import MlflowClient

        uri = self.settings.tracking_uri
        return MlflowClient(tracking_uri=uri, registry_uri=uri)

    def champion_version(self) -> str | None:
        """The version behind the champion alias now (None: no model or alias)."""
        return registry.alias_version(
            self._client(), self.settings.model_name, self.settings.champion_alias
        )

    def load_variant(self, name: str, version: str) -> Variant:
        """Load a registered version (blocking: call it from a thread)."""
        import mlflow

        with _MLFLOW_LOCK:  # lib.registry loads through MLflow's process-wide URIs
            mlflow.set_tracking_uri(self.settings.tracking_uri)
            mlflow.set_registry_uri(self.settings.tracking_uri)
            model = registry.load_version(self.settings.model_name, str(version))
        single_threaded(model)
        predictor = Predictor(model, self.settings.compile_models)
        logger.info(
            "loaded %s version %s as %s (%s predictor)",
            self.settings.model_name,
            version,
            name,
            predictor.kind,
        )
        return Variant(name, str(version), predictor)

    def _no_champion_message(self) -> str:
        return (
            f"alias {self.settings.champion_alias!r} of model {self.settings.model_name!r} is not "
            f"set in {registry.redact_uri(self.settings.tracking_uri)}; train and promote a "
            "version, then POST /admin/reload"
        )

    def load_champion_at_start(self) -> None:
        """Start-up: load the champion if there is one; never raise (503s explain it instead)."""
        try:
            version = self.champion_version()
            if version is None:
                self.champion_problem = self._no_champion_message()
                logger.warning("no champion model yet: %s", self.champion_problem)
                return
            self.champion = self.load_variant(self.settings.champion_label, version)
            self.champion_problem = ""
        except Exception as exc:
            self.champion_problem = f"loading the champion failed: {type(exc).__name__}: {exc}"
            logger.exception("no champion model yet")

    # ------------------------------------------------------------------------ routing

    def check_lease(self) -> None:
        """The dead-man switch: an expired lease drops the canary's weight to 0."""
        deadline = self.lease_deadline
        if deadline is None or time.monotonic() < deadline:
            return
        self.lease_deadline = None
        self.lease_expired_at = time.time()
        if self.canary_weight > 0:
            logger.warning(
                "canary lease of %.0f s expired without renewal: canary %s weight %.2f%% -> 0",
                self.lease_seconds or 0,
                self.canary.version if self.canary else "-",
                self.canary_weight,
            )
            self.metrics.lease_expiries.inc()
        self.canary_weight = 0.0
        self.metrics.canary_weight.set(0.0)

    def route(self, request_id: str) -> Variant | None:
        canary = self.canary
        if canary is not None and self.canary_weight > 0:
            if variant_bucket(request_id) < self.canary_weight * 100:
                return canary
        return self.champion

    def routing(self) -> dict[str, Any]:
        self.check_lease()
        remaining = None
        if self.lease_deadline is not None:
            remaining = round(max(0.0, self.lease_deadline - time.monotonic()), 3)
        return {
            "model_name": self.settings.model_name,
            "champion_version": self.champion.version if self.champion else None,
            "canary_version": self.canary.version if self.canary else None,
            "canary_weight": self.canary_weight,
            "lease_seconds": self.lease_seconds if self.lease_deadline is not None else None,
            "lease_expires_in": remaining,
            "lease_expired_at": self.lease_expired_at,
        }

    def set_canary(self, canary: Variant | None, weight: float, lease: float | None) -> None:
        self.canary = canary
        self.canary_weight = float(weight) if canary is not None else 0.0
        self.lease_seconds = lease
        self.lease_deadline = time.monotonic() + lease if lease and canary is not None else None
        self.metrics.canary_weight.set(self.canary_weight)
        logger.info(
            "routing: canary %s at %.2f%%%s",
            canary.version if canary else "none",
            self.canary_weight,
            f" (lease {lease:g} s)" if self.lease_deadline is not None else "",
        )

    def admin_lock(self) -> asyncio.Lock:
        if self._admin_lock is None:
            self._admin_lock = asyncio.Lock()
        return self._admin_lock

    async def update_routing(self, body: Any) -> dict[str, Any]:
        """PUT /admin/routing: load the canary version (if new), set weight and lease."""
        if not isinstance(body, dict):
            raise AdminError(
                422,
                'body: expected an object like {"canary_version": "4", "weight": 5.0, '
                '"lease_seconds": 60}',
            )
        unknown = sorted(set(body) - {"canary_version", "weight", "lease_seconds"})
        if unknown:
            raise AdminError(
                422, f"unknown field(s) {unknown}; expected canary_version, weight, lease_seconds"
            )
        version = body.get("canary_version", ...)
        if version is not None and version is not ...:
            if isinstance(version, bool) or not isinstance(version, (str, int)):
                raise AdminError(
                    422,
                    f'canary_version: expected a version like "4" or null, got {_show(version)}',
                )
            version = str(version).strip()
            if not version:
                raise AdminError(422, "canary_version: empty")
        weight = body.get("weight")
        if weight is not None:
            if isinstance(weight, bool) or not isinstance(weight, (int, float)):
                raise AdminError(422, f"weight: expected a percentage 0..100, got {_show(weight)}")
            if not (math.isfinite(weight) and 0 <= weight <= 100):
                raise AdminError(422, f"weight: {weight!r} is not a percentage in 0..100")
        lease = body.get("lease_seconds")
        if lease is not None:
            if isinstance(lease, bool) or not isinstance(lease, (int, float)):
                raise AdminError(422, f"lease_seconds: expected seconds > 0, got {_show(lease)}")
            if not (math.isfinite(lease) and lease > 0):
                raise AdminError(422, f"lease_seconds: {lease!r} must be > 0")
        async with self.admin_lock():
            canary = self.canary
            if version is None:
                canary = None
            elif version is not ...:
                if canary is None or canary.version != version:
                    canary = await self._load_for_admin(self.settings.canary_label, version)
            if canary is None and weight:
                raise AdminError(422, "weight > 0 needs a canary: set canary_version")
            if weight is None:
                weight = self.canary_weight if canary is self.canary else 0.0
            self.set_canary(canary, float(weight), float(lease) if lease is not None else None)
            return self.routing()

    async def _load_for_admin(self, name: str, version: str) -> Variant:
        from mlflow.exceptions import MlflowException

        try:
            return await asyncio.to_thread(self.load_variant, name, version)
        except MlflowException as exc:
            code = getattr(exc, "error_code", "")
            status = 404 if code in ("RESOURCE_DOES_NOT_EXIST", "NOT_FOUND") else 422
            first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            raise AdminError(
                status, f"cannot load {self.settings.model_name} version {version}: {first}"
            ) from exc
        except Exception as exc:
            raise AdminError(
                422,
                f"cannot load {self.settings.model_name} version {version}: "
                f"{type(exc).__name__}: {exc}",
            ) from exc

    async def reload_champion(self) -> dict[str, Any]:
        """POST /admin/reload: follow the champion alias (promotion or rollback)."""
        async with self.admin_lock():
            try:
                version = await asyncio.to_thread(self.champion_version)
            except Exception as exc:
                raise AdminError(503, f"cannot reach the MLflow registry: {exc}") from exc
            previous = self.champion.version if self.champion else None
            if version is None:
                raise AdminError(409, self._no_champion_message())
            reloaded = False
            if previous != version:
                canary = self.canary
                if canary is not None and canary.version == version:  # promotion: already loaded
                    self.champion = Variant(self.settings.champion_label, version, canary.predictor)
                else:
                    self.champion = await self._load_for_admin(
                        self.settings.champion_label, version
                    )
                self.champion_problem = ""
                reloaded = True
                logger.info("champion: version %s -> %s", previous, version)
            if self.canary is not None and self.canary.version == version:
                self.set_canary(None, 0.0, None)  # promoted: it is the champion now
            return {**self.routing(), "reloaded": reloaded, "previous_champion_version": previous}

    def health(self) -> dict[str, Any]:
        routing = self.routing()
        champion, canary = self.champion, self.canary
        ready = champion is not None
        return {
            "status": "ok" if ready else "no_champion",
            "ready": ready,
            "detail": None if ready else f"no champion model yet: {self.champion_problem}",
            **routing,
            "champion": None if champion is None else {"version": champion.version},
            "canary": None
            if canary is None
            else {"version": canary.version, "weight": self.canary_weight},
            "predictor": {
                v.name: v.predictor.kind for v in (self.champion, self.canary) if v is not None
            },
            "uptime_seconds": round(time.monotonic() - self.started, 3),
        }

    # ------------------------------------------------------------------------ lifecycle

    async def startup(self) -> None:
        await asyncio.to_thread(self.load_champion_at_start)
        self.metrics.canary_weight.set(self.canary_weight)
        self.batcher.start()
        self._lease_task = asyncio.get_running_loop().create_task(
            self._watch_lease(), name="canary-lease"
        )

    async def _watch_lease(self) -> None:
        while True:
            await asyncio.sleep(self.settings.lease_check_seconds)
            try:
                self.check_lease()
            except Exception:  # the watchdog must survive anything
                logger.exception("lease check failed")

    async def shutdown(self) -> None:
        if self._lease_task is not None:
            self._lease_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._lease_task
        await self.batcher.stop()
        await asyncio.to_thread(self._close_store)

    def _close_store(self) -> None:
        if not self.store.flush(timeout=30):
            logger.error("prediction store: rows still pending at shutdown")
        self.store.close()


# ================================================================================================
# the app


def _json(status: int, content: Any, headers: dict[str, str] | None = None) -> Response:
    return Response(
        json.dumps(content, allow_nan=False).encode(),
        status_code=status,
        media_type="application/json",
        headers=headers,
    )


async def _json_body(request: Request) -> Any:
    body = await request.body()
    if len(body) > MAX_BODY_BYTES:
        raise InputError([f"body of {len(body)} bytes: at most {MAX_BODY_BYTES}"])
    if not body.strip():
        raise InputError(["body: empty; send a JSON object"])
    try:
        return json.loads(body)
    except (ValueError, UnicodeDecodeError) as exc:
        raise InputError([f"body is not valid JSON: {exc}"]) from None


def create_app(settings: ServingSettings) -> FastAPI:
    """The service as an ASGI app; the state is `app.state.service` (a ModelService)."""
    service = ModelService(settings)

    @contextlib.asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        await service.startup()
        try:
            yield
        finally:
            await service.shutdown()

    app = FastAPI(title="Play Store rating model service", lifespan=lifespan)
    app.state.service = service
    metrics = service.metrics
    store = service.store

    def refuse(exc: InputError) -> Response:
        metrics.invalid.inc()
        return _json(422, {"detail": str(exc), "errors": exc.messages})

    @app.post("/predict")
    async def predict(request: Request) -> Response:
        service.batcher.enter()
        try:
            return await _predict(request)
        finally:
            service.batcher.leave()

    async def _predict(request: Request) -> Response:
        started = time.perf_counter()
        created = time.time()
        service.check_lease()
        if service.champion is None:
            metrics.unavailable.inc()
            return _json(503, {"detail": f"no champion model yet: {service.champion_problem}"})
        try:
            parsed = parse_payload(await _json_body(request))
            rid = _request_id(request.headers.get("x-request-id"), parsed.request_id)
        except InputError as exc:
            return refuse(exc)
        variant = service.route(rid)
        if variant is None:  # the champion went away between the check and here
            metrics.unavailable.inc()
            return _json(503, {"detail": f"no champion model yet: {service.champion_problem}"})
        rows = parsed.rows
        ids = [f"{rid}-{i}" for i in range(len(rows))] if parsed.batch else [rid]
        requests_c, errors_c, latency_h = metrics.for_variant(variant)
        requests_c.inc()
        try:
            proba, labels = await service.batcher.predict(variant, rows)
        except Exception as exc:
            latency = time.perf_counter() - started
            errors_c.inc()
            latency_h.observe(latency)
            message = f"{type(exc).__name__}: {exc}"
            logger.error("model error (%s %s, %s): %s", variant.name, variant.version, rid, message)
            store.submit(
                [
                    _store_row(i, created, variant, None, None, latency, message, row)
                    for i, row in zip(ids, rows, strict=True)
                ]
            )
            return _json(500, {"detail": f"model error: {message}", "request_id": rid})
        latency = time.perf_counter() - started
        latency_h.observe(latency)
        metrics.count_labels(variant, labels)
        store.submit(
            [
                _store_row(i, created, variant, lab, p, latency, None, row)
                for i, row, lab, p in zip(ids, rows, labels, proba, strict=True)
            ]
        )
        headers = {"X-Request-ID": rid}
        if not parsed.batch:
            return _json(
                200,
                {
                    "request_id": rid,
                    "label": _plain(labels[0]),
                    "probability": proba[0],
                    "model_version": variant.version,
                    "variant": variant.name,
                },
                headers,
            )
        return _json(
            200,
            {
                "request_id": rid,
                "model_version": variant.version,
                "variant": variant.name,
                "predictions": [
                    {
                        "request_id": i,
                        "label": _plain(lab),
                        "probability": p,
                        "model_version": variant.version,
                        "variant": variant.name,
                    }
                    for i, lab, p in zip(ids, labels, proba, strict=True)
                ],
            },
            headers,
        )

    @app.post("/feedback")
    async def post_feedback(request: Request) -> Response:
        try:
            rid, rating, label = _parse_feedback(await _json_body(request), settings)
        except InputError as exc:
            return _json(422, {"detail": str(exc), "errors": exc.messages})
        try:
            stored = await run_in_threadpool(
                store.record_feedback, rid, rating, settings.target_threshold, label
            )
        except Exception as exc:
            logger.exception("feedback for %s not stored", rid)
            return _json(503, {"detail": f"prediction store unavailable: {type(exc).__name__}"})
        if stored is None:
            return _json(
                404,
                {
                    "detail": f"unknown request_id {rid!r}: no prediction was made with it "
                    "(items of a batch have ids '<request_id>-<index>')"
                },
            )
        return _json(200, stored)

    @app.get("/health")
    async def health() -> Response:
        return _json(200, service.health())

    @app.get("/metrics")
    async def prometheus_metrics() -> Response:
        service.check_lease()
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    def authorize(request: Request) -> Response | None:
        token = settings.admin_token
        if not token:
            return _json(
                403,
                {
                    "detail": "admin API disabled: set SERVING_ADMIN_TOKEN in the service's "
                    "environment and send 'Authorization: Bearer <token>'"
                },
            )
        header = request.headers.get("authorization", "")
        scheme, _, given = header.partition(" ")
        if scheme.lower() != "bearer" or not given.strip():
            return _json(
                401,
                {"detail": "admin call needs 'Authorization: Bearer <token>'"},
                {"WWW-Authenticate": "Bearer"},
            )
        if not hmac.compare_digest(given.strip().encode(), token.encode()):
            logger.warning("admin call refused: wrong token (from %s)", _client_host(request))
            return _json(403, {"detail": "admin token refused"})
        return None

    @app.get("/admin/routing")
    async def get_routing() -> Response:
        return _json(200, service.routing())

    @app.put("/admin/routing")
    async def put_routing(request: Request) -> Response:
        refused = authorize(request)
        if refused is not None:
            return refused
        try:
            return _json(200, await service.update_routing(await _json_body(request)))
        except InputError as exc:
            return _json(422, {"detail": str(exc)})
        except AdminError as exc:
            return _json(exc.status, {"detail": str(exc)})

    @app.post("/admin/reload")
    async def reload(request: Request) -> Response:
        refused = authorize(request)
        if refused is not None:
            return refused
        try:
            return _json(200, await service.reload_champion())
        except AdminError as exc:
            return _json(exc.status, {"detail": str(exc)})

    return app


def _client_host(request: Request) -> str:
    return request.client.host if request.client else "?"


def _plain(value: Any) -> Any:
    return value.item() if hasattr(value, "item") else value


def _store_row(
    request_id: str,
    created: float,
    variant: Variant,
    label: Any,
    probability: float | None,
    latency: float,
    error: str | None,
    row: Row,
) -> dict[str, Any]:
    return {
        "request_id": request_id,
        "created_at": created,
        "variant": variant.name,
        "model_version": variant.version,
        "label": None if label is None else int(label),
        "probability": probability,
        "latency_ms": latency * 1000.0,
        "error": error,
        "features": dict(zip(FEATURE_COLUMNS, row, strict=True)),
    }


def _parse_feedback(body: Any, settings: ServingSettings) -> tuple[str, float | None, int | None]:
    if not isinstance(body, dict):
        raise InputError(['body: expected {"request_id": "...", "rating": 4.5} or a "label" 0/1'])
    errors = []
    rid = body.get("request_id")
    if not isinstance(rid, str) or not rid.strip():
        errors.append(f"request_id: expected a non-empty string, got {_show(rid)}")
    rating, label = body.get("rating"), body.get("label")
    if rating is not None:
        if isinstance(rating, bool) or not isinstance(rating, (int, float)):
            errors.append(f"rating: expected a number 1..5, got {_show(rating)}")
            rating = None
        elif not (math.isfinite(rating) and 1.0 <= rating <= 5.0):
            errors.append(f"rating: {rating!r} is outside 1..5")
            rating = None
    if label is not None and (isinstance(label, bool) or label not in (0, 1)):
        errors.append(f"label: expected 0 or 1, got {_show(label)}")
        label = None
    if body.get("rating") is None and body.get("label") is None:
        errors.append("rating or label: one is required")
    if not errors and rating is not None and label is not None:
        if int(rating > settings.target_threshold) != label:
            errors.append(
                f"label {label} contradicts rating {rating} "
                f"(label is 1 when rating > {settings.target_threshold})"
            )
    if errors:
        raise InputError(errors)
    return rid.strip(), None if rating is None else float(rating), label


# ================================================================================================
# running it


def serve(settings: ServingSettings, host: str = "127.0.0.1", port: int = 8080) -> None:
    """Run the service with uvicorn (one worker: routing state lives in the process)."""
    import uvicorn

    config = uvicorn.Config(
        create_app(settings),
        host=host,
        port=port,
        workers=1,
        access_log=settings.access_log,
        log_level="info",
        timeout_graceful_shutdown=30,
    )
    logger.info(
        "serving %s from %s on http://%s:%d (store %s)",
        settings.model_name,
        registry.redact_uri(settings.tracking_uri),
        host,
        port,
        registry.redact_uri(settings.store_url),
    )
    uvicorn.Server(config).run()


def main(argv: list[str] | None = None) -> None:
    """`python -m lib.serving ...`; the admin token is read from SERVING_ADMIN_TOKEN only."""
    defaults = ServingSettings()
    parser = argparse.ArgumentParser(prog="python -m lib.serving", description=main.__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8080)
    parser.add_argument("--model-name", default=defaults.model_name)
    parser.add_argument("--tracking-uri", default=defaults.tracking_uri)
    parser.add_argument("--store-url", default=defaults.store_url)
    parser.add_argument(
        "--champion-alias",
        default=defaults.champion_alias,
        help="the alias served as champion (e.g. 'staging' for a staging instance)",
    )
    parser.add_argument("--target-threshold", type=float, default=defaults.target_threshold)
    parser.add_argument("--max-batch", type=int, default=defaults.max_batch)
    parser.add_argument("--batch-wait-ms", type=float, default=defaults.batch_wait_ms)
    parser.add_argument("--no-compile", action="store_true", help="serve the plain sklearn path")
    parser.add_argument("--access-log", action="store_true")
    parser.add_argument("--log-level", default="INFO")
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    settings = ServingSettings(
        model_name=args.model_name,
        tracking_uri=args.tracking_uri,
        store_url=args.store_url,
        champion_alias=args.champion_alias,
        target_threshold=args.target_threshold,
        max_batch=args.max_batch,
        batch_wait_ms=args.batch_wait_ms,
        compile_models=not args.no_compile,
        access_log=args.access_log,
    )
    serve(settings, args.host, args.port)

