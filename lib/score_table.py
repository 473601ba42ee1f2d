"""The score table: the bands, gate settings and verdict cut-offs a decision is scored with.

Data rather than ``if`` chains (frozen dataclasses loaded from the config key ``decision``), so
each band is unit-tested and tunable without code; lib.pipeline.scoring applies it.
"""

from __future__ import annotations

import dataclasses
import math
import operator
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from lib.errors import ConfigError

VERDICTS = ("auto", "manual", "reject")
EVIDENCE_MODES = ("lower_bound", "point")

# Observed values are rounded to this many decimals before comparison, so that a difference
# computed in floating point (0.91 - 0.90 == 0.010000000000000009) lands in the band a person
# reading "improvement 0.01" expects. Metrics are never meaningful at this precision.
COMPARE_DECIMALS = 9

LE, GE, TO = "≤", "≥", "→"
_OPS = {">": ">", ">=": GE}  # op -> human-readable symbol
NEGATED = {">": LE, ">=": "<"}  # op -> symbol of its complement, for "else" texts


def _finite(x: Any) -> bool:
    """A finite real number (bools are ints in Python but never a meaningful threshold)."""
    return not isinstance(x, bool) and isinstance(x, (int, float)) and math.isfinite(x)


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
        if not isinstance(d, Mapping):
            raise ValueError(f"evidence must be a mapping with keys estimate, low, high, got {d!r}")
        missing = [k for k in ("estimate", "low", "high") if k not in d]
        if missing:
            raise ValueError(
                f"evidence is missing key(s) {', '.join(missing)}; got keys {sorted(map(str, d))} "
                "(use Evidence.point(x) for a value without an interval)"
            )
        values = {}
        for key in ("estimate", "low", "high"):
            try:
                values[key] = float(d[key])
            except (TypeError, ValueError):
                raise ValueError(f"evidence {key} must be a number, got {d[key]!r}") from None
        n = d.get("n", 0)
        try:
            n = operator.index(0 if n is None else n)
        except TypeError:
            raise ValueError(f"evidence n must be an integer, got {n!r}") from None
        method = d.get("method", "")
        return cls(n=n, method="" if method is None else str(method), **values)

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


@dataclass(frozen=True)
class Gate:
    """The no-skill gate's settings (config key ``decision.gate``)."""

    min_roc_auc_lower: float = 0.55  # the ROC-AUC interval's lower bound must be > this
    accuracy_tolerance: float = 0.005  # served-label accuracy >= majority share - this
    enabled: bool = True

    def __post_init__(self) -> None:
        floor = self.min_roc_auc_lower
        if not _finite(floor) or not 0.5 <= floor < 1:
            raise ScoreTableError(
                f"gate.min_roc_auc_lower must be a number in [0.5, 1) (0.5 is a coin toss; the "
                f"ROC-AUC interval's lower bound must be above it), got {floor!r}"
            )
        tolerance = self.accuracy_tolerance
        if not _finite(tolerance) or tolerance < 0:
            raise ScoreTableError(
                f"gate.accuracy_tolerance must be a finite number >= 0, got {tolerance!r}"
            )
        if not isinstance(self.enabled, bool):
            raise ScoreTableError(f"gate.enabled must be true or false, got {self.enabled!r}")


@dataclass(frozen=True)
class GateInputs:
    """What the gate needs about the candidate, measured on the holdout."""

    roc_auc: Evidence  # the candidate's own ROC-AUC, whatever the selection metric
    accuracy: float  # accuracy of the labels the candidate would serve
    majority_share: float  # share of the majority class on the same rows
    n: int  # holdout rows


@dataclass(frozen=True)
class Band:
    """One row of a criterion: ``points`` when ``value op threshold``; ``threshold=None`` = else."""

    threshold: float | None
    points: int
    op: str = ">"

    def __post_init__(self) -> None:
        if self.op not in _OPS:
            raise ScoreTableError(f"band op must be one of {sorted(_OPS)}, got {self.op!r}")
        if self.threshold is not None and not _finite(self.threshold):
            raise ScoreTableError(
                f"band threshold must be a finite number or None, got {self.threshold!r}"
            )
        if isinstance(self.points, bool) or not isinstance(self.points, int):
            raise ScoreTableError(f"band points must be an integer, got {self.points!r}")

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


