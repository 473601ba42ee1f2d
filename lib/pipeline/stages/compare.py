"""03 compare: candidate and champion (or the majority baseline) on the same holdout rows, each
metric's difference with a paired 95% interval; the bounds go to MLflow (`log_to_mlflow`, the
runner's: a notebook run alone writes nothing there).

The candidate is judged on the data it was trained on: the digest of the data read here is checked
against the one 02 train recorded on the version (`data_digest`); other data is said loudly (a
warning block, "not comparable to the recorded training data" in the outputs), never silently.
"""

from __future__ import annotations

import html
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from lib import registry
from lib.config import resolve_data
from lib.pipeline import comparison, data, training
from lib.pipeline.contracts import CompareInputs, CompareOutputs
from lib.settings import tracking_uri

log = logging.getLogger(__name__)

NOT_COMPARABLE = "not comparable to the recorded training data"


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
    checked = data_check(client, inputs.model_name, version, labeled)
    if not checked["comparable"]:
        show_warning(checked["note"])
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
    result.data_check = checked
    test_idx = training.holdout_split(labeled.keys, labeled.y, inputs.test_size, inputs.seed)[1]
    return Compared(client, result, labeled.y.iloc[test_idx])


def trained_digest(client: Any, model_name: str, version: str) -> str | None:
    """The digest of the data the version was trained on, as 02 train recorded it: the version's
    tag, else its training run's parent parameter; None when nothing was recorded."""
    info = registry.model_version(client, model_name, version)
    digest = (info.tags or {}).get("data_digest") if info is not None else None
    if digest:
        return str(digest)
    run_id = registry.version_run_id(client, model_name, version)
    if run_id is None:
        return None
    with registry.registry_call(client, f"reading the training run of v{version}"):
        run = client.get_run(run_id)
        parent = run.data.tags.get("mlflow.parentRunId")
        params = client.get_run(parent).data.params if parent else run.data.params
    return params.get("data_digest")


def data_check(
    client: Any, model_name: str, version: str, labeled: training.LabeledData
) -> dict[str, Any]:
    """Whether the data read here is the data `version` was trained on (by content digest)."""
    here = training.dataset_digest(labeled.X, labeled.y)
    recorded = trained_digest(client, model_name, version)
    comparable = recorded == here
    if comparable:
        note = f"the data v{version} was trained on (digest {here})"
    elif recorded is None:
        note = (
            f"{NOT_COMPARABLE}: v{version} has no recorded training data digest, so these "
            f"figures may not be on the data it was trained on (read here: {here})"
        )
    else:
        note = (
            f"{NOT_COMPARABLE}: v{version} was trained on data with digest {recorded}, this is "
            f"{here}; its holdout here is other rows, so these figures do not judge it (set "
            "data_path, target_threshold to those of its training)"
        )
    return {"comparable": comparable, "note": note, "data_digest": here, "trained": recorded}


def show_warning(text: str) -> None:
    """A warning block in the notebook (not stderr, which reports hide); a log warning
    elsewhere."""
    try:
        from IPython import get_ipython
        from IPython.display import HTML, display
    except ImportError:  # pragma: no cover - IPython comes with the kernel
        get_ipython = None  # type: ignore[assignment]
    if get_ipython is None or get_ipython() is None:
        log.warning("%s", text)
        return
    log.info("%s", text)
    display(
        HTML(
            '<div class="warning" style="border:2px solid #b45309;background:#fef3c7;'
            f'padding:8px 12px;margin:8px 0"><strong>Warning: {html.escape(text)}</strong></div>'
        )
    )


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
            "data": r.data_check.get("note", ""),
        },
        name="comparison",
    ).to_frame()


def record(inputs: CompareInputs, compared: Compared) -> CompareOutputs:
    """Every interval's bounds as MLflow metrics of the candidate's run (and the parent run),
    with `log_to_mlflow` only: run alone, a notebook never changes a version's record."""
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
    if inputs.log_to_mlflow:
        model_run = registry.version_run_id(client, inputs.model_name, r.candidate_version)
        registry.log_metrics_to_run(model_run, bounds)
        if inputs.parent_run_id:
            registry.tag_run(inputs.parent_run_id, tags)
            registry.log_metrics_to_run(inputs.parent_run_id, bounds)
        registry.set_version_tags(client, inputs.model_name, r.candidate_version, tags)
    else:
        log.info("log_to_mlflow=False (run alone): nothing written to MLflow")
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
