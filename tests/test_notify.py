"""Notifications against real local servers: HTTP(S) webhooks and an SMTP server, all on 127.0.0.1.

Slack and PagerDuty post to fixed https endpoints that apprise keeps in a class attribute
(`NotifySlack.webhook_url`) and a module dict (`pagerduty.PAGERDUTY_API_LOOKUP`); the tests point
those at the local server, so the real plugin payloads travel over real HTTP. Teams Workflows
takes its host from the URL but always speaks https: it gets a local TLS server with a throw-away
certificate that requests is told to trust (REQUESTS_CA_BUNDLE), certificate checks left on.
"""

from __future__ import annotations

import logging
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import apprise
import pytest
from apprise.plugins import pagerduty as apprise_pagerduty
from apprise.plugins.slack import NotifySlack

from lib.watch import notify, notify_targets, redaction
from tests.support.notify import (
    LOOPBACK,
    SMTP_PASSWORD,
    SMTP_USER,
    HttpSink,
    SmtpSink,
    start_sink,
    stop_sink,
)
from tests.support.notify import closed_port as _closed_port
from tests.support.tls import loopback_tls

# The local SMTP server takes AUTH without TLS on purpose (loopback only); aiosmtpd warns about it.
pytestmark = pytest.mark.filterwarnings("ignore:Requiring AUTH while not requiring TLS:UserWarning")

SLACK_HOOK = "https://hooks.slack.com/services/T0AB12CDE/B0FG34HIJ/Xy9zAbCdEfGhIjKlMnOpQrSt"
SLACK_TOKENS = ("T0AB12CDE", "B0FG34HIJ", "Xy9zAbCdEfGhIjKlMnOpQrSt")
TEAMS_WORKFLOW = "643e69f83c8944438d68119179a10a64"
TEAMS_SIG = "KODuebWbDGYFr0z0eu-6Rj8aUKz7108W3wrNJZxFE5A"
TEAMS_HOOK = (
    "https://prod-161.westeurope.logic.azure.com:443/workflows/"
    f"{TEAMS_WORKFLOW}/triggers/manual/paths/invoke?api-version=2016-06-01"
    f"&sp=%2Ftriggers%2Fmanual%2Frun&sv=1.0&sig={TEAMS_SIG}"
)
PD_KEY = "R0uT1ngKey0123456789abcdef012345"
METRICS = {"roc_auc": 0.79123, "accuracy": 0.8125, "f1": 0.88}
REPORT = "reports/20250101-abc123/05_deploy.html"


# --- isolation ----------------------------------------------------------------------------------


