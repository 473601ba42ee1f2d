"""The decision score table: every band, every boundary, the guard and the config shape."""

from __future__ import annotations

import copy
import json
import math

import pytest
import yaml

from lib.errors import ConfigError
from lib.scoring import (
    Band,
    Decision,
    Reason,
    ScoreTable,
    decide,
    default_table_dict,
)

# Inputs that land in a known band of the other two criteria, so one criterion varies at a time.
GOOD_VALUE = 0.95  # absolute: +30
STABLE = 0.01  # stability: +30
UNSTABLE = 0.05  # stability: 0


def points(decision: Decision, criterion: str) -> int:
    (reason,) = [r for r in decision.reasons if r.criterion == criterion]
    return reason.points


def reason(decision: Decision, criterion: str) -> Reason:
    (found,) = [r for r in decision.reasons if r.criterion == criterion]
    return found


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
    decision = decide(improvement, value, cv_std)
    assert decision.score == score
    assert decision.verdict == verdict
    assert decision.score == sum(r.points for r in decision.reasons)


@pytest.mark.parametrize(
    ("score", "verdict"),
    [(49, "reject"), (50, "manual"), (69, "manual"), (70, "auto")],
)
def test_verdict_boundaries(score: int, verdict: str) -> None:
    # Stability carries the whole score so that any total can be built: 0 + 0 + score.
    table = ScoreTable(
        improvement=(Band(None, 0),), absolute=(Band(None, 0),), stability_points=score
    )
    decision = decide(0.02, GOOD_VALUE, STABLE, table)
    assert decision.score == score
    assert decision.verdict == verdict


def test_verdict_thresholds_are_configurable() -> None:
    table = ScoreTable(auto_at=90, manual_at=60)
    assert decide(0.02, 0.95, 0.05, table).verdict == "manual"  # 70
    assert decide(0.02, 0.85, 0.05, table).verdict == "manual"  # 60
    assert decide(0.0, 0.85, 0.01, table).verdict == "reject"  # 55
    assert decide(0.02, 0.95, 0.01, table).verdict == "auto"  # 100


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
        decision = decide(improvement, value, cv)
        assert all(r.criterion != "guard" for r in decision.reasons), decision
    # A tiny negative from float noise (0.9 - 0.9000000000001) is "no change", not "worse".
    table = ScoreTable(auto_at=60, manual_at=50)
    assert decide(0.9 - 0.9000000000001, 0.95, 0.01, table).verdict == "auto"


def test_worse_candidate_can_still_be_rejected() -> None:
    lenient = ScoreTable(improvement=(Band(0.0, 40), Band(None, 40)), auto_at=200, manual_at=150)
    decision = decide(-0.003, 0.95, 0.01, lenient)
    assert decision.verdict == "reject"
    assert all(r.criterion != "guard" for r in decision.reasons)


# --- reasons -------------------------------------------------------------------------------------


def test_reasons_texts_mention_observed_values_rules_and_points() -> None:
    decision = decide(0.0123, 0.9123, 0.0157, baseline_label="champion v3")
    texts = {r.criterion: r.text for r in decision.reasons}
    assert [r.criterion for r in decision.reasons] == ["improvement", "absolute", "stability"]
    assert texts["improvement"] == "ROC-AUC improved by +0.0123 over champion v3 (> 0.01): +40"
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
    decision = decide(-0.003, 0.95, 0.01, ScoreTable(improvement=(Band(0.0, 40), Band(None, 40))))
    data = json.loads(json.dumps(decision.to_dict()))
    assert data["score"] == 100 and data["verdict"] == "manual"
    assert [r["criterion"] for r in data["reasons"]] == [
        "improvement",
        "absolute",
        "stability",
        "guard",
    ]
    assert set(data["reasons"][0]) == {"criterion", "observed", "rule", "points", "text"}


def test_accepts_numpy_like_numbers() -> None:
    np = pytest.importorskip("numpy")
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
    assert default_table_dict() == {
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
    }


def test_round_trip_through_dict_and_yaml() -> None:
    custom = ScoreTable(
        improvement=(Band(0.02, 50), Band(0.0, 25), Band(0.0, 0, ">="), Band(None, -100)),
        absolute=(Band(0.7, 25, ">="), Band(None, 0)),
        max_cv_std=0.03,
        stability_points=25,
        auto_at=75,
        manual_at=40,
    )
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
    d = copy.deepcopy(default_table_dict())
    target = d
    for key in path[:-1]:
        target = target[key]
    target[path[-1]] = value
    return d


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"improvment": []}, r"unknown key\(s\) 'improvment'.*improvement, absolute, stability"),
        (
            _with(("stability", "max_std"), 0.1),
            r"stability: unknown key\(s\) 'max_std'.*max_cv_std",
        ),
        (_with(("verdicts", "deploy"), 80), r"unknown key\(s\) 'deploy'.*auto, manual"),
        (
            _with(("improvement", 0), {"above": 0.01, "points": 40, "weight": 2}),
            r"improvement\[0\]: unknown key\(s\) 'weight'.*above, at_least, else, points",
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
        (_with(("absolute", 0), {"above": 0.9}), "missing 'points'"),
        (_with(("absolute", 2), {"else": False, "points": 10}), "'else' must be true"),
        (_with(("absolute", 0), {"above": "1e-2", "points": 30}), "PyYAML reads 1e-2"),
        (_with(("absolute", 0), {"above": 0.9, "points": "many"}), "must be an integer"),
        (_with(("verdicts", "auto"), 40), r"verdicts.auto \(40\) must be greater"),
        (_with(("stability", "max_cv_std"), -0.1), "max_cv_std must be a finite number >= 0"),
        (_with(("stability",), 0.02), "stability must be a mapping"),
        ([1, 2], "must be a mapping"),
    ],
)
def test_from_dict_rejects_bad_tables_with_a_clear_message(data: object, message: str) -> None:
    with pytest.raises(ValueError, match=message) as info:
        ScoreTable.from_dict(data)  # type: ignore[arg-type]
    assert isinstance(info.value, ConfigError)  # the CLI prints it on one line


def test_band_and_table_validate_on_direct_construction() -> None:
    with pytest.raises(ValueError, match="op must be one of"):
        Band(0.1, 10, "<")
    with pytest.raises(ValueError, match="decreasing threshold order"):
        ScoreTable(absolute=(Band(0.8, 20), Band(0.9, 30), Band(None, 10)))
    with pytest.raises(ValueError, match="finite number or None"):
        Band(math.nan, 10)


def test_table_is_hashable_and_immutable() -> None:
    table = ScoreTable(absolute=[Band(0.9, 30), Band(None, 0)])  # type: ignore[arg-type]
    assert isinstance(table.absolute, tuple)
    hash(table)
    with pytest.raises(AttributeError):
        table.auto_at = 10  # type: ignore[misc]
