"""The deployment decision: a candidate's score out of 100 and the verdict it earns.

The score table is data (a frozen dataclass, loadable from the YAML config) rather than ``if``
chains in a notebook, so that every band and boundary is unit-tested and a team can tune it
without touching code. Three criteria, all on the selection metric (higher is better):

- improvement over production (candidate - champion, or candidate - majority-class baseline when
  there is no champion yet),
- the candidate's absolute value,
- stability (the cross-validation standard deviation of the metric).

The total maps to a verdict: ``auto`` (deploy), ``manual`` (wait for a person) or ``reject``. A
candidate worse than the champion is never deployed automatically, whatever the table says.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from typing import Any

from lib.errors import ConfigError

logger = logging.getLogger(__name__)

VERDICTS = ("auto", "manual", "reject")
CRITERIA = ("improvement", "absolute", "stability", "guard")

# Observed values are rounded to this many decimals before comparison, so that a difference
# computed in floating point (0.91 - 0.90 == 0.010000000000000009) lands in the band a person
# reading "improvement 0.01" expects. Metrics are never meaningful at this precision.
_COMPARE_DECIMALS = 9

_LE, _GE = "≤", "≥"
_OPS = {">": ">", ">=": _GE}  # op -> human-readable symbol
_NEGATED = {">": _LE, ">=": "<"}  # op -> symbol of its complement, for "else" texts

_METRIC_LABELS = {
    "roc_auc": "ROC-AUC",
    "accuracy": "accuracy",
    "balanced_accuracy": "balanced accuracy",
    "f1": "F1",
    "f1_macro": "macro F1",
    "precision": "precision",
    "recall": "recall",
    "average_precision": "average precision",
}


class ScoreTableError(ConfigError, ValueError):
    """The score table in the configuration is invalid (a ValueError the CLI shows on one line)."""


@dataclass(frozen=True)
class Band:
    """One row of a criterion: ``points`` when ``value op threshold``; ``threshold=None`` = else."""

    threshold: float | None
    points: int
    op: str = ">"

    def __post_init__(self) -> None:
        if self.op not in _OPS:
            raise ScoreTableError(f"band op must be one of {sorted(_OPS)}, got {self.op!r}")
        if self.threshold is not None and (
            isinstance(self.threshold, bool)
            or not isinstance(self.threshold, (int, float))
            or not math.isfinite(self.threshold)
        ):
            raise ScoreTableError(
                f"band threshold must be a finite number or None, got {self.threshold!r}"
            )
        if isinstance(self.points, bool) or not isinstance(self.points, int):
            raise ScoreTableError(f"band points must be an integer, got {self.points!r}")

    def holds(self, value: float) -> bool:
        """Whether ``value`` falls in this band (an else band always holds)."""
        if self.threshold is None:
            return True
        if self.op == ">":
            return value > self.threshold
        return value >= self.threshold

    @property
    def rule(self) -> str:
        """The band as a person reads it: ``"> 0.01"``, ``"≥ -0.005"`` or ``"else"``."""
        if self.threshold is None:
            return "else"
        return f"{_OPS[self.op]} {_fmt_threshold(self.threshold)}"


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
    """The whole scoring policy; the defaults are the mission's table."""

    improvement: tuple[Band, ...] = DEFAULT_IMPROVEMENT
    absolute: tuple[Band, ...] = DEFAULT_ABSOLUTE
    max_cv_std: float = 0.02
    stability_points: int = 30
    auto_at: int = 70
    manual_at: int = 50

    def __post_init__(self) -> None:
        for name in ("improvement", "absolute"):
            bands = tuple(getattr(self, name))
            object.__setattr__(self, name, bands)  # accept lists, store tuples (hashable)
            _validate_bands(name, bands)
        if (
            isinstance(self.max_cv_std, bool)
            or not isinstance(self.max_cv_std, (int, float))
            or not math.isfinite(self.max_cv_std)
            or self.max_cv_std < 0
        ):
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

    @classmethod
    def from_dict(cls, d: dict | None) -> ScoreTable:
        """Build a table from the config's ``scoring`` mapping; missing keys keep the defaults."""
        if d is None:
            return cls()
        if not isinstance(d, dict):
            raise ScoreTableError(
                f"the score table must be a mapping with keys {_TOP_KEYS}, got {type(d).__name__}"
            )
        _check_keys("score table", d, _TOP_KEYS)
        kwargs: dict[str, Any] = {}
        for name in ("improvement", "absolute"):
            if name in d:
                kwargs[name] = _bands_from_list(name, d[name])
        if "stability" in d:
            stability = _mapping("stability", d["stability"], _STABILITY_KEYS)
            if "max_cv_std" in stability:
                kwargs["max_cv_std"] = _number("stability.max_cv_std", stability["max_cv_std"])
            if "points" in stability:
                kwargs["stability_points"] = _integer("stability.points", stability["points"])
        if "verdicts" in d:
            verdicts = _mapping("verdicts", d["verdicts"], _VERDICT_KEYS)
            if "auto" in verdicts:
                kwargs["auto_at"] = _integer("verdicts.auto", verdicts["auto"])
            if "manual" in verdicts:
                kwargs["manual_at"] = _integer("verdicts.manual", verdicts["manual"])
        return cls(**kwargs)

    def to_dict(self) -> dict:
        """The table in the config's shape (round-trips through :meth:`from_dict`)."""
        return {
            "improvement": [_band_to_dict(b) for b in self.improvement],
            "absolute": [_band_to_dict(b) for b in self.absolute],
            "stability": {"max_cv_std": self.max_cv_std, "points": self.stability_points},
            "verdicts": {"auto": self.auto_at, "manual": self.manual_at},
        }

    def verdict_for(self, score: int) -> str:
        """The verdict a score earns, before the worse-than-champion guard."""
        if score >= self.auto_at:
            return "auto"
        if score >= self.manual_at:
            return "manual"
        return "reject"


