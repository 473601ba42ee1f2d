"""06 monitor: the champion's live window against its validation figures and training data;
a significant accuracy drop or error rate rolls production back (when `auto_rollback`). Labels
come late: accuracy is judged on the predictions made `monitoring.label_lag_seconds` ago or
earlier, also against the version the champion replaced on the same requests (the rollout's
shadow scores), which rolls back or alerts (`monitoring.on_worse_than_predecessor`).

Three verdicts: healthy (judged, passed), unhealthy (alerts) and not judged (a service that
cannot be reached, no request in the window, or no model check with enough data; the reason is
kept). A pass that judged nothing is never reported as healthy."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from lib import registry
from lib.config import resolve_data
from lib.config_sections import MonitorConfig
from lib.delivery import operations, releases
from lib.pipeline import data, training
from lib.pipeline.contracts import MonitorInputs, MonitorOutputs
from lib.serving.prediction_store import PredictionReader
from lib.settings import store_url, tracking_uri
from lib.watch import drift, health_report, monitoring
from lib.watch.late_judgement import Judged, label_arrival


@dataclass
class Window:
    """The champion, what it was validated at, its training inputs and its live window."""

    client: Any
    champion: str
    reference_metrics: dict[str, float | None]
    reference_X: pd.DataFrame
    reference_proba: np.ndarray
    window: pd.DataFrame
    unreachable: str | None = None  # why the live service could not be checked, if it could not
    judged: Judged | None = None  # the predictions old enough for their labels (label lag)

    @property
    def current_proba(self) -> np.ndarray:
        known = self.window["probability"].notna()
        return self.window.loc[known, "probability"].astype(float).values


def config(inputs: MonitorInputs) -> MonitorConfig:
    return MonitorConfig.from_dict(inputs.monitoring_config)


def read_window(inputs: MonitorInputs, root: Path) -> Window:
    client = registry.connect(tracking_uri(inputs.tracking_uri, root), inputs.experiment)
    champion = registry.alias_version(client, inputs.model_name, "champion")
    if champion is None:
        raise LookupError(
            f"{inputs.model_name} has no champion yet: nothing is in production to monitor"
        )
    run = client.get_run(registry.version_run_id(client, inputs.model_name, champion))
    reference_metrics = {m: run.data.metrics.get(f"holdout_{m}") for m in ("accuracy", "roc_auc")}
    apps = data.read_apps(resolve_data(inputs.data_path, root)).apps
    labeled = training.labeled_data(apps, inputs.target_threshold)
    train_idx, _ = training.holdout_split(labeled.keys, labeled.y, inputs.test_size, inputs.seed)
    reference_X = labeled.X.iloc[train_idx]
    model = registry.load_version(inputs.model_name, champion)
    reference_proba = model.predict_proba(reference_X)[:, 1]
    lag, now = config(inputs).label_lag_seconds, time.time()
    rows = live_window(store_url(inputs.store_url, root), inputs.window_seconds + lag, champion)
    until = now - lag if lag else None  # no lag: the same window as the live checks
    judged = Judged(
        rows if until is None else rows[rows["created_at"] < until],
        str(champion),
        registry.alias_version(client, inputs.model_name, "previous"),
        until,
    )
    answered = rows["model_version"].astype(str) == str(champion)
    return Window(
        client,
        str(champion),
        reference_metrics,
        reference_X,
        reference_proba,
        rows[answered & (rows["created_at"] >= now - inputs.window_seconds)],
        service_problem(inputs.serving_url),
        judged,
    )


def live_window(url: str, seconds: float, champion: str) -> pd.DataFrame:
    """The requests of the last `seconds` in the service's store that the champion answered or
    scored in the shadow (paired with the version it replaced), with their model inputs.
    Read-only: a dead service's unwritten rows stay for `runner.py store-recover` or the next
    service (a monitor that inserted them would act for a process it does not own)."""
    with PredictionReader(url) as store:
        window = store.window(time.time() - seconds, features=True)
    mine = window["model_version"].astype(str) == str(champion)
    return window[mine | (window["shadow_version"].astype(str) == str(champion))]


def service_problem(url: str) -> str | None:
    """None when the production service answers /health; else why not, in words. A window read
    from the store alone cannot say the service is healthy when the service is down."""
    import httpx

    try:
        httpx.get(f"{url}/health", timeout=3).raise_for_status()
    except httpx.HTTPError as exc:
        return f"service not reachable at {url} ({type(exc).__name__})"
    return None


def window_table(inputs: MonitorInputs, w: Window) -> pd.DataFrame:
    labels = label_arrival(w.window if w.judged is None else w.judged.answered())
    lag = labels["lag_seconds"]
    return pd.Series(
        {
            "champion": f"v{w.champion}",
            "window (s)": inputs.window_seconds,
            "requests": len(w.window),
            "label lag (s)": config(inputs).label_lag_seconds,
            "judged predictions": labels["requests"],
            "labeled feedback": labels["labeled"],
            "labels came after (median, s)": lag.get("p50"),
            "labels came after (p90, s)": lag.get("p90"),
            "validation accuracy": w.reference_metrics["accuracy"],
            "validation ROC-AUC": w.reference_metrics["roc_auc"],
        },
        name="monitor",
    ).to_frame()


def service_counters(url: str) -> list[str]:
    """The service's own request and error counters, or why they could not be read."""
    import httpx

    try:
        text = httpx.get(f"{url}/metrics", timeout=3).text
    except httpx.HTTPError as exc:
        return [f"service not reachable at {url}: {type(exc).__name__}"]
    wanted = ("model_requests_total", "model_request_errors_total")
    return [line for line in text.splitlines() if line.startswith(wanted)]


