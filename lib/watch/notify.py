"""Tell people what the pipeline did: deployments, approvals, rejections, rollbacks, alerts.

Delivery goes through `apprise`, one apprise instance per target, so a dead target costs only its
own connect/read timeout and never stops the others. Nothing here raises because a target failed:
`notify()` returns one `Delivery` per target (ok or the redacted error) for the run summary, and
logs the same, redacted.

Targets come from the environment (CI secrets):

``SLACK_WEBHOOK``
    The incoming-webhook URL Slack gives, ``https://hooks.slack.com/services/T…/B…/XXXX`` (also
    ``hooks.slack-gov.com`` and the ``/workflows/`` and ``/triggers/`` forms); it becomes
    apprise's ``slack://T…/B…/XXXX``. An apprise URL (``slack://…``) is used as is.
``EMAIL_SMTP``
    An apprise mail URL, used as is::

        mailtos://USER:PASSWORD@smtp.example.com:587?from=mlops@example.com&to=team@example.com

    ``mailtos://`` is STARTTLS (default port 587); add ``&mode=ssl`` for implicit TLS (465).
    ``mailto://`` without ``mode`` is plain SMTP (port 25) and is only for a trusted local relay.
    Add ``&smtp=HOST`` when the SMTP server is not the host of the URL, and several recipients as
    ``to=a@example.com,b@example.com``. USER and PASSWORD are URL-quoted (``@`` → ``%40``).
``TEAMS_WEBHOOK``
    The URL of a Teams *Workflows* (Power Automate) webhook,
    ``https://….logic.azure.com:443/workflows/ID/triggers/manual/paths/invoke?…&sig=SIG`` (or the
    ``…/powerautomate/automations/direct/workflows/…`` form); it becomes apprise's
    ``workflows://HOST:PORT/ID/SIG/``. An apprise ``workflows://`` URL is used as is. The old
    Office 365 connector URLs (``…webhook.office.com/webhookb2/…``, ``msteams://``) are retired by
    Microsoft and apprise 2.3 has no plugin for them: such a value is reported as a failed target.
``PAGERDUTY_KEY``
    The Events API v2 integration (routing) key; it becomes ``pagerduty://KEY@APIKEY/…``.
    apprise's plugin insists on an API key too and sends it as ``Authorization: Token token=…``;
    the Events API ignores that header, so without ``PAGERDUTY_API_KEY`` a non-secret placeholder
    is used. A full ``pagerduty://ROUTING_KEY@API_KEY/SOURCE/COMPONENT?region=eu`` URL is used as
    is. PagerDuty pages people, so it only gets ``rolled_back``, ``alert`` and ``test`` (see
    `PAGERDUTY_EVENTS`; a `Target` with explicit ``events`` overrides that).
``NOTIFY_URLS``
    Any apprise URLs, separated by whitespace or commas. A comma only separates URLs when the next
    character starts a new ``scheme://``, so ``mailto://…?to=a@x.org,b@x.org`` stays one URL.

Each apprise URL may carry ``cto=`` / ``rto=`` (connect / read timeout in seconds); without them
`notify()` applies `CONNECT_TIMEOUT` / `READ_TIMEOUT`, so an unreachable target costs seconds.

Secrets never leave this module in clear: `Target` keeps the URL out of its repr and exposes a
redacted `Target.label`; errors and log lines go through `redact()`; apprise's own logger (which
logs webhook URLs and payloads at DEBUG) is capped at WARNING and, like urllib3's request log,
gets a `RedactingFilter`; `install_redacting_filter()` puts the same filter on the root logger's
handlers.

The mission's ``notify.py --rollback --reason "..."`` is ``python runner.py rollback --reason
"..."``: after the rollback the runner calls ``notify("rolled_back", version=..., reason=...)``.
``python runner.py notify --test`` calls `send_test()`.
"""

from __future__ import annotations

import logging
import math
import os
import re
import threading
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl, quote, unquote, urlencode, urlsplit

import apprise

log = logging.getLogger(__name__)

