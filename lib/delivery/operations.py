"""What an operator does outside a running rollout: park a candidate for approval, reject it,
roll production back by hand, and read the status of registry, files and service."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from lib import registry
from lib.delivery import releases as deployments
from lib.delivery import rollout
from lib.delivery.service_control import notify_service


def park_for_approval(
    models_dir: Path,
    logs_dir: Path,
    model_name: str,
    version: str,
    champion: str | None,
    run_id: str,
    reason: str,
) -> rollout.RolloutState:
    """A `manual` decision: the rollout waits in awaiting_approval for `runner.py approve`."""
    store = rollout.RolloutStore(models_dir / "rollout.json")
    state = rollout.begin(
        store, model_name, str(version), champion, run_id=run_id, approved=False, reason=reason
    )
    deployments.log_transition(logs_dir, "awaiting_approval", version=version, reason=reason)
    return state


def awaiting_version(models_dir: Path) -> str | None:
    state = rollout.RolloutStore(models_dir / "rollout.json").load()
    if state is not None and state.phase == rollout.Phase.AWAITING_APPROVAL:
        return state.candidate_version
    return None


def reject(models_dir: Path, logs_dir: Path, version: str, reason: str) -> rollout.RolloutState:
    """Close a rollout that waits for approval; production is not touched."""
    store = rollout.RolloutStore(models_dir / "rollout.json")
    state = store.load()
    if state is None or state.phase != rollout.Phase.AWAITING_APPROVAL:
        raise rollout.RolloutError(
            "no rollout is awaiting approval" + (f" (current: {state.describe()})" if state else "")
        )
    if state.candidate_version != str(version):
        raise rollout.RolloutError(
            f"v{version} is not awaiting approval; v{state.candidate_version} is"
        )
    done = rollout.finish(store, rollout.Phase.REJECTED, reason)
    deployments.log_transition(logs_dir, "rejected", version=version, reason=reason)
    return done


def manual_rollback(
    client: Any, model_name: str, models_dir: Path, logs_dir: Path, reason: str, url: str
) -> dict[str, Any]:
    """`runner.py rollback`: previous becomes champion in the registry, models/ and the service.

    Raises deployments.NothingToRollBack, changing nothing, when there is no previous version.
    """
    record = deployments.rollback(client, model_name, models_dir, logs_dir, reason)
    record["service"] = notify_service(url)
    return record


def status(client: Any, model_name: str, models_dir: Path, url: str) -> dict[str, Any]:
    """Champion, canary, weight and rollout state, from the registry, the files and the service."""
    import httpx

    aliases = {
        a: registry.alias_version(client, model_name, a)
        for a in ("champion", "previous", "candidate", "canary", "staging")
    }
    state = rollout.RolloutStore(models_dir / "rollout.json").load()
    service: dict[str, Any] | str
    try:
        service = httpx.get(f"{url}/health", timeout=3).json()
    except Exception as exc:
        service = f"not reachable at {url} ({type(exc).__name__})"
    return {
        "model": model_name,
        "aliases": aliases,
        "production_copy": deployments.production_version(models_dir),
        "rollout": None
        if state is None
        else {
            "id": state.rollout_id,
            "phase": state.phase.value,
            "version": state.candidate_version,
            "weight": state.weight,
            "reason": state.reason,
            "owner_pid": state.owner_pid,
            "interrupted": rollout.interrupted(state),
        },
        "service": service,
    }
