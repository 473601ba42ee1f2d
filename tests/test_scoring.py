"""The decision: the no-skill gate, every band and boundary, evidence reading, the guard, config."""

from __future__ import annotations

import copy
import json
import math

import pytest
import yaml

from lib.errors import ConfigError
from lib.pipeline.scoring import CRITERIA, Decision, Reason, decide
from lib.score_table import (
    Band,
    Evidence,
    Gate,
    GateInputs,
    ScoreTable,
)

# Inputs that land in a known band of the other two criteria, so one criterion varies at a time.
GOOD_VALUE = 0.95  # absolute: +30
STABLE = 0.01  # stability: +30
UNSTABLE = 0.05  # stability: 0
# A candidate with clear skill that beats the majority answer: the gate passes.
PASSING = GateInputs(
    roc_auc=Evidence(0.80, 0.78, 0.82, 1900, "bootstrap"),
    accuracy=0.75,
    majority_share=0.70,
    n=1900,
)


def points(decision: Decision, criterion: str) -> int:
    (reason,) = [r for r in decision.reasons if r.criterion == criterion]
    return reason.points


def reason(decision: Decision, criterion: str) -> Reason:
    (found,) = [r for r in decision.reasons if r.criterion == criterion]
    return found


def gate_texts(decision: Decision) -> list[str]:
    return [r.text for r in decision.reasons if r.criterion == "gate"]


# --- improvement ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("improvement", "expected", "rule"),
    [
        (0.05, 40, "> 0.01"),
        (0.0101, 40, "> 0.01"),
        (0.01, 20, "> 0"),  # exactly the bound: not strictly above
        (0.005, 20, "> 0"),
        (1e-6, 20, "> 0"),
        (0.0, 5, "≥ -0.005"),  # exactly 0: not an improvement
        (-0.001, 5, "≥ -0.005"),
        (-0.005, 5, "≥ -0.005"),  # exactly the tolerance: still tolerated
        (-0.0051, -50, "else"),
        (-0.3, -50, "else"),
    ],
)
def test_improvement_bands(improvement: float, expected: int, rule: str) -> None:
    decision = decide(improvement, GOOD_VALUE, STABLE)
    assert points(decision, "improvement") == expected
    assert reason(decision, "improvement").rule == rule


def test_improvement_from_float_subtraction_lands_on_the_boundary_a_person_expects() -> None:
    # 0.91 - 0.90 == 0.010000000000000009 in binary floating point; it is "0.01", not above it.
    assert 0.91 - 0.90 > 0.01
    assert points(decide(0.91 - 0.90, GOOD_VALUE, STABLE), "improvement") == 20
    assert points(decide(0.895 - 0.9, GOOD_VALUE, STABLE), "improvement") == 5


# --- absolute ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (0.99, 30),
        (0.9001, 30),
        (0.90, 20),  # exactly the bound
        (0.85, 20),
        (0.80, 10),  # exactly the bound
        (0.5, 10),
        (0.0, 10),
    ],
)
def test_absolute_bands(value: float, expected: int) -> None:
    assert points(decide(0.02, value, STABLE), "absolute") == expected


# --- stability -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("cv_std", "expected", "rule"),
    [
        (0.0, 30, "≤ 0.02"),
        (0.019, 30, "≤ 0.02"),
        (0.02, 30, "≤ 0.02"),  # exactly the bound is stable
        (0.0201, 0, "> 0.02"),
        (0.2, 0, "> 0.02"),
    ],
)
def test_stability_bands(cv_std: float, expected: int, rule: str) -> None:
    decision = decide(0.02, GOOD_VALUE, cv_std)
    assert points(decision, "stability") == expected
    assert reason(decision, "stability").rule == rule


def test_stability_bound_and_points_are_configurable() -> None:
    table = ScoreTable(max_cv_std=0.05, stability_points=10)
    assert points(decide(0.02, GOOD_VALUE, 0.04, table), "stability") == 10
    assert points(decide(0.02, GOOD_VALUE, 0.051, table), "stability") == 0