EVENTS = ("deployed", "awaiting_approval", "rejected", "rolled_back", "alert", "test")
LEVELS = {
    "deployed": "success",
    "awaiting_approval": "warning",
    "rejected": "warning",
    "rolled_back": "failure",
    "alert": "failure",
    "test": "info",
}
KINDS = ("slack", "email", "teams", "pagerduty", "other")
ENV_VARS = (
    "SLACK_WEBHOOK",
    "EMAIL_SMTP",
    "TEAMS_WEBHOOK",
    "PAGERDUTY_KEY",
    "PAGERDUTY_API_KEY",
    "NOTIFY_URLS",
)
# Events worth waking someone up for; the others would open incidents for routine work.
PAGERDUTY_EVENTS = frozenset({"rolled_back", "alert", "test"})
PAGERDUTY_SOURCE = "mlops-pipeline"
PAGERDUTY_COMPONENT = "model-service"
# apprise requires an API key the Events API v2 never checks; this stands in when none is given.
PAGERDUTY_NO_API_KEY = "events-api-v2"
CONNECT_TIMEOUT = 5.0
READ_TIMEOUT = 15.0
TITLE_PREFIX = "[mlops]"
REDACTED = "***"
# Shorter values are not replaced inside text: they would shred ordinary words.
MIN_SECRET_LEN = 4

_NOTIFY_TYPES = {
    "info": apprise.NotifyType.INFO,
    "success": apprise.NotifyType.SUCCESS,
    "warning": apprise.NotifyType.WARNING,
    "failure": apprise.NotifyType.FAILURE,
}
_SCHEME_RE = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")
_NEXT_URL_RE = re.compile(r",+(?=[A-Za-z][A-Za-z0-9+.-]*://)")
# Credentials in any URL: everything between "://" and the last "@" of the authority.
_USERINFO_RE = re.compile(r"([A-Za-z][A-Za-z0-9+.-]*://)[^\s/?#'\"<>]*@")
_TOKEN_RE = re.compile(r"[A-Za-z0-9_~+=%-]{8,}")
_SECRET_QUERY_KEYS = frozenset(
    {
        "sig",
        "signature",
        "token",
        "key",
        "apikey",
        "api_key",
        "integrationkey",
        "routing_key",
        "password",
        "pass",
        "secret",
        "auth",
        "access_token",
    }
)
_TIMEOUT_PARAM_RE = re.compile(r"[?&](cto|rto)=", re.I)
_SLACK_HOOK_RE = re.compile(
    r"^https?://hooks\.slack(?P<gov>-gov)?\.com/services/"
    r"(?P<a>[A-Za-z0-9]+)/(?P<b>[A-Za-z0-9]+)/(?P<c>[A-Za-z0-9]+)/?$"
)
_SLACK_WORKFLOW_RE = re.compile(
    r"^https?://hooks\.slack\.com/(?P<kind>workflows|triggers)/(?P<path>[A-Za-z0-9][A-Za-z0-9/_-]*?)/?$"
)
_TEAMS_PATH_RE = re.compile(
    r"^(?P<pa>/powerautomate/automations/direct(?:/cu/(?P<route>[0-9]+))?)?"
    r"/workflows/(?P<workflow>[A-Za-z0-9_-]+)/triggers/manual/paths/invoke/?$"
)
_RETIRED_TEAMS_RE = re.compile(
    r"^(msteams://|https?://[^/]*(webhook\.office\.com|office\.com/webhook))"
)

# Values that sit where secrets sit but are not secret (and are worth keeping readable).
_NOT_SECRET = frozenset({PAGERDUTY_NO_API_KEY, PAGERDUTY_SOURCE, PAGERDUTY_COMPONENT})

_registry_lock = threading.Lock()
_registered_secrets: set[str] = set()
_off_logged = False


@dataclass(frozen=True)
class Message:
    """What every target receives; `body` is a short markdown list, readable as plain text."""

    title: str
    body: str
    level: str


