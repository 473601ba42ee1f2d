"""A policy backtest: replay the deployment decision over time-ordered batches of real apps.

The policy (gate + score table) is judged by what it would have done. Apps are ordered by
``last_updated``; the oldest share trains the first champion, the rest arrive in batches. At each
step a candidate trained on everything seen so far is decided on exactly as 03/04 do, and the next
batch (the future) says whether it really beat the champion: only when the paired 95% interval of
the ROC-AUC difference excludes 0. ``manual`` counts as not deployed. Noise candidates (shuffled
labels, the champion reseeded) check the policy's floor. Nothing here touches MLflow or models/.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import pandas as pd

from lib.errors import DataError
from lib.pipeline import comparison, scoring, training, uncertainty
from lib.pipeline.app_identity import latest_per_app
from lib.pipeline.backtest_results import (
    MAJORITY,
    STRATEGIES,
    BacktestResult,
    BacktestSettings,
    NoiseRun,
    Step,
)

log = logging.getLogger(__name__)

TRUTH_RESAMPLES = 2000


# --- batches --------------------------------------------------------------------------------


@dataclass
class TimeBatches:
    """Labeled apps in time order, cut into the initial training data and later batches.

    Every index is a position in ``data`` (ordered by ``updated``), so the data seen before
    batch k is a prefix of the rows.
    """

    data: training.LabeledData
    updated: pd.Series  # last_updated of each row, non-decreasing
    initial: np.ndarray
    batches: list[np.ndarray]
    undated: int = 0  # rated apps without a last_updated date: cannot be placed in time

    def seen(self, k: int) -> np.ndarray:
        """Rows known before batch k: the initial data and batches 0..k-1."""
        end = len(self.initial) + sum(len(b) for b in self.batches[:k])
        return np.arange(end)

    def span(self, idx: np.ndarray) -> tuple[str, str]:
        """First and last update date of some rows, as ISO dates."""
        dates = self.updated.iloc[idx]
        return dates.min().date().isoformat(), dates.max().date().isoformat()


def time_batches(
    apps: pd.DataFrame, n_batches: int, initial_share: float, target_threshold: float = 4.0
) -> TimeBatches:
    """Order rated apps (one row per app) by last update; split off the initial share, then
    ``n_batches`` consecutive batches of the rest: the order in which a pipeline would meet them.

    Ties on the date are broken by app key, so the same file always gives the same batches.
    """
    if not 0.0 < initial_share < 1.0:
        raise ValueError(f"initial_share must be strictly between 0 and 1, got {initial_share!r}")
    if int(n_batches) != n_batches or n_batches < 1:
        raise ValueError(f"n_batches must be an integer >= 1, got {n_batches!r}")
    unique = latest_per_app(apps)
    rated = unique[unique["rating"].notna()]
    dated = rated[rated["last_updated"].notna()]
    undated = len(rated) - len(dated)
    if undated:
        log.warning("%d rated apps have no last_updated date and are left out", undated)
    ordered = dated.sort_values(["last_updated", "app_key"], kind="stable").reset_index(drop=True)
    data = training.labeled_data(ordered, target_threshold)  # keeps the order, one row per app
    n = len(data.y)
    n_initial = int(round(n * initial_share))
    if n_initial < 50 or n - n_initial < n_batches:
        raise DataError(
            f"{n} rated apps cannot make an initial share of {initial_share} (at least 50 apps) "
            f"and {n_batches} non-empty batches; lower n_batches or change initial_share"
        )
    batches = [np.asarray(b) for b in np.array_split(np.arange(n_initial, n), n_batches)]
    log.info(
        "time batches: %d initial apps, then %s (in order of last update)",
        n_initial,
        [len(b) for b in batches],
    )
    updated = pd.Series(pd.to_datetime(ordered["last_updated"]).to_numpy(), name="last_updated")
    return TimeBatches(data, updated, np.arange(n_initial), batches, undated)


# --- the replay -----------------------------------------------------------------------------


@dataclass
class _Served:
    """What production answers: a trained model, or the majority answer when none was kept."""

    step: int | None  # the step whose candidate this is; None: majority answer
    result: training.CandidateResult | None = None
    train_idx: np.ndarray | None = None  # rows the model was trained on (for the reseeded twin)

    @property
    def label(self) -> str:
        return MAJORITY if self.result is None else f"model of step {self.step}"

    def answers(self, X: pd.DataFrame, y_prior: pd.Series) -> tuple[np.ndarray, np.ndarray]:
        """(probability of class 1, served label); the majority answer follows ``y_prior``."""
        if self.result is None:
            return uncertainty.majority_baseline(y_prior, len(X))
        model = self.result.model
        return model.predict_proba(X)[:, 1], np.asarray(model.predict(X)).astype(int)


def policy_decision(
    y_holdout: Any,
    result: training.CandidateResult,
    reference: tuple[np.ndarray, np.ndarray],
    reference_label: str,
    settings: BacktestSettings,
) -> tuple[scoring.Decision, dict[str, Any]]:
    """The pipeline's decision on a trained candidate, exactly as 03 compare + 04 decide make it.

    Returns the decision and the selection metric's difference with its interval.
    """
    candidate = (result.proba, np.asarray(result.labels).astype(int))
    evidence = comparison.compare_predictions(y_holdout, candidate, reference, settings.metric)
    decision = scoring.decide(
        evidence["improvement_interval"],
        evidence["candidate_interval"],
        result.cv_std(settings.metric),
        settings.table,
        metric=settings.metric,
        baseline_label=reference_label,
        gate=evidence["gate"],
    )
    return decision, evidence["improvement_interval"]


def judge_on_batch(
    y: Any,
    candidate: tuple[np.ndarray, np.ndarray],
    champion: tuple[np.ndarray, np.ndarray],
    seed: int = 0,
) -> tuple[str, dict[str, Any] | None]:
    """Whether the candidate really was better on rows nobody trained on.

    Better (worse) only when the paired 95% bootstrap interval of the ROC-AUC difference is
    above (below) 0; otherwise "no real difference". A batch of one class ranks nothing:
    "undetermined".
    """
    y = np.asarray(y).astype(int)
    if len(y) == 0 or y.min() == y.max():
        return "undetermined", None
    details = uncertainty.paired_comparison(
        y, *candidate, *champion, metrics=("roc_auc",), resamples=TRUTH_RESAMPLES, seed=seed
    )
    diff = details["roc_auc"].difference.to_dict()
    if diff["low"] > 0:
        return "better", diff
    if diff["high"] < 0:
        return "worse", diff
    return "no real difference", diff


def _accuracy(y: np.ndarray, labels: np.ndarray) -> float:
    return float(np.mean(np.asarray(labels).astype(int) == y)) if len(y) else float("nan")


def _roc_auc(y: np.ndarray, proba: np.ndarray) -> float:
    if len(y) == 0 or y.min() == y.max():
        return float("nan")
    return uncertainty.metric_value("roc_auc", y, proba, (np.asarray(proba) >= 0.5).astype(int))


def run_backtest(batches: TimeBatches, settings: BacktestSettings | None = None) -> BacktestResult:
    """Replay the policy over the batches; see the module docstring for what is measured.

    Step 0 decides on the first champion (against the majority answer); step k trains on the
    initial data and batches < k and is judged on batch k. "always" serves each step's candidate,
    "never" keeps the model trained at step 0 whatever the policy said.
    """
    settings = settings or BacktestSettings()
    started = time.perf_counter()
    data = batches.data
    y_all = data.y.to_numpy().astype(int)
    production = _Served(None)
    first: _Served | None = None
    steps: list[Step] = []
    noise: list[NoiseRun] = []
    for k, batch_idx in enumerate(batches.batches):
        step_started = time.perf_counter()
        seen = batches.seen(k)
        train_idx, test_idx = training.holdout_split(
            data.keys.iloc[seen], data.y.iloc[seen], settings.test_size, settings.seed
        )
        train_idx, test_idx = seen[train_idx], seen[test_idx]
        y_train, y_hold = data.y.iloc[train_idx], y_all[test_idx]
        X_hold, X_batch, y_batch = data.X.iloc[test_idx], data.X.iloc[batch_idx], y_all[batch_idx]
        log.info("step %d: %d rows seen, judged on %d later rows", k, len(seen), len(batch_idx))

        candidate = _train(settings.families, data, train_idx, test_idx, settings)
        ref_hold = production.answers(X_hold, y_train)
        decision, improvement = policy_decision(
            y_hold, candidate, ref_hold, production.label, settings
        )
        new = _Served(k, candidate, train_idx)
        if first is None:
            first = new

        runs = _noise_runs(k, data, train_idx, test_idx, production, ref_hold, settings, candidate)
        noise.extend(runs)

        before = production.answers(X_batch, y_train)
        cand_batch = new.answers(X_batch, y_train)
        truth, future = judge_on_batch(y_batch, cand_batch, before, settings.seed)
        reference_label = production.label
        reference_rows = production.train_idx if production.train_idx is not None else []
        if decision.verdict == "auto":
            production = new
        served = {
            "policy": production.answers(X_batch, y_train),
            "always": cand_batch,
            "never": first.answers(X_batch, y_train),
        }
        first_row, last_row = batches.span(batch_idx)
        steps.append(
            Step(
                step=k, batch_first=first_row, batch_last=last_row, seen_rows=len(seen),
                holdout_rows=len(test_idx), batch_rows=len(batch_idx),
                holdout_seen_by_reference=len(np.intersect1d(test_idx, reference_rows)),
                candidate=candidate.name, reference=reference_label, verdict=decision.verdict,
                score=int(decision.score), improvement=improvement, future=future, truth=truth,
                production=production.label, noise={run.kind: run.verdict for run in runs},
                seconds=time.perf_counter() - step_started, batch_idx=np.asarray(batch_idx),
                **_batch_scores(y_batch, served),
            )
        )  # fmt: skip
        log.info(
            "step %d: %s (score %d) vs %s; on the next batch the candidate is %s (%.0fs)",
            k, decision.verdict, decision.score, reference_label, truth, steps[-1].seconds,
        )  # fmt: skip
    elapsed = time.perf_counter() - started
    return BacktestResult(settings, steps, noise, elapsed, len(batches.initial))


def _batch_scores(y_batch: np.ndarray, served: dict[str, tuple[Any, Any]]) -> dict[str, Any]:
    """Each strategy's accuracy and ROC-AUC on the batch it served, and its served labels."""
    share = float(max(y_batch.mean(), 1.0 - y_batch.mean())) if len(y_batch) else np.nan
    return {
        "accuracy": {
            **{s: _accuracy(y_batch, served[s][1]) for s in STRATEGIES},
            "majority_share": share,
        },
        "roc_auc": {s: _roc_auc(y_batch, served[s][0]) for s in STRATEGIES},
        "served": {s: np.asarray(served[s][1]).astype(int) for s in STRATEGIES},
    }