# --- verdicts ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("improvement", "value", "cv_std", "score", "verdict"),
    [
        (0.02, 0.95, 0.01, 100, "auto"),  # 40 + 30 + 30
        (0.02, 0.95, 0.05, 70, "auto"),  # 40 + 30 + 0: exactly auto_at
        (0.02, 0.85, 0.05, 60, "manual"),  # 40 + 20 + 0
        (0.005, 0.85, 0.05, 40, "reject"),  # 20 + 20 + 0
        (0.0, 0.85, 0.01, 55, "manual"),  # 5 + 20 + 30
        (0.005, 0.85, 0.01, 70, "auto"),  # 20 + 20 + 30
        (0.005, 0.5, 0.01, 60, "manual"),  # 20 + 10 + 30
        (-0.001, 0.5, 0.01, 45, "reject"),  # 5 + 10 + 30
        (-0.01, 0.95, 0.01, 10, "reject"),  # -50 + 30 + 30
    ],
)
def test_verdicts_from_real_combinations(
    improvement: float, value: float, cv_std: float, score: int, verdict: str
) -> None:
    decision = decide(improvement, value, cv_std, gate=PASSING)
    assert decision.score == score
    assert decision.verdict == verdict
    assert decision.score == sum(r.points for r in decision.reasons)
    assert decision.gate_passed is True


@pytest.mark.parametrize(
    ("score", "verdict"),
    [(49, "reject"), (50, "manual"), (69, "manual"), (70, "auto")],
)
def test_verdict_boundaries(score: int, verdict: str) -> None:
    # Stability carries the whole score so that any total can be built: 0 + 0 + score.
    table = ScoreTable(
        improvement=(Band(None, 0),), absolute=(Band(None, 0),), stability_points=score
    )
    decision = decide(0.02, GOOD_VALUE, STABLE, table, gate=PASSING)
    assert decision.score == score
    assert decision.verdict == verdict


def test_verdict_thresholds_are_configurable() -> None:
    table = ScoreTable(auto_at=90, manual_at=60)
    assert decide(0.02, 0.95, 0.05, table, gate=PASSING).verdict == "manual"  # 70
    assert decide(0.02, 0.85, 0.05, table, gate=PASSING).verdict == "manual"  # 60
    assert decide(0.0, 0.85, 0.01, table, gate=PASSING).verdict == "reject"  # 55
    assert decide(0.02, 0.95, 0.01, table, gate=PASSING).verdict == "auto"  # 100


# --- worse than champion is never auto -----------------------------------------------------------


def test_worse_than_champion_is_capped_to_manual_even_if_the_table_scores_it_auto() -> None:
    lenient = ScoreTable(improvement=(Band(0.0, 40), Band(None, 40)))
    decision = decide(-0.003, 0.95, 0.01, lenient, baseline_label="champion v3")
    assert decision.score == 100
    assert decision.verdict == "manual"
    guard = reason(decision, "guard")
    assert guard.points == 0
    assert guard.observed == pytest.approx(-0.003)
    assert "capped" in guard.text and "champion v3" in guard.text and "-0.0030" in guard.text


def test_worse_than_champion_within_tolerance_is_capped_with_the_default_table() -> None:
    # 5 + 30 + 30 = 65 is manual anyway; with auto_at lowered to 60 the guard must step in.
    decision = decide(-0.001, 0.95, 0.01, ScoreTable(auto_at=60, manual_at=50))
    assert decision.score == 65
    assert decision.verdict == "manual"
    assert any(r.criterion == "guard" for r in decision.reasons)


def test_guard_does_not_fire_when_not_worse_or_not_auto() -> None:
    for improvement, value, cv in [(0.0, 0.95, 0.01), (0.02, 0.95, 0.01), (-0.001, 0.95, 0.01)]:
        decision = decide(improvement, value, cv, gate=PASSING)
        assert all(r.criterion != "guard" for r in decision.reasons), decision
    # A tiny negative from float noise (0.9 - 0.9000000000001) is "no change", not "worse".
    table = ScoreTable(auto_at=60, manual_at=50)
    assert decide(0.9 - 0.9000000000001, 0.95, 0.01, table, gate=PASSING).verdict == "auto"


def test_worse_candidate_can_still_be_rejected() -> None:
    lenient = ScoreTable(improvement=(Band(0.0, 40), Band(None, 40)), auto_at=200, manual_at=150)
    decision = decide(-0.003, 0.95, 0.01, lenient)
    assert decision.verdict == "reject"
    assert all(r.criterion != "guard" for r in decision.reasons)


# --- reasons -------------------------------------------------------------------------------------