@dataclass(frozen=True)
class Target:
    """One place to notify. The URL holds credentials: it stays out of repr and logs."""

    kind: str
    url: str = field(repr=False)
    source: str = "explicit"
    # None: every event, except PagerDuty which gets PAGERDUTY_EVENTS.
    events: frozenset[str] | None = None

    def __post_init__(self) -> None:
        # Registered so that log records mentioning any part of the URL are redacted.
        _register_secrets(_url_secrets(self.url))

    @property
    def label(self) -> str:
        """A description that is safe to print."""
        return _label(self.kind, self.url)

    def wants(self, event: str) -> bool:
        """Whether this target should get `event`."""
        if self.events is not None:
            return event in self.events
        return self.kind != "pagerduty" or event in PAGERDUTY_EVENTS

    def __str__(self) -> str:
        return self.label


@dataclass(frozen=True)
class Delivery:
    """The outcome for one target, safe to put in the run summary."""

    kind: str
    target_label: str
    ok: bool
    error: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """Plain data for JSON summaries."""
        return {
            "kind": self.kind,
            "target": self.target_label,
            "ok": self.ok,
            "error": self.error,
        }


# --- targets ------------------------------------------------------------------------------------


def slack_url(webhook: str) -> str:
    """Slack's incoming-webhook URL in apprise form; anything else unchanged."""
    value = webhook.strip()
    match = _SLACK_HOOK_RE.match(value)
    if match:
        url = f"slack://{match['a']}/{match['b']}/{match['c']}/"
        return url + "?mode=gov-hook" if match["gov"] else url
    match = _SLACK_WORKFLOW_RE.match(value)
    if match:
        mode = "trigger" if match["kind"] == "triggers" else "workflow"
        return f"slack://{match['path']}/?mode={mode}"
    return value


def teams_url(webhook: str) -> str:
    """A Teams Workflows webhook URL in apprise's ``workflows://`` form; anything else unchanged."""
    value = webhook.strip()
    if not value.lower().startswith(("https://", "http://")):
        return value
    try:
        parts = urlsplit(value)
        port = parts.port
    except ValueError:
        return value
    match = _TEAMS_PATH_RE.match(parts.path)
    query = dict(parse_qsl(parts.query))
    if not match or not parts.hostname or not query.get("sig"):
        return value
    params: dict[str, str] = {}
    if match["pa"]:
        params["pa"] = "yes"
    if match["route"]:
        params["route"] = match["route"]
    if query.get("api-version"):
        params["ver"] = query["api-version"]
    host = parts.hostname + (f":{port}" if port else "")
    url = f"workflows://{host}/{match['workflow']}/{query['sig']}/"
    return url + ("?" + urlencode(params) if params else "")


def pagerduty_url(key: str, api_key: str | None = None) -> str:
    """An Events API v2 routing key as a ``pagerduty://`` URL; a URL is returned unchanged."""
    value = key.strip()
    if _SCHEME_RE.match(value):
        return value
    api = (api_key or "").strip() or PAGERDUTY_NO_API_KEY
    return (
        f"pagerduty://{quote(value, safe='')}@{quote(api, safe='')}"
        f"/{PAGERDUTY_SOURCE}/{PAGERDUTY_COMPONENT}"
    )


def split_urls(value: str) -> list[str]:
    """Split NOTIFY_URLS on whitespace, and on commas only where a new ``scheme://`` starts."""
    urls: list[str] = []
    for chunk in value.split():
        for piece in _NEXT_URL_RE.split(chunk):
            piece = piece.strip(",")
            if piece:
                urls.append(piece)
    return urls


def kind_of(url: str) -> str:
    """Which family a URL belongs to, for the summary (slack/email/teams/pagerduty/other)."""
    lowered = url.strip().lower()
    scheme = lowered.split("://", 1)[0] if "://" in lowered else ""
    if scheme == "slack" or _SLACK_HOOK_RE.match(url) or _SLACK_WORKFLOW_RE.match(url):
        return "slack"
    if scheme in ("mailto", "mailtos"):
        return "email"
    if scheme in ("workflow", "workflows", "msteams") or teams_url(url) != url.strip():
        return "teams"
    if scheme == "pagerduty":
        return "pagerduty"
    return "other"


