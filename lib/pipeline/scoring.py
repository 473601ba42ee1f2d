"""The deployment decision: a gate, then a candidate's score out of 100 and the verdict it earns.

The score table is data (a frozen dataclass, loadable from the YAML config) rather than ``if``
chains in a notebook, so that every band and boundary is unit-tested and a team can tune it
without touching code. Three criteria, all on the selection metric (higher is better):

- improvement over production (candidate - champion, or candidate - majority-class baseline when
  there is no champion yet),
- the candidate's absolute value,
- stability (the cross-validation standard deviation of the metric).

The score judges on evidence: improvement and absolute value come with an interval
(:class:`Evidence`) and, by default (``evidence: lower_bound``), the band is picked on the
interval's lower bound, so a +0.003 difference on a small holdout is not taken at face value.
``evidence: point`` reads the estimates, i.e. the literal table.

Before the score, a gate: a candidate whose ROC-AUC interval does not clear a no-skill floor, or
whose served labels are less accurate than always answering the majority class, is rejected
whatever its points (also for the first deployment, where there is no champion). Without gate
evidence the verdict is at most ``manual``: no evidence, no automatic deployment.

The total maps to a verdict: ``auto`` (deploy), ``manual`` (wait for a person) or ``reject``. A
candidate worse than the champion is never deployed automatically, whatever the table says.
"""

from __future__ import annotations

import logging
import math
import operator
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from lib.errors import ConfigError

logger = logging.getLogger(__name__)

VERDICTS = ("auto", "manual", "reject")
CRITERIA = ("gate", "improvement", "absolute", "stability", "guard")
EVIDENCE_MODES = ("lower_bound", "point")

# Observed values are rounded to this many decimals before comparison, so that a difference
# computed in floating point (0.91 - 0.90 == 0.010000000000000009) lands in the band a person
# reading "improvement 0.01" expects. Metrics are never meaningful at this precision.
_COMPARE_DECIMALS = 9

_LE, _GE, _TO = "≤", "≥", "→"
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

_GATE_NO_SKILL = '"no skill"'
_GATE_MAJORITY = '"labels beat the majority answer"'


def _is_number(x: Any) -> bool:
    """A real number (bools are ints in Python but never a meaningful threshold)."""
    return not isinstance(x, bool) and isinstance(x, (int, float))


class ScoreTableError(ConfigError, ValueError):
    """The score table in the configuration is invalid (a ValueError the CLI shows on one line)."""


@dataclass(frozen=True)
class Evidence:
    """A metric with its interval, so the decision can tell a real gain from holdout noise.

    Not validated on construction (a bootstrap may legitimately record NaN); :func:`decide`
    refuses non-finite or inverted intervals with the input's name.
    """

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
        if not _is_number(floor) or not math.isfinite(floor) or not 0.5 <= floor < 1:
            raise ScoreTableError(
                f"gate.min_roc_auc_lower must be a number in [0.5, 1) (0.5 is a coin toss; the "
                f"ROC-AUC interval's lower bound must be above it), got {floor!r}"
            )
        tolerance = self.accuracy_tolerance
        if not _is_number(tolerance) or not math.isfinite(tolerance) or tolerance < 0:
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
        if "evidence" in d:
            kwargs["evidence"] = d["evidence"]  # validated by __post_init__, naming the key
        if "gate" in d:
            gate = _mapping("gate", d["gate"], _GATE_KEYS)
            gate_kwargs: dict[str, Any] = {}
            for key in ("min_roc_auc_lower", "accuracy_tolerance"):
                if key in gate:
                    gate_kwargs[key] = _number(f"gate.{key}", gate[key])
            if "enabled" in gate:
                gate_kwargs["enabled"] = gate["enabled"]  # validated by Gate, naming the key
            kwargs["gate"] = Gate(**gate_kwargs)
        return cls(**kwargs)

    def to_dict(self) -> dict:
        """The table in the config's shape (round-trips through :meth:`from_dict`)."""
        return {
            "improvement": [_band_to_dict(b) for b in self.improvement],
            "absolute": [_band_to_dict(b) for b in self.absolute],
            "stability": {"max_cv_std": self.max_cv_std, "points": self.stability_points},
            "verdicts": {"auto": self.auto_at, "manual": self.manual_at},
            "evidence": self.evidence,
            "gate": {
                "min_roc_auc_lower": self.gate.min_roc_auc_lower,
                "accuracy_tolerance": self.gate.accuracy_tolerance,
                "enabled": self.gate.enabled,
            },
        }

    def verdict_for(self, score: int) -> str:
        """The verdict a score earns, before the gate and the worse-than-champion guard."""
        if score >= self.auto_at:
            return "auto"
        if score >= self.manual_at:
            return "manual"
        return "reject"


