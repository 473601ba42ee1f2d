"""What promotion and rollback do to the registry, `models/` and `logs/`.

The registry aliases are the source of truth: the service and every stage resolve
`models:/<name>@champion`. `models/production/` is a mirror of that alias, `models/previous/`
keeps the 5 most recent earlier productions, `models/deployments.json` is the history MLflow does
not keep (where an alias pointed, when and why: mlflow/mlflow#2169) and `logs/deployment.log` has
one line per transition.

Crash order. Every operation (1) reads and loads everything it needs, changing nothing, so a bad
version, a missing artifact or a corrupt history fails with nothing touched; (2) moves the
registry aliases; (3) refreshes the files; (4) appends the record and the log line. The registry
goes first because it is what serves: a crash after (2) leaves the right model serving and a stale
mirror, and running the same call again finishes the job (both are idempotent, see below). Files
first would let `models/production/` claim a version the registry does not serve, and a later
rollback could trust that lie. Inside (2), promotion sets `previous` before `champion`: a crash
between leaves previous == champion (harmless) instead of losing the old champion.

Rollback. `champion` goes back to `previous`; `previous` then points at the champion that came
before the restored one according to deployments.json (so a second rollback walks further back
and never re-promotes the version just rolled back), or is removed when the history does not say.
The rolled-back version is recorded in deployments.json, in the restored production metadata and
as tags on its registry version. Its local copy is discarded (the registry still has it).
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
from lib.errors import PipelineError

log = logging.getLogger(__name__)

CHAMPION, PREVIOUS, CANARY, STAGING = "champion", "previous", "canary", "staging"
PRODUCTION_DIR = "production"
PREVIOUS_DIR = "previous"
KEEP_PREVIOUS = 5
DEPLOYMENTS_FILE = "deployments.json"
LOG_FILE = "deployment.log"
METADATA_FILE = "deployment.json"  # written by registry.save_local_copy

_SECRET_KEY = re.compile(r"token|secret|password|passwd|api_?key|authorization|credential", re.I)


class DeploymentError(PipelineError):
    """A promotion or rollback cannot be done as asked; nothing was changed."""


class NothingToRollBack(DeploymentError):
    """There is no earlier champion to go back to."""


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


# ---------------------------------------------------------------------------- registry helpers


def _version_info(client: Any, model_name: str, version: str) -> Any:
    from mlflow.exceptions import MlflowException

    try:
        return client.get_model_version(model_name, version)
    except MlflowException as exc:
        raise DeploymentError(
            f"{model_name} version {version} is not in the registry ({exc.message}); "
            "nothing was changed"
        ) from exc


def _delete_alias(client: Any, model_name: str, alias: str) -> None:
    client.delete_registered_model_alias(model_name, alias)
    log.info("alias %s@%s removed", model_name, alias)


def _exists(client: Any, model_name: str, version: str) -> bool:
    from mlflow.exceptions import MlflowException

    try:
        client.get_model_version(model_name, version)
    except MlflowException:
        return False
    return True


# ---------------------------------------------------------------------------- promote


def promote(
    client: Any,
    model_name: str,
    version: str,
    models_dir: str | Path,
    logs_dir: str | Path,
    reason: str = "",
    metrics: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Make `version` the champion, remember the old one as `previous`, mirror it locally.

    Idempotent: promoting the current champion again only completes what a crash left undone
    (stale mirror, missing record) and leaves `previous` alone.
    """
    version = str(version)
    models_dir, logs_dir = Path(models_dir), Path(logs_dir)
    # 1. read everything first: a failure here changes nothing
    records = history(models_dir)
    info = _version_info(client, model_name, version)
    model = registry.load_version(model_name, version)
    old = registry.alias_version(client, model_name, CHAMPION)
    already = old == version
    at = _now()

    # 2. registry: previous before champion, so the old champion is never lost
    if already:
        previous = registry.alias_version(client, model_name, PREVIOUS)
    else:
        previous = old
        if old is not None:
            registry.set_alias(client, model_name, PREVIOUS, old)
        registry.set_alias(client, model_name, CHAMPION, version)
    removed = []
    for alias in (CANARY, STAGING):
        pointed = registry.alias_version(client, model_name, alias)
        if pointed is None or (alias == STAGING and pointed != version):
            continue
        if pointed != version:
            log.warning("canary alias pointed at v%s while promoting v%s", pointed, version)
        _delete_alias(client, model_name, alias)
        removed.append(alias)

    # 3. files: archive the old mirror, then swap the new one in
    archived = None
    if production_version(models_dir) != version:
        archived = _archive_production(models_dir, at)
        metadata = {
            "model_name": model_name,
            "version": version,
            "run_id": info.run_id,
            "promoted_at": _iso(at),
            "reason": reason,
        }
        registry.save_local_copy(model, models_dir / PRODUCTION_DIR, metadata)
    pruned = _prune_previous(models_dir)

    # 4. record and log (once: a re-run after a crash does not duplicate the record)
    last = records[-1] if records else {}
    record = {
        "event": "promote",
        "model": model_name,
        "version": version,
        "previous_version": previous,
        "at": _iso(at),
        "reason": reason,
        "metrics": metrics,
        "run_id": info.run_id,
    }
    repeat = already and last.get("event") == "promote" and str(last.get("version")) == version
    if not repeat:
        _append_record(models_dir, records, record)
    log_transition(
        logs_dir, "promote", model=model_name, version=version, previous_version=previous,
        reason=reason, **({"note": "already champion"} if already else {}),
    )  # fmt: skip
    return {
        **record,
        "already_champion": already,
        "aliases_removed": removed,
        "production_dir": str(models_dir / PRODUCTION_DIR),
        "archived": None if archived is None else str(archived),
        "pruned": [str(p) for p in pruned if not p.name.startswith(".")],
    }