def targets_from_env(environ: Mapping[str, str] | None = None) -> list[Target]:
    """Every target the environment configures, in a stable order, without duplicates."""
    env = os.environ if environ is None else environ
    found: list[Target] = []
    seen: set[str] = set()

    def add(kind: str, url: str, source: str) -> None:
        if url and url not in seen:
            seen.add(url)
            found.append(Target(kind=kind, url=url, source=source))

    slack = env.get("SLACK_WEBHOOK", "").strip()
    if slack:
        add("slack", slack_url(slack), "SLACK_WEBHOOK")
    email = env.get("EMAIL_SMTP", "").strip()
    if email:
        add("email", email, "EMAIL_SMTP")
    teams = env.get("TEAMS_WEBHOOK", "").strip()
    if teams:
        if _RETIRED_TEAMS_RE.match(teams):
            log.warning(
                "TEAMS_WEBHOOK looks like a retired Office 365 connector URL; apprise %s only "
                "supports Teams Workflows webhooks (workflows://), so this target will fail",
                apprise.__version__,
            )
        add("teams", teams_url(teams), "TEAMS_WEBHOOK")
    pagerduty = env.get("PAGERDUTY_KEY", "").strip()
    if pagerduty:
        add("pagerduty", pagerduty_url(pagerduty, env.get("PAGERDUTY_API_KEY")), "PAGERDUTY_KEY")
    for url in split_urls(env.get("NOTIFY_URLS", "")):
        kind = kind_of(url)
        if kind == "slack":
            url = slack_url(url)
        elif kind == "teams":
            url = teams_url(url)
        add(kind, url, "NOTIFY_URLS")
    return found


# --- redaction ----------------------------------------------------------------------------------


def _looks_secret(value: str) -> bool:
    """Token-like: 8+ chars without dots or spaces, mixing digits/letters or cases, or 20+."""
    if not _TOKEN_RE.fullmatch(value):
        return False
    has_digit = any(c.isdigit() for c in value)
    has_alpha = any(c.isalpha() for c in value)
    mixed_case = any(c.isupper() for c in value) and any(c.islower() for c in value)
    return (has_digit and has_alpha) or mixed_case or len(value) >= 20


def _is_hostname(host: str) -> bool:
    return "." in host or host.lower() == "localhost" or host.startswith("[")


def _split_netloc(netloc: str) -> tuple[str, str]:
    """(userinfo, host without port) of a URL authority."""
    userinfo, _, hostport = netloc.rpartition("@")
    host = hostport
    if not hostport.startswith("[") and hostport.count(":") == 1:
        host, _, port = hostport.partition(":")
        if not port.isdigit():
            host = hostport
    return userinfo, host


def _url_secrets(value: str) -> list[str]:
    """A configured value and the parts of it that are secret on their own."""
    value = value.strip()
    found = [value]
    if not _SCHEME_RE.match(value):
        return found
    try:
        parts = urlsplit(value)
    except ValueError:
        return found
    userinfo, host = _split_netloc(parts.netloc)
    if userinfo:
        found.append(userinfo)
        user, _, password = userinfo.partition(":")
        if password:
            found.append(password)
        if user and _looks_secret(unquote(user)):
            found.append(user)
    if host and not _is_hostname(host):
        # Apprise schemes put tokens where a host would be (slack://T…/, tgram://ID:TOKEN/).
        found.extend([host, *host.split(":")])
    found.extend(seg for seg in parts.path.split("/") if _looks_secret(unquote(seg)))
    for key, val in parse_qsl(parts.query):
        if val and (key.lower() in _SECRET_QUERY_KEYS or _looks_secret(val)):
            found.append(val)
    return found


def _normalize(values: Iterable[str]) -> list[str]:
    """Unique secrets with their quoted/unquoted spellings, longest first."""
    out: set[str] = set()
    for value in values:
        for part in _url_secrets(value):
            plain = unquote(part)
            for variant in (part, plain, quote(part, safe=""), quote(plain, safe="")):
                if len(variant) >= MIN_SECRET_LEN and variant not in _NOT_SECRET:
                    out.add(variant)
    return sorted(out, key=lambda s: (-len(s), s))