def evaluate(inputs: MonitorInputs, w: Window) -> health_report.MonitorReport:
    report = monitoring.evaluate_health(
        w.window, w.reference_metrics, w.reference_X, w.reference_proba, config(inputs),
        judged=w.judged,
    )  # fmt: skip
    report.service_unreachable = w.unreachable
    return report


def checks_table(report: health_report.MonitorReport) -> pd.DataFrame:
    return pd.DataFrame(
        [
            {"check": c.name, "status": c.status, "severity": c.severity, "what it saw": c.message}
            for c in report.checks
        ]
    )


def drifts(report: health_report.MonitorReport) -> list[drift.FeatureDrift]:
    return [drift.FeatureDrift(**d) for d in report.drift.get("features", [])]


@dataclass
class Action:
    rolled_back: bool
    note: str | None


def act(
    inputs: MonitorInputs, root: Path, w: Window, report: health_report.MonitorReport
) -> Action:
    """Roll back when the report asks for it and auto_rollback is on; say why either way."""
    if not (report.rollback and inputs.auto_rollback):
        return Action(False, None)
    if not inputs.act_on_production:  # a notebook run alone judges; it never rolls back
        return Action(
            False,
            f"rollback needed ({report.rollback_reason}) but not done: run alone "
            "(act_on_production = False); python runner.py rollback does it",
        )
    try:
        record = operations.manual_rollback(
            w.client,
            inputs.model_name,
            root / inputs.models_dir,
            root / inputs.logs_dir,
            f"monitor: {report.rollback_reason}",
            inputs.serving_url,
        )
    except releases.NothingToRollBack as exc:
        return Action(False, f"rollback needed but impossible: {exc}")
    return Action(
        True, f"rolled back v{w.champion} -> v{record.get('version')}; {record['service']}"
    )


def verdict_text(report: health_report.MonitorReport, action: Action) -> str:
    if action.note:
        return action.note
    v, why = report.verdict()
    if v == "unhealthy":
        return f"unhealthy: {len(report.alerts)} alert(s), no rollback"
    if v == "not_judged":
        return f"not judged: {why}"
    return "healthy"


def _alerts(report: health_report.MonitorReport) -> list[dict[str, str]]:
    return [{"check": a.check, "severity": a.severity, "message": a.message} for a in report.alerts]


def alerts_table(report: health_report.MonitorReport) -> pd.DataFrame:
    return pd.DataFrame(_alerts(report))


def outputs(w: Window, report: health_report.MonitorReport, action: Action) -> MonitorOutputs:
    v, why = report.verdict()
    return MonitorOutputs(
        verdict=v,
        verdict_reason=why,
        healthy=None if v == "not_judged" else v == "healthy",
        alerts=_alerts(report),
        drift={
            "drifted_features": report.drift.get("drifted_features", []),
            "dataset_drift": report.drift.get("dataset_drift"),
        },
        rolled_back=action.rolled_back,
        monitor_rollback_reason=report.rollback_reason if action.rolled_back else None,
        rollback_note=action.note,
        monitored_version=w.champion,
        live_metrics={
            **{
                k: report.metrics["performance"].get(k)
                for k in ("labeled", "accuracy", "roc_auc", "reference_accuracy")
            },
            **against_predecessor(report),
        },
    )


# what the report keeps (flat: notifications list it) of the check against the predecessor
PAIRED_FIGURES = {
    "predecessor": "predecessor",
    "predecessor_verdict": "verdict",
    "paired_labeled": "labeled_pairs",
    "paired_accuracy": "accuracy",
    "predecessor_accuracy": "predecessor_accuracy",
    "paired_drop_lower": "drop_lower",
    "paired_estimated_accuracy": "estimated_accuracy_labeled",
    "paired_estimate_gap": "estimate_gap",
    "paired_estimate_gap_se": "estimate_gap_se",
    "label_lag_seconds": "label_lag_seconds",
}


def against_predecessor(report: health_report.MonitorReport) -> dict[str, Any]:
    """The champion against the version it replaced, and the estimated vs realized accuracy."""
    found = report.metrics.get("against_predecessor")
    if found is None:
        return {}
    delay = found["labels"]["lag_seconds"].get("p50")
    return {**{k: found.get(v) for k, v in PAIRED_FIGURES.items()}, "label_delay_p50_s": delay}


def run(inputs: MonitorInputs, root: Path) -> MonitorOutputs:
    w = read_window(inputs, root)
    report = evaluate(inputs, w)
    return outputs(w, report, act(inputs, root, w, report))