def _train(
    families: Sequence[str],
    data: training.LabeledData,
    train_idx: np.ndarray,
    test_idx: np.ndarray,
    settings: BacktestSettings,
) -> training.CandidateResult:
    """As 02 train: every family, the best on the holdout's selection metric."""
    results = [training.train_candidate(n, data, train_idx, test_idx, settings) for n in families]
    return training.select_best(results, settings.metric)


def _noise_runs(
    k: int,
    data: training.LabeledData,
    train_idx: np.ndarray,
    test_idx: np.ndarray,
    production: _Served,
    reference: tuple[np.ndarray, np.ndarray],
    settings: BacktestSettings,
    candidate: training.CandidateResult,
) -> list[NoiseRun]:
    """Two candidates that must not win (none without ``settings.noise``): shuffled training
    labels in the candidate's family, and the champion reseeded.

    Both are judged like any candidate: against production, on the step's real holdout labels.
    The reseeded twin needs a champion; while production is the majority answer it is skipped.
    """
    if not settings.noise:
        return []
    y_hold = data.y.to_numpy().astype(int)[test_idx]
    rng = np.random.default_rng(settings.seed + 1000 + k)
    y_perm = data.y.copy()
    y_perm.iloc[train_idx] = rng.permutation(data.y.iloc[train_idx].to_numpy())
    permuted = training.LabeledData(data.X, y_perm, data.keys, 0, 0)
    runs: list[tuple[str, training.CandidateResult]] = [
        ("permuted", _train([candidate.name], permuted, train_idx, test_idx, settings))
    ]
    if production.result is not None and production.train_idx is not None:
        reseeded = replace(settings, seed=settings.seed + 1 + k)
        twin = _train([production.result.name], data, production.train_idx, test_idx, reseeded)
        runs.append(("reseeded", twin))
    out = []
    for kind, result in runs:
        decision, improvement = policy_decision(
            y_hold, result, reference, production.label, settings
        )
        log.info("step %d noise %s: %s (score %d)", k, kind, decision.verdict, decision.score)
        out.append(
            NoiseRun(
                kind, k, decision.verdict, int(decision.score), decision.gate_passed, improvement
            )
        )
    return out
