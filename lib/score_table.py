"""The score table: the bands, gate settings and verdict cut-offs a decision is scored with.

Data rather than ``if`` chains (checked frozen dataclasses from the config key ``decision``), so
each band is unit-tested and tunable without code; lib.pipeline.scoring applies it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Annotated, Any, Literal

from pydantic import (
    ConfigDict,
    Field,
    TypeAdapter,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic.dataclasses import dataclass as checked_dataclass

from lib.config_sections import Int, describe
from lib.errors import ConfigError

VERDICTS = ("auto", "manual", "reject")

# Observed values are rounded to this many decimals before comparison, so that a difference
# computed in floating point (0.91 - 0.90 == 0.010000000000000009) lands in the band a person
# reading "improvement 0.01" expects. Metrics are never meaningful at this precision.
COMPARE_DECIMALS = 9

LE, GE, TO = "≤", "≥", "→"
_OPS = {">": ">", ">=": GE}  # op -> human-readable symbol
NEGATED = {">": LE, ">=": "<"}  # op -> symbol of its complement, for "else" texts

# A finite number: a bool or a string (PyYAML reads 1e-2 as one) is refused, not converted.
Finite = Annotated[float, Field(strict=True, allow_inf_nan=False)]
_CHECKED = ConfigDict(extra="forbid")


class ScoreTableError(ConfigError, ValueError):
    """The score table in the configuration is invalid (a ValueError the CLI shows on one line)."""


@dataclass(frozen=True)
class Evidence:
    """A metric with its interval, so the decision can tell a real gain from holdout noise; not
    validated here (a bootstrap may record NaN): `decide` refuses bad ones by name."""

    estimate: float
    low: float
    high: float
    n: int = 0
    method: str = ""

    @classmethod
    def from_dict(cls, d: Mapping) -> Evidence:
        """Read the shape :meth:`to_dict` writes (extra keys ignored, e.g. ``level``)."""
        try:
            return _EVIDENCE.validate_python(d)
        except ValidationError as exc:
            raise ValueError("evidence " + "; ".join(_problem(e) for e in exc.errors())) from None

    @classmethod
    def point(cls, value: float) -> Evidence:
        """A value without an interval (low = high = estimate), for callers that have none."""
        v = float(value)
        return cls(v, v, v)

    def to_dict(self) -> dict:
        """A JSON-ready mapping that :meth:`from_dict` reads back."""
        return {
            "estimate": float(self.estimate),
            "low": float(self.low),
            "high": float(self.high),
            "n": int(self.n),
            "method": str(self.method),
        }


_EVIDENCE = TypeAdapter(Evidence)  # its fields' types, checked when read from a mapping


@checked_dataclass(frozen=True, config=_CHECKED)
class Gate:
    """The no-skill gate's settings (config key ``decision.gate``)."""

    # the ROC-AUC interval's lower bound must be > this (0.5 is a coin toss)
    min_roc_auc_lower: Finite = Field(0.55, ge=0.5, lt=1)
    accuracy_tolerance: Finite = Field(0.005, ge=0)  # served-label accuracy >= majority - this
    enabled: bool = Field(True, strict=True)


@dataclass(frozen=True)
class GateInputs:
    """What the gate needs about the candidate, measured on the holdout."""

    roc_auc: Evidence  # the candidate's own ROC-AUC, whatever the selection metric
    accuracy: float  # accuracy of the labels the candidate would serve
    majority_share: float  # share of the majority class on the same rows
    n: int  # holdout rows


@checked_dataclass(frozen=True, config=_CHECKED)
class Band:
    """One row of a criterion: ``points`` when ``value op threshold``; ``threshold=None`` = else."""

    threshold: Finite | None
    points: Int
    op: Literal[">", ">="] = ">"

    @model_validator(mode="before")
    @classmethod
    def _from_config(cls, data: Any) -> Any:
        """The config's spelling: ``{above: t, points: n}``, ``{at_least: t, points: n}`` or
        ``{else: true, points: n}``."""
        if not isinstance(data, Mapping):
            return data  # built in code, by position or keyword
        given = [k for k in ("above", "at_least", "else") if k in data]
        if len(given) != 1:
            raise ValueError(f"needs exactly one of above, at_least, else; got {given or 'none'}")
        (key,) = given
        band = {k: v for k, v in data.items() if k != key}
        if key == "else" and data[key] is not True:
            raise ValueError(f"'else' must be true, got {data[key]!r}")
        if key == "else":
            return {**band, "threshold": None}
        return {**band, "threshold": data[key], "op": ">" if key == "above" else ">="}

    def holds(self, value: float) -> bool:
        """Whether ``value`` falls in this band (an else band always holds)."""
        t = self.threshold
        return t is None or (value > t if self.op == ">" else value >= t)

    @property
    def rule(self) -> str:
        """The band as a person reads it: ``"> 0.01"``, ``"≥ -0.005"`` or ``"else"``."""
        if self.threshold is None:
            return "else"
        return f"{_OPS[self.op]} {fmt_threshold(self.threshold)}"


DEFAULT_IMPROVEMENT: tuple[Band, ...] = (
    Band(0.01, 40),
    Band(0.0, 20),
    Band(-0.005, 5, ">="),
    Band(None, -50),
)
DEFAULT_ABSOLUTE: tuple[Band, ...] = (
    Band(0.90, 30),
    Band(0.80, 20),
    Band(None, 10),
)


