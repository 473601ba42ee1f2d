"""Keep notification secrets out of errors, summaries and logs.

`redact()` replaces every secret it knows (the notification configuration's, `configured_secrets`,
and every `Target`'s, `register_secrets`) with its parts and quoted spellings, plus any URL
credentials. apprise's and urllib3's loggers, which log webhook URLs, get a `RedactingFilter`
on import; `install_redacting_filter()` puts one on the root logger's handlers.
"""

from __future__ import annotations

import functools
import logging
import os
import re
import threading
from collections.abc import Iterable, Mapping
from urllib.parse import parse_qsl, quote, unquote, urlsplit

import apprise

from lib.config import redact_url

REDACTED = "***"
# Shorter values are not replaced inside text: they would shred ordinary words.
MIN_SECRET_LEN = 4

_TOKEN_RE = re.compile(r"[A-Za-z0-9_~+=%-]{8,}")
_URL_PARTS_RE = re.compile(r"[/:@?&=,#\s]+")
_SECRET_QUERY_KEYS = frozenset(
    {"sig", "signature", "token", "key", "apikey", "api_key", "password", "pass", "secret"}
)
# The variables that configure notifications (lib.watch.notify_targets): their values are secret.
CONFIG_VARS = (
    "NOTIFY_CONFIG",
    "SLACK_WEBHOOK",
    "EMAIL_SMTP",
    "TEAMS_WEBHOOK",
    "PAGERDUTY_KEY",
    "PAGERDUTY_API_KEY",
    "NOTIFY_URLS",
)
_SCHEME_RE = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")
_URL_RE = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://[^\s\"',]+")
# Values that sit where secrets sit but are not secret (notify_targets' PagerDuty placeholders).
_NOT_SECRET = frozenset({"events-api-v2", "mlops-pipeline", "model-service"})

_registry_lock = threading.Lock()
_registered_secrets: set[str] = set()
# set while url_secrets asks apprise about a URL: what apprise logs then (a mistyped URL, in full)
# is dropped, not redacted (redacting it would ask again)
_inspecting = threading.local()


def _looks_secret(value: str) -> bool:
    """Token-like: 8+ chars without dots or spaces, mixing digits/letters or cases, or 20+."""
    if not _TOKEN_RE.fullmatch(value):
        return False
    has_digit = any(c.isdigit() for c in value)
    has_alpha = any(c.isalpha() for c in value)
    mixed_case = any(c.isupper() for c in value) and any(c.islower() for c in value)
    return (has_digit and has_alpha) or mixed_case or len(value) >= 20


@functools.lru_cache(maxsize=512)
def url_secrets(value: str) -> tuple[str, ...]:
    """A configured value and its secret parts: those apprise hides in ``url(privacy=True)``,
    URL credentials, secret query values and token-like path segments (webhook paths). Cached:
    the redacting log filter asks for every record."""
    found = [value]
    if not _SCHEME_RE.match(value):
        return tuple(found)
    _inspecting.on = True
    try:
        service = apprise.Apprise.instantiate(value)
    finally:
        _inspecting.on = False
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
        for part in url_secrets(value):
            plain = unquote(part)
            for variant in (part, plain, quote(part, safe=""), quote(plain, safe="")):
                if len(variant) >= MIN_SECRET_LEN and variant not in _NOT_SECRET:
                    out.add(variant)
    return sorted(out, key=lambda s: (-len(s), s))


def configured_secrets(environ: Mapping[str, str] | None = None) -> list[str]:
    """The secrets of the notification configuration as written, mistyped entries included:
    every URL in the variables and the NOTIFY_CONFIG file, with its parts; the PagerDuty keys."""
    env = os.environ if environ is None else environ
    texts = [env.get(var, "") for var in CONFIG_VARS[1:]]
    path = env.get("NOTIFY_CONFIG", "").strip()
    if path and os.path.isfile(path):
        texts.append(_file_text(path, os.stat(path).st_mtime_ns))
    raw = [url.rstrip(":") for text in texts for url in _URL_RE.findall(text)]
    for var in ("PAGERDUTY_KEY", "PAGERDUTY_API_KEY"):  # a routing key, maybe after "TAGS="
        value = env.get(var, "").strip()
        if value and "://" not in value:
            raw.append(value.rpartition("=")[2].strip())
    return _normalize(raw)


@functools.lru_cache(maxsize=4)
def _file_text(path: str, mtime_ns: int) -> str:
    with open(path, encoding="utf-8", errors="replace") as handle:
        return handle.read()


def register_secrets(values: Iterable[str]) -> None:
    """Remember values outside the environment (a `Target`'s URL) so `redact()` hides them too."""
    with _registry_lock:
        _registered_secrets.update(v for v in values if v)


def clear_registered_secrets() -> None:
    """Forget the values register_secrets remembered (a process that drops its targets; tests
    that must not inherit another test's, e.g. a PagerDuty component `comp` hidden as secret)."""
    with _registry_lock:
        _registered_secrets.clear()


def _known_secrets() -> list[str]:
    with _registry_lock:
        registered = list(_registered_secrets)
    return sorted({*configured_secrets(), *_normalize(registered)}, key=lambda s: (-len(s), s))


def redact(text: str, secrets: Iterable[str] | None = None) -> str:
    """`text` with every secret (default: the configured ones and every `Target`'s, with their
    parts) and every URL credential replaced by ``***``."""
    if not text:
        return text
    values = _known_secrets() if secrets is None else _normalize(secrets)
    for value in values:
        if value in text:
            text = text.replace(value, REDACTED)
    return redact_url(text)  # URL credentials it does not know, as ``***@``


class RedactingFilter(logging.Filter):
    """Redacts secrets from log records. A logger's filter misses records propagated from its
    children: `install_redacting_filter` also puts it on the handlers."""

    def filter(self, record: logging.LogRecord) -> bool:
        if getattr(_inspecting, "on", False):
            return False
        try:
            message = record.getMessage()
        except Exception:  # a broken record is the handler's problem, not ours
            return True
        cleaned = redact(message)
        if cleaned != message:
            record.msg, record.args = cleaned, None
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = redact(record.exc_text)
        if record.stack_info:
            record.stack_info = redact(record.stack_info)
        return True


def install_redacting_filter(logger: logging.Logger | None = None) -> RedactingFilter:
    """Add one `RedactingFilter` to `logger` (root by default) and to each of its handlers."""
    logger = logger if logger is not None else logging.getLogger()
    flt = _filter_of(logger) or RedactingFilter()
    for each in (logger, *logger.handlers):
        if _filter_of(each) is None:
            each.addFilter(flt)
    return flt


def _filter_of(each: logging.Filterer) -> RedactingFilter | None:
    return next((f for f in each.filters if isinstance(f, RedactingFilter)), None)


# Loggers that write webhook URLs (tokens in the path or query) on their own: apprise at
# DEBUG/TRACE (URLs and payloads), urllib3 at DEBUG (every request line).
_URL_LOGGERS = ("apprise", "urllib3.connectionpool", "urllib3.poolmanager", "urllib3.util.retry")


def harden_apprise_logging() -> None:
    """Cap apprise at WARNING and redact what apprise and urllib3 log about our requests."""
    for name in _URL_LOGGERS:
        if _filter_of(logging.getLogger(name)) is None:
            logging.getLogger(name).addFilter(RedactingFilter())
    apprise_log = logging.getLogger("apprise")
    if apprise_log.level < logging.WARNING:
        apprise_log.setLevel(logging.WARNING)


harden_apprise_logging()
