"""The policy backtest on small generated data: batches, decisions, noise candidates, counts."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from lib import score_table
from lib.pipeline import backtest, backtest_results, data, synth

FAST = {"families": ("logistic_regression",), "cv_folds": 2, "features": ()}
# A table that promotes almost anything (no gate, low bars): to exercise the paths after a
# promotion (the reseeded twin, production switching), never to judge the real policy.
LENIENT = {
    "gate": {"enabled": False},
    "improvement": [{"above": -1.0, "points": 40}, {"else": True, "points": 40}],
    "verdicts": {"auto": 10, "manual": 5},
}


@pytest.fixture(scope="module")
def apps() -> pd.DataFrame:
    return data.parse_records(synth.generate_apps(n=700, seed=3), source="synth").apps


@pytest.fixture(scope="module")
def batches(apps: pd.DataFrame) -> backtest.TimeBatches:
    return backtest.time_batches(apps, n_batches=3, initial_share=0.4)


@pytest.fixture(scope="module")
def result(batches: backtest.TimeBatches) -> backtest_results.BacktestResult:
    return backtest.run_backtest(batches, backtest_results.BacktestSettings(**FAST))


@pytest.fixture(scope="module")
def lenient() -> backtest_results.BacktestResult:
    # more apps than above: the step-0 model must beat the majority answer on the holdout,
    # otherwise the guard (never auto when worse than production) keeps it out
    apps = data.parse_records(synth.generate_apps(n=1500, seed=3), source="synth").apps
    two = backtest.time_batches(apps, n_batches=2, initial_share=0.5)
    table = score_table.ScoreTable.from_dict(LENIENT)
    return backtest.run_backtest(two, backtest_results.BacktestSettings(**FAST, table=table))


def test_batches_are_disjoint_consecutive_and_in_time_order(batches: backtest.TimeBatches) -> None:
    parts = [batches.initial, *batches.batches]
    joined = np.concatenate(parts)
    assert np.array_equal(joined, np.arange(len(batches.data.y)))  # disjoint, nothing dropped
    for earlier, later in zip(parts, parts[1:], strict=False):
        assert batches.updated.iloc[earlier].max() <= batches.updated.iloc[later].min()
    assert batches.updated.is_monotonic_increasing
    assert len(batches.initial) == round(0.4 * len(batches.data.y))
    assert batches.data.keys.is_unique  # one row per app
    assert np.array_equal(batches.seen(1), np.concatenate([batches.initial, batches.batches[0]]))


def test_time_batches_refuses_impossible_splits(apps: pd.DataFrame) -> None:
    with pytest.raises(ValueError, match="initial_share"):
        backtest.time_batches(apps, 3, 1.0)
    with pytest.raises(ValueError, match="n_batches"):
        backtest.time_batches(apps, 0, 0.4)


@pytest.mark.component
def test_permuted_target_candidate_is_never_auto(result: backtest_results.BacktestResult) -> None:
    permuted = [r for r in result.noise if r.kind == "permuted"]
    assert len(permuted) == len(result.steps)  # one at every step
    assert all(r.verdict != "auto" for r in permuted)


@pytest.mark.component
def test_strategies_are_scored_on_the_same_rows(
    result: backtest_results.BacktestResult, batches: backtest.TimeBatches
) -> None:
    y = batches.data.y.to_numpy()
    for step, batch_idx in zip(result.steps, batches.batches, strict=True):
        assert np.array_equal(step.batch_idx, batch_idx)
        truth = y[batch_idx]
        for strategy in backtest_results.STRATEGIES:
            labels = step.served[strategy]
            assert len(labels) == len(batch_idx)
            assert step.accuracy[strategy] == pytest.approx(np.mean(labels == truth))
        share = max(truth.mean(), 1 - truth.mean())
        assert step.accuracy["majority_share"] == pytest.approx(share)


@pytest.mark.component
def test_summary_counts_add_up(result: backtest_results.BacktestResult) -> None:
    summary = result.summary()
    steps = len(result.steps)
    assert summary["steps"] == steps == 3
    assert sum(summary["verdicts"].values()) == steps
    assert sum(sum(v.values()) for v in summary["outcomes"].values()) == steps
    for kind, counts in summary["noise"].items():
        assert counts["auto"] + counts["manual"] + counts["reject"] == counts["runs"]
        assert counts["runs"] == sum(r.kind == kind for r in result.noise)
    table = result.table()
    assert len(table) == steps
    assert summary["promoted_worse"] == int(table["promoted worse"].sum())
    assert summary["rejected_better"] == int(table["rejected better"].sum())


@pytest.mark.component
def test_production_follows_the_verdicts(lenient: backtest_results.BacktestResult) -> None:
    steps = lenient.steps
    assert steps[0].verdict == "auto"  # the lenient table promotes the first model
    # "never retrain" keeps the step-0 model whatever the policy does
    assert np.array_equal(steps[0].served["never"], steps[0].served["policy"])
    previous = "majority answer"
    for step in steps:
        assert step.reference == previous  # compared with production before the decision
        if step.verdict == "auto":
            assert step.production == f"model of step {step.step}"
            assert np.array_equal(step.served["policy"], step.served["always"])
        else:
            assert step.production == previous
        previous = step.production
    # the reseeded twin needs a champion: none at step 0, one at every later step
    reseeded = [r.step for r in lenient.noise if r.kind == "reseeded"]
    assert reseeded == [s.step for s in steps[1:]]


def test_manual_counts_as_not_deployed() -> None:
    step = backtest_results.Step(
        step=0,
        batch_first="",
        batch_last="",
        seen_rows=0,
        holdout_rows=0,
        batch_rows=0,
        holdout_seen_by_reference=0,
        candidate="x",
        reference="majority answer",
        verdict="manual",
        score=60,
        improvement={},
        future=None,
        truth="better",
        production="majority answer",
        accuracy={},
        roc_auc={},
    )
    assert not step.deployed and step.rejected_better and not step.promoted_worse


def test_judge_on_batch_needs_the_interval_to_exclude_zero() -> None:
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 400)
    good = np.clip(y * 0.6 + rng.uniform(0, 0.4, 400), 0, 1)
    noise = rng.uniform(0, 1, 400)
    labels = lambda p: (p >= 0.5).astype(int)  # noqa: E731
    assert backtest.judge_on_batch(y, (good, labels(good)), (noise, labels(noise)))[0] == "better"
    assert backtest.judge_on_batch(y, (noise, labels(noise)), (good, labels(good)))[0] == "worse"
    verdict, diff = backtest.judge_on_batch(y, (good, labels(good)), (good, labels(good)))
    assert verdict == "no real difference" and diff["estimate"] == 0
    one_class = np.ones(10, dtype=int)
    assert backtest.judge_on_batch(
        one_class, (good[:10], labels(good[:10])), (noise[:10], labels(noise[:10]))
    ) == ("undetermined", None)


@pytest.mark.e2e
def test_runner_backtest_command_renders_the_notebook_and_writes_json(project) -> None:
    """`runner.py backtest`: notebook 07 through papermill; registry and models/ untouched."""
    import json
    import subprocess
    import sys

    csv = synth.write_default_dataset(project / "data" / "apps.csv", n=1500, seed=3)
    done = subprocess.run(
        [sys.executable, "runner.py", "backtest", "--data", str(csv), "--batches", "2",
         "--cv-folds", "2", "--no-noise"],
        cwd=project, capture_output=True, text=True, timeout=900,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    (folder,) = [p for p in (project / "reports").iterdir() if p.name.startswith("backtest-")]
    record = json.loads((folder / "backtest.json").read_text())
    assert record["status"] == "ok"
    assert len(record["backtest_table"]) == 2  # one step per batch, the first champion at step 0
    assert (folder / "07_backtest.html").exists()
    assert not (project / "mlflow.db").exists() and not any((project / "models").iterdir())