def test_reasons_texts_mention_observed_values_rules_and_points() -> None:
    decision = decide(0.0123, 0.9123, 0.0157, baseline_label="champion v3", gate=PASSING)
    texts = {r.criterion: r.text for r in decision.reasons if r.criterion != "gate"}
    assert [r.criterion for r in decision.reasons] == [
        "gate",
        "gate",
        "improvement",
        "absolute",
        "stability",
    ]
    assert texts["improvement"] == (
        "ROC-AUC +0.0123 vs champion v3 (point estimate, no interval): > 0.01 → +40"
    )
    assert "0.9123" in texts["absolute"] and "> 0.9" in texts["absolute"]
    assert texts["absolute"].endswith("+30")
    assert "0.0157" in texts["stability"] and "≤ 0.02" in texts["stability"]
    assert reason(decision, "absolute").observed == pytest.approx(0.9123)


def test_else_band_text_says_what_was_not_met_and_names_the_baseline() -> None:
    decision = decide(-0.02, 0.7, 0.03, metric="accuracy", baseline_label="majority-class baseline")
    text = reason(decision, "improvement").text
    assert "accuracy" in text and "-0.0200" in text and "majority-class baseline" in text
    assert "< -0.005" in text and text.endswith("-50")
    assert "unstable" in reason(decision, "stability").text


def test_decision_to_dict_is_json_ready() -> None:
    lenient = ScoreTable(improvement=(Band(0.0, 40), Band(None, 40)))
    decision = decide(-0.003, 0.95, 0.01, lenient, gate=PASSING)
    data = json.loads(json.dumps(decision.to_dict(), allow_nan=False))
    assert data["score"] == 100 and data["verdict"] == "manual"
    assert data["gate_passed"] is True and data["evidence"] == "lower_bound"
    assert [r["criterion"] for r in data["reasons"]] == [
        "gate",
        "gate",
        "improvement",
        "absolute",
        "stability",
        "guard",
    ]
    for r in data["reasons"]:
        assert set(r) == {"criterion", "observed", "rule", "points", "text"}
        assert r["criterion"] in CRITERIA


def test_decision_to_dict_without_gate_has_no_nan() -> None:
    data = decide(0.02, 0.95, 0.01).to_dict()
    json.dumps(data, allow_nan=False)  # the "not evaluated" reason observed nothing: None
    assert data["gate_passed"] is None
    assert data["reasons"][0]["criterion"] == "gate" and data["reasons"][0]["observed"] is None


def test_accepts_numpy_like_numbers() -> None:
    import numpy as np

    decision = decide(np.float64(0.02), np.float32(0.95), np.float64(0.01))
    assert decision.score == 100
    json.dumps(decision.to_dict())


# --- bad inputs ----------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["improvement", "value", "cv_std"])
@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_non_finite_inputs_raise_instead_of_scoring(name: str, bad: float) -> None:
    args = {"improvement": 0.02, "value": 0.95, "cv_std": 0.01, name: bad}
    with pytest.raises(ValueError, match=name):
        decide(**args)


def test_negative_cv_std_raises() -> None:
    with pytest.raises(ValueError, match="cv_std"):
        decide(0.02, 0.95, -0.01)


def test_non_numeric_input_raises() -> None:
    with pytest.raises(ValueError, match="value must be a number"):
        decide(0.02, None, 0.01)  # type: ignore[arg-type]


# --- table as data -------------------------------------------------------------------------------


def test_default_table_dict_has_the_mission_table() -> None:
    assert ScoreTable().to_dict() == {
        "improvement": [
            {"above": 0.01, "points": 40},
            {"above": 0.0, "points": 20},
            {"at_least": -0.005, "points": 5},
            {"else": True, "points": -50},
        ],
        "absolute": [
            {"above": 0.9, "points": 30},
            {"above": 0.8, "points": 20},
            {"else": True, "points": 10},
        ],
        "stability": {"max_cv_std": 0.02, "points": 30},
        "verdicts": {"auto": 70, "manual": 50},
        "evidence": "lower_bound",
        "gate": {"min_roc_auc_lower": 0.55, "accuracy_tolerance": 0.005, "enabled": True},
    }


