"""The deployment decision: a gate, then a candidate's score out of 100 and the verdict it earns.

The score table (lib.score_table, loadable from the YAML config) gives points for the improvement
over production (or over a majority-class baseline), the candidate's value and its CV stability.
By default (``evidence: lower_bound``) bands are read on the interval's lower bound, so a +0.003
difference on a small holdout is not taken at face value. Before the score, a gate rejects a
candidate without skill or whose labels lose to the majority answer; without gate evidence the
verdict is at most ``manual``. A candidate worse than the champion is never deployed
automatically, whatever the table says.
"""

from __future__ import annotations

import logging
import math
import operator
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

from lib.score_table import (
    COMPARE_DECIMALS,
    GE,
    LE,
    NEGATED,
    TO,
    Band,
    Evidence,
    Gate,
    GateInputs,
    ScoreTable,
    fmt_threshold,
)

logger = logging.getLogger(__name__)


CRITERIA = ("gate", "improvement", "absolute", "stability", "guard")

_METRIC_LABELS = {
    "roc_auc": "ROC-AUC",
    "accuracy": "accuracy",
    "balanced_accuracy": "balanced accuracy",
    "f1": "F1",
}

_GATE_NO_SKILL = '"no skill"'
_GATE_MAJORITY = '"labels beat the majority answer"'


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
    gate_passed: bool | None = None  # None: not evaluated (no inputs) or disabled
    evidence: str = "lower_bound"  # what the bands were read on
    reasons: tuple[Reason, ...] = field(default_factory=tuple)

    def to_dict(self) -> dict:
        """A JSON-ready mapping (a NaN observed is None), for the decide stage's scraps and the
        run report."""
        out = asdict(self)
        out["score"] = int(self.score)
        out["reasons"] = [
            {**r, "observed": r["observed"] if math.isfinite(r["observed"]) else None}
            for r in out["reasons"]
        ]
        return out


def decide(
    improvement: Evidence | float,
    value: Evidence | float,
    cv_std: float,
    table: ScoreTable | None = None,
    metric: str = "roc_auc",
    baseline_label: str = "champion",
    gate: GateInputs | Mapping | None = None,
) -> Decision:
    """Gate and score a candidate; return its verdict with a reason for every step.

    ``improvement`` is candidate - reference (``baseline_label``), ``value`` the candidate's
    metric: floats (points) or mappings as 03 compare writes them, like ``gate`` (None: no gate
    evidence, so at most ``manual``). Non-finite inputs raise: a score on a missing number would
    look legitimate and is not.
    """
    table = table or ScoreTable()
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

    improved = f"{label} {improvement.estimate:+.4f}{_interval(improvement, signed=True)}"
    reasons = [
        _band_reason(
            "improvement", table.improvement, improvement, on_lower,
            f"{improved} vs {baseline_label}", signed=True,
        ),
        _band_reason(
            "absolute", table.absolute, value, on_lower,
            f"candidate {label} {value.estimate:.4f}{_interval(value, signed=False)}",
            signed=False,
        ),
        _stability_reason(cv_std, table, label),
    ]  # fmt: skip

    score = sum(r.points for r in reasons)
    verdict = table.verdict_for(score)
    if gate_passed is False:
        verdict = "reject"
    elif verdict == "auto":
        guard = _guard_reason(improvement, on_lower, label, baseline_label, score)
        if guard is not None:
            verdict = "manual"
            reasons.append(guard)
    if not table.gate.enabled or gate is None:
        gate_reasons, verdict = _gate_not_made(table.gate.enabled, verdict, score)

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


def _stability_reason(cv_std: float, table: ScoreTable, label: str) -> Reason:
    """Points for a cross-validation spread at most the table's `max_cv_std`."""
    stable = round(cv_std, COMPARE_DECIMALS) <= table.max_cv_std
    rule = f"{LE if stable else '>'} {fmt_threshold(table.max_cv_std)}"
    points = table.stability_points if stable else 0
    return Reason(
        "stability",
        cv_std,
        rule,
        points,
        f"CV std of {label} {cv_std:.4f} {rule} ({'stable' if stable else 'unstable'}) "
        f"{TO} {points:+d}",
    )


