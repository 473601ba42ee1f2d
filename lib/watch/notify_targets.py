"""Where notifications go: the targets the environment configures and which events each gets.

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

The syntax of these values is in `lib.watch.notify_urls`; a `Target` registers its URL with
`lib.watch.redaction` so that no log line shows it.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field

import apprise
from apprise.common import MATCH_ALWAYS_TAG

from lib.watch.notify_urls import pagerduty_url, split_tags, split_urls
from lib.watch.redaction import REDACTED, redact, register_secrets, url_secrets

__all__ = [
    "ALIASES", "EVENTS", "KINDS", "LEVELS", "PAGERDUTY_EVENTS", "Target", "event_tags",
    "kind_of", "targets_from_env",
]  # fmt: skip

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
_ENV_KINDS = {
    "SLACK_WEBHOOK": "slack",
    "EMAIL_SMTP": "email",
    "TEAMS_WEBHOOK": "teams",
    "PAGERDUTY_KEY": "pagerduty",
}
# Events worth waking someone up for; the others would open incidents for routine work.
PAGERDUTY_EVENTS = frozenset({"rolled_back", "alert", "test"})

# apprise plugin class -> the family shown in the summary
_PLUGIN_KINDS = {
    "NotifySlack": "slack",
    "NotifyEmail": "email",
    "NotifyWorkflows": "teams",
    "NotifyPagerDuty": "pagerduty",
}
_RETIRED_TEAMS_RE = re.compile(
    r"^(msteams://|https?://[^/]*(webhook\.office\.com|office\.com/webhook))"
)


def event_tags(event: str) -> frozenset[str]:
    """The apprise tags `event` is sent with: its name, its level and its alias."""
    return frozenset({event, LEVELS[event], *([ALIASES[event]] if event in ALIASES else [])})


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
        register_secrets(url_secrets(self.url))

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
        return redact(shown, url_secrets(self.url)[1:])  # the parts, not the whole URL

    def wants(self, event: str) -> bool:
        """Whether `event` is routed here (the rule apprise's tag filter applies)."""
        return MATCH_ALWAYS_TAG in self.tags or bool(self.tags & event_tags(event))

    def __str__(self) -> str:
        return self.label


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
