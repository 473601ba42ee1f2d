"""What promotion and rollback do to the registry, `models/` and `logs/`.

The registry aliases are the source of truth (the service resolves `models:/<name>@champion`);
`models/production/` mirrors the champion, `models/previous/` keeps the 5 latest earlier
productions, `models/deployments.json` is the history MLflow does not keep (mlflow/mlflow#2169)
and `logs/deployment.log` has one line per transition. Every operation reads everything first
(a failure changes nothing), then moves the aliases (what serves), then the files, then writes
the record, so running it again after a crash finishes the job; promotion is all or nothing
(README, "When the process dies"). Every record carries `champion_version` and every log line
`champion=`: the version in production once it was written.
"""

from __future__ import annotations

import json
import logging
import re
import shutil
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from lib import registry
from lib.atomic_files import STAGING_PREFIX, copy_dir_atomic, write_json_atomic
from lib.config import redact_url
from lib.delivery.faults import fault_point
from lib.delivery.service_control import SERVICE_RELOADED, reload_with_retries
from lib.errors import PipelineError
from lib.settings import PRODUCTION_DIR

log = logging.getLogger(__name__)

PREVIOUS_DIR = "previous"
KEEP_PREVIOUS = 5
DEPLOYMENTS_FILE = "deployments.json"
LOG_FILE = "deployment.log"
CHAMPION, PREVIOUS, CANARY, STAGING = "champion", "previous", "canary", "staging"

_SECRET_KEY = re.compile(r"token|secret|password|passwd|api_?key|authorization|credential", re.I)


class DeploymentError(PipelineError):
    """A promotion or rollback cannot be done as asked; nothing was changed."""


class NothingToRollBack(DeploymentError):
    """There is no earlier champion to go back to."""


class PromotionUndone(DeploymentError):
    """A promotion failed after the aliases moved, and every part was put back as it was."""


def _iso(at: datetime | None = None) -> str:
    return (at or datetime.now(UTC)).isoformat(timespec="seconds")


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


def _record(
    event: str, model_name: str, version: str, champion: str | None, reason: str, **extra: Any
) -> dict[str, Any]:
    """A deployments.json record: the fields every event has, then its own (`extra`)."""
    return {
        "event": event, "model": model_name, "version": str(version),
        "champion_version": champion, "at": _iso(), "reason": reason, "metrics": None, **extra,
    }  # fmt: skip


def _format_value(key: str, value: Any) -> str:
    if _SECRET_KEY.search(key):
        return "***"
    if value is None:
        return "-"
    if isinstance(value, (dict, list, tuple)):
        return json.dumps(value, default=str, separators=(",", ":"))
    text = str(value)
    if "://" in text:
        text = redact_url(text)
    if not text or any(c.isspace() or c in "\"'=" for c in text):
        return json.dumps(text)  # quoted, newlines escaped: always one line
    return text


def log_transition(logs_dir: str | Path, event: str, **fields: Any) -> str:
    """Append one line `<ISO time> <event> key=value ...` to logs/deployment.log; returns it."""
    path = Path(logs_dir) / LOG_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    parts = [_iso(), _format_value("event", event)]
    parts += [f"{k}={_format_value(k, v)}" for k, v in fields.items()]
    line = " ".join(parts)
    with open(path, "a", encoding="utf-8") as handle:
        handle.write(line + "\n")
    log.info("deployment: %s", line)
    return line


# ---------------------------------------------------------------------------- local mirror


def production_metadata(models_dir: str | Path) -> dict[str, Any] | None:
    """What models/production/ says it holds, or None (absent or unreadable)."""
    return registry.local_copy_metadata(Path(models_dir) / PRODUCTION_DIR)


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
    target = models_dir / PREVIOUS_DIR / f"{at.strftime('%Y%m%dT%H%M%S%fZ')}-v{version}"
    target.parent.mkdir(parents=True, exist_ok=True)
    return copy_dir_atomic(prod, target)


def _prune_previous(models_dir: Path) -> None:
    """Keep the KEEP_PREVIOUS latest copies; remove the rest and any interrupted copy."""
    folder = models_dir / PREVIOUS_DIR
    removed = previous_copies(models_dir)[:-KEEP_PREVIOUS]
    if folder.is_dir():
        removed += [p for p in folder.iterdir() if p.is_dir() and p.name.startswith(STAGING_PREFIX)]
    for path in removed:
        shutil.rmtree(path, ignore_errors=True)


def _find_copy(models_dir: Path, version: str) -> Path | None:
    for path in reversed(previous_copies(models_dir)):
        meta = registry.local_copy_metadata(path)
        if meta is not None and str(meta.get("version")) == version:
            return path
    return None


