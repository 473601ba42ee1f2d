"""How notification targets are written in the environment: the variables, URL lists, apprise's
``TAGS=`` routing prefix and PagerDuty routing keys.

Plain string handling with no apprise instance, so that both `lib.watch.redaction` (which must
know every configured secret) and `lib.watch.notify_targets` (which builds the targets) can use
it without importing each other.
"""

from __future__ import annotations

import re
from urllib.parse import quote

__all__ = [
    "ENV_VARS", "PAGERDUTY_COMPONENT", "PAGERDUTY_NO_API_KEY", "PAGERDUTY_SOURCE", "SCHEME_RE",
    "pagerduty_url", "split_tags", "split_urls",
]  # fmt: skip

ENV_VARS = (
    "SLACK_WEBHOOK",
    "EMAIL_SMTP",
    "TEAMS_WEBHOOK",
    "PAGERDUTY_KEY",
    "PAGERDUTY_API_KEY",
    "NOTIFY_URLS",
)
PAGERDUTY_SOURCE = "mlops-pipeline"
PAGERDUTY_COMPONENT = "model-service"
# apprise requires an API key the Events API v2 never checks; this stands in when none is given.
PAGERDUTY_NO_API_KEY = "events-api-v2"

SCHEME_RE = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")
_NEXT_URL_RE = re.compile(r",+(?=[A-Za-z][A-Za-z0-9+.-]*://)")
# apprise's text-config routing prefix: "tag1,tag2=scheme://..."
_TAGS_PREFIX_RE = re.compile(
    r"^\s*(?P<tags>[A-Za-z0-9_][A-Za-z0-9_,\s-]*?)\s*=\s*(?=[A-Za-z][A-Za-z0-9+.-]*://)"
)
# the same before a bare PagerDuty routing key
_TAGS_PREFIX_BARE_RE = re.compile(r"^\s*(?P<tags>[A-Za-z0-9_][A-Za-z0-9_,\s-]*?)\s*=\s*(?=\S)")


def pagerduty_url(key: str, api_key: str | None = None) -> str:
    """An Events API v2 routing key as a ``pagerduty://`` URL; a URL is returned unchanged."""
    value = key.strip()
    if SCHEME_RE.match(value):
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