@dataclass(frozen=True)
class ScoreTable:
    """The whole scoring policy; the defaults are the mission's table, read on lower bounds."""

    improvement: tuple[Band, ...] = DEFAULT_IMPROVEMENT
    absolute: tuple[Band, ...] = DEFAULT_ABSOLUTE
    max_cv_std: float = 0.02
    stability_points: int = 30
    auto_at: int = 70
    manual_at: int = 50
    evidence: str = "lower_bound"
    gate: Gate = Gate()

    def __post_init__(self) -> None:
        for name in ("improvement", "absolute"):
            bands = tuple(getattr(self, name))
            object.__setattr__(self, name, bands)  # accept lists, store tuples (hashable)
            _validate_bands(name, bands)
        if not _finite(self.max_cv_std) or self.max_cv_std < 0:
            raise ScoreTableError(
                f"stability.max_cv_std must be a finite number >= 0, got {self.max_cv_std!r}"
            )
        for name in ("stability_points", "auto_at", "manual_at"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int):
                raise ScoreTableError(f"{name} must be an integer, got {value!r}")
        if self.auto_at <= self.manual_at:
            raise ScoreTableError(
                f"verdicts.auto ({self.auto_at}) must be greater than verdicts.manual "
                f"({self.manual_at}): scores >= auto deploy, scores >= manual wait for approval"
            )
        if not isinstance(self.evidence, str) or self.evidence not in EVIDENCE_MODES:
            raise ScoreTableError(
                f"evidence must be one of {', '.join(EVIDENCE_MODES)} (lower_bound: bands are "
                f"read on the interval's lower bound; point: on the estimate), "
                f"got {self.evidence!r}"
            )
        if not isinstance(self.gate, Gate):
            raise ScoreTableError(f"gate must be a Gate, got {self.gate!r}")

    @classmethod
    def from_dict(cls, d: dict | None) -> ScoreTable:
        """Build a table from the config's ``decision`` mapping; missing keys keep the defaults."""
        if d is None:
            return cls()
        _mapping("the score table", d, _TOP_KEYS)
        kwargs: dict[str, Any] = {}
        for name in ("improvement", "absolute"):
            if name in d:
                kwargs[name] = _bands_from_list(name, d[name])
        for section, fields in _SECTIONS.items():
            given = _mapping(section, d[section], tuple(fields)) if section in d else {}
            for key, name in fields.items():
                if key in given:
                    read = _number if name == "max_cv_std" else _integer
                    kwargs[name] = read(f"{section}.{key}", given[key])
        if "evidence" in d:
            kwargs["evidence"] = d["evidence"]  # validated by __post_init__, naming the key
        if "gate" in d:  # validated by Gate, naming the keys
            kwargs["gate"] = Gate(**_mapping("gate", d["gate"], _GATE_KEYS))
        return cls(**kwargs)

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
            "gate": dataclasses.asdict(self.gate),
        }

    def verdict_for(self, score: int) -> str:
        """The verdict a score earns, before the gate and the worse-than-champion guard."""
        if score >= self.auto_at:
            return "auto"
        if score >= self.manual_at:
            return "manual"
        return "reject"


# --- helpers -----------------------------------------------------------------------------------

_TOP_KEYS = ("improvement", "absolute", "stability", "verdicts", "evidence", "gate")
_SECTIONS = {  # the config's sections of plain settings: {key: ScoreTable field}
    "stability": {"max_cv_std": "max_cv_std", "points": "stability_points"},
    "verdicts": {"auto": "auto_at", "manual": "manual_at"},
}
_GATE_KEYS = ("min_roc_auc_lower", "accuracy_tolerance", "enabled")
_BAND_KEYS = ("above", "at_least", "else", "points")


def fmt_threshold(x: float) -> str:
    return f"{x:g}"