def _restore_copy(models_dir: Path, source: Path, metadata: dict[str, Any]) -> None:
    """Copy a kept production back into place, its metadata rewritten before the swap."""

    def rewrite_metadata(staged: Path) -> None:
        text = json.dumps(metadata, indent=2, default=str)
        (staged / registry.LOCAL_COPY_METADATA).write_text(text)

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
    reason = reason or f"the service at {url} had not reloaded when v{version} was promoted"
    record = _record(
        "service_reloaded", model_name, version, str(version), reason, service=SERVICE_RELOADED
    )
    write_json_atomic(models_dir / DEPLOYMENTS_FILE, [*history(models_dir), record])
    log_transition(
        logs_dir, "service_reloaded", model=model_name, version=version, champion=version,
        url=url, reason=reason,
    )  # fmt: skip
    return record


def _remove_aliases(client: Any, model_name: str, version: str, other_canary: bool) -> list[str]:
    """Remove the `canary`/`staging` aliases that name `version`, and with `other_canary` a
    canary of another version too (a promotion ends every canary); returns those removed."""
    removed = []
    for alias in (CANARY, STAGING):
        pointed = registry.alias_version(client, model_name, alias)
        if pointed is None:
            continue
        drop = pointed == version or (other_canary and alias == CANARY)
        if pointed != version:
            how = "removed" if drop else "left"
            log.warning("%s %s@%s (v%s), not v%s", how, model_name, alias, pointed, version)
        if drop:
            registry.delete_alias(client, model_name, alias)
            removed.append(alias)
    return removed


def _version_info(client: Any, model_name: str, version: str) -> Any:
    """The registry's version, DeploymentError when there is none (an outage raises
    RegistryUnavailable, never "not in the registry")."""
    info = registry.model_version(client, model_name, version)
    if info is None:
        raise DeploymentError(
            f"{model_name} version {version} is not in the registry; nothing was changed"
        )
    return info


def _undo_target(
    before: dict[str, Any] | None, version: str, old: str | None, old_previous: str | None
) -> tuple[str | None, str | None] | None:
    """Where a failed promotion puts (champion, previous) back: `before` the rollout, else what
    the registry says now; None when `version` is champion already and nothing earlier is known."""
    if before is not None and str(before.get("champion")) != version:
        return before.get("champion"), before.get("previous")
    return None if old == version else (old, old_previous)