def secret_values(environ: Mapping[str, str] | None = None) -> list[str]:
    """The secret values the notification variables hold, with their tokens and passwords."""
    env = os.environ if environ is None else environ
    raw: list[str] = []
    for var in ENV_VARS:
        value = env.get(var, "").strip()
        if not value:
            continue
        pieces = split_urls(value) if var == "NOTIFY_URLS" else [value]
        raw.extend(pieces)
        if var == "SLACK_WEBHOOK":
            raw.append(slack_url(value))
        elif var == "TEAMS_WEBHOOK":
            raw.append(teams_url(value))
        elif var == "PAGERDUTY_KEY":
            raw.append(pagerduty_url(value, env.get("PAGERDUTY_API_KEY")))
    return _normalize(raw)


def _register_secrets(values: Iterable[str]) -> None:
    with _registry_lock:
        _registered_secrets.update(v for v in values if v)


def _known_secrets() -> list[str]:
    with _registry_lock:
        registered = list(_registered_secrets)
    return _normalize([*secret_values(), *registered])


def redact(text: str, secrets: Iterable[str] | None = None) -> str:
    """`text` with every secret and every URL credential replaced by ``***``.

    Without `secrets`, the configured ones are used: the environment's and those of every
    `Target` created in this process. URL-shaped secrets also have their parts removed.
    """
    if not text:
        return text
    values = _known_secrets() if secrets is None else _normalize(secrets)
    for value in values:
        if value in text:
            text = text.replace(value, REDACTED)
    return _USERINFO_RE.sub(rf"\1{REDACTED}@", text)


class RedactingFilter(logging.Filter):
    """Redacts secrets from log records; put it on handlers (and on loggers that log secrets).

    A filter on a logger only sees records logged through that very logger, not those propagated
    from its children, which is why `install_redacting_filter` also adds it to the handlers.
    """

    def __init__(self, secrets: Iterable[str] | None = None, name: str = "") -> None:
        super().__init__(name)
        self._secrets = None if secrets is None else list(secrets)

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # a broken record is the handler's problem, not ours
            return True
        cleaned = redact(message, self._secrets)
        if cleaned != message:
            record.msg, record.args = cleaned, None
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = redact(record.exc_text, self._secrets)
        if record.stack_info:
            record.stack_info = redact(record.stack_info, self._secrets)
        return True


def install_redacting_filter(logger: logging.Logger | None = None) -> RedactingFilter:
    """Add one `RedactingFilter` to `logger` (root by default) and to each of its handlers."""
    logger = logger if logger is not None else logging.getLogger()
    existing = next((f for f in logger.filters if isinstance(f, RedactingFilter)), None)
    flt = existing or RedactingFilter()
    if existing is None:
        logger.addFilter(flt)
    for handler in logger.handlers:
        if not any(isinstance(f, RedactingFilter) for f in handler.filters):
            handler.addFilter(flt)
    return flt


# Loggers that write webhook URLs (tokens in the path or query) on their own: apprise at
# DEBUG/TRACE (URLs and payloads), urllib3 at DEBUG (every request line).
_URL_LOGGERS = ("apprise", "urllib3.connectionpool", "urllib3.poolmanager", "urllib3.util.retry")


def _harden_apprise_logging() -> None:
    """Cap apprise at WARNING and redact what apprise and urllib3 log about our requests."""
    for name in _URL_LOGGERS:
        logger = logging.getLogger(name)
        if not any(isinstance(f, RedactingFilter) for f in logger.filters):
            logger.addFilter(RedactingFilter())
    apprise_log = logging.getLogger("apprise")
    if apprise_log.level < logging.WARNING:
        apprise_log.setLevel(logging.WARNING)


_harden_apprise_logging()