# ---------------------------------------------------------------------------- rollback


def _older_champion(records: list[dict[str, Any]], restored: str, bad: str) -> str | None:
    """Who was champion before `restored` was last promoted (never `bad` or `restored`)."""
    for record in reversed(records):
        if record.get("event") == "promote" and str(record.get("version")) == restored:
            older = record.get("previous_version")
            older = None if older is None else str(older)
            return None if older in (bad, restored) else older
    return None


def _last_is_rollback_of(records: list[dict[str, Any]], bad: str) -> bool:
    last = records[-1] if records else {}
    return last.get("event") == "rollback" and str(last.get("rolled_back_version")) == bad


def rollback(
    client: Any,
    model_name: str,
    models_dir: str | Path,
    logs_dir: str | Path,
    reason: str,
    version: str | None = None,
) -> dict[str, Any]:
    """Put `previous` back as champion, restore models/production/, log and record it.

    `version` (optional) is the version being rolled back: when the champion is no longer that
    version, an earlier rollback of it was interrupted after the registry step, and only its
    files/records are completed; when it is complete already, nothing changes. Without it the
    call always goes one champion back. Raises NothingToRollBack, changing nothing, when there
    is no earlier champion.
    """
    models_dir, logs_dir = Path(models_dir), Path(logs_dir)
    records = history(models_dir)
    champion = registry.alias_version(client, model_name, CHAMPION)
    previous = registry.alias_version(client, model_name, PREVIOUS)
    version = None if version is None else str(version)

    resume = version is not None and champion is not None and champion != version
    if resume:
        meta = production_metadata(models_dir) or {}
        files_pending = str(meta.get("version")) == version
        record_pending = str(meta.get("rolled_back_version")) == version and not (
            _last_is_rollback_of(records, version)
        )
        if not files_pending and not record_pending:
            if _last_is_rollback_of(records, version):
                log.info("rollback of %s v%s already complete", model_name, version)
                return {**records[-1], "already_done": True}
            raise NothingToRollBack(
                f"{model_name} v{version} is not the champion (the champion is v{champion}) and "
                "no interrupted rollback of it was found: nothing to roll back; nothing was changed"
            )
        bad, target = version, champion
    else:
        if champion is None:
            raise NothingToRollBack(
                f"{model_name} has no champion: nothing to roll back; nothing was changed"
            )
        if previous is None or previous == champion:
            seen = "is not set" if previous is None else f"also points at v{champion}"
            raise NothingToRollBack(
                f"cannot roll back {model_name} v{champion}: the `previous` alias {seen}, so "
                "there is no earlier champion to return to; nothing was changed. Promote a known "
                "good version instead (deployments.promote)"
            )
        bad, target = champion, previous

    # 1. read everything first
    target_info = _version_info(client, model_name, target)
    copy = _find_copy(models_dir, target)
    model = None if copy is not None else registry.load_version(model_name, target)
    older = _older_champion(records, target, bad)
    if older is not None and not _exists(client, model_name, older):
        older = None
    at = _now()

    # 2. registry: the good model serves first, then `previous` moves one further back
    if champion != target:
        registry.set_alias(client, model_name, CHAMPION, target)
    if older is not None:
        if previous != older:
            registry.set_alias(client, model_name, PREVIOUS, older)
    elif registry.alias_version(client, model_name, PREVIOUS) is not None:
        _delete_alias(client, model_name, PREVIOUS)
    registry.set_version_tags(
        client, model_name, bad, {"rolled_back_at": _iso(at), "rollback_reason": reason}
    )

    # 3. files: the kept copy of the restored version, or a fresh mirror from the registry
    old_meta = (copy is not None and _read_metadata(copy)) or {}
    metadata = {
        "model_name": model_name,
        "version": target,
        "run_id": target_info.run_id,
        "promoted_at": old_meta.get("promoted_at"),
        "restored_at": _iso(at),
        "rolled_back_version": bad,
        "reason": reason,
    }
    if production_version(models_dir) != target:
        if copy is not None:
            _restore_copy(models_dir, copy, metadata)
            source = str(copy)
        else:
            registry.save_local_copy(model, models_dir / PRODUCTION_DIR, metadata)
            source = "registry"
    else:
        source = "unchanged"

    # 4. record and log
    record = {
        "event": "rollback",
        "model": model_name,
        "version": target,
        "previous_version": bad,
        "rolled_back_version": bad,
        "new_previous": older,
        "at": _iso(at),
        "reason": reason,
        "metrics": None,
    }
    if not _last_is_rollback_of(records, bad):
        _append_record(models_dir, records, record)
    log_transition(
        logs_dir, "rollback", model=model_name, version=target, rolled_back_version=bad,
        previous=older, reason=reason,
    )  # fmt: skip
    return {**record, "restored_from": source, "already_done": False}