def test_round_trip_through_dict_and_yaml() -> None:
    custom = ScoreTable(
        improvement=(Band(0.02, 50), Band(0.0, 25), Band(0.0, 0, ">="), Band(None, -100)),
        absolute=(Band(0.7, 25, ">="), Band(None, 0)),
        max_cv_std=0.03,
        stability_points=25,
        auto_at=75,
        manual_at=40,
        evidence="point",
        gate=Gate(min_roc_auc_lower=0.6, accuracy_tolerance=0.01, enabled=False),
    )
    assert custom.to_dict()["evidence"] == "point"
    assert custom.to_dict()["gate"] == {
        "min_roc_auc_lower": 0.6,
        "accuracy_tolerance": 0.01,
        "enabled": False,
    }
    for table in (ScoreTable(), custom):
        assert ScoreTable.from_dict(table.to_dict()) == table
        assert ScoreTable.from_dict(yaml.safe_load(yaml.safe_dump(table.to_dict()))) == table


def test_from_dict_none_or_partial_keeps_defaults() -> None:
    assert ScoreTable.from_dict(None) == ScoreTable()
    assert ScoreTable.from_dict({}) == ScoreTable()
    table = ScoreTable.from_dict({"verdicts": {"auto": 80}, "stability": {"max_cv_std": 0.03}})
    assert (table.auto_at, table.manual_at) == (80, 50)
    assert (table.max_cv_std, table.stability_points) == (0.03, 30)
    assert table.improvement == ScoreTable().improvement


def test_from_dict_reads_the_documented_yaml_shape() -> None:
    table = ScoreTable.from_dict(
        yaml.safe_load(
            """
            improvement:
              - {above: 0.02, points: 40}
              - {at_least: 0, points: 10}
              - {else: true, points: -50}
            absolute:
              - {above: 0.85, points: 30}
              - {else: true, points: 0}
            stability: {max_cv_std: 0.01, points: 30}
            verdicts: {auto: 70, manual: 40}
            """
        )
    )
    assert table.improvement == (Band(0.02, 40), Band(0, 10, ">="), Band(None, -50))
    assert points(decide(0.0, 0.9, 0.01, table), "improvement") == 10
    assert decide(0.0, 0.9, 0.01, table).score == 70


def _with(path: tuple, value: object) -> dict:
    d = copy.deepcopy(ScoreTable().to_dict())
    target = d
    for key in path[:-1]:
        target = target[key]
    target[path[-1]] = value
    return d


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (
            {"improvment": []},
            r"improvment: unknown key \(known keys: improvement, absolute, stability",
        ),
        (
            _with(("stability", "max_std"), 0.1),
            r"stability\.max_std: unknown key \(known keys: max_cv_std, points\)",
        ),
        (
            _with(("verdicts", "deploy"), 80),
            r"verdicts\.deploy: unknown key \(known keys: auto, manual",
        ),
        (
            _with(("improvement", 0), {"above": 0.01, "points": 40, "weight": 2}),
            r"improvement\.0\.weight: unknown key \(known keys: above, at_least, else, points\)",
        ),
        (
            _with(
                ("improvement",),
                [
                    {"above": 0, "points": 20},
                    {"above": 0.01, "points": 40},
                    {"else": True, "points": -50},
                ],
            ),
            "decreasing threshold order",
        ),
        (
            _with(
                ("absolute",),
                [
                    {"at_least": 0.8, "points": 20},
                    {"above": 0.8, "points": 30},
                    {"else": True, "points": 0},
                ],
            ),
            "decreasing threshold order",
        ),
        (_with(("absolute",), [{"above": 0.9, "points": 30}]), "last band must be the else band"),
        (
            _with(("absolute",), [{"else": True, "points": 1}, {"else": True, "points": 0}]),
            "only the last band may be the else band",
        ),
        (_with(("absolute",), []), "non-empty list"),
        (_with(("absolute", 0), {"points": 30}), "exactly one of above, at_least, else"),
        (
            _with(("absolute", 0), {"above": 0.9, "at_least": 0.9, "points": 30}),
            "exactly one of above, at_least, else",
        ),
        (_with(("absolute", 0), {"above": 0.9}), r"absolute\.0\.points: missing"),
        (_with(("absolute", 2), {"else": False, "points": 10}), "'else' must be true"),
        (_with(("absolute", 0), {"above": "1e-2", "points": 30}), "PyYAML reads 1e-2"),
        (_with(("absolute", 0), {"above": 0.9, "points": "many"}), "must be an integer"),
        (_with(("verdicts", "auto"), 40), r"verdicts.auto \(40\) must be greater"),
        (
            _with(("stability", "max_cv_std"), -0.1),
            r"stability\.max_cv_std: must be greater than or",
        ),
        (_with(("stability",), 0.02), "stability must be a mapping"),
        ([1, 2], "must be a mapping"),
        (_with(("evidence",), "lower"), r"evidence: must be 'lower_bound' or 'point', got 'lower'"),
        (_with(("evidence",), None), r"evidence: must be 'lower_bound' or 'point', got None"),
        (_with(("gate",), True), "gate: must be a mapping"),
        (
            _with(("gate", "floor"), 0.6),
            r"gate\.floor: unknown key \(known keys: min_roc_auc_lower, accuracy_tolerance",
        ),
        (_with(("gate", "min_roc_auc_lower"), 0.4), r"gate\.min_roc_auc_lower: .* equal to 0\.5"),
        (_with(("gate", "min_roc_auc_lower"), 1.0), r"gate\.min_roc_auc_lower: .* less than 1"),
        (_with(("gate", "min_roc_auc_lower"), "0.6"), r"gate\.min_roc_auc_lower: must be a number"),
        (_with(("gate", "accuracy_tolerance"), -0.01), r"gate\.accuracy_tolerance: .* equal to 0"),
        (_with(("gate", "accuracy_tolerance"), math.nan), r"gate\.accuracy_tolerance: .*finite"),
        (_with(("gate", "enabled"), "no"), r"gate\.enabled: must be true or false"),
    ],
)
def test_from_dict_rejects_bad_tables_with_a_clear_message(data: object, message: str) -> None:
    with pytest.raises(ValueError, match=message) as info:
        ScoreTable.from_dict(data)  # type: ignore[arg-type]
    assert isinstance(info.value, ConfigError)  # the CLI prints it on one line


