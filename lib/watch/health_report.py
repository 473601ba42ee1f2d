"""What a monitoring pass reports: apart from the checks, so lib.watch.drift and
lib.watch.monitoring share one vocabulary of statuses without importing each other."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from lib.json_safe import json_safe

OK, ALERT, NO_DATA, SKIPPED = "ok", "alert", "not_enough_data", "skipped"
WARNING, CRITICAL = "warning", "critical"
HEALTHY, UNHEALTHY, NOT_JUDGED = "healthy", "unhealthy", "not_judged"  # the three verdicts
# what says anything about the model
EVIDENCE_CHECKS = ("error_rate", "accuracy", "roc_auc", "against_predecessor")


@dataclass
class Alert:
    """A check that crossed its threshold: what it saw, against what, on how many samples."""

    check: str
    severity: str  # warning / critical (critical ones roll back)
    message: str
    observed: float | None
    threshold: float | None
    samples: int


@dataclass
class CheckResult:
    """One check's outcome; kept for the report even when it passed or had too little data."""

    name: str
    status: str  # ok / alert / not_enough_data / skipped
    message: str
    observed: float | None = None
    threshold: float | None = None
    samples: int = 0
    severity: str | None = None  # set when status is alert
    p_value: float | None = None

    def alert(self) -> Alert | None:
        if self.status != ALERT:
            return None
        severity = self.severity or WARNING
        return Alert(self.name, severity, self.message, self.observed, self.threshold, self.samples)


@dataclass
class MonitorReport:
    """The verdict of one monitoring pass; `to_dict()` is what notebooks and reports store."""

    healthy: bool  # no alert of any severity (NOT the verdict: an empty window has no alert)
    alerts: list[Alert]
    # only a significant accuracy drop, error rate or drop below the predecessor sets it
    rollback: bool
    rollback_reason: str | None
    drift: dict[str, Any]
    metrics: dict[str, Any]
    checks: list[CheckResult] = field(default_factory=list)
    service_unreachable: str | None = None  # why the live service could not be checked

    def by_name(self, name: str) -> CheckResult:
        return next(c for c in self.checks if c.name == name)

    def verdict(self) -> tuple[str, str | None]:
        """(`healthy`, None): judged and passed; (`unhealthy`, the alerts); (`not_judged`, why):
        a service that cannot be reached, no request at all, or no model check with enough
        data. No alert is not the same as healthy: a window that saw nothing has no alert."""
        if self.alerts:
            return UNHEALTHY, "; ".join(f"{a.check}: {a.message}" for a in self.alerts)
        why = []
        if self.service_unreachable:
            why.append(self.service_unreachable)
        requests = (self.metrics.get("traffic") or {}).get("requests")
        if requests == 0:
            why.append("no requests in the window: nothing was served to judge")
        evidence = [c for c in self.checks if c.name in EVIDENCE_CHECKS]
        if not why and not any(c.status == OK for c in evidence):
            seen = "; ".join(c.message for c in evidence) or "no model check ran"
            why.append(f"no model check had enough data ({seen})")
        return (NOT_JUDGED, "; ".join(why)) if why else (HEALTHY, None)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: NaN and infinities become null, NumPy scalars plain numbers."""
        name, reason = self.verdict()
        return json_safe({"verdict": name, "verdict_reason": reason, **asdict(self)})