@dataclass(frozen=True)
class Reason:
    """Why some points were given (or a verdict capped), with the value that was read."""

    criterion: str
    observed: float  # NaN when nothing was observed (gate not evaluated)
    rule: str
    points: int
    text: str


@dataclass(frozen=True)
class Decision:
    """The outcome of scoring one candidate: what to do and why."""

    score: int
    verdict: str
    reasons: tuple[Reason, ...] = field(default_factory=tuple)
    gate_passed: bool | None = None  # None: not evaluated (no inputs) or disabled
    evidence: str = "lower_bound"  # what the bands were read on

    def to_dict(self) -> dict:
        """A JSON-ready mapping, for the decide stage's scraps and the run report."""
        return {
            "score": int(self.score),
            "verdict": self.verdict,
            "gate_passed": self.gate_passed,
            "evidence": self.evidence,
            "reasons": [
                {
                    "criterion": r.criterion,
                    "observed": float(r.observed) if math.isfinite(r.observed) else None,
                    "rule": r.rule,
                    "points": int(r.points),
                    "text": r.text,
                }
                for r in self.reasons
            ],
        }


def decide(
    improvement: Evidence | float,
    value: Evidence | float,
    cv_std: float,
    table: ScoreTable | None = None,
    metric: str = "roc_auc",
    baseline_label: str = "champion",
    gate: GateInputs | None = None,
) -> Decision:
    """Gate and score a candidate; return its verdict with a reason for every step.

    ``improvement`` is candidate - champion (or - the majority-class baseline when there is no
    champion; say which in ``baseline_label``, e.g. ``"champion v3"``); ``value`` is the
    candidate's selection metric. Floats mean :meth:`Evidence.point`; a mapping in the shape of
    :meth:`Evidence.to_dict` (a scrap read back) is accepted too. ``gate`` None means no gate
    evidence: the verdict is then at most ``manual``. Non-finite inputs raise ``ValueError``: a
    score computed on a missing number would look legitimate and is not.
    """
    if table is None:
        table = ScoreTable()
    improvement = _evidence_input("improvement", improvement)
    value = _evidence_input("value", value)
    cv_std = _finite_input("cv_std", cv_std)
    if cv_std < 0:
        raise ValueError(f"cv_std must be >= 0 (a standard deviation), got {cv_std!r}")
    if gate is not None:
        gate = _gate_input(gate)
    label = _METRIC_LABELS.get(metric, metric)
    on_lower = table.evidence == "lower_bound"

    gate_reasons: list[Reason] = []
    gate_passed: bool | None = None
    if table.gate.enabled and gate is not None:
        gate_reasons, gate_passed = _gate_reasons(table.gate, gate)

    reasons = [
        _band_reason(
            "improvement",
            table.improvement,
            improvement,
            on_lower,
            f"{label} {improvement.estimate:+.4f}{_interval(improvement, signed=True)} "
            f"vs {baseline_label}",
            signed=True,
        ),
        _band_reason(
            "absolute",
            table.absolute,
            value,
            on_lower,
            f"candidate {label} {value.estimate:.4f}{_interval(value, signed=False)}",
            signed=False,
        ),
    ]
    stable = round(cv_std, _COMPARE_DECIMALS) <= table.max_cv_std
    rule = f"{_LE if stable else '>'} {_fmt_threshold(table.max_cv_std)}"
    points = table.stability_points if stable else 0
    reasons.append(
        Reason(
            "stability",
            cv_std,
            rule,
            points,
            f"CV std of {label} {cv_std:.4f} {rule} ({'stable' if stable else 'unstable'}) "
            f"{_TO} {points:+d}",
        )
    )

    score = sum(r.points for r in reasons)
    verdict = table.verdict_for(score)
    if gate_passed is False:
        verdict = "reject"
    elif verdict == "auto":
        guard = _guard_reason(improvement, on_lower, label, baseline_label, score)
        if guard is not None:
            verdict = "manual"
            reasons.append(guard)
    if not table.gate.enabled:
        gate_reasons = [
            Reason(
                "gate",
                math.nan,
                "disabled",
                0,
                "gate disabled in the configuration (gate.enabled: false): no-skill and "
                "majority-answer checks not made",
            )
        ]
    elif gate is None:
        text = (
            "gate not evaluated: no evidence given (ROC-AUC interval, served-label accuracy, "
            "majority share), so no automatic deployment"
        )
        if verdict == "auto":
            verdict = "manual"
            text += f": verdict capped from auto to manual although the score is {score}"
        gate_reasons = [Reason("gate", math.nan, "not evaluated", 0, text)]

    decision = Decision(
        score=score,
        verdict=verdict,
        reasons=tuple(gate_reasons + reasons),
        gate_passed=gate_passed,
        evidence=table.evidence,
    )
    logger.info(
        "decision: score %d -> %s (gate %s, bands read on %s)",
        score,
        verdict,
        {True: "passed", False: "failed", None: "not evaluated"}[gate_passed],
        table.evidence,
    )
    for reason in decision.reasons:
        logger.debug("  %s", reason.text)
    return decision


