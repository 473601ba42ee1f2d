"""ServingSettings: everything one service process needs, with the project's defaults.

The default URIs and models/ are lib.settings' (the working directory's project, never where lib
is installed); `runner.py serve` and ServiceProcess pass the configured ones explicitly."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from lib import settings

CHAMPION_ALIAS = "champion"
MAX_BODY_BYTES = 20 * 1024 * 1024  # 413 above, refused on Content-Length or while streaming
MAX_INSTANCES = 10_000
# A request id: what the X-Request-ID header and the store can carry unchanged (ASCII only).
REQUEST_ID_PATTERN = r"[A-Za-z0-9._:-]{1,128}"


@dataclass
class ServingSettings:
    """Everything the service needs; the admin token comes from SERVING_ADMIN_TOKEN, the
    feedback token (labels are a trusted input) from SERVING_FEEDBACK_TOKEN."""

    model_name: str = "playstore-rating"
    tracking_uri: str = field(default_factory=settings.tracking_uri)
    store_url: str = field(default_factory=settings.store_url)
    admin_token: str | None = field(
        default_factory=lambda: os.environ.get("SERVING_ADMIN_TOKEN") or None, repr=False
    )
    feedback_token: str | None = field(
        default_factory=lambda: os.environ.get("SERVING_FEEDBACK_TOKEN") or None, repr=False
    )
    target_threshold: float = 4.0  # feedback: true label = rating > threshold
    max_batch: int = 64  # rows per micro-batched predict call
    batch_wait_ms: float = 2.0  # longest wait for a batch to fill, only when requests queue up
    champion_label: str = "champion"  # variant names in responses, metrics and the store
    canary_label: str = "canary"
    champion_alias: str = CHAMPION_ALIAS
    lease_check_seconds: float = 1.0  # how often the background task looks at the canary lease
    # how often each replica reads the shared routing row (one primary-key SELECT), applies a
    # newer generation and writes its heartbeat: a change reaches every replica within about
    # this plus the time to load a new version (SERVING_ROUTING_POLL_SECONDS)
    routing_poll_seconds: float = field(
        default_factory=lambda: float(os.environ.get("SERVING_ROUTING_POLL_SECONDS") or 1.0)
    )
    # how often a background task reads the champion alias for /health (<= 0: never); after an
    # outage at start-up it is also how the service finds and follows the registry again
    registry_check_seconds: float = 15.0
    # start-up waits this long for the registry's answer, then serves models/production
    registry_start_seconds: float = 10.0
    # holds production/ (the champion's copy, served when the registry is down at start-up)
    models_dir: Path = field(default_factory=settings.models_dir)
    compile_models: bool = True  # False: always the plain scikit-learn pipeline
    access_log: bool = False  # uvicorn's per-request log line costs ~10% of throughput
    # the prediction store's journal (what a kill -9 must not lose): SERVING_JOURNAL_DIR; None:
    # beside a SQLite file, `<project>/.prediction-journal/<database>/` for PostgreSQL (one per
    # machine: on a pod, a volume that outlives the container keeps it across a restart)
    journal_dir: Path | None = field(default_factory=lambda: _path_or_none("SERVING_JOURNAL_DIR"))
    # shadow scoring while a canary is loaded (lib.serving.shadow): SERVING_SHADOW=on|off
    shadow: bool = field(default_factory=lambda: _on_off("SERVING_SHADOW", True))
    # rows waiting for their shadow score at most; more are dropped (counted), never waited for
    shadow_max_rows: int = field(
        default_factory=lambda: int(os.environ.get("SERVING_SHADOW_MAX_ROWS") or 20_000)
    )


def _path_or_none(variable: str) -> Path | None:
    value = os.environ.get(variable, "").strip()
    return Path(value).expanduser() if value else None


def _on_off(variable: str, default: bool) -> bool:
    """An on/off environment variable (on, off, true, false, 1, 0, yes, no; unset: default)."""
    value = os.environ.get(variable, "").strip().lower()
    if not value:
        return default
    if value in ("on", "true", "1", "yes"):
        return True
    if value in ("off", "false", "0", "no"):
        return False
    raise ValueError(f"{variable}={value!r}: expected on or off")
