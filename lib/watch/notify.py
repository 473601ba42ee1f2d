"""Tell people what the pipeline did: deployments, approvals, rejections, rollbacks, alerts.

Delivery, URL parsing, redacted display of targets and routing are apprise's: a target is any URL
apprise accepts, including the native webhook URLs services hand out; `Target.label` is apprise's
``url(privacy=True)``; which targets get an event is decided by apprise tags. One apprise
instance per target, so a dead target costs only its own connect/read timeout and never stops the
others. Nothing here raises because a target failed: `notify()` returns one `Delivery` per target
that the event was routed to (ok or the redacted error) for the run summary, and logs the same.

Targets come from the environment (CI secrets), each an apprise URL or a service's own URL:

``SLACK_WEBHOOK``
    ``https://hooks.slack.com/services/T…/B…/XXXX`` as Slack gives it (apprise also takes
    ``hooks.slack-gov.com``, the ``/workflows/`` and ``/triggers/`` forms and ``slack://…``).
``EMAIL_SMTP``
    ``mailtos://USER:PASSWORD@smtp.example.com:587?from=mlops@example.com&to=team@example.com``
    (STARTTLS; ``&mode=ssl`` for implicit TLS; ``mailto://`` without ``mode`` is plain SMTP, for a
    trusted local relay only). USER and PASSWORD are URL-quoted (``@`` → ``%40``).
``TEAMS_WEBHOOK``
    A Teams *Workflows* (Power Automate) webhook URL, ``https://….logic.azure.com:443/workflows/…``
    or ``workflows://…``. The retired Office 365 connector URLs have no apprise plugin: such a value
    is logged as retired and reported as a failed target.
``PAGERDUTY_KEY``
    The Events API v2 integration (routing) key; it becomes ``pagerduty://KEY@APIKEY/…`` because
    apprise's plugin insists on an API key the Events API ignores (`PAGERDUTY_API_KEY`, else a
    non-secret placeholder). A full ``pagerduty://…`` URL is used as is.
``NOTIFY_URLS``
    Any apprise URLs, separated by whitespace or commas (a comma only separates URLs when the next
    character starts a new ``scheme://``, so ``mailto://…?to=a@x.org,b@x.org`` stays one URL).

Routing: every value may start with apprise's ``TAGS=`` prefix (its text-config syntax), e.g.
``NOTIFY_URLS="rollback,failure=json://ops.example.com/hook"``: that target then only gets the
events carrying one of those tags. An event carries its name, its level and a short alias
(`event_tags`: ``rolled_back`` → ``rolled_back, failure, rollback``). A target without tags gets
every event (apprise's ``always`` tag), except PagerDuty, which pages people and so defaults to
`PAGERDUTY_EVENTS`.

Each URL may carry ``cto=`` / ``rto=`` (connect / read timeout in seconds); without them
`notify()` applies `CONNECT_TIMEOUT` / `READ_TIMEOUT`.

Secrets never leave this module in clear: `Target` keeps the URL out of its repr; errors and log
lines go through `redact()`, which knows the configured values and the parts apprise itself hides
in ``url(privacy=True)``; apprise's logger (webhook URLs and payloads at DEBUG) is capped at
WARNING and, like urllib3's request log, gets a `RedactingFilter`; `install_redacting_filter()`
puts the same filter on the root logger's handlers.

``python runner.py rollback --reason "..."`` calls ``notify("rolled_back", version=...,
reason=...)`` after the rollback; ``python runner.py notify --test`` calls `send_test()`.
"""

from __future__ import annotations

import functools
import logging
import math
import os
import re
import threading
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl, quote, unquote, urlsplit

