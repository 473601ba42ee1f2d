"""Where notifications go: apprise's own configuration, and which events each target gets.

``NOTIFY_CONFIG`` names an apprise configuration file; the older variables (``ENV_KINDS``) are
each read as one line of apprise's TEXT configuration. Routing is by apprise tags; a target
without tags gets every event, PagerDuty only `PAGERDUTY_EVENTS`. A bad entry becomes a `Target`
with an `error`, so that every notification reports it as failed.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import quote

import apprise
from apprise.common import MATCH_ALWAYS_TAG

from lib.watch.redaction import CONFIG_VARS, REDACTED, redact, register_secrets, url_secrets

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
TAGS = frozenset({*EVENTS, *LEVELS.values(), *ALIASES.values(), MATCH_ALWAYS_TAG})
# Events worth waking someone up for; the others would open incidents for routine work.
PAGERDUTY_EVENTS = frozenset({"rolled_back", "alert", "test"})
PAGERDUTY_SOURCE = "mlops-pipeline"
PAGERDUTY_COMPONENT = "model-service"
PAGERDUTY_NO_API_KEY = "events-api-v2"  # stands in for the API key apprise insists on
ENV_KINDS = {
    "SLACK_WEBHOOK": "slack",
    "EMAIL_SMTP": "email",
    "TEAMS_WEBHOOK": "teams",
    "PAGERDUTY_KEY": "pagerduty",
    "NOTIFY_URLS": "other",
}
_PLUGIN_KINDS = {
    "NotifySlack": "slack",
    "NotifyEmail": "email",
    "NotifyWorkflows": "teams",
    "NotifyPagerDuty": "pagerduty",
}
_NEXT_URL_RE = re.compile(r",+(?=[A-Za-z][A-Za-z0-9+.-]*://)")
_TAGS_RE = re.compile(r"^\s*[\w\s,:-]*?=\s*(?=[A-Za-z0-9]+://)")  # TEXT's "TAGS=" before a URL
_RETIRED_TEAMS_RE = re.compile(r"(msteams://|webhook\.office\.com|office\.com/webhook)")


def event_tags(event: str) -> frozenset[str]:
    """The apprise tags `event` is sent with: its name, its level and its alias."""
    return frozenset({event, LEVELS[event], ALIASES.get(event, event)})


@dataclass(frozen=True)
class Target:
    """One place to notify (an apprise URL, which holds credentials: kept out of repr and logs),
    or with `error`, a configuration entry that is not one."""

    kind: str
    url: str = field(repr=False)
    source: str = "explicit"
    events: frozenset[str] | None = None  # its tags; None: every event (PagerDuty: some)
    error: str | None = None

    def __post_init__(self) -> None:
        if self.kind != "config":  # a file's path is no secret
            register_secrets(url_secrets(self.url))  # log records mentioning it are redacted

    @property
    def tags(self) -> frozenset[str]:
        """The apprise tags the service gets; ``always`` matches every event."""
        if self.events is not None:
            return frozenset(self.events)
        return PAGERDUTY_EVENTS if self.kind == "pagerduty" else frozenset({MATCH_ALWAYS_TAG})

    @property
    def label(self) -> str:
        """apprise's privacy URL without its options: safe to print."""
        if self.kind == "config":
            return self.url  # a configuration file's path
        service = apprise.Apprise.instantiate(self.url)
        if service is None:
            return f"{self.kind}:{REDACTED}"
        shown = service.url(privacy=True).split("?", 1)[0]
        return redact(shown, url_secrets(self.url)[1:])  # the parts, not the whole URL

    def wants(self, event: str) -> bool:
        """Whether `event` is routed here (the rule apprise's tag filter applies)."""
        return MATCH_ALWAYS_TAG in self.tags or bool(self.tags & event_tags(event))


def pagerduty_url(key: str, api_key: str | None = None) -> str:
    """An Events API v2 routing key as a ``pagerduty://`` URL."""
    api = quote((api_key or "").strip() or PAGERDUTY_NO_API_KEY, safe="")
    return f"pagerduty://{quote(key, safe='')}@{api}/{PAGERDUTY_SOURCE}/{PAGERDUTY_COMPONENT}"


def split_urls(value: str) -> list[str]:
    """NOTIFY_URLS's entries: split on whitespace, and on commas where a new scheme starts."""
    pieces = (p.strip(",") for chunk in value.split() for p in _NEXT_URL_RE.split(chunk))
    return [p for p in pieces if p]


def parse(config: str, source: str, kind: str = "other") -> list[Target]:
    """The targets apprise's configuration parser finds in `config`: a file's path when `source`
    is NOTIFY_CONFIG (YAML or TEXT), else one TEXT line. What it rejects becomes one target with
    the error (apprise's own words), so that every notification reports it."""
    parser = apprise.AppriseConfig()
    with apprise.LogCapture(level=logging.WARNING) as captured:
        if source == "NOTIFY_CONFIG":
            parser.add(config)
        else:
            parser.add_config(config, format="text")
        services = parser.services()
    found = []
    for service in services:
        tags = frozenset(str(t).lower() for t in service.tags) or None
        unknown = sorted((tags or set()) - TAGS)
        error = f"unknown tag(s) {', '.join(unknown)}; tags are {', '.join(sorted(TAGS))}"
        service_kind = _PLUGIN_KINDS.get(type(service).__name__, "other")
        found.append(Target(service_kind, service.url(), source, tags, error if unknown else None))
    problems = [line.split(" - ", 2)[-1] for line in captured.getvalue().splitlines()]
    if problems or not found:
        if source == "NOTIFY_CONFIG":
            url, what = config, f"apprise {apprise.__version__} rejected entries of {config}"
        else:
            url = _TAGS_RE.sub("", config)
            what = f"unsupported notification URL for apprise {apprise.__version__}"
        detail = redact("; ".join(problems) or "no target in it", [url])
        found.append(Target(kind, url, source, None, f"{source}: {what}: {detail}"))
    return found


def targets_from_env(environ: Mapping[str, str] | None = None) -> list[Target]:
    """Every target the environment configures, in a stable order, without duplicates."""
    source = os.environ if environ is None else environ
    env = {var: source.get(var, "").strip() for var in CONFIG_VARS}
    found: list[Target] = []
    for var, kind in ENV_KINDS.items():
        entries = split_urls(env[var]) if var == "NOTIFY_URLS" else [env[var]] if env[var] else []
        for entry in entries:
            if var == "PAGERDUTY_KEY" and "://" not in entry:  # a routing key, maybe after TAGS=
                tags, _, key = entry.rpartition("=")
                entry = (f"{tags}=" if tags else "") + pagerduty_url(key, env["PAGERDUTY_API_KEY"])
            elif var == "TEAMS_WEBHOOK" and _RETIRED_TEAMS_RE.search(entry):
                log.warning(
                    "TEAMS_WEBHOOK looks like a retired Office 365 connector URL; apprise %s only "
                    "supports Teams Workflows webhooks, so this target will fail",
                    apprise.__version__,
                )
            found += parse(entry, var, kind)
    if env["NOTIFY_CONFIG"]:
        path = Path(env["NOTIFY_CONFIG"]).expanduser()
        if not path.is_file():
            error = f"NOTIFY_CONFIG: no such file: {path}"
            log.warning("%s; notifications go to the other targets only", error)
            found.append(Target("config", str(path), "NOTIFY_CONFIG", None, error))
        else:
            found += parse(str(path.resolve()), "NOTIFY_CONFIG", "config")
    seen: set[tuple[str, str | None]] = set()
    return [t for t in found if not ((t.url, t.error) in seen or seen.add((t.url, t.error)))]