def test_band_and_table_validate_on_direct_construction() -> None:
    with pytest.raises(ValueError, match=r"Input should be '>' or '>='"):
        Band(0.1, 10, "<")
    with pytest.raises(ValueError, match="decreasing threshold order"):
        ScoreTable(absolute=(Band(0.8, 20), Band(0.9, 30), Band(None, 10)))
    with pytest.raises(ValueError, match="Input should be a finite number"):
        Band(math.nan, 10)


def test_table_is_hashable_and_immutable() -> None:
    table = ScoreTable(absolute=[Band(0.9, 30), Band(None, 0)])  # type: ignore[arg-type]
    assert isinstance(table.absolute, tuple)
    hash(table)
    with pytest.raises(AttributeError):
        table.auto_at = 10  # type: ignore[misc]


# --- evidence: bands read on the interval ---------------------------------------------------------


def test_reason_texts_show_estimate_interval_what_was_read_rule_and_points() -> None:
    decision = decide(
        Evidence(0.012, -0.004, 0.028),
        Evidence(0.781, 0.759, 0.802),
        0.01,
        baseline_label="champion v3",
        gate=PASSING,
    )
    improvement, absolute = reason(decision, "improvement"), reason(decision, "absolute")
    assert improvement.text == (
        "ROC-AUC +0.0120 [-0.0040, +0.0280] vs champion v3: lower bound -0.0040 ≥ -0.005 → +5"
    )
    assert absolute.text == (
        "candidate ROC-AUC 0.7810 [0.7590, 0.8020]: lower bound 0.7590 ≤ 0.8 → +10"
    )
    assert (improvement.observed, improvement.rule) == (pytest.approx(-0.004), "≥ -0.005")
    assert absolute.observed == pytest.approx(0.759)
    assert decision.evidence == "lower_bound"


def test_point_reading_reads_the_estimate_and_says_so() -> None:
    decision = decide(
        Evidence(0.012, -0.004, 0.028),
        Evidence(0.781, 0.759, 0.802),
        0.01,
        ScoreTable(evidence="point"),
        baseline_label="champion v3",
        gate=PASSING,
    )
    improvement = reason(decision, "improvement")
    assert improvement.text == (
        "ROC-AUC +0.0120 [-0.0040, +0.0280] vs champion v3: estimate +0.0120 > 0.01 → +40"
    )
    assert improvement.observed == pytest.approx(0.012) and improvement.points == 40
    assert decision.evidence == "point" and decision.to_dict()["evidence"] == "point"