def default_table_dict() -> dict:
    """The default table in config shape, to write the default config file from one source."""
    return ScoreTable().to_dict()


# --- helpers -----------------------------------------------------------------------------------

_TOP_KEYS = ("improvement", "absolute", "stability", "verdicts", "evidence", "gate")
_STABILITY_KEYS = ("max_cv_std", "points")
_VERDICT_KEYS = ("auto", "manual")
_GATE_KEYS = ("min_roc_auc_lower", "accuracy_tolerance", "enabled")
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


def _evidence_input(name: str, x: Any) -> Evidence:
    """``x`` as a validated Evidence of plain floats; a number is a point without interval."""
    if isinstance(x, Mapping):
        x = Evidence.from_dict(x)
    if not isinstance(x, Evidence):
        return Evidence.point(_finite_input(name, x))
    estimate = _finite_input(f"{name}.estimate", x.estimate)
    low = _finite_input(f"{name}.low", x.low)
    high = _finite_input(f"{name}.high", x.high)
    if round(low, _COMPARE_DECIMALS) > round(high, _COMPARE_DECIMALS):
        raise ValueError(f"{name}: interval low {low!r} is above high {high!r}")
    try:
        n = operator.index(x.n)
    except TypeError:
        raise ValueError(f"{name}.n must be an integer, got {x.n!r}") from None
    if n < 0:
        raise ValueError(f"{name}.n must be >= 0, got {n!r}")
    return Evidence(estimate, low, high, n, str(x.method))


def _gate_input(g: Any) -> GateInputs:
    if not isinstance(g, GateInputs):
        raise ValueError(f"gate must be GateInputs or None, got {type(g).__name__}")
    roc_auc = _evidence_input("gate.roc_auc", g.roc_auc)
    accuracy = _finite_input("gate.accuracy", g.accuracy)
    majority = _finite_input("gate.majority_share", g.majority_share)
    for name, x in (
        ("gate.roc_auc.low", roc_auc.low),
        ("gate.roc_auc.high", roc_auc.high),
        ("gate.accuracy", accuracy),
        ("gate.majority_share", majority),
    ):
        if not 0 <= x <= 1:
            raise ValueError(f"{name} must be in [0, 1], got {x!r}")
    try:
        n = operator.index(g.n)
    except TypeError:
        raise ValueError(f"gate.n must be an integer (holdout rows), got {g.n!r}") from None
    if n < 0:
        raise ValueError(f"gate.n must be >= 0 (holdout rows), got {n!r}")
    return GateInputs(roc_auc, accuracy, majority, n)


def _interval(ev: Evidence, signed: bool) -> str:
    """`` [low, high]`` for a text, or nothing for a point estimate."""
    if ev.low == ev.high:
        return ""
    spec = "+.4f" if signed else ".4f"
    return f" [{ev.low:{spec}}, {ev.high:{spec}}]"


