"""06 monitor's verdict: a window in which no model check could be evaluated is not healthy."""

from __future__ import annotations

from lib.pipeline.stages.monitor import verdict
from lib.watch.health_report import Alert, CheckResult, MonitorReport


def report(*checks: CheckResult, alerts: list[Alert] | None = None) -> MonitorReport:
    alerts = alerts or []
    return MonitorReport(not alerts, alerts, False, None, {}, {}, list(checks))


def test_too_few_samples_is_not_enough_evidence_never_healthy() -> None:
    quiet = report(
        CheckResult("error_rate", "not_enough_data", "n=0"),
        CheckResult("accuracy", "not_enough_data", "n=0"),
        CheckResult("drift:category", "ok", "PSI 0.01"),  # drift alone says nothing of the model
    )
    assert quiet.healthy  # the report has no alert...
    assert verdict(quiet) == "not_enough_evidence"  # ...but that is not a healthy verdict


def test_an_evaluated_model_check_without_alert_is_healthy() -> None:
    assert verdict(report(CheckResult("accuracy", "ok", "0.80 on 300", samples=300))) == "healthy"


def test_alerts_win() -> None:
    alert = Alert("accuracy", "critical", "12 points below", 0.68, 0.78, 300)
    checks = CheckResult("accuracy", "alert", "12 points below", samples=300, severity="critical")
    assert verdict(report(checks, alerts=[alert])) == "alerts"
