"""The evidence 03 compare hands to 04 decide, judged by the real score table (no kernel)."""

from __future__ import annotations

import numpy as np
import pytest

from lib import score_table
from lib.pipeline import comparison, scoring, uncertainty


def _decide(y, cand, ref, metric="roc_auc") -> scoring.Decision:
    ev = comparison.compare_predictions(y, cand, ref, metric)
    g = ev["gate"]
    gate = score_table.GateInputs(
        score_table.Evidence.from_dict(g["roc_auc"]), g["accuracy"], g["majority_share"], g["n"]
    )
    return scoring.decide(
        score_table.Evidence.from_dict(ev["improvement_interval"]),
        score_table.Evidence.from_dict(ev["candidate_interval"]),
        0.01,
        metric=metric,
        gate=gate,
    )


def _skilled(n: int, seed: int, noise: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    signal = rng.normal(size=n)
    y = (signal + rng.normal(scale=noise, size=n) > -0.6).astype(int)  # about 70% positives
    proba = 1 / (1 + np.exp(-(signal + 0.6) * 1.5))
    return y, proba


def test_a_candidate_identical_to_the_champion_is_not_auto() -> None:
    y, proba = _skilled(1900, 0)
    labels = (proba >= 0.5).astype(int)
    ev = comparison.compare_predictions(y, (proba, labels), (proba, labels), "roc_auc")
    diff = ev["improvement_interval"]
    assert diff["estimate"] == diff["low"] == diff["high"] == 0.0
    decision = _decide(y, (proba, labels), (proba, labels))
    assert decision.gate_passed is True and decision.verdict != "auto"


def test_a_model_with_no_skill_is_rejected_by_the_gate_against_the_baseline() -> None:
    rng = np.random.default_rng(1)
    y = (rng.random(1900) < 0.7).astype(int)
    noise = rng.random(1900)
    baseline = uncertainty.majority_baseline(y, len(y))
    decision = _decide(y, (noise, (noise >= 0.3).astype(int)), baseline)
    assert decision.verdict == "reject" and decision.gate_passed is False
    assert any(r.criterion == "gate" and "no skill" in r.text for r in decision.reasons)


@pytest.mark.parametrize("n", [40, 120])
def test_a_modest_model_on_too_few_rows_is_not_auto(n: int) -> None:
    """ROC-AUC about 0.6: wide intervals on a handful of rows, no automatic deployment; the same
    model on plenty of rows clears the gate and the table. (Strong evidence is evidence: a model
    at 0.9 may well earn `auto` on 120 rows.)"""

    def judged(rows: int) -> scoring.Decision:
        y, proba = _skilled(rows, 2, noise=3.0)
        labels = np.ones(rows, dtype=int)  # the majority answer: the gate's accuracy floor
        return _decide(y, (proba, labels), uncertainty.majority_baseline(y, rows))

    small = judged(n)
    assert small.verdict != "auto", [r.text for r in small.reasons]
    big = judged(5000)
    assert big.verdict == "auto", [r.text for r in big.reasons]