@pytest.fixture(autouse=True)
def _isolated(monkeypatch: pytest.MonkeyPatch) -> None:
    """No configured targets from the developer's shell, no proxies, and no host but loopback."""
    for var in redaction.CONFIG_VARS:
        monkeypatch.delenv(var, raising=False)
    for var in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("NO_PROXY", f"{LOOPBACK},localhost")
    real_getaddrinfo = socket.getaddrinfo

    def loopback_only(host: Any, *args: Any, **kwargs: Any) -> Any:
        if host not in (LOOPBACK, "localhost", "::1", None):
            raise OSError(f"test guard: refusing to resolve non-loopback host {host!r}")
        return real_getaddrinfo(host, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", loopback_only)


# --- local servers ------------------------------------------------------------------------------


@pytest.fixture
def https_sink(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[HttpSink]:
    """A TLS sink whose self-signed certificate (for IP 127.0.0.1) requests trusts."""
    context, cert_file = loopback_tls(tmp_path)
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(cert_file))
    sink, thread = start_sink(context)
    yield sink
    stop_sink(sink, thread)


def _all_log_text(caplog: pytest.LogCaptureFixture) -> str:
    parts = [caplog.text]
    for record in caplog.records:
        parts.append(record.getMessage())
        parts.append(record.exc_text or "")
    return "\n".join(parts)


# --- targets from the environment ---------------------------------------------------------------


def test_targets_from_env_reads_every_variable_and_apprise_parses_native_urls() -> None:
    env = {
        "SLACK_WEBHOOK": SLACK_HOOK,
        "EMAIL_SMTP": (
            f"mailtos://{SMTP_USER}:{SMTP_PASSWORD}@smtp.example.com:587"
            "?from=mlops@example.com&to=team@example.com"
        ),
        "TEAMS_WEBHOOK": TEAMS_HOOK,
        "PAGERDUTY_KEY": PD_KEY,
        "NOTIFY_URLS": (
            f"json://{LOOPBACK}:8080/hook, form://{LOOPBACK}:8081/f\n"
            "  mailto://u:pw@127.0.0.1:2525?from=m@x.org&to=a@x.org,b@x.org,"
            "discord://1234567/abcdefTOKEN ,, "
            f"json://{LOOPBACK}:8080/hook"
        ),
    }
    targets = notify_targets.targets_from_env(env)

    assert [(t.kind, t.source) for t in targets] == [
        ("slack", "SLACK_WEBHOOK"),
        ("email", "EMAIL_SMTP"),
        ("teams", "TEAMS_WEBHOOK"),
        ("pagerduty", "PAGERDUTY_KEY"),
        ("other", "NOTIFY_URLS"),
        ("other", "NOTIFY_URLS"),
        ("email", "NOTIFY_URLS"),
        ("other", "NOTIFY_URLS"),
    ]
    urls = [t.url for t in targets]
    # apprise parsed the services' own URLs: each target's URL is apprise's form of the value
    for target, value in zip(targets[:3], [SLACK_HOOK, env["EMAIL_SMTP"], TEAMS_HOOK], strict=True):
        assert target.url == apprise.Apprise.instantiate(value).url()
    assert urls[3].startswith(
        f"pagerduty://{PD_KEY}@{notify_targets.PAGERDUTY_NO_API_KEY}/"
        f"{notify_targets.PAGERDUTY_SOURCE}/{notify_targets.PAGERDUTY_COMPONENT}"
    )
    # commas split URLs only where a new scheme starts; the duplicate json URL is dropped
    assert [u.split("?")[0] for u in urls[4:]] == [
        f"json://{LOOPBACK}:8080/hook",
        f"form://{LOOPBACK}:8081/f",
        "mailto://u:pw@127.0.0.1:2525/a%40x.org/b%40x.org",
        "discord://1234567/abcdefTOKEN/",
    ]
    # every URL is one apprise accepts, and its plugin decides the kind
    for target in targets:
        assert apprise.Apprise.instantiate(target.url) is not None, target.label
        assert target.error is None
    assert type(apprise.Apprise.instantiate(urls[0])).__name__ == "NotifySlack"
    assert type(apprise.Apprise.instantiate(urls[2])).__name__ == "NotifyWorkflows"

    # labels are apprise's privacy URLs without their options
    labels = [t.label for t in targets]
    assert labels[0].startswith("slack://") and "?" not in labels[0]
    assert labels[1] == "mailtos://***@smtp.example.com/team%40example.com"
    assert labels[2].startswith("workflow://prod-161.westeurope.logic.azure.com:443/")
    assert labels[3].startswith("pagerduty://***@")
    assert labels[4] == f"json://{LOOPBACK}:8080/hook"
    assert labels[6] == f"mailto://***@{LOOPBACK}:2525/a%40x.org/b%40x.org"
    shown = repr(targets) + " ".join(labels) + " ".join(str(t) for t in targets)
    for secret in (*SLACK_TOKENS, SMTP_PASSWORD, TEAMS_SIG, TEAMS_WORKFLOW, PD_KEY, "abcdefTOKEN"):
        assert secret not in shown


def test_targets_from_env_keeps_apprise_urls_and_uses_the_pagerduty_api_key() -> None:
    env = {
        "SLACK_WEBHOOK": "slack://T1/B2/C3/#alerts",
        "TEAMS_WEBHOOK": f"workflows://example.logic.azure.com/{TEAMS_WORKFLOW}/{TEAMS_SIG}/",
        "PAGERDUTY_KEY": PD_KEY,
        "PAGERDUTY_API_KEY": "u+ApiKey123456",
    }
    slack, teams, pd = notify_targets.targets_from_env(env)
    assert slack.url == apprise.Apprise.instantiate(env["SLACK_WEBHOOK"]).url()
    assert teams.url == apprise.Apprise.instantiate(env["TEAMS_WEBHOOK"]).url()
    assert pd.url.startswith(f"pagerduty://{PD_KEY}@u%2BApiKey123456/")
    service = apprise.Apprise.instantiate(pd.url)
    assert (service.integration_key, service.apikey) == (PD_KEY, "u+ApiKey123456")

    full = f"pagerduty://{PD_KEY}@KEY987654321/src/comp?region=eu"
    (pd,) = notify_targets.targets_from_env({"PAGERDUTY_KEY": full})
    assert pd.url == apprise.Apprise.instantiate(full).url() and "region=eu" in pd.url


def test_gov_and_workflow_slack_hooks_and_power_automate_teams_hooks_are_native() -> None:
    power_automate = (
        "https://default123.environment.api.powerplatform.com:443/powerautomate/automations/"
        f"direct/workflows/{TEAMS_WORKFLOW}/triggers/manual/paths/invoke"
        f"?api-version=1&sp=%2Ftriggers%2Fmanual%2Frun&sv=1.0&sig={TEAMS_SIG}"
    )
    native = {
        "https://hooks.slack-gov.com/services/T1/B2/C3": ("slack", "mode=gov-hook"),
        "https://hooks.slack.com/triggers/T1/X2/Y3": ("slack", "mode=trigger"),
        power_automate: ("teams", "pa=yes"),
    }
    for url, (kind, option) in native.items():
        (target,) = notify_targets.targets_from_env({"NOTIFY_URLS": url})
        assert target.kind == kind and target.error is None
        assert option in apprise.Apprise.instantiate(url).url()
    (target,) = notify_targets.targets_from_env({"NOTIFY_URLS": "not-a-url"})
    assert target.kind == "other" and target.error is not None


def test_a_retired_teams_connector_is_reported_as_a_failed_target(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING)
    legacy = "https://example.webhook.office.com/webhookb2/abc@def/IncomingWebhook/0123456789/xyz"
    (target,) = notify_targets.targets_from_env({"TEAMS_WEBHOOK": legacy})
    assert "retired Office 365 connector" in caplog.text

    (delivery,) = notify.notify("test", targets=[target])
    assert delivery.kind == "teams" and not delivery.ok
    assert "unsupported notification URL" in (delivery.error or "")


def test_no_targets_returns_nothing_and_says_so_once(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    notify._say_off.cache_clear()
    caplog.set_level(logging.INFO, logger=notify.log.name)

    assert notify_targets.targets_from_env({}) == []
    assert notify.notify("deployed", version=3) == []
    assert notify.notify("rolled_back", version=3, reason="x") == []
    assert notify.notify("test") == []

    off = [r for r in caplog.records if "notifications are off" in r.getMessage()]
    assert len(off) == 1 and off[0].levelno == logging.INFO


# --- messages -----------------------------------------------------------------------------------


def test_build_message_covers_every_event_and_rejects_unknown_ones() -> None:
    for event in notify_targets.EVENTS:
        message = notify.build_message(event, version=4, reason="why")
        assert message.title.startswith(notify.TITLE_PREFIX)
        assert message.level == notify_targets.LEVELS[event]
        assert "v4" in message.body and "Reason: why" in message.body

    approval = notify.build_message("awaiting_approval", version="v9", metrics={"roc_auc": 0.8})
    assert "python runner.py approve 9" in approval.body
    assert "python runner.py reject 9" in approval.body

    rollback = notify.build_message("rolled_back", version=5)
    assert rollback.level == "failure" and "Reason: not given" in rollback.body

    with pytest.raises(ValueError, match="unknown notification event"):
        notify.build_message("deploy", version=1)
    with pytest.raises(ValueError):
        notify.notify("deploy", targets=[])


def test_build_message_is_one_readable_list_and_hides_configured_secrets(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("SLACK_WEBHOOK", SLACK_HOOK)
    message = notify.build_message(
        "deployed",
        version=12,
        metrics={"roc_auc": 0.79123, "n": 10, "ll": float("nan")},
        improvement=0.01234,
        report=REPORT,
        reason=f"multi\nline, posted to {SLACK_HOOK}",
        details={"run_id": "abc123"},
    )
    assert message.title == "[mlops] Model v12 deployed to production"
    lines = message.body.splitlines()
    assert lines[0] == "Model v12 now serves production."
    assert lines[1] == ""
    assert all(line.startswith("- ") for line in lines[2:])
    assert "- Improvement over production: +0.0123" in lines
    assert "- Metrics: roc_auc 0.7912, n 10, ll n/a" in lines
    assert f"- Report: {REPORT}" in lines
    assert "- run_id: abc123" in lines
    assert "- Reason: multi line, posted to ***" in lines
    assert not any(token in message.body for token in SLACK_TOKENS)


# --- delivery to real local servers -------------------------------------------------------------


@pytest.mark.component
def test_deployed_reaches_the_json_webhook_with_version_metrics_improvement_and_report(
    http_sink: HttpSink,
) -> None:
    target = notify_targets.Target("other", f"json://{LOOPBACK}:{http_sink.port}/hooks/mlops")
    deliveries = notify.notify(
        "deployed",
        version=7,
        metrics=METRICS,
        improvement=0.0123,
        report=REPORT,
        targets=[target],
    )

    assert deliveries == [
        notify.Delivery("other", f"json://{LOOPBACK}:{http_sink.port}/hooks/mlops", True, None)
    ]
    (request,) = http_sink.requests
    assert request.path == "/hooks/mlops"
    assert request.headers["Content-Type"] == "application/json"
    payload = request.json()
    assert payload["title"] == "[mlops] Model v7 deployed to production"
    assert payload["type"] == "success"
    for expected in ("v7", "roc_auc 0.7912", "accuracy 0.8125", "f1 0.8800", "+0.0123", REPORT):
        assert expected in payload["message"]


@pytest.mark.component
def test_rolled_back_carries_the_reason(http_sink: HttpSink) -> None:
    target = notify_targets.Target("other", f"json://{LOOPBACK}:{http_sink.port}/hook")
    reason = "canary p99 latency 812 ms > 250 ms at 25%"
    (delivery,) = notify.notify("rolled_back", version=8, reason=reason, targets=[target])

    assert delivery.ok
    payload = http_sink.requests[0].json()
    assert payload["title"] == "[mlops] Model v8 rolled back"
    assert payload["type"] == "failure"
    assert f"Reason: {reason}" in payload["message"]


@pytest.mark.component
def test_form_webhook_gets_the_message_too(http_sink: HttpSink) -> None:
    target = notify_targets.Target("other", f"form://{LOOPBACK}:{http_sink.port}/form")
    (delivery,) = notify.notify("alert", reason="accuracy dropped to 0.61", targets=[target])

    assert delivery.ok
    fields = parse_qs(http_sink.requests[0].body.decode())
    assert fields["title"] == ["[mlops] Monitoring alert"]
    assert "accuracy dropped to 0.61" in fields["message"][0]


@pytest.mark.component
def test_email_with_auth_arrives_and_the_password_never_shows(
    smtp_sink: SmtpSink, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    url = (
        f"mailto://{SMTP_USER}:{SMTP_PASSWORD}@{LOOPBACK}:{smtp_sink.port}"
        "?from=mlops@example.com&to=team@example.com&mode=insecure"
    )
    (target,) = notify_targets.targets_from_env({"EMAIL_SMTP": url})
    deliveries = notify.notify(
        "deployed", version=11, metrics=METRICS, improvement=0.02, report=REPORT, targets=[target]
    )

    assert deliveries == [
        notify.Delivery(
            "email", f"mailto://***@{LOOPBACK}:{smtp_sink.port}/team%40example.com", True, None
        )
    ]
    assert smtp_sink.logins == [SMTP_USER]
    (mail,) = smtp_sink.messages
    assert mail["Subject"] == "[mlops] Model v11 deployed to production"
    assert mail["To"] == "team@example.com"
    content = mail.get_body(preferencelist=("plain", "html")).get_content()
    for expected in ("v11", "roc_auc 0.7912", "+0.0200", REPORT):
        assert expected in content
    assert SMTP_PASSWORD not in repr(deliveries)
    assert SMTP_PASSWORD not in _all_log_text(caplog)


@pytest.mark.component
def test_email_with_a_wrong_password_fails_without_leaking_it(
    smtp_sink: SmtpSink, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    wrong = "Wr0ng-Passw0rd-42"
    url = (
        f"mailto://{SMTP_USER}:{wrong}@{LOOPBACK}:{smtp_sink.port}"
        "?from=mlops@example.com&to=team@example.com&mode=insecure"
    )
    (delivery,) = notify.notify("test", targets=[notify_targets.Target("email", url)])

    assert not delivery.ok and delivery.error
    assert smtp_sink.messages == []
    assert wrong not in repr(delivery) and wrong not in _all_log_text(caplog)
    assert any("failed" in r.getMessage() and r.levelno == logging.WARNING for r in caplog.records)


@pytest.mark.component
def test_slack_webhook_payload_reaches_a_local_server(
    http_sink: HttpSink, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    monkeypatch.setattr(NotifySlack, "webhook_url", f"{http_sink.base}/services")
    monkeypatch.setenv("SLACK_WEBHOOK", SLACK_HOOK)

    deliveries = notify.notify(
        "awaiting_approval", version=13, metrics=METRICS, improvement=0.004, report=REPORT
    )

    (delivery,) = deliveries
    assert delivery.ok and delivery.kind == "slack" and delivery.target_label.startswith("slack")
    assert not any(token in delivery.target_label for token in SLACK_TOKENS)
    (request,) = http_sink.requests
    assert request.path == "/services/{}/{}/{}".format(*SLACK_TOKENS)
    payload = request.json()
    assert payload["mrkdwn"] is True
    (attachment,) = payload["attachments"]
    assert attachment["title"] == "[mlops] Model v13 awaits approval"
    for expected in ("v13", "roc_auc 0.7912", "+0.0040", REPORT, "python runner.py approve 13"):
        assert expected in attachment["text"]
    logs = _all_log_text(caplog)
    assert not any(token in logs for token in SLACK_TOKENS)


@pytest.mark.component
def test_teams_workflow_payload_reaches_a_local_tls_server(
    https_sink: HttpSink, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    url = f"workflows://{LOOPBACK}:{https_sink.port}/{TEAMS_WORKFLOW}/{TEAMS_SIG}/"
    target = notify_targets.targets_from_env({"TEAMS_WEBHOOK": url})[0]

    (delivery,) = notify.notify(
        "rejected", version=14, reason="score 42 < 50", metrics=METRICS, targets=[target]
    )

    assert delivery.ok and delivery.kind == "teams"
    assert TEAMS_SIG not in delivery.target_label and TEAMS_WORKFLOW not in delivery.target_label
    (request,) = https_sink.requests
    assert urlsplit(request.path).path == (
        f"/workflows/{TEAMS_WORKFLOW}/triggers/manual/paths/invoke"
    )
    assert request.query["sig"] == [TEAMS_SIG]
    assert request.query["api-version"] == ["2016-06-01"]
    payload = request.json()
    assert payload["type"] == "message"
    (attachment,) = payload["attachments"]
    assert attachment["contentType"] == "application/vnd.microsoft.card.adaptive"
    blocks = {b.get("id"): b for b in attachment["content"]["body"] if b["type"] == "TextBlock"}
    assert blocks["title"]["text"] == "[mlops] Model v14 rejected"
    assert "- Reason: score 42 < 50" in blocks["body"]["text"]
    assert "v14" in blocks["body"]["text"]
    logs = _all_log_text(caplog)
    assert TEAMS_SIG not in logs and TEAMS_WORKFLOW not in logs


@pytest.mark.component
def test_pagerduty_gets_rollbacks_on_a_local_server_and_not_routine_deploys(
    http_sink: HttpSink, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    monkeypatch.setitem(
        apprise_pagerduty.PAGERDUTY_API_LOOKUP, "us", f"{http_sink.base}/v2/enqueue"
    )
    monkeypatch.setenv("PAGERDUTY_KEY", PD_KEY)

    assert notify.notify("deployed", version=15, metrics=METRICS) == []
    assert http_sink.requests == []

    deliveries = notify.notify("rolled_back", version=15, reason="error rate 7% > 2%")
    assert [(d.kind, d.ok) for d in deliveries] == [("pagerduty", True)]
    assert PD_KEY not in deliveries[0].target_label
    (request,) = http_sink.requests
    assert request.path == "/v2/enqueue"
    payload = request.json()
    assert payload["routing_key"] == PD_KEY
    assert payload["event_action"] == "trigger"
    assert payload["payload"]["severity"] == "critical"
    assert payload["payload"]["source"] == notify_targets.PAGERDUTY_SOURCE
    assert payload["payload"]["component"] == notify_targets.PAGERDUTY_COMPONENT
    assert "[mlops] Model v15 rolled back" in payload["payload"]["summary"]
    assert "Reason: error rate 7% > 2%" in payload["payload"]["summary"]
    assert PD_KEY not in _all_log_text(caplog)


@pytest.mark.component
def test_send_test_reaches_every_target_including_pagerduty(
    http_sink: HttpSink, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(
        apprise_pagerduty.PAGERDUTY_API_LOOKUP, "us", f"{http_sink.base}/v2/enqueue"
    )
    monkeypatch.setenv("PAGERDUTY_KEY", PD_KEY)
    monkeypatch.setenv("NOTIFY_URLS", f"json://{LOOPBACK}:{http_sink.port}/test")

    deliveries = notify.notify("test")

    assert [(d.kind, d.ok) for d in deliveries] == [("pagerduty", True), ("other", True)]
    paths = sorted(r.path for r in http_sink.requests)
    assert paths == ["/test", "/v2/enqueue"]
    json_payload = next(r.json() for r in http_sink.requests if r.path == "/test")
    assert json_payload["title"] == "[mlops] Test notification"


# --- routing by apprise tags -------------------------------------------------------------------


@pytest.mark.component
def test_tags_route_each_event_only_to_the_targets_subscribed_to_it(http_sink: HttpSink) -> None:
    base = f"json://{LOOPBACK}:{http_sink.port}"
    env = {
        "NOTIFY_URLS": f"rollback,failure={base}/ops {base}/all, deploy={base}/releases",
        "PAGERDUTY_KEY": f"deploy={PD_KEY}",
    }
    targets = notify_targets.targets_from_env(env)
    assert [t.tags for t in targets] == [
        frozenset({"deploy"}),  # PagerDuty's default (rollbacks and alerts) overridden
        frozenset({"rollback", "failure"}),
        frozenset({"always"}),  # no tags: every event
        frozenset({"deploy"}),
    ]
    assert targets[0].url.startswith(f"pagerduty://{PD_KEY}@")
    web = targets[1:]

    def paths(event: str) -> list[str]:
        http_sink.requests.clear()
        deliveries = notify.notify(event, version=3, reason="why", targets=web)
        assert all(d.ok for d in deliveries)
        assert [d.target_label.rsplit("/", 1)[1] for d in deliveries] == [
            r.path.lstrip("/") for r in http_sink.requests
        ]
        return [r.path for r in http_sink.requests]

    assert paths("rolled_back") == ["/ops", "/all"]  # by alias
    assert paths("alert") == ["/ops", "/all"]  # by level: failure
    assert paths("deployed") == ["/all", "/releases"]
    assert paths("awaiting_approval") == ["/all"]
    only_alerts = notify_targets.Target("other", f"{base}/pager", events=frozenset({"alert"}))
    assert notify.notify("deployed", targets=[only_alerts]) == []
    assert [d.ok for d in notify.notify("alert", targets=[only_alerts])] == [True]
    assert notify_targets.event_tags("rolled_back") == {"rolled_back", "failure", "rollback"}


def test_a_tag_prefix_is_not_part_of_the_url_or_its_secrets(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    (target,) = notify_targets.targets_from_env(
        {"SLACK_WEBHOOK": f"rollback, failure = {SLACK_HOOK}"}
    )
    assert target.tags == {"rollback", "failure"} and target.error is None
    assert target.url == apprise.Apprise.instantiate(SLACK_HOOK).url()
    (plain,) = notify_targets.targets_from_env({"NOTIFY_URLS": "json://h/x?a=b"})
    assert plain.tags == {"always"} and plain.url.startswith("json://h/x?")
    monkeypatch.setenv("SLACK_WEBHOOK", f"rollback={SLACK_HOOK}")
    assert redaction.redact(f"rollback to {SLACK_HOOK}") == "rollback to ***"
    assert not any(t in redaction.redact(" ".join(SLACK_TOKENS)) for t in SLACK_TOKENS)


# --- apprise configuration files (NOTIFY_CONFIG) ------------------------------------------------


@pytest.mark.component
@pytest.mark.parametrize("fmt", ["yaml", "text"])
def test_a_config_file_routes_events_by_its_tags_to_real_receivers(
    fmt: str,
    http_sink: HttpSink,
    smtp_sink: SmtpSink,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    base = f"json://{LOOPBACK}:{http_sink.port}"
    mail = (
        f"mailto://{SMTP_USER}:{SMTP_PASSWORD}@{LOOPBACK}:{smtp_sink.port}"
        "?from=mlops@example.com&to=team@example.com&mode=insecure"
    )
    if fmt == "yaml":
        path = tmp_path / "notify.yaml"
        path.write_text(
            "urls:\n"
            f"  - {base}/ops:\n      tag: rollback, failure\n"
            f"  - {base}/releases:\n      tag: deploy\n"
            f"  - {mail}:\n      tag: failure\n"
            f"  - {base}/all\n"
        )
    else:
        path = tmp_path / "notify.txt"
        lines = [f"rollback, failure = {base}/ops", f"deploy={base}/releases", f"failure={mail}"]
        path.write_text("# apprise TEXT configuration\n" + "\n".join([*lines, f"{base}/all"]))
    monkeypatch.setenv("NOTIFY_CONFIG", str(path))

    rolled = notify.notify("rolled_back", version=4, reason="error rate 9% > 2%")
    assert [(d.kind, d.ok) for d in rolled] == [("other", True), ("email", True), ("other", True)]
    assert sorted(r.path for r in http_sink.requests) == ["/all", "/ops"]
    assert smtp_sink.messages[0]["Subject"] == "[mlops] Model v4 rolled back"
    http_sink.requests.clear()
    deployed = notify.notify("deployed", version=5)
    assert [d.target_label.rsplit("/", 1)[1] for d in deployed] == ["releases", "all"]
    assert sorted(r.path for r in http_sink.requests) == ["/all", "/releases"]
    assert SMTP_PASSWORD not in _all_log_text(caplog) + repr(rolled)


def test_a_missing_file_a_mistyped_url_or_tag_are_failed_targets_with_clear_errors(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    dead = _closed_port()
    missing = tmp_path / "nowhere.yaml"
    monkeypatch.setenv("NOTIFY_CONFIG", str(missing))
    (delivery,) = notify.notify("alert", reason="x")
    assert not delivery.ok and delivery.target_label == str(missing)
    assert delivery.error == f"NOTIFY_CONFIG: no such file: {missing}"
    assert "no such file" in caplog.text

    path = tmp_path / "notify.yaml"
    path.write_text(
        "urls:\n"
        f"  - jsn://{LOOPBACK}:{dead}/typo/{SMTP_PASSWORD}\n"
        f"  - json://{LOOPBACK}:{dead}/tagged:\n      tag: rollbak\n"
        f"  - json://{LOOPBACK}:{dead}/fine\n"
    )
    monkeypatch.setenv("NOTIFY_CONFIG", str(path))
    tagged, fine, broken = notify.notify("deployed", version=1)
    assert tagged.error and tagged.error.startswith("unknown tag(s) rollbak; tags are ")
    assert "rollback" in tagged.error and not tagged.ok
    assert fine.target_label.endswith("/fine") and "Connection error" in (fine.error or "")
    assert broken.target_label == str(path) and not broken.ok
    assert f"rejected entries of {path}: Unparseable URL jsn://" in (broken.error or "")
    assert SMTP_PASSWORD not in _all_log_text(caplog) + repr([tagged, fine, broken])


# --- failures -----------------------------------------------------------------------------------


@pytest.mark.component
def test_an_unreachable_target_is_reported_and_the_others_still_get_the_message(
    http_sink: HttpSink, smtp_sink: SmtpSink, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    dead = _closed_port()
    targets = [
        notify_targets.Target("other", f"json://{LOOPBACK}:{dead}/hook"),
        notify_targets.Target("other", f"json://{LOOPBACK}:{http_sink.port}/hook"),
        notify_targets.Target(
            "email",
            f"mailto://{SMTP_USER}:{SMTP_PASSWORD}@{LOOPBACK}:{smtp_sink.port}"
            "?from=mlops@example.com&to=team@example.com&mode=insecure",
        ),
        notify_targets.Target(
            "email", f"mailto://{LOOPBACK}:{dead}?from=a@example.com&mode=insecure"
        ),
    ]

    deliveries = notify.notify(
        "rolled_back", version=9, reason="smoke test failed", targets=targets
    )

    assert [d.ok for d in deliveries] == [False, True, True, False]
    assert deliveries[0].target_label == f"json://{LOOPBACK}:{dead}/hook"
    assert "Connection error" in (deliveries[0].error or "")
    assert "Connection error" in (deliveries[3].error or "")
    assert "smoke test failed" in http_sink.requests[0].json()["message"]
    assert smtp_sink.messages[0]["Subject"] == "[mlops] Model v9 rolled back"
    failed = [
        r for r in caplog.records if r.levelno == logging.WARNING and r.name == notify.log.name
    ]
    # one warning per failed target, naming the event and the cause; the target itself is named
    # by its label, or *** once a redacting filter is installed (runner.py installs one: a URL
    # without credentials is kept whole as a secret, since a webhook's path may be its token)
    assert len(failed) == 2
    for record, delivery in zip(failed, (deliveries[0], deliveries[3]), strict=True):
        text = record.getMessage()
        assert "notification rolled_back to " in text and "Connection error" in text, text
        assert delivery.target_label in text or "***" in text, text


@pytest.mark.component
def test_a_silent_server_costs_only_the_read_timeout() -> None:
    with socket.socket() as listener:
        listener.bind((LOOPBACK, 0))
        listener.listen(1)  # accepts connections in the kernel, never answers
        port = listener.getsockname()[1]
        target = notify_targets.Target("other", f"json://{LOOPBACK}:{port}/hook")
        (delivery,) = notify.notify("test", targets=[target], read_timeout=0.2)

    assert not delivery.ok
    assert "Connection error" in (delivery.error or "")


@pytest.mark.component
def test_timeouts_are_applied_unless_the_url_sets_them(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[Any] = []
    real_add = apprise.Apprise.add

    def spy(self: apprise.Apprise, service: Any, *args: Any, **kwargs: Any) -> Any:
        seen.append(service)  # the service apprise is about to notify
        return real_add(self, service, *args, **kwargs)

    monkeypatch.setattr(apprise.Apprise, "add", spy)
    dead = _closed_port()
    targets = [
        notify_targets.Target("other", f"json://{LOOPBACK}:{dead}/a"),
        notify_targets.Target("other", f"json://{LOOPBACK}:{dead}/b?cto=1.5&rto=2.5"),
    ]
    notify.notify("test", targets=targets, connect_timeout=2.0, read_timeout=3.0)

    assert [(s.socket_connect_timeout, s.socket_read_timeout) for s in seen] == [
        (2.0, 3.0),
        (1.5, 2.5),
    ]


def test_an_invalid_url_or_a_crashing_plugin_never_raises(monkeypatch: pytest.MonkeyPatch) -> None:
    bad = notify_targets.Target("other", "not a url at all")
    (delivery,) = notify.notify("alert", reason="x", targets=[bad])
    assert not delivery.ok and "unsupported notification URL" in (delivery.error or "")

    secret_url = f"json://user:{SMTP_PASSWORD}@{LOOPBACK}:9/x"

    def explode(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError(f"boom while sending to {secret_url}")

    monkeypatch.setattr(apprise.Apprise, "notify", explode)
    (delivery,) = notify.notify("alert", targets=[notify_targets.Target("other", secret_url)])
    assert not delivery.ok
    assert delivery.error is not None and delivery.error.startswith("RuntimeError: boom")
    assert SMTP_PASSWORD not in delivery.error


# --- redaction ----------------------------------------------------------------------------------


def _secret_env() -> dict[str, str]:
    return {
        "SLACK_WEBHOOK": SLACK_HOOK,
        "EMAIL_SMTP": f"mailtos://{SMTP_USER}:{SMTP_PASSWORD}@smtp.example.com?to=t@example.com",
        "TEAMS_WEBHOOK": TEAMS_HOOK,
        "PAGERDUTY_KEY": PD_KEY,
        "PAGERDUTY_API_KEY": "ApiKey-0987654321",
        "NOTIFY_URLS": "tgram://123456789:AAFbotTokenXYZ123/987654, json://127.0.0.1:1/x",
    }


def test_configured_values_and_their_parts_are_secret_and_the_rest_is_not(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for name, value in _secret_env().items():
        monkeypatch.setenv(name, value)

    for expected in (
        SLACK_HOOK,
        *SLACK_TOKENS,
        SMTP_PASSWORD,
        TEAMS_HOOK,
        TEAMS_SIG,
        TEAMS_WORKFLOW,
        PD_KEY,
        "ApiKey-0987654321",
        "AAFbotTokenXYZ123",
    ):
        assert redaction.redact(f"<{expected}>") == "<***>", expected
    for public in ("hooks.slack.com", "smtp.example.com", "services", "2016-06-01", "127.0.0.1"):
        assert redaction.redact(f"<{public}>") == f"<{public}>"


def test_redact_removes_every_secret_and_any_url_credentials(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    env = _secret_env()
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    text = (
        f"posting to {SLACK_HOOK} (token {SLACK_TOKENS[2]}); smtp login {SMTP_PASSWORD}; "
        f"teams sig={TEAMS_SIG}; pd {PD_KEY}; tg AAFbotTokenXYZ123; "
        "other https://bob:hunter2@db.internal/x and mailto://me@x.org:pw@mail.x.org:25 ok"
    )
    cleaned = redaction.redact(text)

    secrets = [SLACK_HOOK, *SLACK_TOKENS, SMTP_PASSWORD, TEAMS_SIG, PD_KEY, "AAFbotTokenXYZ123"]
    for secret in [*secrets, "hunter2", "bob:", ":pw@"]:
        assert secret not in cleaned
    assert "https://***@db.internal/x" in cleaned and "mailto://***@mail.x.org:25" in cleaned
    assert cleaned.startswith("posting to ***")
    assert redaction.redact("nothing secret here") == "nothing secret here"
    assert redaction.redact("key abc-Secret-123 here", ["abc-Secret-123"]) == "key *** here"


def test_redacting_filter_cleans_messages_args_and_tracebacks(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    for name, value in _secret_env().items():
        monkeypatch.setenv(name, value)
    caplog.set_level(logging.DEBUG)
    logger = logging.getLogger("tests.notify.redaction")
    flt = redaction.RedactingFilter()
    caplog.handler.addFilter(flt)
    try:
        logger.info("webhook %s and key %s", SLACK_HOOK, PD_KEY)
        try:
            raise ValueError(f"smtp said no to {SMTP_PASSWORD}")
        except ValueError:
            logger.exception("send failed for %s", TEAMS_HOOK)
    finally:
        caplog.handler.removeFilter(flt)

    logs = _all_log_text(caplog)
    for secret in (SLACK_HOOK, *SLACK_TOKENS, PD_KEY, SMTP_PASSWORD, TEAMS_SIG):
        assert secret not in logs
    assert "webhook *** and key ***" in logs and "ValueError: smtp said no to ***" in logs


def test_install_redacting_filter_covers_a_logger_and_its_handlers(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("PAGERDUTY_KEY", PD_KEY)
    records: list[logging.LogRecord] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(record)

    parent = logging.getLogger("tests.notify.install")
    child = logging.getLogger("tests.notify.install.child")
    handler = Keep()
    parent.addHandler(handler)
    parent.setLevel(logging.INFO)
    try:
        flt = redaction.install_redacting_filter(parent)
        assert redaction.install_redacting_filter(parent) is flt  # idempotent
        parent.info("direct %s", PD_KEY)
        child.info("propagated %s", PD_KEY)  # only the handler's filter sees this one
    finally:
        parent.removeHandler(handler)
        parent.removeFilter(flt)
        parent.setLevel(logging.NOTSET)

    assert [r.getMessage() for r in records] == ["direct ***", "propagated ***"]


@pytest.mark.component
def test_apprise_logging_is_capped_and_redacted(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv("SLACK_WEBHOOK", SLACK_HOOK)
    caplog.set_level(logging.DEBUG)
    apprise_log = logging.getLogger("apprise")
    assert apprise_log.level >= logging.WARNING
    assert any(isinstance(f, redaction.RedactingFilter) for f in apprise_log.filters)

    apprise_log.warning("Slack POST URL: %s", SLACK_HOOK)
    apprise_log.debug("Slack Payload for %s", SLACK_TOKENS[2])  # below the cap: never created

    logs = _all_log_text(caplog)
    assert "Slack POST URL: ***" in logs
    assert not any(token in logs for token in SLACK_TOKENS)

    # even if someone lowers the level, notify() puts the cap back before sending
    caplog.set_level(logging.DEBUG, logger="apprise")
    notify.notify(
        "test", targets=[notify_targets.Target("other", f"json://{LOOPBACK}:{_closed_port()}/")]
    )
    assert apprise_log.level >= logging.WARNING
