"""Tell people what the pipeline did: deployments, approvals, rejections, rollbacks, alerts.

Sending and routing (tags) are apprise's. One apprise instance per target, so a dead target costs
only its own timeouts; a failed target never raises: `notify()` returns one `Delivery` each.
"""

from __future__ import annotations

import functools
import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import apprise
from apprise.result import AppriseResultStatus

from lib.watch.notify_targets import EVENTS, LEVELS, Target, event_tags, targets_from_env
from lib.watch.redaction import harden_apprise_logging, redact

log = logging.getLogger(__name__)

CONNECT_TIMEOUT = 5.0
READ_TIMEOUT = 15.0
TITLE_PREFIX = "[mlops]"


@dataclass(frozen=True)
class Message:
    """What every target receives; `body` is a short markdown list, readable as plain text."""

    title: str
    body: str
    level: str


@dataclass(frozen=True)
class Delivery:
    """The outcome for one target, safe to put in the run summary."""

    kind: str
    target_label: str
    ok: bool
    error: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """Plain data for JSON summaries."""
        return {"kind": self.kind, "target": self.target_label, "ok": self.ok, "error": self.error}


# --- messages -----------------------------------------------------------------------------------


def _one_line(value: Any) -> str:
    return " ".join(str(value).split())


def _number(value: Any) -> str:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return _one_line(value)
    if isinstance(value, float):
        return "n/a" if not math.isfinite(value) else f"{value:.4f}"
    return str(value)


def _version_tag(version: Any) -> str:
    text = _one_line(version)
    return text if text.lower().startswith("v") else f"v{text}"


def build_message(
    event: str,
    version: str | int | None = None,
    metrics: Mapping[str, Any] | None = None,
    improvement: float | None = None,
    report: str | None = None,
    reason: str | None = None,
    details: Mapping[str, Any] | None = None,
) -> Message:
    """The title and a markdown bullet body (plain text in Slack and PagerDuty) for `event`,
    without configured secrets; `improvement` is candidate minus production."""
    if event not in LEVELS:
        raise ValueError(f"unknown notification event {event!r}; expected one of {EVENTS}")
    tag = _version_tag(version) if version is not None else None
    subject = f"Model {tag}" if tag else "The production model"
    titles = {
        "deployed": f"Model {tag} deployed to production" if tag else "New model deployed",
        "awaiting_approval": f"Model {tag} awaits approval" if tag else "A model awaits approval",
        "rejected": f"Model {tag} rejected" if tag else "Candidate model rejected",
        "rolled_back": f"Model {tag} rolled back" if tag else "Production rolled back",
        "alert": f"Alert on model {tag}" if tag else "Monitoring alert",
        "test": "Test notification",
    }
    intros = {
        "deployed": f"{subject} now serves production.",
        "awaiting_approval": f"{subject} scored in the manual band and waits for a decision.",
        "rejected": f"{subject} was rejected and will not be deployed.",
        "rolled_back": f"Production was rolled back{f' from {tag}' if tag else ''}.",
        "alert": "The monitor raised an alert.",
        "test": "Test notification from the MLOps pipeline: if you read this, the target works.",
    }
    items: list[str] = []
    if tag:
        items.append(f"Version: {tag}")
    if reason is not None or event == "rolled_back":
        items.append(f"Reason: {_one_line(reason) if reason else 'not given'}")
    if improvement is not None:
        shown = f"{improvement:+.4f}" if math.isfinite(improvement) else "n/a"
        items.append(f"Improvement over production: {shown}")
    if metrics:
        items.append(
            "Metrics: " + ", ".join(f"{_one_line(k)} {_number(v)}" for k, v in metrics.items())
        )
    for key, value in (details or {}).items():
        items.append(f"{_one_line(key)}: {_number(value)}")
    if event == "awaiting_approval" and version is not None:
        plain = _one_line(version).lstrip("vV")
        items.append(f"Approve: `python runner.py approve {plain}`")
        items.append(f'Reject: `python runner.py reject {plain} --reason "..."`')
    if report:
        items.append(f"Report: {_one_line(report)}")
    body = intros[event] + ("\n\n" + "\n".join(f"- {item}" for item in items) if items else "")
    title = f"{TITLE_PREFIX} {titles[event]}"
    return Message(title=redact(title), body=redact(body), level=LEVELS[event])