@checked_dataclass(frozen=True, config=_CHECKED)
class ScoreTable:
    """The whole scoring policy; the defaults are the mission's table, read on lower bounds."""

    improvement: tuple[Band, ...] = DEFAULT_IMPROVEMENT
    absolute: tuple[Band, ...] = DEFAULT_ABSOLUTE
    max_cv_std: Finite = Field(0.02, ge=0)
    stability_points: Int = 30
    auto_at: Int = 70
    manual_at: Int = 50
    # lower_bound: bands are read on the interval's lower bound; point: on the estimate
    evidence: Literal["lower_bound", "point"] = "lower_bound"
    gate: Gate = Gate()

    @field_validator("improvement", "absolute")
    @classmethod
    def _ordered(cls, bands: tuple[Band, ...]) -> tuple[Band, ...]:
        """Decreasing thresholds (the first band that holds wins), then exactly one else band."""
        if not bands:
            raise ValueError(
                "must be a non-empty list of bands like {above: 0.01, points: 40}, "
                "{at_least: 0, points: 5}, ending with {else: true, points: -50}"
            )
        if bands[-1].threshold is not None:
            raise ValueError(
                "the last band must be the else band (threshold None / else: true), "
                f"got {bands[-1].rule}"
            )
        for i, band in enumerate(bands[:-1]):
            if band.threshold is None:
                raise ValueError(
                    f"band {i}: only the last band may be the else band; bands after it never apply"
                )
        for i, (hi, lo) in enumerate(zip(bands[:-2], bands[1:-1], strict=True)):
            # Equal thresholds are fine only as "> t" then ">= t" (the second catches exactly t).
            ordered = hi.threshold > lo.threshold or (
                hi.threshold == lo.threshold and (hi.op, lo.op) == (">", ">=")
            )
            if not ordered:
                raise ValueError(
                    f"bands must be in decreasing threshold order (first match wins), but "
                    f"band {i} ({hi.rule}) comes before band {i + 1} ({lo.rule}); "
                    f"got order {[b.rule for b in bands]}"
                )
        return bands

    @model_validator(mode="after")
    def _verdicts_ordered(self) -> ScoreTable:
        if self.auto_at <= self.manual_at:
            raise ValueError(
                f"verdicts.auto ({self.auto_at}) must be greater than verdicts.manual "
                f"({self.manual_at}): scores >= auto deploy, scores >= manual wait for approval"
            )
        return self

    @classmethod
    def from_dict(cls, d: Mapping | None) -> ScoreTable:
        """Build a table from the config's ``decision`` mapping; missing keys keep the defaults.
        Every problem is named by its dotted key, in one ScoreTableError."""
        if d is None:
            return cls()
        if not isinstance(d, Mapping):
            raise ScoreTableError(
                f"the score table must be a mapping with keys {', '.join(_KNOWN[''])}, got {d!r}"
            )
        kwargs = {str(k): v for k, v in d.items() if k not in _SECTIONS}
        for section, fields in _SECTIONS.items():  # flattened: their keys are fields here
            given = d.get(section, {})
            if not isinstance(given, Mapping):
                raise ScoreTableError(
                    f"{section} must be a mapping with keys {', '.join(fields)}, got {given!r}"
                )
            kwargs |= {fields.get(k, f"{section}.{k}"): v for k, v in given.items()}
        try:
            return cls(**kwargs)
        except ValidationError as exc:
            raise ScoreTableError("; ".join(_problem(e) for e in exc.errors())) from None

    def to_dict(self) -> dict:
        """The table in the config's shape (round-trips through :meth:`from_dict`)."""
        return {
            "improvement": [_band_to_dict(b) for b in self.improvement],
            "absolute": [_band_to_dict(b) for b in self.absolute],
            **{
                section: {key: getattr(self, name) for key, name in fields.items()}
                for section, fields in _SECTIONS.items()
            },
            "evidence": self.evidence,
            "gate": asdict(self.gate),
        }

    def verdict_for(self, score: int) -> str:
        """The verdict a score earns, before the gate and the worse-than-champion guard."""
        if score >= self.auto_at:
            return "auto"
        if score >= self.manual_at:
            return "manual"
        return "reject"


# --- helpers -----------------------------------------------------------------------------------

_SECTIONS = {  # the config's sections of plain settings: {key: ScoreTable field}
    "stability": {"max_cv_std": "max_cv_std", "points": "stability_points"},
    "verdicts": {"auto": "auto_at", "manual": "manual_at"},
}
_CONFIG_KEY = {n: f"{s}.{key}" for s, fields in _SECTIONS.items() for key, n in fields.items()}
_BAND_KEYS = ("above", "at_least", "else", "points")
_KNOWN = {  # the keys allowed under each top-level key ("": the table itself)
    "": ("improvement", "absolute", "stability", "verdicts", "evidence", "gate"),
    **{section: tuple(fields) for section, fields in _SECTIONS.items()},
    "gate": ("min_roc_auc_lower", "accuracy_tolerance", "enabled"),
    "improvement": _BAND_KEYS,
    "absolute": _BAND_KEYS,
}


def _problem(error: Any) -> str:
    """One pydantic error by the config's dotted key, with the keys allowed where one is not."""
    path = ".".join(_CONFIG_KEY.get(str(p), str(p)) for p in error["loc"])
    problem = "missing" if error["type"].startswith("missing") else describe(error)
    if problem == "unknown key":
        known = _KNOWN.get(path.split(".")[0] if "." in path else "", ())
        problem += f" (known keys: {', '.join(known)})"
    if error["type"] == "float_type" and isinstance(error.get("input"), str):
        problem += " (PyYAML reads 1e-2 as a string: write 0.01 or 1.0e-2)"
    return f"{path}: {problem}" if path else problem


def fmt_threshold(x: float) -> str:
    return f"{x:g}"


def _band_to_dict(band: Band) -> dict:
    if band.threshold is None:
        return {"else": True, "points": band.points}
    key = "above" if band.op == ">" else "at_least"
    return {key: band.threshold, "points": band.points}
