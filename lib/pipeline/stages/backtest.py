"""07 backtest (`python runner.py backtest`): the decision policy replayed over time-ordered
batches of real data, and over noise candidates; nothing is registered or deployed."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from lib import score_table
from lib.pipeline import backtest, backtest_results, data, synth
from lib.pipeline.contracts import BacktestInputs, BacktestOutputs


@dataclass
class Source:
    origin: str  # what a reader is told the data is
    batches: backtest.TimeBatches


def load(inputs: BacktestInputs, root: Path) -> Source:
    """The real file when present, else the project's generated default data."""
    source = root / inputs.data_path
    origin = f"real data: {inputs.data_path}"
    if not source.exists():
        source = root / inputs.fallback_data_path
        generated = synth.ensure_dataset(source, n=inputs.synth_apps, seed=inputs.synth_seed)
        origin = (
            f"{inputs.data_path} not found: the generated default data "
            f"{inputs.fallback_data_path}" + (" (generated now)" if generated else "")
        )
    apps = data.read_apps(source).apps
    batches = backtest.time_batches(
        apps, inputs.n_batches, inputs.initial_share, inputs.target_threshold
    )
    return Source(origin, batches)


def batches_table(inputs: BacktestInputs, src: Source) -> pd.DataFrame:
    b = src.batches
    return pd.Series(
        {
            "data": src.origin,
            "rated apps, one row per app": len(b.data.y),
            "rated apps without a date (left out)": b.undated,
            f"share > {inputs.target_threshold}": round(float(b.data.y.mean()), 4),
            "initial data": f"{len(b.initial)} apps, {' to '.join(b.span(b.initial))}",
            **{
                f"batch {k}": f"{len(batch)} apps, {' to '.join(b.span(batch))}"
                for k, batch in enumerate(b.batches)
            },
        },
        name="time batches",
    ).to_frame()


def settings(inputs: BacktestInputs) -> backtest_results.BacktestSettings:
    return backtest_results.BacktestSettings(  # a family or a list of them, made tuples there
        families=inputs.family,
        cv_folds=inputs.cv_folds,
        seed=inputs.seed,
        test_size=inputs.test_size,
        features=inputs.features,
        calibration=inputs.calibration,
        objective=inputs.label_objective,
        costs=inputs.error_costs,
        metric=inputs.selection_metric,
        table=score_table.ScoreTable.from_dict(inputs.decision_table or None),
        noise=inputs.noise,
    )


def replay(inputs: BacktestInputs, src: Source) -> backtest_results.BacktestResult:
    return backtest.run_backtest(src.batches, settings(inputs))


def summary_table(result: backtest_results.BacktestResult) -> pd.DataFrame:
    s = result.summary()

    def verdicts(counts: dict) -> str:
        return " / ".join(str(counts[v]) for v in score_table.VERDICTS)

    return pd.Series(
        {
            "steps": s["steps"],
            "verdicts auto / manual / reject": verdicts(s["verdicts"]),
            "promoted a worse model": s["promoted_worse"],
            "rejected a better model (reject or manual)": s["rejected_better"],
            "promoted a better model": s["promoted_better"],
            **{f"noise {k}: auto / manual / reject": verdicts(c) for k, c in s["noise"].items()},
            **{f"mean accuracy, {k}": round(v, 4) for k, v in s["mean_accuracy"].items()},
            **{f"mean ROC-AUC, {k}": round(v, 4) for k, v in s["mean_roc_auc"].items()},
            "production at the end": s["final_production"],
            "seconds": s["seconds"],
        },
        name="backtest",
    ).to_frame()


def outputs(src: Source, result: backtest_results.BacktestResult) -> BacktestOutputs:
    return BacktestOutputs(
        backtest_data=src.origin,
        backtest_summary=result.summary(),
        backtest_table=result.table().to_dict(orient="records"),
    )


def run(inputs: BacktestInputs, root: Path) -> BacktestOutputs:
    src = load(inputs, root)
    return outputs(src, replay(inputs, src))
