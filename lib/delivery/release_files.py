"""What releases keep on disk: models/deployments.json (the history MLflow does not keep),
logs/deployment.log (one line per transition) and the local mirror models/production/ with its
rotation models/previous/. Split from lib.delivery.releases, which re-exports the public names.
"""

from __future__ import annotations

import json
import logging
import re
import shutil
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from lib import registry
from lib.atomic_files import STAGING_PREFIX, copy_dir_atomic, write_json_atomic
from lib.delivery.service_control import SERVICE_RELOADED
from lib.errors import PipelineError

log = logging.getLogger("lib.delivery.releases")

PRODUCTION_DIR = "production"
PREVIOUS_DIR = "previous"
KEEP_PREVIOUS = 5
DEPLOYMENTS_FILE = "deployments.json"
LOG_FILE = "deployment.log"
METADATA_FILE = "deployment.json"  # written by registry.save_local_copy

_SECRET_KEY = re.compile(r"token|secret|password|passwd|api_?key|authorization|credential", re.I)


class DeploymentError(PipelineError):
    """A promotion or rollback cannot be done as asked; nothing was changed."""


def _now() -> datetime:
    return datetime.now(UTC)


def _iso(at: datetime) -> str:
    return at.isoformat(timespec="seconds")


# ---------------------------------------------------------------------------- records and log


def history(models_dir: str | Path) -> list[dict[str, Any]]:
    """Every recorded deployment event, oldest first; [] when none yet. A damaged file raises."""
    path = Path(models_dir) / DEPLOYMENTS_FILE
    if not path.exists():
        return []
    try:
        records = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise DeploymentError(
            f"deployment history {path} is unreadable ({exc}); fix or move it aside "
            "(the registry aliases still say what serves) before deploying again"
        ) from exc
    if not isinstance(records, list):
        raise DeploymentError(
            f"deployment history {path} should be a JSON list, found {type(records).__name__}; "
            "fix or move it aside before deploying again"
        )
    return records


def _append_record(models_dir: Path, records: list[dict[str, Any]], record: dict[str, Any]) -> None:
    write_json_atomic(models_dir / DEPLOYMENTS_FILE, [*records, record])


def _format_value(key: str, value: Any) -> str:
    if _SECRET_KEY.search(key):
        return "***"
    if value is None:
        return "-"
    if isinstance(value, (dict, list, tuple)):
        return json.dumps(value, default=str, separators=(",", ":"))
    text = str(value)
    if "://" in text:
        text = registry.redact_uri(text)
    if not text or any(c.isspace() or c in "\"'=" for c in text):
        return json.dumps(text)  # quoted, newlines escaped: always one line
    return text


def log_transition(logs_dir: str | Path, event: str, **fields: Any) -> str:
    """Append one line `<ISO time> <event> key=value ...` to logs/deployment.log; returns it."""
    path = Path(logs_dir) / LOG_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    parts = [_iso(_now()), _format_value("event", event)]
    parts += [f"{k}={_format_value(k, v)}" for k, v in fields.items()]
    line = " ".join(parts)
    with open(path, "a", encoding="utf-8") as handle:
        handle.write(line + "\n")
    log.info("deployment: %s", line)
    return line


# ---------------------------------------------------------------------------- local mirror


def _read_metadata(model_dir: Path) -> dict[str, Any] | None:
    try:
        data = json.loads((model_dir / METADATA_FILE).read_text())
    except (OSError, json.JSONDecodeError, UnicodeDecodeError):
        return None
    return data if isinstance(data, dict) else None


def production_metadata(models_dir: str | Path) -> dict[str, Any] | None:
    """What models/production/ says it holds, or None (absent or unreadable)."""
    return _read_metadata(Path(models_dir) / PRODUCTION_DIR)


def production_version(models_dir: str | Path) -> str | None:
    meta = production_metadata(models_dir)
    return None if meta is None or meta.get("version") is None else str(meta["version"])


def previous_copies(models_dir: str | Path) -> list[Path]:
    """The kept earlier productions, oldest first (names start with a sortable UTC stamp)."""
    folder = Path(models_dir) / PREVIOUS_DIR
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))


def _archive_production(models_dir: Path, at: datetime) -> Path | None:
    """Copy production/ into previous/<stamp>-v<version>/ (copied, so production never vanishes)."""
    prod = models_dir / PRODUCTION_DIR
    if not prod.is_dir():
        return None
    version = production_version(models_dir) or "unknown"
    folder = models_dir / PREVIOUS_DIR
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / f"{at.strftime('%Y%m%dT%H%M%S%fZ')}-v{version}"
    return copy_dir_atomic(prod, target)


def _prune_previous(models_dir: Path, keep: int = KEEP_PREVIOUS) -> list[Path]:
    folder = models_dir / PREVIOUS_DIR
    removed = previous_copies(models_dir)[:-keep] if keep > 0 else previous_copies(models_dir)
    if folder.is_dir():  # leftovers of an interrupted copy
        removed += [p for p in folder.iterdir() if p.is_dir() and p.name.startswith(STAGING_PREFIX)]
    for path in removed:
        shutil.rmtree(path, ignore_errors=True)
    return removed


def _find_copy(models_dir: Path, version: str) -> Path | None:
    for path in reversed(previous_copies(models_dir)):
        meta = _read_metadata(path)
        if meta is not None and str(meta.get("version")) == version:
            return path
    return None


def _restore_copy(models_dir: Path, source: Path, metadata: dict[str, Any]) -> None:
    """Copy a kept production back into place, its metadata rewritten before the swap."""

    def rewrite_metadata(staged: Path) -> None:
        (staged / METADATA_FILE).write_text(json.dumps(metadata, indent=2, default=str))

    copy_dir_atomic(source, models_dir / PRODUCTION_DIR, prepare=rewrite_metadata)


def _swap_production(models_dir: Path, model: Any, metadata: dict[str, Any]) -> None:
    """Mirror `model` into models/production/ (one place, so a test can make it fail)."""
    registry.save_local_copy(model, models_dir / PRODUCTION_DIR, metadata)


def _repair_half_swap(models_dir: Path) -> None:
    """A swap that died between its two renames leaves `.production.old` and no production/."""
    prod, old = models_dir / PRODUCTION_DIR, models_dir / f".{PRODUCTION_DIR}.old"
    if not prod.exists() and old.is_dir():
        old.rename(prod)
        log.warning("restored %s from %s (a swap had stopped half-way)", prod, old)


def record_service_reload(
    models_dir: str | Path,
    logs_dir: str | Path,
    model_name: str,
    version: str,
    url: str,
    reason: str | None = None,
) -> dict[str, Any]:
    """A service that missed the end of a promotion (or served another version than the
    registry names) now serves the champion: say so."""
    models_dir = Path(models_dir)
    record = {
        "event": "service_reloaded",
        "model": model_name,
        "version": str(version),
        "champion_version": str(version),
        "at": _iso(_now()),
        "reason": reason or f"the service at {url} had not reloaded when v{version} was promoted",
        "metrics": None,
        "service": SERVICE_RELOADED,
    }
    _append_record(models_dir, history(models_dir), record)
    log_transition(
        logs_dir, "service_reloaded", model=model_name, version=version, champion=version,
        url=url, reason=record["reason"],
    )  # fmt: skip
    return record
