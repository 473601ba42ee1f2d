"""What an operator does outside a running rollout: park a candidate for approval, reject it,
roll production back by hand, and read the status of registry, files and service."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

from lib import registry
from lib.delivery import releases as deployments
from lib.delivery import rollout
from lib.delivery.service_control import notify_service, reload_champion, set_routing

log = logging.getLogger(__name__)


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
    """`runner.py rollback`: canary traffic to 0% and the `canary` alias removed first, then
    `previous` becomes champion in the registry and models/, then the service reloads; any open
    rollout is closed as rolled back by the operator, so that no later run undoes this.

    When a rollout is open and its candidate never became champion (it died before the alias
    moved), rolling back means stopping that rollout: production stays on its champion.
    Raises deployments.NothingToRollBack, changing nothing in the registry or models/, when
    there is no previous version.
    """
    token = os.environ.get("SERVING_ADMIN_TOKEN")
    store = rollout.RolloutStore(models_dir / "rollout.json")
    state = store.load()
    open_rollout = state if state is not None and state.active else None
    routing = _canary_off(url, token)
    champion = registry.alias_version(client, model_name, "champion")
    why = f"operator rolled back: {reason}"
    if open_rollout is not None and champion != open_rollout.candidate_version:
        candidate = open_rollout.candidate_version
        record = deployments.abort_canary(client, model_name, logs_dir, why, candidate, models_dir)
        service = notify_service(url)
        rollout.close_open(store, f"{why} (rollout of v{candidate} stopped, v{champion} kept)")
        return {
            **record,
            "version": champion,
            "rolled_back_version": candidate,
            "service": service,
            "canary_routing": routing,
            "rollout_closed": open_rollout.rollout_id,
        }
    record = deployments.rollback(
        client, model_name, models_dir, logs_dir, reason,
        reload=lambda: reload_champion(url, token),
    )  # fmt: skip
    closed = rollout.close_open(store, f"{why} (v{record['rolled_back_version']})")
    note = record.get("service") or "not reloaded"
    return {
        **record,
        "service": f"service at {url} {note}",
        "canary_routing": routing,
        "rollout_closed": None if closed is None else closed.rollout_id,
    }


def _canary_off(url: str, token: str | None) -> str:
    """Canary weight 0 before anything else moves; an unreachable service is said, not fatal
    (its lease drops the canary by itself)."""
    try:
        set_routing(url, token, None, 0)
        return "canary weight 0"
    except Exception as exc:
        log.warning("could not set the canary weight to 0 on %s: %s", url, exc)
        return f"canary weight not set ({type(exc).__name__}); its lease drops it"


def next_run(state: rollout.RolloutState | None, champion: str | None) -> str | None:
    """What the next run does first about this rollout, in words; None when nothing."""
    if state is None:
        return None
    v = state.candidate_version
    if rollout.interrupted(state):
        if state.phase == rollout.Phase.PROMOTING:
            return (
                f"finishes the promotion of v{v} (registry, models/, service, records), unless "
                "production changed since; then it closes the rollout as superseded"
            )
        return f"rolls back the rollout of v{v} (canary off, its aliases removed)"
    promo = state.promotion or {}
    if (
        state.phase == rollout.Phase.SUCCEEDED
        and promo.get("service") not in (None, deployments.SERVICE_RELOADED)
        and champion == v
    ):
        return f"reloads the service at {promo.get('service_url')} so that it serves v{v}"
    return None


def status(client: Any, model_name: str, models_dir: Path, url: str) -> dict[str, Any]:
    """Champion, canary, weight and rollout state, from the registry, the files and the service;
    `mismatch` says when they disagree, `next_run` what the next run will do about it."""
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
    serving = None
    if isinstance(service, dict):
        serving = str((service.get("champion") or {}).get("version") or "") or None
    production = deployments.production_version(models_dir)
    champion = aliases["champion"]
    mismatch = []
    if isinstance(service, dict) and serving != champion:
        mismatch.append(f"the registry names v{champion} champion, the service serves v{serving}")
    if production != champion:
        mismatch.append(f"the registry names v{champion} champion, models/production v{production}")
    todo = next_run(state, champion)
    return {
        "model": model_name,
        "aliases": aliases,
        "production_copy": production,
        "serving_version": serving,
        "mismatch": "; ".join(mismatch) or None,
        "next_run": todo,
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
            "next_run": todo,
        },
        "service": service,
    }