# --- sending ------------------------------------------------------------------------------------


def _asset() -> apprise.AppriseAsset:
    # Inline (no worker threads, no service deadline thread), nothing written to disk.
    return apprise.AppriseAsset(
        async_mode=False,
        service_timeout=0,
        secure_logging=True,
        storage_mode="memory",
        app_id="MLOps pipeline",
        app_desc="MLOps pipeline notifications",
    )


def _failure_text(result: Any) -> str:
    messages = [
        entry.message for entry in result.logs() if entry.level in ("WARNING", "ERROR", "CRITICAL")
    ]
    unique = list(dict.fromkeys(m.strip() for m in messages if m.strip()))
    return "; ".join(unique) or f"delivery failed ({result.status.name.lower()})"


def _deliver(
    target: Target, event: str, message: Message, connect_timeout: float, read_timeout: float
) -> Delivery | None:
    """Send to one target through apprise's tag filter; None when the event is not routed there,
    every failure a redacted error, never an exception."""
    label = target.label
    if target.error:  # a configuration entry apprise rejected: fails whatever the event
        return Delivery(target.kind, label, False, target.error)
    try:
        asset = _asset()
        service = apprise.Apprise.instantiate(target.url, asset=asset, tag=set(target.tags))
        if service is None:
            if not target.wants(event):
                return None
            error = f"invalid or unsupported notification URL for apprise {apprise.__version__}"
            return Delivery(target.kind, label, False, error)
        timeouts = {"socket_connect_timeout": connect_timeout, "socket_read_timeout": read_timeout}
        for name, value in timeouts.items():  # the timeouts the URL does not set (cto=, rto=)
            if getattr(service, name) == getattr(type(service), name):
                setattr(service, name, value)
        sender = apprise.Apprise(asset=asset)
        sender.add(service)
        result = sender.notify(
            body=message.body,
            title=message.title,
            notify_type=apprise.NotifyType(message.level),  # LEVELS uses its values
            body_format=apprise.NotifyFormat.MARKDOWN,
            tag=sorted(event_tags(event)),
            match_always=True,
            log_level=logging.WARNING,
        )
        if result.status == AppriseResultStatus.NOMATCH:
            return None
        if result:
            return Delivery(target.kind, label, True)
        error = _failure_text(result)
    except Exception as exc:  # a notification must never break the run
        error = f"{type(exc).__name__}: {exc}"
    return Delivery(target.kind, label, False, redact(redact(error, [target.url])))


@functools.cache
def _say_off() -> None:
    """Once per process: every stage would repeat it."""
    log.info(
        "notifications are off: set NOTIFY_CONFIG (an apprise YAML or TEXT file), or "
        "SLACK_WEBHOOK, EMAIL_SMTP, TEAMS_WEBHOOK, PAGERDUTY_KEY or NOTIFY_URLS"
    )


def notify(
    event: str,
    version: str | int | None = None,
    metrics: Mapping[str, Any] | None = None,
    improvement: float | None = None,
    report: str | None = None,
    reason: str | None = None,
    details: Mapping[str, Any] | None = None,
    *,
    targets: Sequence[Target] | None = None,
    connect_timeout: float = CONNECT_TIMEOUT,
    read_timeout: float = READ_TIMEOUT,
) -> list[Delivery]:
    """Send `event` to every target (default: `targets_from_env()`) its tags route it to; one
    `Delivery` each, failures listed and logged, never raised (an unknown `event` is a bug:
    ValueError)."""
    message = build_message(event, version, metrics, improvement, report, reason, details)
    chosen = targets_from_env() if targets is None else list(targets)
    if not chosen:
        _say_off()
        return []
    harden_apprise_logging()
    deliveries: list[Delivery] = []
    for target in chosen:
        delivery = _deliver(target, event, message, connect_timeout, read_timeout)
        if delivery is None:
            log.debug("%s: not sent to %s (not one of its tags)", event, target.label)
            continue
        deliveries.append(delivery)
        if delivery.ok:
            log.info("notification %s sent to %s", event, delivery.target_label)
        else:
            log.warning(
                "notification %s to %s failed: %s", event, delivery.target_label, delivery.error
            )
    return deliveries