def _gate_not_made(enabled: bool, verdict: str, score: int) -> tuple[list[Reason], str]:
    """The gate's line when it was not evaluated: disabled by configuration, or no evidence
    given (then an `auto` verdict is capped to `manual`: no automatic deployment unchecked)."""
    if not enabled:
        text = (
            "gate disabled in the configuration (gate.enabled: false): no-skill and "
            "majority-answer checks not made"
        )
        return [Reason("gate", math.nan, "disabled", 0, text)], verdict
    text = (
        "gate not evaluated: no evidence given (ROC-AUC interval, served-label accuracy, "
        "majority share), so no automatic deployment"
    )
    if verdict == "auto":
        verdict = "manual"
        text += f": verdict capped from auto to manual although the score is {score}"
    return [Reason("gate", math.nan, "not evaluated", 0, text)], verdict


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
    if round(low, COMPARE_DECIMALS) > round(high, COMPARE_DECIMALS):
        raise ValueError(f"{name}: interval low {low!r} is above high {high!r}")
    return Evidence(estimate, low, high, _count(f"{name}.n", x.n), str(x.method))


def _count(name: str, x: Any, what: str = "") -> int:
    try:
        n = operator.index(x)
    except TypeError:
        raise ValueError(f"{name} must be an integer{what}, got {x!r}") from None
    if n < 0:
        raise ValueError(f"{name} must be >= 0{what}, got {n!r}")
    return n


def _gate_input(g: Any) -> GateInputs:
    if isinstance(g, Mapping):
        g = GateInputs(g["roc_auc"], g["accuracy"], g["majority_share"], g["n"])
    if not isinstance(g, GateInputs):
        raise ValueError(f"gate must be GateInputs, a mapping or None, got {type(g).__name__}")
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
    return GateInputs(roc_auc, accuracy, majority, _count("gate.n", g.n, " (holdout rows)"))


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
    rounded = round(read, COMPARE_DECIMALS)
    band = next(b for b in bands if b.holds(rounded))  # validated bands end with an else band
    phrase = _band_phrase(bands, band)
    if ev.low == ev.high:
        why = f" (point estimate, no interval): {phrase}"
    else:
        spec = "+.4f" if signed else ".4f"
        why = f": {'lower bound' if on_lower else 'estimate'} {read:{spec}} {phrase}"
    return Reason(criterion, read, band.rule, band.points, f"{head}{why} {TO} {band.points:+d}")


def _gate_reasons(settings: Gate, g: GateInputs) -> tuple[list[Reason], bool]:
    """One reason per gate check (both are always reported), and whether both passed."""
    rows = f"n={g.n:,}"
    roc = g.roc_auc
    floor = settings.min_roc_auc_lower
    skilled = round(roc.low, COMPARE_DECIMALS) > floor
    if roc.low == roc.high:
        detail = f"(point estimate, no interval, {rows})"
    else:
        detail = f"(estimate {roc.estimate:.4f}{_interval(roc, signed=False)}, {rows})"
    no_skill = Reason(
        "gate",
        roc.low,
        f"{'passed' if skilled else 'failed'}: ROC-AUC lower bound > {fmt_threshold(floor)}",
        0,
        f"gate {_GATE_NO_SKILL}: ROC-AUC lower bound {roc.low:.4f} "
        f"{'>' if skilled else LE} {fmt_threshold(floor)} {detail}: "
        f"{'passed' if skilled else 'reject'}",
    )
    tolerance = settings.accuracy_tolerance
    beats = round(g.accuracy - (g.majority_share - tolerance), COMPARE_DECIMALS) >= 0
    majority = Reason(
        "gate",
        g.accuracy,
        f"{'passed' if beats else 'failed'}: accuracy {GE} majority share - "
        f"{fmt_threshold(tolerance)}",
        0,
        f"gate {_GATE_MAJORITY}: accuracy {g.accuracy:.4f} {GE if beats else '<'} majority "
        f"share {g.majority_share:.4f} - {fmt_threshold(tolerance)} ({rows}): "
        f"{'passed' if beats else 'reject'}",
    )
    return [no_skill, majority], skilled and beats


def _guard_reason(
    improvement: Evidence, on_lower: bool, label: str, baseline_label: str, score: int
) -> Reason | None:
    """The cap for a candidate worse than production, or None when it is not worse."""
    worse_estimate = round(improvement.estimate, COMPARE_DECIMALS) < 0
    worse_interval = on_lower and round(improvement.high, COMPARE_DECIMALS) < 0
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


def _band_phrase(bands: tuple[Band, ...], band: Band) -> str:
    """The rule for a text; an else band is spelled out as the complement of the band above it."""
    if band.threshold is not None:
        return band.rule
    if len(bands) < 2:
        return "(any value)"
    above = bands[-2]
    return f"{NEGATED[above.op]} {fmt_threshold(above.threshold)}"