# ---------------------------------------------------------------------------- canary abort


def abort_canary(
    client: Any,
    model_name: str,
    logs_dir: str | Path,
    reason: str,
    version: str,
    models_dir: str | Path | None = None,
) -> dict[str, Any]:
    """Stop a canary or staging deployment of `version`; production is not touched.

    Only aliases pointing at `version` are removed (another version's alias is someone else's).
    `models_dir` defaults to the `models/` beside `logs_dir` (the project layout).
    """
    version = str(version)
    logs_dir = Path(logs_dir)
    models_dir = Path(models_dir) if models_dir is not None else logs_dir.parent / "models"
    records = history(models_dir)
    removed = []
    for alias in (CANARY, STAGING):
        pointed = registry.alias_version(client, model_name, alias)
        if pointed == version:
            _delete_alias(client, model_name, alias)
            removed.append(alias)
        elif pointed is not None:
            log.warning(
                "left %s@%s (v%s): not the aborted v%s", model_name, alias, pointed, version
            )
    champion = registry.alias_version(client, model_name, CHAMPION)
    record = {
        "event": "canary_rollback",
        "model": model_name,
        "version": version,
        "previous_version": champion,
        "champion_version": champion,
        "aliases_removed": removed,
        "at": _iso(_now()),
        "reason": reason,
        "metrics": None,
    }
    _append_record(models_dir, records, record)
    log_transition(
        logs_dir, "canary_rollback", model=model_name, version=version, champion=champion,
        aliases_removed=",".join(removed) or None, reason=reason,
    )  # fmt: skip
    return record