def test_noise_retrain_of_the_champion_is_not_auto_on_lower_bounds() -> None:
    # The numbers: +0.003 [-0.009, +0.015] on ~1,900 rows is noise, not an improvement.
    improvement = Evidence(0.003, -0.009, 0.015, 1900, "paired bootstrap")
    value = Evidence(0.78, 0.76, 0.80, 1900, "bootstrap")
    lower = decide(improvement, value, 0.01, gate=PASSING)
    assert (lower.score, lower.verdict) == (-10, "reject")  # -50 + 10 + 30
    point = decide(improvement, value, 0.01, ScoreTable(evidence="point"), gate=PASSING)
    # The literal table gives 20 + 10 + 30 = 60 here: manual, not auto (value 0.78 is not > 0.8).
    assert (point.score, point.verdict) == (60, "manual")


def test_noise_retrain_is_auto_on_point_reading_only() -> None:
    # Same noise, but a candidate above 0.8: the literal table deploys it, the evidence does not.
    improvement = Evidence(0.003, -0.009, 0.015, 1900)
    value = Evidence(0.82, 0.80, 0.84, 1900)
    point = decide(improvement, value, 0.01, ScoreTable(evidence="point"), gate=PASSING)
    assert (point.score, point.verdict) == (70, "auto")  # 20 + 20 + 30
    lower = decide(improvement, value, 0.01, gate=PASSING)
    assert lower.verdict != "auto"
    assert (lower.score, lower.verdict) == (-10, "reject")  # -50 + 10 (0.80 is not > 0.8) + 30


def test_really_better_candidate_is_auto() -> None:
    decision = decide(
        Evidence(0.035, 0.018, 0.052, 1900),
        Evidence(0.80, 0.78, 0.82, 1900),
        0.01,
        baseline_label="champion v3",
        gate=PASSING,
    )
    assert decision.gate_passed is True
    assert [points(decision, c) for c in ("improvement", "absolute", "stability")] == [40, 10, 30]
    assert (decision.score, decision.verdict) == (80, "auto")
    assert all(r.criterion != "guard" for r in decision.reasons)


def test_floats_are_point_evidence() -> None:
    as_float = decide(0.012, 0.781, 0.01, gate=PASSING)
    as_point = decide(Evidence.point(0.012), Evidence.point(0.781), 0.01, gate=PASSING)
    assert as_float == as_point
    assert "[" not in reason(as_float, "improvement").text  # no interval to show


# --- the guard on intervals ----------------------------------------------------------------------


LENIENT = ScoreTable(improvement=(Band(0.0, 40), Band(None, 40)))  # 40 points whatever happens


def test_guard_fires_when_the_whole_interval_is_below_zero() -> None:
    decision = decide(Evidence(-0.003, -0.006, -0.001), 0.95, 0.01, LENIENT, gate=PASSING)
    assert (decision.score, decision.verdict) == (100, "manual")
    guard = reason(decision, "guard")
    assert "estimate < 0 and upper bound < 0" in guard.text
    assert "[-0.0060, -0.0010]" in guard.text and "capped" in guard.text


def test_guard_on_upper_bound_alone_applies_when_reading_lower_bounds() -> None:
    # An estimate outside its interval (possible with some bootstrap intervals) that is not < 0.
    improvement = Evidence(0.0, -0.004, -0.001)
    decision = decide(improvement, 0.95, 0.01, LENIENT, gate=PASSING)
    assert decision.verdict == "manual"
    guard = reason(decision, "guard")
    assert guard.rule == "upper bound < 0" and guard.observed == pytest.approx(-0.001)
    point = ScoreTable(improvement=LENIENT.improvement, evidence="point")
    assert decide(improvement, 0.95, 0.01, point, gate=PASSING).verdict == "auto"


# --- the gate: no skill, no deployment -----------------------------------------------------------


NO_SKILL = GateInputs(
    roc_auc=Evidence(0.52, 0.49, 0.55, 1900), accuracy=0.71, majority_share=0.70, n=1900
)


