"""03 compare: candidate and champion (or the majority baseline) on the same holdout rows, each
metric's difference with a paired 95% interval; the bounds go to MLflow."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from lib import registry
from lib.config import resolve_data
from lib.pipeline import comparison, data, training
from lib.pipeline.contracts import CompareInputs, CompareOutputs
from lib.settings import tracking_uri


@dataclass
class Compared:
    client: Any
    result: comparison.Comparison
    y_test: pd.Series


def candidate_version(client: Any, model_name: str, given: str | None) -> str:
    """The version to judge: as given, else the one behind the alias `candidate`."""
    version = given or registry.alias_version(client, model_name, "candidate")
    if version is None:
        raise LookupError(
            f"no version of {model_name} has the alias 'candidate', so there is no registered "
            "candidate to judge: 02 train registers one only with register_candidate=True (the "
            "runner passes it; run alone in Jupyter it trains and logs to MLflow, registering "
            "nothing)"
        )
    return str(version)


def compare(inputs: CompareInputs, root: Path) -> Compared:
    client = registry.connect(tracking_uri(inputs.tracking_uri, root), inputs.experiment)
    version = candidate_version(client, inputs.model_name, inputs.candidate_version)
    apps = data.read_apps(resolve_data(inputs.data_path, root)).apps
    labeled = training.labeled_data(apps, inputs.target_threshold)
    result = comparison.compare(
        client,
        inputs.model_name,
        version,
        labeled,
        inputs.test_size,
        inputs.seed,
        inputs.selection_metric,
    )
    if inputs.holdout_digest and inputs.holdout_digest != result.holdout_digest:
        raise ValueError(
            f"holdout differs from training's ({result.holdout_digest} != "
            f"{inputs.holdout_digest}): data_path, test_size and seed must be those of 02 train"
        )
    test_idx = training.holdout_split(labeled.keys, labeled.y, inputs.test_size, inputs.seed)[1]
    return Compared(client, result, labeled.y.iloc[test_idx])


def roc_inputs(compared: Compared) -> dict[str, Any]:
    result = compared.result
    curves = {f"candidate v{result.candidate_version}": result.candidate_proba}
    if result.reference_proba is not None:
        curves[result.reference_label] = result.reference_proba
    return curves


def _fmt(i: dict[str, Any], signed: bool = False) -> str:
    f = "+.4f" if signed else ".4f"
    return f"{i['estimate']:{f}} [{i['low']:{f}}, {i['high']:{f}}]"


def summary(inputs: CompareInputs, compared: Compared) -> pd.DataFrame:
    r, metric = compared.result, inputs.selection_metric
    return pd.Series(
        {
            "reference": r.reference_label,
            f"difference in {metric}": _fmt(r.improvement_interval, signed=True),
            f"candidate {metric}": _fmt(r.candidate_interval),
            "candidate ROC-AUC (no-skill gate)": _fmt(r.gate["roc_auc"]),
            "served-label accuracy": round(r.gate["accuracy"], 4),
            "majority share (always one answer)": round(r.gate["majority_share"], 4),
            f"CV {metric} mean ± std": f"{r.cv_mean:.4f} ± {r.cv_std:.4f}",
            "holdout rows": r.holdout_rows,
            "interval method": r.improvement_interval["method"],
        },
        name="comparison",
    ).to_frame()


def record(inputs: CompareInputs, compared: Compared) -> CompareOutputs:
    """Every interval's bounds as MLflow metrics of the candidate's run (and the parent run)."""
    client, r = compared.client, compared.result
    bounds = {
        f"compare_{m}_{part}": c["difference"][key]
        for m, c in r.intervals.items()
        for part, key in (("diff", "estimate"), ("diff_low", "low"), ("diff_high", "high"))
    }
    bounds.update(
        {
            f"compare_{m}_{part}": c["candidate"][part]
            for m, c in r.intervals.items()
            for part in ("low", "high")
        }
    )
    tags = {"compare.reference": r.reference_label, "compare.improvement": round(r.improvement, 6)}
    model_run = registry.version_run_id(client, inputs.model_name, r.candidate_version)
    registry.log_metrics_to_run(model_run, bounds)
    if inputs.parent_run_id:
        registry.tag_run(inputs.parent_run_id, tags)
        registry.log_metrics_to_run(inputs.parent_run_id, bounds)
    registry.set_version_tags(client, inputs.model_name, r.candidate_version, tags)
    detail = r.to_dict()
    return CompareOutputs(
        **{k: v for k, v in detail.items() if k in CompareOutputs.model_fields},
        champion_metrics=r.reference_metrics,
        stability={"cv_mean": r.cv_mean, "cv_std": r.cv_std},
        gate_inputs=r.gate,
        comparison=detail,
    )


def run(inputs: CompareInputs, root: Path) -> CompareOutputs:
    return record(inputs, compare(inputs, root))