@dataclass(frozen=True)
class Reason:
    """Why some points were given (or a verdict capped), with what was observed."""

    criterion: str
    observed: float
    rule: str
    points: int
    text: str


@dataclass(frozen=True)
class Decision:
    """The outcome of scoring one candidate: what to do and why."""

    score: int
    verdict: str
    reasons: tuple[Reason, ...] = field(default_factory=tuple)

    def to_dict(self) -> dict:
        """A JSON-ready mapping, for the decide stage's scraps and the run report."""
        return {
            "score": int(self.score),
            "verdict": self.verdict,
            "reasons": [
                {
                    "criterion": r.criterion,
                    "observed": float(r.observed),
                    "rule": r.rule,
                    "points": int(r.points),
                    "text": r.text,
                }
                for r in self.reasons
            ],
        }


def decide(
    improvement: float,
    value: float,
    cv_std: float,
    table: ScoreTable | None = None,
    metric: str = "roc_auc",
    baseline_label: str = "champion",
) -> Decision:
    """Score a candidate and return its verdict with one reason per criterion.

    ``improvement`` is candidate - champion (or - the majority-class baseline when there is no
    champion; say which in ``baseline_label``, e.g. ``"champion v3"``). Non-finite inputs raise
    ``ValueError``: a score computed on a missing number would look legitimate and is not.
    """
    if table is None:
        table = ScoreTable()
    improvement = _finite_input("improvement", improvement)
    value = _finite_input("value", value)
    cv_std = _finite_input("cv_std", cv_std)
    if cv_std < 0:
        raise ValueError(f"cv_std must be >= 0 (a standard deviation), got {cv_std!r}")
    label = _METRIC_LABELS.get(metric, metric)

    band = _pick("improvement", table.improvement, improvement)
    reasons = [
        Reason(
            "improvement",
            improvement,
            band.rule,
            band.points,
            f"{label} {_change_phrase(improvement, baseline_label)} "
            f"({_band_phrase(table.improvement, band)}): {band.points:+d}",
        )
    ]

    band = _pick("absolute", table.absolute, value)
    reasons.append(
        Reason(
            "absolute",
            value,
            band.rule,
            band.points,
            f"candidate {label} is {value:.4f} ({_band_phrase(table.absolute, band)}): "
            f"{band.points:+d}",
        )
    )

    stable = round(cv_std, _COMPARE_DECIMALS) <= table.max_cv_std
    rule = f"{_LE if stable else '>'} {_fmt_threshold(table.max_cv_std)}"
    points = table.stability_points if stable else 0
    reasons.append(
        Reason(
            "stability",
            cv_std,
            rule,
            points,
            f"CV std of {label} is {cv_std:.4f} ({rule}, {'stable' if stable else 'unstable'}): "
            f"{points:+d}",
        )
    )

    score = sum(r.points for r in reasons)
    verdict = table.verdict_for(score)
    if verdict == "auto" and round(improvement, _COMPARE_DECIMALS) < 0:
        verdict = "manual"
        reasons.append(
            Reason(
                "guard",
                improvement,
                "< 0",
                0,
                f"candidate is worse than {baseline_label} ({label} {improvement:+.4f}): "
                f"verdict capped from auto to manual although the score is {score}",
            )
        )
    decision = Decision(score=score, verdict=verdict, reasons=tuple(reasons))
    logger.info("decision: score %d -> %s", score, verdict)
    for reason in reasons:
        logger.debug("  %s", reason.text)
    return decision