def _validate_bands(name: str, bands: tuple[Band, ...]) -> None:
    if not bands:
        raise ScoreTableError(f"{name}: needs at least one band, ending with an else band")
    for i, band in enumerate(bands):
        if not isinstance(band, Band):
            raise ScoreTableError(f"{name}[{i}] must be a Band, got {band!r}")
    if bands[-1].threshold is not None:
        raise ScoreTableError(
            f"{name}: the last band must be the else band (threshold None / else: true), "
            f"got {bands[-1].rule}"
        )
    for i, band in enumerate(bands[:-1]):
        if band.threshold is None:
            raise ScoreTableError(
                f"{name}[{i}]: only the last band may be the else band; bands after it never apply"
            )
    for i in range(len(bands) - 2):
        hi, lo = bands[i], bands[i + 1]
        # Equal thresholds are fine only as "> t" then ">= t" (the second catches exactly t).
        ordered = hi.threshold > lo.threshold or (
            hi.threshold == lo.threshold and hi.op == ">" and lo.op == ">="
        )
        if not ordered:
            raise ScoreTableError(
                f"{name}: bands must be in decreasing threshold order (first match wins), but "
                f"band {i} ({hi.rule}) comes before band {i + 1} ({lo.rule}); "
                f"got order {[b.rule for b in bands]}"
            )


def _mapping(where: str, d: Any, allowed: tuple[str, ...]) -> dict:
    if not isinstance(d, dict):
        raise ScoreTableError(
            f"{where} must be a mapping with keys {', '.join(allowed)}, got {d!r}"
        )
    unknown = [k for k in d if k not in allowed]
    if unknown:
        raise ScoreTableError(
            f"{where}: unknown key(s) {', '.join(repr(k) for k in unknown)}; "
            f"allowed keys are {', '.join(allowed)}"
        )
    return d


def _number(where: str, x: Any) -> float:
    if isinstance(x, bool) or not isinstance(x, (int, float)):
        hint = (
            " (PyYAML reads 1e-2 as a string: write 0.01 or 1.0e-2)" if isinstance(x, str) else ""
        )
        raise ScoreTableError(f"{where} must be a number, got {x!r}{hint}")
    if not math.isfinite(x):
        raise ScoreTableError(f"{where} must be finite, got {x!r}")
    return x


def _integer(where: str, x: Any) -> int:
    if isinstance(x, float) and x.is_integer():
        return int(x)
    if isinstance(x, bool) or not isinstance(x, int):
        raise ScoreTableError(f"{where} must be an integer, got {x!r}")
    return x


def _bands_from_list(name: str, items: Any) -> tuple[Band, ...]:
    if not isinstance(items, list) or not items:
        raise ScoreTableError(
            f"{name} must be a non-empty list of bands like {{above: 0.01, points: 40}}, "
            f"{{at_least: 0, points: 5}}, ending with {{else: true, points: -50}}; got {items!r}"
        )
    bands = []
    for i, item in enumerate(items):
        where = f"{name}[{i}]"
        item = _mapping(where, item, _BAND_KEYS)
        conditions = [k for k in ("above", "at_least", "else") if k in item]
        if len(conditions) != 1:
            raise ScoreTableError(
                f"{where}: needs exactly one of above, at_least, else; got {conditions or 'none'}"
            )
        if "points" not in item:
            raise ScoreTableError(f"{where}: missing 'points'")
        points = _integer(f"{where}.points", item["points"])
        if "else" in item:
            if item["else"] is not True:
                raise ScoreTableError(f"{where}: 'else' must be true, got {item['else']!r}")
            bands.append(Band(None, points))
        elif "above" in item:
            bands.append(Band(_number(f"{where}.above", item["above"]), points, ">"))
        else:
            bands.append(Band(_number(f"{where}.at_least", item["at_least"]), points, ">="))
    _validate_bands(name, tuple(bands))
    return tuple(bands)


def _band_to_dict(band: Band) -> dict:
    if band.threshold is None:
        return {"else": True, "points": band.points}
    key = "above" if band.op == ">" else "at_least"
    return {key: band.threshold, "points": band.points}