def _label(kind: str, url: str) -> str:
    """A redacted description: the kind, and for mail and generic URLs the server it talks to."""
    if kind in ("slack", "teams", "pagerduty"):
        return f"{kind}:{REDACTED}"
    value = url.strip()
    if not _SCHEME_RE.match(value):
        return f"{kind}:{REDACTED}"
    try:
        parts = urlsplit(value)
        port = parts.port
    except ValueError:
        return f"{kind}:{REDACTED}"
    userinfo, host = _split_netloc(parts.netloc)
    if kind == "email":
        host = dict(parse_qsl(parts.query)).get("smtp") or host
    shown = host if host and _is_hostname(host) and not _looks_secret(host) else REDACTED
    label = f"{parts.scheme}://{REDACTED + '@' if userinfo else ''}{shown}"
    label += f":{port}" if port else ""
    if kind != "email" and (parts.path.strip("/") or parts.query):
        label += f"/{REDACTED}"
    return label


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
    """The title and body for `event`: version, key metrics, improvement, reason, report.

    The body is a markdown bullet list: plain text in Slack and PagerDuty, a list in Teams and in
    the HTML e-mail. `improvement` is candidate minus production on the selection metric.
    Configured secrets are removed from both title and body.
    """
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
        entry.message
        for service in result.results
        for entry in service.logs()
        if entry.level in ("WARNING", "ERROR", "CRITICAL")
    ]
    messages += [
        entry.message
        for entry in result.call_logs()
        if entry.level in ("WARNING", "ERROR", "CRITICAL")
    ]
    unique = list(dict.fromkeys(m.strip() for m in messages if m.strip()))
    return "; ".join(unique) or f"delivery failed ({result.status.name.lower()})"


def _deliver(
    target: Target, message: Message, connect_timeout: float, read_timeout: float
) -> Delivery:
    """Send to one target; every failure becomes a redacted error, never an exception."""
    label = target.label
    secrets = _url_secrets(target.url)
    try:
        asset = _asset()
        service = apprise.Apprise.instantiate(target.url, asset=asset)
        if service is None:
            return Delivery(
                target.kind,
                label,
                False,
                f"invalid or unsupported notification URL for apprise {apprise.__version__}",
            )
        if not _TIMEOUT_PARAM_RE.search(target.url):
            service.socket_connect_timeout = connect_timeout
            service.socket_read_timeout = read_timeout
        sender = apprise.Apprise(asset=asset)
        sender.add(service)
        result = sender.notify(
            body=message.body,
            title=message.title,
            notify_type=_NOTIFY_TYPES[message.level],
            body_format=apprise.NotifyFormat.MARKDOWN,
            log_level=logging.WARNING,
        )
        if result:
            return Delivery(target.kind, label, True)
        error = _failure_text(result)
    except Exception as exc:  # a notification must never break the run
        error = f"{type(exc).__name__}: {exc}"
    return Delivery(target.kind, label, False, redact(redact(error, secrets)))


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
    """Send `event` to every target (default: `targets_from_env()`), one at a time.

    Returns one `Delivery` per target that wants the event; failures are in the list and in the
    log, never raised. With no targets at all it returns [] and says once that notifications are
    off. An unknown `event` is a programming error and raises ValueError.
    """
    global _off_logged
    message = build_message(event, version, metrics, improvement, report, reason, details)
    chosen = targets_from_env() if targets is None else list(targets)
    if not chosen:
        with _registry_lock:
            first, _off_logged = not _off_logged, True
        if first:
            log.info(
                "notifications are off: set SLACK_WEBHOOK, EMAIL_SMTP, TEAMS_WEBHOOK, "
                "PAGERDUTY_KEY or NOTIFY_URLS to turn them on"
            )
        return []
    _harden_apprise_logging()
    deliveries: list[Delivery] = []
    for target in chosen:
        if not target.wants(event):
            log.debug("%s: not sent to %s (not one of its events)", event, target.label)
            continue
        delivery = _deliver(target, message, connect_timeout, read_timeout)
        deliveries.append(delivery)
        if delivery.ok:
            log.info("notification %s sent to %s", event, delivery.target_label)
        else:
            log.warning(
                "notification %s to %s failed: %s", event, delivery.target_label, delivery.error
            )
    return deliveries


def send_test(targets: Sequence[Target] | None = None, **kwargs: Any) -> list[Delivery]:
    """A test message to every target, for ``python runner.py notify --test``."""
    return notify("test", targets=targets, **kwargs)
