"""What an operator does outside a running rollout: park a candidate for approval, reject it,
roll production back by hand, promote a known version through the staging smoke tests, and read
the status of registry, files and service (with the last thing that happened to production)."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

from lib import registry
from lib.delivery import releases, rollout
from lib.delivery.rollout_end import promote_rollout, raise_if_promotion_open, roll_back_rollout
from lib.delivery.service_control import (
    SERVICE_RELOADED,
    RolloutFailed,
    canary_off,
    reload_champion,
    reload_with_retries,
    served_version,
)

log = logging.getLogger(__name__)


def park_for_approval(
    models_dir: Path,
    logs_dir: Path,
    model_name: str,
    version: str,
    champion: str | None,
    run_id: str,
    reason: str,
    serving_url: str | None = None,
    client: Any = None,
) -> rollout.RolloutState:
    """A `manual` decision: the rollout waits in awaiting_approval for `runner.py approve`;
    it keeps the production service's URL from the start, so that whoever finishes or undoes
    it later (approve, recovery) reloads that service. With `client`, the wait is also recorded
    as tags of the version (tag_approval), so that a machine without this models/ (a GitHub
    job) can approve or reject it."""
    store = rollout.RolloutStore(models_dir / "rollout.json")
    waiting = awaiting_version(models_dir)
    why = f"replaced by v{version}, a newer candidate awaiting approval"
    # a newer candidate replaces the one nobody approved yet (else every later run conflicts)
    if waiting not in (None, str(version)):
        reject(models_dir, logs_dir, waiting, why)
    state = rollout.begin(
        store, model_name, str(version), champion, run_id=run_id, serving_url=serving_url,
        approved=False, reason=reason,
    )  # fmt: skip
    releases.log_transition(logs_dir, "awaiting_approval", version=version, reason=reason)
    if client is not None:
        for older in registry.versions_tagged(client, model_name, APPROVAL, "pending"):
            if older != str(version):
                tag_approval(client, model_name, older, "rejected", reason=why)
        tag_approval(
            client, model_name, str(version), "pending", run_id=run_id, reason=reason,
            champion=champion or "none",
        )  # fmt: skip
    return state


APPROVAL = "approval"  # a version's tag: pending | approved | rejected (and approval.* details)


def tag_approval(client: Any, model_name: str, version: str, state: str, **fields: Any) -> None:
    """Where a parked rollout stands, as tags of its version: `approval=<state>`, the time
    (`approval.<state>_at`) and the given details (`approval.by`, `approval.reason`...). A
    version the registry does not hold (only this machine's rollout.json knows it) cannot carry
    them: said, and the local record stands alone."""
    if registry.version_tags(client, model_name, str(version)) is None:
        log.warning("v%s is not in the registry: approval=%s recorded here only", version, state)
        return
    tags = {APPROVAL: state, f"{APPROVAL}.{state}_at": rollout.now_iso()}
    tags.update({f"{APPROVAL}.{k}": v for k, v in fields.items() if v not in (None, "")})
    registry.set_version_tags(client, model_name, str(version), tags)


def parked_where(client: Any, model_name: str, models_dir: Path, version: str) -> str:
    """Where `version` is recorded as awaiting approval: "local" (this machine's rollout.json,
    authoritative when present) or "registry" (its `approval=pending` tag, e.g. on a fresh
    GitHub runner). RolloutError when it is not awaiting approval, or when the two disagree."""
    version = str(version)
    state = rollout.RolloutStore(models_dir / "rollout.json").load()
    tags = registry.version_tags(client, model_name, version)
    local = state is not None and state.phase == rollout.Phase.AWAITING_APPROVAL
    if tags is None and not (local and state.candidate_version == version):
        raise rollout.RolloutError(f"{model_name} v{version} is not in the registry")
    tagged = (tags or {}).get(APPROVAL)
    if local:
        if state.candidate_version != version:
            raise rollout.RolloutError(
                f"v{version} is not awaiting approval (v{state.candidate_version} is, in "
                f"{models_dir / 'rollout.json'})"
            )
        if tagged not in (None, "pending"):
            raise rollout.RolloutError(
                f"v{version}: {models_dir / 'rollout.json'} says awaiting approval but the "
                f"registry says approval={tagged}; settle it by hand (reject it, or fix the tag)"
            )
        return "local"
    if state is not None and state.candidate_version == version:
        raise rollout.RolloutError(
            f"v{version} is not awaiting approval: {models_dir / 'rollout.json'} says "
            f"{state.phase.value}" + (f" ({state.reason})" if state.reason else "")
        )
    if tagged != "pending":
        raise rollout.RolloutError(
            f"v{version} is not awaiting approval (registry: {APPROVAL}={tagged or 'none'}"
            + (f"; v{state.candidate_version} {state.phase.value} here)" if state else ")")
        )
    return "registry"


def awaiting_version(models_dir: Path) -> str | None:
    state = rollout.RolloutStore(models_dir / "rollout.json").load()
    if state is not None and state.phase == rollout.Phase.AWAITING_APPROVAL:
        return state.candidate_version
    return None


def reject_anywhere(
    client: Any,
    model_name: str,
    models_dir: Path,
    logs_dir: Path,
    version: str,
    reason: str,
    by: str | None = None,
) -> str:
    """`runner.py reject`: close the parked rollout here (when this machine holds it) and in the
    registry's tags; returns where it was parked (parked_where)."""
    where = parked_where(client, model_name, models_dir, version)
    if where == "local":
        reject(models_dir, logs_dir, version, reason)
    else:
        releases.log_transition(logs_dir, "rejected", version=version, reason=reason)
    tag_approval(client, model_name, version, "rejected", reason=reason, by=by)
    return where


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
    releases.log_transition(logs_dir, "rejected", version=version, reason=reason)
    return done


def manual_rollback(
    client: Any, model_name: str, models_dir: Path, logs_dir: Path, reason: str, url: str
) -> dict[str, Any]:
    """`runner.py rollback`: canary to 0%, then releases.rollback and the service reload; any
    open rollout is closed as rolled back by the operator, so that no later run undoes this. An
    open rollout whose candidate never became champion is only stopped (production stays)."""
    token = os.environ.get("SERVING_ADMIN_TOKEN")
    store = rollout.RolloutStore(models_dir / "rollout.json")
    state = store.load()
    open_rollout = state if state is not None and state.active else None
    routing = canary_off(url, token)
    champion = registry.alias_version(client, model_name, "champion")
    why = f"operator rolled back: {reason}"
    if open_rollout is not None and champion != open_rollout.candidate_version:
        candidate = open_rollout.candidate_version
        record = releases.abort_canary(client, model_name, logs_dir, why, candidate, models_dir)
        reloaded = reload_with_retries(lambda: reload_champion(url, token), attempts=1)
        service = f"service at {url} {reloaded}"
        rollout.close_open(store, f"{why} (rollout of v{candidate} stopped, v{champion} kept)")
        return {
            **record,
            "version": champion,
            "rolled_back_version": candidate,
            "service": service,
            "canary_routing": routing,
            "rollout_closed": open_rollout.rollout_id,
        }
    record = releases.rollback(
        client, model_name, models_dir, logs_dir, reason,
        reload=lambda: reload_champion(url, token),
    )  # fmt: skip
    closed = rollout.close_open(store, f"{why} (v{record['rolled_back_version']})")
    note = record.get("service") or "not reloaded"
    serving = served_version(url)
    if serving is not None and serving != str(record["version"]):  # verified, never assumed
        note = f"{note}, but it serves v{serving}: the next run reloads it"
    return {
        **record,
        "service": f"service at {url} {note}",
        "canary_routing": routing,
        "rollout_closed": None if closed is None else closed.rollout_id,
    }


def stop_rollout(
    models_dir: Path, logs_dir: Path, reason: str, url: str, wait_seconds: float
) -> tuple[rollout.RolloutState, str]:
    """`runner.py rollback` while a live deployer drives a rollout, without the runner's lock:
    the stop into the rollout state, canary weight 0 (never raised again: the deployer's lease
    renewals are compare-and-set), then wait up to `wait_seconds` for the deployer's rollback.
    Returns the rollout then, and what the canary routing became (on which service)."""
    store = rollout.RolloutStore(models_dir / "rollout.json")
    state = rollout.request_stop(store, f"operator rolled back: {reason}")
    releases.log_transition(
        logs_dir, "operator_stop_requested", version=state.candidate_version,
        champion=state.champion_version, phase=state.phase.value, weight=state.weight,
        reason=reason,
    )  # fmt: skip
    target = state.serving_url or url
    routing = canary_off(target, os.environ.get("SERVING_ADMIN_TOKEN"))
    return rollout.wait_until_settled(store, wait_seconds) or state, f"{routing} on {target}"


def next_run(
    state: rollout.RolloutState | None,
    champion: str | None,
    serving: str | None = None,
    url: str | None = None,
) -> str | None:
    """What the next run does first about this rollout and the service, in words; None when
    nothing. `serving`/`url`: what the reachable production service serves, and where."""
    if state is not None and rollout.interrupted(state):
        v = state.candidate_version
        if state.phase == rollout.Phase.PROMOTING:
            return (
                f"finishes the promotion of v{v} (registry, models/, service, records), unless "
                "production changed since; then it closes the rollout as superseded"
            )
        return f"rolls back the rollout of v{v} (canary off, its aliases removed)"
    promo = (state.promotion if state is not None else None) or {}
    if (
        state is not None
        and state.phase == rollout.Phase.SUCCEEDED
        and promo.get("service") not in (None, SERVICE_RELOADED)
        and champion == state.candidate_version
    ):
        return f"reloads the service at {promo.get('service_url')} so that it serves v{champion}"
    if url is not None and champion is not None and serving != champion:
        return (
            f"reloads the service at {url} so that it serves v{champion} (to do it now: "
            f"POST {url}/admin/reload with the admin token)"
        )
    return None


def named(version: Any) -> str:
    """`v3`, or `none` (never `vNone`)."""
    return "none" if version is None or version == "" else f"v{version}"


def describe_record(record: dict[str, Any]) -> str:
    """One deployments.json record in words: when, what, the champion it left, and why."""
    v, champion, event = record.get("version"), record.get("champion_version"), record.get("event")
    what = {
        "promote": f"v{v} promoted to champion (previous {named(record.get('previous_version'))})",
        "rollback": f"{named(record.get('rolled_back_version'))} rolled back, v{v} champion again",
        "canary_rollback": f"rollout of v{v} stopped; production stayed on {named(champion)}",
        "rollout_superseded": f"rollout of v{v} closed as superseded; champion {named(champion)}",
        "promote_undone": f"promotion of v{v} undone; {named(champion)} stays champion",
        "service_reloaded": f"the service reloaded to serve v{v}",
    }.get(str(event), f"v{v}; champion {named(champion)}")
    why = record.get("reason")
    return f"{record.get('at')} {event}: {what}" + (f" ({why})" if why else "")


def last_event(records: list[dict[str, Any]], state: rollout.RolloutState | None) -> str | None:
    """The newest of deployments.json's last record and the rollout file's last change: a
    rollout, a promotion, a rollback (by a person, the monitor or a canary), an approval..."""
    record = records[-1] if records else None
    if state is not None and (record is None or state.updated_at > str(record.get("at", ""))):
        return (
            f"{state.updated_at} rollout {state.rollout_id}: v{state.candidate_version} "
            f"{state.phase.value}" + (f" ({state.reason})" if state.reason else "")
        )
    return None if record is None else describe_record(record)


def status(client: Any, model_name: str, models_dir: Path, url: str) -> dict[str, Any]:
    """Champion, canary, weight and rollout state, from the registry, the files and the service;
    `last_event` the latest change of production, `mismatch` says when they disagree (registry,
    models/production, the service, deployments.json), `next_run` what the next run will do."""
    import httpx

    aliases = {
        a: registry.alias_version(client, model_name, a)
        for a in ("champion", "previous", "candidate", "canary", "staging")
    }
    state = rollout.RolloutStore(models_dir / "rollout.json").load()
    service: dict[str, Any] | str
    try:
        service = httpx.get(f"{url}/health", timeout=3).json()
        serving = str((service.get("champion") or {}).get("version") or "") or None
    except Exception as exc:
        service, serving = f"not reachable at {url} ({type(exc).__name__})", None
    production = releases.production_version(models_dir)
    records = releases.history(models_dir)
    champion = aliases["champion"]
    said = f"the registry names {named(champion)} champion"
    mismatch = []
    if isinstance(service, dict) and serving != champion:
        mismatch.append(f"{said}, the service serves {named(serving)}")
    if production != champion:
        mismatch.append(f"{said}, models/production {named(production)}")
    recorded = records[-1].get("champion_version", champion) if records else champion
    if recorded is not None and str(recorded) != str(champion):
        mismatch.append(f"{said}, the last record of deployments.json {named(recorded)}")
    since = None
    if state is not None and state.phase == rollout.Phase.SUCCEEDED:
        if champion != state.candidate_version:
            since = f"v{state.candidate_version} is no longer champion ({named(champion)} is)"
    return {
        "model": model_name,
        "aliases": aliases,
        "production_copy": production,
        "serving_version": serving,
        "mismatch": "; ".join(mismatch) or None,
        "next_run": next_run(state, champion, serving, url if isinstance(service, dict) else None),
        "last_event": last_event(records, state),
        "rollout": None
        if state is None
        else {
            "id": state.rollout_id,
            "phase": state.phase.value,
            "version": state.candidate_version,
            "weight": state.weight,
            "reason": state.reason,
            "interrupted": rollout.interrupted(state),
            "finished": state.finished,
            "since": since,
        },
        "service": service,
    }


def promote_version(
    root: Path,
    client: Any,
    model_name: str,
    tracking_uri: str,
    version: str,
    holdout: Any,
    settings: Any,
    models_dir: Path,
    logs_dir: Path,
    url: str,
    reason: str,
    run_id: str,
) -> dict[str, Any]:
    """`runner.py promote`: a rollout without canary steps (staging and smoke tests, then the
    all-or-nothing promotion), crash-safe like any rollout. `holdout` and `settings` are the 05
    deploy stage's; RolloutConflict (nothing changed) while another rollout is open or parked.
    Returns {outcome: promoted | failed, champion_before, champion, reason, note}."""
    from lib.delivery import progressive

    version = str(version)
    store = rollout.RolloutStore(models_dir / "rollout.json")
    champion = registry.alias_version(client, model_name, "champion")
    why = f"operator promotion: {reason}"
    rollout.begin(
        store, model_name, version, champion, [100], run_id, url, approved=True, reason=why
    )
    timeline = progressive.Timeline(logs_dir, version, champion)
    releases.log_transition(
        logs_dir, "operator_promote_started", version=version, champion=champion, reason=reason
    )
    token = os.environ.get("SERVING_ADMIN_TOKEN")
    try:
        model = registry.load_version(model_name, version)
        progressive.staging_and_smoke(
            root, client, model_name, tracking_uri, version, model, holdout, settings, store,
            timeline, logs_dir,
        )  # fmt: skip
        done = promote_rollout(
            client, model_name, store, version, models_dir, logs_dir, url, token, reason=why
        )
    except Exception as exc:
        raise_if_promotion_open(exc, client, model_name, store, logs_dir, version)
        failure = str(exc) if isinstance(exc, RolloutFailed) else f"{type(exc).__name__}: {exc}"
        roll_back_rollout(
            client, model_name, store, logs_dir, models_dir, version,
            f"operator promotion of v{version} failed: {failure}", None, token,
        )  # fmt: skip
        now = registry.alias_version(client, model_name, "champion")
        outcome, reason, note = "failed", failure, None
    else:
        timeline.champion = now = version
        timeline.add("succeeded", 100, done.reason)
        outcome, reason, note = "promoted", done.reason, done.note
    return {
        "outcome": outcome, "champion_before": champion, "champion": now, "reason": reason,
        "note": note,
    }  # fmt: skip