def _band_reason(
    criterion: str,
    bands: tuple[Band, ...],
    ev: Evidence,
    on_lower: bool,
    head: str,
    signed: bool,
) -> Reason:
    read = ev.low if on_lower else ev.estimate
    band = _pick(criterion, bands, read)
    phrase = _band_phrase(bands, band)
    if ev.low == ev.high:
        why = f" (point estimate, no interval): {phrase}"
    else:
        spec = "+.4f" if signed else ".4f"
        why = f": {'lower bound' if on_lower else 'estimate'} {read:{spec}} {phrase}"
    return Reason(criterion, read, band.rule, band.points, f"{head}{why} {_TO} {band.points:+d}")


def _gate_reasons(settings: Gate, g: GateInputs) -> tuple[list[Reason], bool]:
    """One reason per gate check (both are always reported), and whether both passed."""
    rows = f"n={g.n:,}"
    roc = g.roc_auc
    floor = settings.min_roc_auc_lower
    skilled = round(roc.low, _COMPARE_DECIMALS) > floor
    if roc.low == roc.high:
        detail = f"(point estimate, no interval, {rows})"
    else:
        detail = f"(estimate {roc.estimate:.4f}{_interval(roc, signed=False)}, {rows})"
    no_skill = Reason(
        "gate",
        roc.low,
        f"{'passed' if skilled else 'failed'}: ROC-AUC lower bound > {_fmt_threshold(floor)}",
        0,
        f"gate {_GATE_NO_SKILL}: ROC-AUC lower bound {roc.low:.4f} "
        f"{'>' if skilled else _LE} {_fmt_threshold(floor)} {detail}: "
        f"{'passed' if skilled else 'reject'}",
    )
    tolerance = settings.accuracy_tolerance
    beats = round(g.accuracy - (g.majority_share - tolerance), _COMPARE_DECIMALS) >= 0
    majority = Reason(
        "gate",
        g.accuracy,
        f"{'passed' if beats else 'failed'}: accuracy {_GE} majority share - "
        f"{_fmt_threshold(tolerance)}",
        0,
        f"gate {_GATE_MAJORITY}: accuracy {g.accuracy:.4f} {_GE if beats else '<'} majority "
        f"share {g.majority_share:.4f} - {_fmt_threshold(tolerance)} ({rows}): "
        f"{'passed' if beats else 'reject'}",
    )
    return [no_skill, majority], skilled and beats


def _guard_reason(
    improvement: Evidence, on_lower: bool, label: str, baseline_label: str, score: int
) -> Reason | None:
    """The cap for a candidate worse than production, or None when it is not worse."""
    worse_estimate = round(improvement.estimate, _COMPARE_DECIMALS) < 0
    worse_interval = on_lower and round(improvement.high, _COMPARE_DECIMALS) < 0
    if not (worse_estimate or worse_interval):
        return None
    observed, rule = (
        (improvement.estimate, "< 0") if worse_estimate else (improvement.high, "upper bound < 0")
    )
    which = " and ".join(
        w
        for w, hit in (("estimate < 0", worse_estimate), ("upper bound < 0", worse_interval))
        if hit
    )
    return Reason(
        "guard",
        observed,
        rule,
        0,
        f"candidate is worse than {baseline_label} ({label} {improvement.estimate:+.4f}"
        f"{_interval(improvement, signed=True)}, {which}): verdict capped from auto to manual "
        f"although the score is {score}",
    )


def _pick(name: str, bands: tuple[Band, ...], value: float) -> Band:
    rounded = round(value, _COMPARE_DECIMALS)
    for band in bands:
        if band.holds(rounded):
            return band
    raise AssertionError(f"{name}: validated bands end with an else band")  # pragma: no cover


def _band_phrase(bands: tuple[Band, ...], band: Band) -> str:
    """The rule for a text; an else band is spelled out as the complement of the band above it."""
    if band.threshold is not None:
        return band.rule
    if len(bands) < 2:
        return "(any value)"
    above = bands[-2]
    return f"{_NEGATED[above.op]} {_fmt_threshold(above.threshold)}"


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
