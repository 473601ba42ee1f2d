"""06 monitor's verdict: healthy (judged, passed), unhealthy (alerts) or not judged (and why).
A window in which nothing could be judged is never called healthy."""

from __future__ import annotations

import sqlite3
import time
from contextlib import closing
from pathlib import Path

import pandas as pd
import pytest

from lib.pipeline.contracts import MonitorInputs
from lib.pipeline.run_record import headline
from lib.pipeline.stages import monitor
from lib.serving import store_journal
from lib.serving.prediction_store import PredictionStore
from lib.watch.health_report import Alert, CheckResult, MonitorReport
from lib.watch.monitoring import REQUIRED_COLUMNS

UNREACHABLE = "http://127.0.0.1:9"  # the discard port: nothing listens on loopback


def report(*checks: CheckResult, alerts: list[Alert] | None = None, **kw) -> MonitorReport:
    alerts = alerts or []
    return MonitorReport(not alerts, alerts, False, None, {}, {}, list(checks), **kw)


def test_too_few_samples_is_not_judged_never_healthy() -> None:
    quiet = report(
        CheckResult("error_rate", "not_enough_data", "n=0"),
        CheckResult("accuracy", "not_enough_data", "n=0"),
        CheckResult("drift:category", "ok", "PSI 0.01"),  # drift alone says nothing of the model
    )
    assert quiet.healthy  # the report has no alert...
    assert quiet.verdict()[0] == "not_judged"  # ...but that is not a healthy verdict
    name, why = quiet.verdict()
    assert name == "not_judged" and "n=0" in why


def test_an_evaluated_model_check_without_alert_is_healthy() -> None:
    judged = report(CheckResult("accuracy", "ok", "0.80 on 300", samples=300))
    assert judged.verdict()[0] == "healthy"


def test_alerts_are_unhealthy() -> None:
    alert = Alert("accuracy", "critical", "12 points below", 0.68, 0.78, 300)
    checks = CheckResult("accuracy", "alert", "12 points below", samples=300, severity="critical")
    assert report(checks, alerts=[alert]).verdict()[0] == "unhealthy"


def test_an_unreachable_service_is_not_judged_even_when_the_store_looks_fine() -> None:
    fine = report(
        CheckResult("accuracy", "ok", "0.80 on 300", samples=300),
        service_unreachable=f"service not reachable at {UNREACHABLE} (ConnectError)",
    )
    name, why = fine.verdict()
    assert name == "not_judged" and UNREACHABLE in why
    assert fine.to_dict()["verdict"] == "not_judged"


def _window(**kw) -> monitor.Window:
    empty = pd.DataFrame({c: [] for c in REQUIRED_COLUMNS})
    values = dict(
        client=None,
        champion="1",
        reference_metrics={"accuracy": 0.8, "roc_auc": 0.85},
        reference_X=None,
        reference_proba=None,
        window=empty,
    )
    return monitor.Window(**{**values, **kw})


@pytest.mark.parametrize("min_requests", [0, 50])
def test_no_requests_is_not_judged_whatever_the_minimum(min_requests: int) -> None:
    """With min_requests 0 the error-rate check passes on an empty window: still nothing seen."""
    inputs = MonitorInputs(monitoring_config={"min_requests": min_requests})
    w = _window()
    checked = monitor.evaluate(inputs, w)
    action = monitor.act(inputs, None, w, checked)
    out = monitor.outputs(w, checked, action)
    assert out.verdict == "not_judged" and out.healthy is None
    assert "no requests" in out.verdict_reason
    text = monitor.verdict_text(checked, action)
    assert text.startswith("not judged") and "no requests" in text and "healthy" not in text
    assert headline(out).startswith(": v1 not judged (no requests")  # the runner's console line


def test_the_window_says_when_the_service_cannot_be_reached() -> None:
    problem = monitor.service_problem(UNREACHABLE)
    assert problem is not None and UNREACHABLE in problem
    inputs = MonitorInputs(serving_url=UNREACHABLE)
    w = _window(unreachable=problem)
    checked = monitor.evaluate(inputs, w)
    out = monitor.outputs(w, checked, monitor.act(inputs, None, w, checked))
    assert out.verdict == "not_judged" and UNREACHABLE in out.verdict_reason


def _served(rid: str, at: float, version: str) -> dict:
    return {
        "request_id": rid, "created_at": at, "variant": "champion", "model_version": version,
        "label": 1, "probability": 0.8, "latency_ms": 3.5, "error": None,
        "features": {"reviews": 10.0},
    }  # fmt: skip


def test_the_live_window_reads_the_champions_rows_and_writes_nothing(tmp_path: Path) -> None:
    """06 monitor reads what the service wrote; a killed service's journal stays for the next
    service or `runner.py store-recover` (the monitor does not act for a process it does not
    own), and the store's rows are unchanged."""
    db = tmp_path / "predictions.db"
    url = f"sqlite:///{db}"
    now = time.time()
    with PredictionStore(url) as service:
        service.record_predictions(
            [_served("new", now, "3"), _served("older", now - 60, "3"),
             _served("other-version", now, "2"), _served("out-of-window", now - 7200, "3")]
        )  # fmt: skip
        service.record_feedback("new", 4.5)
    orphan = store_journal.default_dir(url) / "999999-1-1.journal"
    orphan.parent.mkdir(exist_ok=True)
    orphan.write_bytes(store_journal.encode([_served("orphan", now, "3")]))
    journal = orphan.read_bytes()
    window = monitor.live_window(url, 3600, "3")
    assert sorted(window["request_id"]) == ["new", "older"]
    assert window.set_index("request_id").loc["new", "true_label"] == 1
    assert window["features"].tolist() == [{"reviews": 10.0}] * 2
    with closing(sqlite3.connect(db)) as conn:
        assert conn.execute("SELECT count(*) FROM predictions").fetchone()[0] == 4
    assert orphan.read_bytes() == journal


def test_the_live_window_of_a_store_not_created_yet_is_empty(tmp_path: Path) -> None:
    window = monitor.live_window(f"sqlite:///{tmp_path}/predictions.db", 3600, "1")
    assert window.empty and set(REQUIRED_COLUMNS) <= set(window.columns)
    assert list(tmp_path.iterdir()) == []


def test_run_alone_the_monitor_judges_but_never_rolls_production_back() -> None:
    """A notebook opened to read (act_on_production False, its default) must not roll back
    whatever registry the environment names; the runner passes True."""
    alert = Alert("accuracy", "critical", "12 points below", 0.68, 0.78, 300)
    checks = CheckResult("accuracy", "alert", "12 points below", samples=300, severity="critical")
    bad = MonitorReport(False, [alert], True, "accuracy 12 points below", {}, {}, [checks])
    alone = MonitorInputs()
    assert alone.act_on_production is False and alone.auto_rollback is True
    action = monitor.act(alone, None, _window(), bad)  # no client: it would fail if it acted
    assert action.rolled_back is False
    assert "rollback needed" in action.note and "not done: run alone" in action.note


def test_run_alone_05_deploy_only_plans() -> None:
    from lib.pipeline.contracts import DeployInputs
    from lib.pipeline.stages import deploy

    plan = deploy.Plan(None, "sqlite:///nowhere.db", "7", "6", pd.DataFrame(), None)
    done = deploy.deploy(DeployInputs(), Path("/nonexistent"), plan)  # nothing is touched
    assert done.outcome == "planned" and done.version == "7" and done.steps == []
    assert "runner.py deploy 7" in done.rollback_reason
    out = deploy.outputs(done)
    assert out.outcome == "planned" and out.champion_before == "6"