def test_no_skill_candidate_is_rejected_by_the_gate_whatever_its_points() -> None:
    # First deployment: vs the majority baseline (ROC-AUC 0.5), +0.02 reads as 40 points.
    args = (Evidence(0.02, -0.01, 0.05, 1900), Evidence(0.52, 0.49, 0.55, 1900), 0.01)
    point = ScoreTable(evidence="point")
    without_gate = decide(*args, point, baseline_label="majority-class baseline")
    assert without_gate.score == 80 and point.verdict_for(80) == "auto"
    decision = decide(*args, point, baseline_label="majority-class baseline", gate=NO_SKILL)
    assert (decision.score, decision.verdict, decision.gate_passed) == (80, "reject", False)
    no_skill, majority = gate_texts(decision)
    assert no_skill == (
        'gate "no skill": ROC-AUC lower bound 0.4900 ≤ 0.55 '
        "(estimate 0.5200 [0.4900, 0.5500], n=1,900): reject"
    )
    assert majority.endswith(": passed")
    assert all(r.points == 0 for r in decision.reasons if r.criterion == "gate")
    assert all(r.criterion != "guard" for r in decision.reasons)
    assert decide(*args, gate=NO_SKILL).verdict == "reject"  # and on lower bounds


def test_labels_below_the_majority_answer_are_rejected_with_the_gate_named() -> None:
    below = GateInputs(Evidence(0.80, 0.78, 0.82), accuracy=0.699, majority_share=0.705, n=1900)
    decision = decide(Evidence(0.035, 0.018, 0.052), Evidence(0.95, 0.93, 0.97), 0.01, gate=below)
    assert decision.score == 100
    assert (decision.verdict, decision.gate_passed) == ("reject", False)
    no_skill, majority = gate_texts(decision)
    assert no_skill.endswith(": passed")
    assert majority == (
        'gate "labels beat the majority answer": accuracy 0.6990 < majority share 0.7050 - 0.005 '
        "(n=1,900): reject"
    )
    assert "reject" in decision.to_dict()["reasons"][1]["text"]


@pytest.mark.parametrize(
    ("accuracy", "passed"),
    [(0.705, True), (0.700, True), (0.6999, False)],  # tolerance 0.005 below 0.705
)
def test_majority_gate_tolerance_boundary(accuracy: float, passed: bool) -> None:
    inputs = GateInputs(Evidence(0.80, 0.78, 0.82), accuracy, majority_share=0.705, n=1900)
    decision = decide(0.02, 0.95, 0.01, gate=inputs)
    assert decision.gate_passed is passed
    assert decision.verdict == ("auto" if passed else "reject")


@pytest.mark.parametrize(
    ("low", "floor", "passed"),
    [(0.5501, 0.55, True), (0.55, 0.55, False), (0.58, 0.6, False), (0.61, 0.6, True)],
)
def test_no_skill_floor_is_strict_and_configurable(low: float, floor: float, passed: bool) -> None:
    inputs = GateInputs(Evidence(0.65, low, 0.7), accuracy=0.75, majority_share=0.7, n=500)
    table = ScoreTable(gate=Gate(min_roc_auc_lower=floor))
    assert decide(0.02, 0.95, 0.01, table, gate=inputs).gate_passed is passed


def test_passing_gate_is_reported_with_its_numbers() -> None:
    decision = decide(0.02, 0.95, 0.01, gate=PASSING)
    assert decision.gate_passed is True and decision.verdict == "auto"
    assert gate_texts(decision) == [
        'gate "no skill": ROC-AUC lower bound 0.7800 > 0.55 '
        "(estimate 0.8000 [0.7800, 0.8200], n=1,900): passed",
        'gate "labels beat the majority answer": accuracy 0.7500 ≥ majority share 0.7000 - 0.005 '
        "(n=1,900): passed",
    ]
    assert [r.observed for r in decision.reasons[:2]] == [pytest.approx(0.78), 0.75]


def test_gate_disabled_in_config_lets_the_points_decide() -> None:
    table = ScoreTable.from_dict({"evidence": "point", "gate": {"enabled": False}})
    args = (Evidence(0.02, -0.01, 0.05), Evidence(0.52, 0.49, 0.55), 0.01)
    decision = decide(*args, table, gate=NO_SKILL)
    assert (decision.score, decision.verdict, decision.gate_passed) == (80, "auto", None)
    (text,) = gate_texts(decision)
    assert "disabled" in text and "gate.enabled: false" in text
    assert decide(*args, table).verdict == "auto"  # no inputs needed either


def test_without_gate_inputs_the_verdict_is_never_auto() -> None:
    decision = decide(0.02, 0.95, 0.01)
    assert (decision.score, decision.verdict, decision.gate_passed) == (100, "manual", None)
    (text,) = gate_texts(decision)
    assert "not evaluated" in text and "no evidence" in text
    assert "capped from auto to manual although the score is 100" in text
    # Verdicts below auto are unchanged, and say the gate was not evaluated without a cap.
    manual, rejected = decide(0.0, 0.85, 0.01), decide(-0.01, 0.95, 0.01)
    assert (manual.score, manual.verdict) == (55, "manual")
    assert (rejected.score, rejected.verdict) == (10, "reject")
    assert "capped" not in gate_texts(manual)[0]