def default_table_dict() -> dict:
    """The default table in config shape, to write the default config file from one source."""
    return ScoreTable().to_dict()


# --- helpers -----------------------------------------------------------------------------------

_TOP_KEYS = ("improvement", "absolute", "stability", "verdicts")
_STABILITY_KEYS = ("max_cv_std", "points")
_VERDICT_KEYS = ("auto", "manual")
_BAND_KEYS = ("above", "at_least", "else", "points")


def _fmt_threshold(x: float) -> str:
    return f"{x:g}"


def _finite_input(name: str, x: Any) -> float:
    try:
        f = float(x)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a number, got {x!r}") from None
    if not math.isfinite(f):
        raise ValueError(
            f"{name} is {x!r}: cannot score a candidate on a missing or infinite metric; "
            "check the train/compare stages that computed it"
        )
    return f


def _pick(name: str, bands: tuple[Band, ...], value: float) -> Band:
    rounded = round(value, _COMPARE_DECIMALS)
    for band in bands:
        if band.holds(rounded):
            return band
    raise AssertionError(f"{name}: validated bands end with an else band")  # pragma: no cover


def _band_phrase(bands: tuple[Band, ...], band: Band) -> str:
    """The rule for a text; an else band is spelled out as the complement of the band above it."""
    if band.threshold is not None or len(bands) < 2:
        return band.rule
    above = bands[-2]
    return f"else: {_NEGATED[above.op]} {_fmt_threshold(above.threshold)}"


def _change_phrase(improvement: float, baseline_label: str) -> str:
    if round(improvement, _COMPARE_DECIMALS) > 0:
        return f"improved by {improvement:+.4f} over {baseline_label}"
    return f"changed by {improvement:+.4f} vs {baseline_label}"


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


def _check_keys(where: str, d: dict, allowed: tuple[str, ...]) -> None:
    unknown = [k for k in d if k not in allowed]
    if unknown:
        raise ScoreTableError(
            f"{where}: unknown key(s) {', '.join(repr(k) for k in unknown)}; "
            f"allowed keys are {', '.join(allowed)}"
        )


def _mapping(where: str, d: Any, allowed: tuple[str, ...]) -> dict:
    if not isinstance(d, dict):
        raise ScoreTableError(
            f"{where} must be a mapping with keys {', '.join(allowed)}, got {d!r}"
        )
    _check_keys(where, d, allowed)
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