def promote(
    client: Any,
    model_name: str,
    version: str,
    models_dir: str | Path,
    logs_dir: str | Path,
    reason: str = "",
    metrics: dict[str, Any] | None = None,
    reload: Callable[[], Any] | None = None,
    before: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Make `version` the champion (the old one `previous`), mirror it, reload the service
    (`reload`, optional) and record it: all of it, or PromotionUndone with everything put back
    (the aliases to `before`, {"champion", "previous"} before the rollout, when given).
    Idempotent: promoting the champion again only completes what a crash left undone."""
    version = str(version)
    models_dir, logs_dir = Path(models_dir), Path(logs_dir)
    # 1. read everything first: a failure here changes nothing
    records = history(models_dir)
    info = _version_info(client, model_name, version)
    model = registry.load_version(model_name, version)
    old = registry.alias_version(client, model_name, CHAMPION)
    old_previous = registry.alias_version(client, model_name, PREVIOUS)
    already = old == version
    undo_to = _undo_target(before, version, old, old_previous)
    at = datetime.now(UTC)

    # 2. registry: previous before champion (a crash between leaves previous == champion, never
    # loses the old champion); the rollout's canary and staging aliases go
    previous = old_previous if already else old
    if not already:
        if old is not None:
            registry.set_alias(client, model_name, PREVIOUS, old)
        registry.set_alias(client, model_name, CHAMPION, version)
    removed = _remove_aliases(client, model_name, version, other_canary=True)
    fault_point("after_alias_move")

    # 3. files: archive the old mirror, then swap the new one in; undo everything if that fails
    archived = None
    try:
        _repair_half_swap(models_dir)
        if production_version(models_dir) != version:
            archived = _archive_production(models_dir, at)
            metadata = {
                "model_name": model_name, "version": version, "run_id": info.run_id,
                "promoted_at": _iso(at), "reason": reason,
            }  # fmt: skip
            _swap_production(models_dir, model, metadata)
    except Exception as exc:
        raise _undo_promotion(
            client, model_name, version, models_dir, logs_dir, records, undo_to, archived, exc
        ) from exc
    _prune_previous(models_dir)
    fault_point("after_file_swap")

    # 4. the service follows the registry; a failure to reach it is noted, not undone
    service = reload_with_retries(reload)
    fault_point("after_service_reload")

    # 5. record and log (once: a re-run after a crash does not duplicate the record)
    record = _record(
        "promote", model_name, version, version, reason, previous_version=previous,
        metrics=metrics, run_id=info.run_id, service=service, at=_iso(at),
    )  # fmt: skip
    last = records[-1] if records else {}
    repeat = already and _is_record_of(last, "promote", version)
    if not (repeat and service in (None, last.get("service"))):
        write_json_atomic(models_dir / DEPLOYMENTS_FILE, [*records, record])
    log_transition(
        logs_dir, "promote", model=model_name, version=version, champion=version,
        previous_version=previous, service=service, reason=reason,
        **({"note": "already champion"} if already else {}),
    )  # fmt: skip
    return {
        **record, "already_champion": already, "aliases_removed": removed,
        "archived": None if archived is None else str(archived),
        "service_reloaded": None if service is None else service == SERVICE_RELOADED,
    }  # fmt: skip


def _is_record_of(record: dict[str, Any], event: str, version: str) -> bool:
    """`record` is this event about this version (a rollback: the version rolled back)."""
    key = "rolled_back_version" if event == "rollback" else "version"
    return record.get("event") == event and str(record.get(key)) == version


def _undo_promotion(
    client: Any,
    model_name: str,
    version: str,
    models_dir: Path,
    logs_dir: Path,
    records: list[dict[str, Any]],
    undo_to: tuple[str | None, str | None] | None,
    archived: Path | None,
    exc: Exception,
) -> DeploymentError:
    """Put the aliases and previous/ back after a failed file swap and record it; returns the
    error to raise. A registry error here propagates: the rollout stays `promoting` for the
    next run to finish (neither done nor undone, never hidden)."""
    failure = f"{type(exc).__name__}: {exc}"
    _repair_half_swap(models_dir)
    if archived is not None:
        shutil.rmtree(archived, ignore_errors=True)
    _prune_previous(models_dir)
    if undo_to is None:
        return DeploymentError(
            f"promotion of {model_name} v{version} could not swap models/production ({failure}) "
            "and there is no earlier champion to return to; fix models/ and run again"
        )
    champion, previous = undo_to
    for alias, target in ((CHAMPION, champion), (PREVIOUS, previous)):
        if target is not None:
            registry.set_alias(client, model_name, alias, str(target))
        elif registry.alias_version(client, model_name, alias) is not None:
            registry.delete_alias(client, model_name, alias)
    reason = f"files could not be swapped ({failure}); registry put back"
    record = _record(
        "promote_undone", model_name, version, champion, reason, previous_version=previous
    )
    write_json_atomic(models_dir / DEPLOYMENTS_FILE, [*records, record])
    log_transition(
        logs_dir, "promote_undone", model=model_name, version=version, champion=champion,
        previous=previous, reason=reason,
    )  # fmt: skip
    return PromotionUndone(
        f"promotion of {model_name} v{version} undone: models/production could not be "
        f"replaced ({failure}); the registry, models/ and the service stay on v{champion}"
    )


def _older_champion(records: list[dict[str, Any]], restored: str, bad: str) -> str | None:
    """Who was champion before `restored` was last promoted (never `bad` or `restored`)."""
    for record in reversed(records):
        if _is_record_of(record, "promote", restored):
            older = record.get("previous_version")
            older = None if older is None else str(older)
            return None if older in (bad, restored) else older
    return None


def _restore_production(
    models_dir: Path, target: str, copy: Path | None, model: Any, metadata: dict[str, Any]
) -> str:
    """models/production serves `target` again: from its kept copy, else a fresh mirror from the
    registry (`model`). Returns where it came from ("unchanged" when it already did)."""
    if production_version(models_dir) == target:
        source = "unchanged"
    elif copy is not None:
        _restore_copy(models_dir, copy, metadata)
        source = str(copy)
    else:
        registry.save_local_copy(model, models_dir / PRODUCTION_DIR, metadata)
        source = "registry"
    _prune_previous(models_dir)
    return source


def _what_to_roll_back(
    model_name: str,
    models_dir: Path,
    records: list[dict[str, Any]],
    champion: str | None,
    previous: str | None,
    version: str | None,
) -> tuple[str, str] | None:
    """(the version rolled back, the one restored); None when the rollback of `version` is
    complete already. An interrupted rollback of `version` is resumed; NothingToRollBack
    (nothing changed) when there is no earlier champion."""
    if version is not None and champion is not None and champion != version:
        meta = production_metadata(models_dir) or {}
        done = bool(records) and _is_record_of(records[-1], "rollback", version)
        if str(meta.get("version")) != version and (
            str(meta.get("rolled_back_version")) != version or done
        ):
            if done:
                return None
            raise NothingToRollBack(
                f"{model_name} v{version} is not the champion (the champion is v{champion}) and "
                "no interrupted rollback of it was found: nothing to roll back; nothing was changed"
            )
        return version, champion
    if champion is None:
        raise NothingToRollBack(
            f"{model_name} has no champion: nothing to roll back; nothing was changed"
        )
    if previous is None or previous == champion:
        seen = "is not set" if previous is None else f"also points at v{champion}"
        raise NothingToRollBack(
            f"cannot roll back {model_name} v{champion}: the `previous` alias {seen}, so "
            "there is no earlier champion to return to; nothing was changed. Put a known "
            'good version back with: python runner.py promote <version> --reason "..."'
        )
    return champion, previous


def rollback(
    client: Any,
    model_name: str,
    models_dir: str | Path,
    logs_dir: str | Path,
    reason: str,
    version: str | None = None,
    reload: Callable[[], Any] | None = None,
) -> dict[str, Any]:
    """Remove the `canary` alias, put `previous` back as champion, restore models/production/,
    reload the service (`reload`, optional), log and record it. With `version` (the version
    rolled back) it resumes an interrupted rollback of it, or does nothing when it is complete.
    NothingToRollBack, changing nothing, when there is no earlier champion."""
    models_dir, logs_dir = Path(models_dir), Path(logs_dir)
    records = history(models_dir)
    champion = registry.alias_version(client, model_name, CHAMPION)
    previous = registry.alias_version(client, model_name, PREVIOUS)
    version = None if version is None else str(version)

    pair = _what_to_roll_back(model_name, models_dir, records, champion, previous, version)
    if pair is None:
        log.info("rollback of %s v%s already complete", model_name, version)
        return {**records[-1], "already_done": True}
    bad, target = pair

    # 1. read everything first
    target_info = _version_info(client, model_name, target)
    copy = _find_copy(models_dir, target)
    model = None if copy is not None else registry.load_version(model_name, target)
    older = _older_champion(records, target, bad)
    if older is not None and registry.model_version(client, model_name, older) is None:
        older = None
    at = datetime.now(UTC)

    # 2. registry: no canary any more, the good model serves, then `previous` moves one back
    # (to the champion before the restored one, so a second rollback never re-promotes `bad`)
    if registry.alias_version(client, model_name, CANARY) is not None:
        registry.delete_alias(client, model_name, CANARY)
    if champion != target:
        registry.set_alias(client, model_name, CHAMPION, target)
    if older is not None:
        if previous != older:
            registry.set_alias(client, model_name, PREVIOUS, older)
    elif registry.alias_version(client, model_name, PREVIOUS) is not None:
        registry.delete_alias(client, model_name, PREVIOUS)
    registry.set_version_tags(
        client, model_name, bad, {"rolled_back_at": _iso(at), "rollback_reason": reason}
    )

    # 3. files: the kept copy of the restored version, or a fresh mirror from the registry
    old_meta = (copy is not None and registry.local_copy_metadata(copy)) or {}
    metadata = {
        "model_name": model_name, "version": target, "run_id": target_info.run_id,
        "promoted_at": old_meta.get("promoted_at"), "restored_at": _iso(at),
        "rolled_back_version": bad, "reason": reason,
    }  # fmt: skip
    source = _restore_production(models_dir, target, copy, model, metadata)

    # 4. the service, then record and log
    service = reload_with_retries(reload)
    record = _record(
        "rollback", model_name, target, target, reason, previous_version=bad,
        rolled_back_version=bad, new_previous=older, service=service, at=_iso(at),
    )  # fmt: skip
    if not (records and _is_record_of(records[-1], "rollback", bad)):
        write_json_atomic(models_dir / DEPLOYMENTS_FILE, [*records, record])
    log_transition(
        logs_dir, "rollback", model=model_name, version=target, champion=target,
        rolled_back_version=bad, previous=older, service=service, reason=reason,
    )  # fmt: skip
    return {**record, "restored_from": source, "already_done": False}


def abort_canary(
    client: Any,
    model_name: str,
    logs_dir: str | Path,
    reason: str,
    version: str,
    models_dir: str | Path,
    event: str = "canary_rollback",
) -> dict[str, Any]:
    """Stop a canary or staging deployment of `version`; production is not touched. Only
    aliases naming `version` go. `event` is `canary_rollback`, or `rollout_superseded` when an
    operator's action overtook an interrupted rollout."""
    version, models_dir = str(version), Path(models_dir)
    records = history(models_dir)
    removed = _remove_aliases(client, model_name, version, other_canary=False)
    champion = registry.alias_version(client, model_name, CHAMPION)
    record = _record(
        event, model_name, version, champion, reason, previous_version=champion,
        aliases_removed=removed,
    )  # fmt: skip
    write_json_atomic(models_dir / DEPLOYMENTS_FILE, [*records, record])
    log_transition(
        logs_dir, event, model=model_name, version=version, champion=champion,
        aliases_removed=",".join(removed) or None, reason=reason,
    )  # fmt: skip
    return record