# --- evidence and gate inputs as data ------------------------------------------------------------


def test_evidence_round_trips_and_ignores_extra_keys() -> None:
    ev = Evidence(0.012, -0.004, 0.028, 1900, "paired bootstrap")
    assert Evidence.from_dict(ev.to_dict()) == ev
    assert Evidence.from_dict(json.loads(json.dumps(ev.to_dict()))) == ev
    assert Evidence.from_dict({"estimate": 0.8, "low": 0.7, "high": 0.9, "level": 0.95}) == (
        Evidence(0.8, 0.7, 0.9)
    )
    assert Evidence.point(0.8) == Evidence(0.8, 0.8, 0.8)
    import numpy as np

    assert Evidence.point(np.float64(0.8)).to_dict()["estimate"] == 0.8
    as_mapping = {"estimate": 0.02, "low": 0.015, "high": 0.03}  # a scrap read back from JSON
    assert decide(as_mapping, 0.95, 0.01, gate=PASSING).score == 100  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"estimate": 0.8, "low": 0.7}, "evidence high: missing"),
        ({"estimate": 0.8, "low": None, "high": 0.9}, "evidence low: must be a number"),
        ({"estimate": 0.8, "low": 0.7, "high": 0.9, "n": 1.5}, "evidence n: must be an integer"),
        ([0.8, 0.7, 0.9], "must be a mapping"),
    ],
)
def test_evidence_from_dict_rejects_bad_input(data: object, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        Evidence.from_dict(data)  # type: ignore[arg-type]


@pytest.mark.parametrize("name", ["improvement", "value"])
@pytest.mark.parametrize("field_name", ["estimate", "low", "high"])
def test_non_finite_evidence_raises_naming_the_field(name: str, field_name: str) -> None:
    ev = {"estimate": 0.5, "low": 0.4, "high": 0.6, field_name: math.nan}
    args = {"improvement": 0.02, "value": 0.95, "cv_std": 0.01, name: Evidence(**ev)}
    with pytest.raises(ValueError, match=rf"{name}\.{field_name} is nan"):
        decide(**args)


def test_inverted_interval_raises() -> None:
    with pytest.raises(ValueError, match="improvement: interval low 0.03 is above high 0.01"):
        decide(Evidence(0.02, 0.03, 0.01), 0.95, 0.01)


@pytest.mark.parametrize(
    ("inputs", "message"),
    [
        (GateInputs(Evidence(0.8, math.nan, 0.9), 0.75, 0.7, 100), r"gate\.roc_auc\.low is nan"),
        (GateInputs(Evidence(0.8, 0.7, 1.2), 0.75, 0.7, 100), r"gate\.roc_auc\.high .*\[0, 1\]"),
        (GateInputs(Evidence.point(0.8), math.inf, 0.7, 100), r"gate\.accuracy is inf"),
        (GateInputs(Evidence.point(0.8), 0.75, 70.0, 100), r"gate\.majority_share .*\[0, 1\]"),
        (GateInputs(Evidence.point(0.8), 0.75, 0.7, -1), r"gate\.n must be >= 0"),
        (GateInputs(Evidence.point(0.8), 0.75, 0.7, 1.5), r"gate\.n must be an integer"),  # type: ignore[arg-type]
    ],
)
def test_bad_gate_inputs_raise(inputs: GateInputs, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        decide(0.02, 0.95, 0.01, gate=inputs)


def test_gate_settings_validate_on_direct_construction() -> None:
    with pytest.raises(ValueError, match=r"min_roc_auc_lower\s+Input should be greater than or"):
        Gate(min_roc_auc_lower=0.45)
    with pytest.raises(ValueError, match=r"accuracy_tolerance\s+Input should be greater than or"):
        Gate(accuracy_tolerance=-0.001)
    with pytest.raises(ValueError, match=r"evidence\s+Input should be 'lower_bound' or 'point'"):
        ScoreTable(evidence="upper_bound")
    assert Gate(min_roc_auc_lower=0.5).min_roc_auc_lower == 0.5  # inclusive lower end