import apprise
from apprise.common import MATCH_ALWAYS_TAG
from apprise.result import AppriseResultStatus

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
# Short names a target may subscribe to, besides the event names and the levels.
ALIASES = {
    "deployed": "deploy",
    "awaiting_approval": "approval",
    "rejected": "reject",
    "rolled_back": "rollback",
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
_ENV_KINDS = {
    "SLACK_WEBHOOK": "slack",
    "EMAIL_SMTP": "email",
    "TEAMS_WEBHOOK": "teams",
    "PAGERDUTY_KEY": "pagerduty",
}
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
# apprise plugin class -> the family shown in the summary
_PLUGIN_KINDS = {
    "NotifySlack": "slack",
    "NotifyEmail": "email",
    "NotifyWorkflows": "teams",
    "NotifyPagerDuty": "pagerduty",
}
_SCHEME_RE = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")
_NEXT_URL_RE = re.compile(r",+(?=[A-Za-z][A-Za-z0-9+.-]*://)")
# apprise's text-config routing prefix: "tag1,tag2=scheme://..."
_TAGS_PREFIX_RE = re.compile(
    r"^\s*(?P<tags>[A-Za-z0-9_][A-Za-z0-9_,\s-]*?)\s*=\s*(?=[A-Za-z][A-Za-z0-9+.-]*://)"
)
# the same before a bare PagerDuty routing key
_TAGS_PREFIX_BARE_RE = re.compile(r"^\s*(?P<tags>[A-Za-z0-9_][A-Za-z0-9_,\s-]*?)\s*=\s*(?=\S)")
# Credentials in any URL: everything between "://" and the last "@" of the authority.
_USERINFO_RE = re.compile(r"([A-Za-z][A-Za-z0-9+.-]*://)[^\s/?#'\"<>]*@")
_TOKEN_RE = re.compile(r"[A-Za-z0-9_~+=%-]{8,}")
_URL_PARTS_RE = re.compile(r"[/:@?&=,#\s]+")
_SECRET_QUERY_KEYS = frozenset(
    {"sig", "signature", "token", "key", "apikey", "api_key", "password", "pass", "secret"}
)
_TIMEOUT_PARAM_RE = re.compile(r"[?&](cto|rto)=", re.I)
_RETIRED_TEAMS_RE = re.compile(
    r"^(msteams://|https?://[^/]*(webhook\.office\.com|office\.com/webhook))"
)
# Values that sit where secrets sit but are not secret (and are worth keeping readable).
_NOT_SECRET = frozenset({PAGERDUTY_NO_API_KEY, PAGERDUTY_SOURCE, PAGERDUTY_COMPONENT})

_registry_lock = threading.Lock()
_registered_secrets: set[str] = set()
_off_logged = False


def event_tags(event: str) -> frozenset[str]:
    """The apprise tags `event` is sent with: its name, its level and its alias."""
    return frozenset({event, LEVELS[event], *([ALIASES[event]] if event in ALIASES else [])})


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
    # apprise tags this target subscribes to (event names, levels, aliases); None: every event,
    # except PagerDuty which gets PAGERDUTY_EVENTS.
    events: frozenset[str] | None = None

    def __post_init__(self) -> None:
        # Registered so that log records mentioning any part of the URL are redacted.
        _register_secrets(_url_secrets(self.url))

    @property
    def tags(self) -> frozenset[str]:
        """The apprise tags the service gets; ``always`` matches every event."""
        if self.events is not None:
            return frozenset(self.events)
        return PAGERDUTY_EVENTS if self.kind == "pagerduty" else frozenset({MATCH_ALWAYS_TAG})

    @property
    def label(self) -> str:
        """apprise's privacy URL without its options: safe to print."""
        service = apprise.Apprise.instantiate(self.url)
        if service is None:
            return f"{self.kind}:{REDACTED}"
        shown = service.url(privacy=True).split("?", 1)[0]
        return redact(shown, _url_secrets(self.url)[1:])  # the parts, not the whole URL

    def wants(self, event: str) -> bool:
        """Whether `event` is routed here (the rule apprise's tag filter applies)."""
        return MATCH_ALWAYS_TAG in self.tags or bool(self.tags & event_tags(event))

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
        return {"kind": self.kind, "target": self.target_label, "ok": self.ok, "error": self.error}


# --- targets ------------------------------------------------------------------------------------


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


def split_tags(value: str, bare: bool = False) -> tuple[frozenset[str] | None, str]:
    """``"rollback,failure=json://…"`` -> ({rollback, failure}, ``json://…``) (apprise's syntax).

    `bare`: the value after the prefix may be a plain key (PAGERDUTY_KEY), not only a URL.
    """
    match = (_TAGS_PREFIX_BARE_RE if bare else _TAGS_PREFIX_RE).match(value)
    if not match:
        return None, value.strip()
    tags = frozenset(t.strip().lower() for t in re.split(r"[,\s]+", match["tags"]) if t.strip())
    return tags or None, value[match.end() :].strip()


def kind_of(url: str) -> str:
    """Which family apprise puts a URL in (slack/email/teams/pagerduty/other)."""
    service = apprise.Apprise.instantiate(url)
    return _PLUGIN_KINDS.get(type(service).__name__, "other") if service else "other"


def targets_from_env(environ: Mapping[str, str] | None = None) -> list[Target]:
    """Every target the environment configures, in a stable order, without duplicates."""
    env = os.environ if environ is None else environ
    found: list[Target] = []
    seen: set[str] = set()

    def add(kind: str, url: str, source: str, tags: frozenset[str] | None) -> None:
        if url and url not in seen:
            seen.add(url)
            found.append(Target(kind=kind, url=url, source=source, events=tags))

    for var, kind in _ENV_KINDS.items():
        tags, value = split_tags(env.get(var, ""), bare=var == "PAGERDUTY_KEY")
        if not value:
            continue
        if var == "PAGERDUTY_KEY":
            value = pagerduty_url(value, env.get("PAGERDUTY_API_KEY"))
        elif var == "TEAMS_WEBHOOK" and _RETIRED_TEAMS_RE.match(value):
            log.warning(
                "TEAMS_WEBHOOK looks like a retired Office 365 connector URL; apprise %s only "
                "supports Teams Workflows webhooks, so this target will fail",
                apprise.__version__,
            )
        add(kind, value, var, tags)
    for entry in split_urls(env.get("NOTIFY_URLS", "")):
        tags, url = split_tags(entry)
        add(kind_of(url), url, "NOTIFY_URLS", tags)
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


@functools.lru_cache(maxsize=512)
def _url_secrets(value: str) -> tuple[str, ...]:
    """A configured value and its secret parts: those apprise hides in ``url(privacy=True)``,
    URL credentials, secret query values and token-like path segments (webhook paths).

    Cached: the redacting log filter asks for every record."""
    value = split_tags(value)[1] if value else value
    found = [value]
    if not _SCHEME_RE.match(value):
        return tuple(found)
    service = apprise.Apprise.instantiate(value)
    if service is not None:
        shown = set(_URL_PARTS_RE.split(unquote(service.url(privacy=True))))
        full = _URL_PARTS_RE.split(unquote(service.url()))
        found.extend(p for p in full if p and p not in shown)
    try:
        parts = urlsplit(value)
    except ValueError:
        return tuple(found)
    userinfo = parts.netloc.rpartition("@")[0]
    if userinfo:
        found.append(userinfo)
        found.extend(p for p in userinfo.split(":")[1:] if p)
    found.extend(seg for seg in parts.path.split("/") if _looks_secret(unquote(seg)))
    for key, val in parse_qsl(parts.query):
        if val and (key.lower() in _SECRET_QUERY_KEYS or _looks_secret(val)):
            found.append(val)
    return tuple(found)


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
        raw.extend(split_urls(value) if var == "NOTIFY_URLS" else [value])
        if var == "PAGERDUTY_KEY":
            key = split_tags(value, bare=True)[1]
            raw.extend([key, pagerduty_url(key, env.get("PAGERDUTY_API_KEY"))])
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
        entry.message for entry in result.logs() if entry.level in ("WARNING", "ERROR", "CRITICAL")
    ]
    unique = list(dict.fromkeys(m.strip() for m in messages if m.strip()))
    return "; ".join(unique) or f"delivery failed ({result.status.name.lower()})"


def _deliver(
    target: Target, event: str, message: Message, connect_timeout: float, read_timeout: float
) -> Delivery | None:
    """Send to one target through apprise's tag filter; None when the event is not routed there.

    Every failure becomes a redacted error, never an exception.
    """
    label = target.label
    try:
        asset = _asset()
        service = apprise.Apprise.instantiate(target.url, asset=asset, tag=set(target.tags))
        if service is None:
            if not target.wants(event):
                return None
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
    """Send `event` to every target (default: `targets_from_env()`) its tags route it to.

    Returns one `Delivery` per target the event was routed to; failures are in the list and in
    the log, never raised. With no targets at all it returns [] and says once that notifications
    are off. An unknown `event` is a programming error and raises ValueError.
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


def send_test(targets: Sequence[Target] | None = None, **kwargs: Any) -> list[Delivery]:
    """A test message to every target, for ``python runner.py notify --test``."""
    return notify("test", targets=targets, **kwargs)
