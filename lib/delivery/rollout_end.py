"""The end of a rollout, and recovery from a dead runner: promote all or nothing, roll back, or
close as `superseded` when an operator acted after the runner died (an operator's action wins).

A promotion done but for the service reload is `succeeded` with a "service not reloaded" note,
never "rolled back": the service follows the champion alias on its next reload, and the next
run retries it. What a death in each phase leaves and what the next run does is the table of
README, "When the process dies"; the fault points are lib.delivery.faults'.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from lib import registry
from lib.delivery import releases, rollout
from lib.delivery.faults import fault_point
from lib.delivery.service_control import (
    SERVICE_RELOADED,
    canary_off,
    reload_champion,
    served_version,
    service_health,
)
from lib.errors import RegistryUnavailable

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Promoted:
    reason: str  # the rollout's closing reason
    note: str | None  # set when the service was not reloaded


def promote_rollout(
    client: Any,
    model_name: str,
    store: rollout.RolloutStore,
    version: str,
    models_dir: Path,
    logs_dir: Path,
    prod_url: str | None,
    token: str | None,
    reason: str,
    metrics: dict[str, Any] | None = None,
    resumed: dict[str, Any] | None = None,
) -> Promoted:
    """`promoting` (with the baseline recovery checks against), then registry, files, service
    and records through releases.promote, then `succeeded`, with a note when the service at
    `prod_url` could not be reloaded. PromotionUndone propagates. `resumed`: the baseline of an
    interrupted promotion, which recovery finishes (already `promoting`)."""
    if resumed is None:
        base: dict[str, Any] | None = {
            "champion": registry.alias_version(client, model_name, "champion"),
            "previous": registry.alias_version(client, model_name, "previous"),
            "records": len(releases.history(models_dir)),
        }
        rollout.advance(store, rollout.Phase.PROMOTING, detail="all checks passed", promotion=base)
        fault_point("after_promoting_write")
        how = "promoted to champion"
    else:  # a state file from before the baseline existed has none to put back
        base = resumed if "champion" in resumed else None
        how = "promoted: finished the promotion an interrupted run had begun"
    result = releases.promote(
        client, model_name, version, models_dir, logs_dir, reason=reason, metrics=metrics,
        reload=(lambda: reload_champion(prod_url, token, expect=version)) if prod_url else None,
        before=base,
    )  # fmt: skip
    service, note = result.get("service"), None
    if service not in (None, SERVICE_RELOADED):
        note = (
            f"service at {prod_url} {service}: the registry and models/ name v{version}, the "
            f"service serves v{(base or {}).get('champion')} until it is reloaded or restarted "
            "(the next run reloads it)"
        )
    rollout.note_promotion(store, service=service, service_url=prod_url)
    reason = f"v{version} {how}" + (f"; {note}" if note else "")
    rollout.finish(store, rollout.Phase.SUCCEEDED, reason)
    return Promoted(reason, note)


def roll_back_rollout(
    client: Any,
    model_name: str,
    store: rollout.RolloutStore,
    logs_dir: Path,
    models_dir: Path,
    version: str,
    reason: str,
    prod_url: str | None,
    token: str | None,
    final: rollout.Phase = rollout.Phase.ROLLED_BACK,
) -> dict[str, Any] | None:
    """Canary to 0% first (traffic), then aliases and records; production stays as it was. The
    rollout ends `final` (rolled back, or superseded); returns the deployments.json record.

    Without the registry, rollout.json (local) still closes; the aliases and the record (which
    must name the real champion) are left to the next run, and the outage propagates."""
    if prod_url:
        canary_off(prod_url, token)
    outage, record = None, None
    event = "rollout_superseded" if final == rollout.Phase.SUPERSEDED else "canary_rollback"
    try:
        record = releases.abort_canary(
            client, model_name, logs_dir, reason, str(version), models_dir, event
        )
    except RegistryUnavailable as exc:
        outage = exc
        if "registry" not in reason.lower():
            reason += f"; MLflow registry unavailable during the rollback ({exc.reason})"
        reason += "; canary alias and deployment record left for the next run"
    state = store.load()
    if state is not None and not state.finished:
        rollout.finish(store, final, reason)
    if outage is not None:
        raise outage
    return record


def raise_if_promotion_open(
    exc: Exception,
    client: Any,
    model_name: str,
    store: rollout.RolloutStore,
    logs_dir: Path,
    version: str,
) -> None:
    """A failure during `promoting` (other than a promotion undone everywhere) is neither done
    nor undone: it is not a rollback. Log it and re-raise; the next run finishes it (or
    supersedes it)."""
    phase = getattr(store.load(), "phase", None)
    if phase != rollout.Phase.PROMOTING or isinstance(exc, releases.PromotionUndone):
        return
    try:
        now = registry.alias_version(client, model_name, "champion")
    except RegistryUnavailable:
        now = "unknown (registry unavailable)"  # never a None that claims no champion
    releases.log_transition(
        logs_dir, "promotion_incomplete", version=version, champion=now,
        reason=f"{type(exc).__name__}: {exc}",
    )  # fmt: skip
    raise exc


@dataclass(frozen=True)
class Recovery:
    """What recovery did: `promoted` (a promotion or its service reload finished), `rolled_back`,
    `superseded` (an operator acted after the interruption: production left as set) or
    `reconciled` (no rollout pending, but a service was brought in line with the registry)."""

    outcome: Literal["promoted", "rolled_back", "superseded", "reconciled"]
    version: str  # the interrupted rollout's candidate
    champion: str | None  # the version in production afterwards
    reason: str

    def __str__(self) -> str:
        return self.reason


def changed_since_promotion(
    client: Any, model_name: str, models_dir: Path, state: rollout.RolloutState
) -> str | None:
    """What happened to production after this rollout entered `promoting`, other than its own
    half-done promotion; None when nothing did. A later operator action must never be undone."""
    base = state.promotion or {}
    before = base.get("champion", state.champion_version)
    before = None if before is None else str(before)
    candidate = state.candidate_version
    records = releases.history(models_dir)
    count = base.get("records")
    if isinstance(count, int):
        if count > len(records):
            return f"deployments.json has {len(records)} records, {count} when promoting began"
        later = records[count:]
    else:  # a state file from before the baseline existed: compare times
        began = next(
            (h["at"] for h in reversed(state.history) if h.get("to") == "promoting"),
            state.updated_at,
        )
        later = [r for r in records if str(r.get("at", "")) >= began]
    for record in later:
        if record.get("event") == "promote" and str(record.get("version")) == candidate:
            continue
        return (
            f"a {record.get('event')} of v{record.get('version')} was recorded at "
            f"{record.get('at')} ({record.get('reason') or 'no reason given'})"
        )
    champion = registry.alias_version(client, model_name, "champion")
    if champion not in (candidate, before):
        return f"the champion alias names v{champion}, neither v{candidate} nor v{before}"
    return None


def recover_interrupted(
    root: Path, client: Any, model_name: str, models_dir: Path, logs_dir: Path
) -> Recovery | None:
    """Before anything else, finish what a dead runner left: roll back a rollout that died
    before `promoting`, finish one that died during it (superseded, touching nothing, when
    production changed since), reload a service that missed a promotion. None: nothing pending.
    """
    store = rollout.RolloutStore(models_dir / "rollout.json")
    state = store.load()
    if state is None:
        return None
    token = os.environ.get("SERVING_ADMIN_TOKEN")
    if not rollout.interrupted(state):
        left = _finish_registry_cleanup(client, model_name, state, models_dir, logs_dir)
        return left or _reload_missed(client, model_name, store, state, models_dir, logs_dir, token)
    version, url = state.candidate_version, state.serving_url
    if state.phase != rollout.Phase.PROMOTING:
        reason = (
            f"interrupted: the process running the rollout (pid {state.owner_pid}, the 05 deploy "
            f"kernel of run {state.run_id}) died during {state.phase} at {state.weight}%"
        )
        rollout.claim(store, os.getpid(), detail="rolling back an interrupted rollout")
        text = f"rolled back the interrupted rollout of v{version} ({reason})"
    else:
        rollout.claim(store, os.getpid(), detail="recovering an interrupted promotion")
        changed = changed_since_promotion(client, model_name, models_dir, state)
        if changed is not None:  # an operator's later action wins: no traffic, nothing promoted
            reason = f"interrupted promotion of v{version} superseded: {changed}; not promoted"
            record = roll_back_rollout(
                client, model_name, store, logs_dir, models_dir, version, reason, url, token,
                rollout.Phase.SUPERSEDED,
            )  # fmt: skip
            log.warning("%s", reason)
            return Recovery("superseded", version, record["champion_version"], reason)
        try:
            done = promote_rollout(
                client, model_name, store, version, models_dir, logs_dir, url, token,
                "promotion finished after an interrupted run", resumed=state.promotion or {},
            )  # fmt: skip
        except releases.PromotionUndone as exc:
            reason = text = f"interrupted promotion of v{version} could not be finished: {exc}"
        else:
            text = f"finished the interrupted promotion of v{version}"
            return Recovery(
                "promoted", version, version, text + (f"; {done.note}" if done.note else "")
            )
    roll_back_rollout(client, model_name, store, logs_dir, models_dir, version, reason, url, token)
    champion = registry.alias_version(client, model_name, "champion")
    return Recovery("rolled_back", version, champion, text)


def _finish_registry_cleanup(
    client: Any,
    model_name: str,
    state: rollout.RolloutState,
    models_dir: Path,
    logs_dir: Path,
) -> Recovery | None:
    """A rollout that ended rolled back (or superseded) while the registry was unreachable left
    its `canary`/`staging` alias on the candidate and no deployments.json record: remove the
    aliases and write the record now that the registry answers. rollout.json is not changed."""
    if state.phase not in (rollout.Phase.ROLLED_BACK, rollout.Phase.SUPERSEDED):
        return None
    version = state.candidate_version
    aliases = (releases.CANARY, releases.STAGING)
    if all(registry.alias_version(client, model_name, a) != version for a in aliases):
        return None
    reason = f"registry cleanup after a rollout ended without the registry: {state.reason}"
    record = releases.abort_canary(client, model_name, logs_dir, reason, version, models_dir)
    removed = ", ".join(record["aliases_removed"]) or "nothing"
    text = (
        f"removed the alias(es) {removed} of v{version} left by a rollout that ended "
        f"{state.phase} while the registry was unreachable"
    )
    return Recovery("rolled_back", version, record["champion_version"], text)


def _reload_missed(
    client: Any,
    model_name: str,
    store: rollout.RolloutStore,
    state: rollout.RolloutState,
    models_dir: Path,
    logs_dir: Path,
    token: str | None,
) -> Recovery | None:
    """A finished promotion whose service reload failed: try again, once per run."""
    promo = state.promotion or {}
    service, url = promo.get("service"), promo.get("service_url")
    if state.phase != rollout.Phase.SUCCEEDED or not url or service in (None, SERVICE_RELOADED):
        return None
    version = state.candidate_version
    champion = registry.alias_version(client, model_name, "champion")
    if champion != version:  # production moved on since: that reload is nobody's business now
        return None
    try:
        reload_champion(url, token, expect=version)
    except Exception as exc:
        log.warning("service at %s still not reloaded: %s", url, exc)
        return None
    rollout.note_promotion(store, service=SERVICE_RELOADED)
    releases.record_service_reload(models_dir, logs_dir, model_name, version, url)
    text = f"the service at {url} now serves v{version} (its reload had failed after the promotion)"
    return Recovery("promoted", version, champion, text)


def reconcile_services(
    client: Any,
    model_name: str,
    models_dir: Path,
    logs_dir: Path,
    urls: list[str | None],
    token: str | None,
) -> str | None:
    """At every runner start, each known production service (the rollout's, the configured one)
    is made to serve the registry's champion and, with no rollout open, route no canary (one
    that does not answer or serves another model is left alone). Returns what was done, in
    words; None when every service already agreed."""
    champion = registry.alias_version(client, model_name, "champion")
    state = rollout.RolloutStore(models_dir / "rollout.json").load()
    rollout_open = state is not None and state.active
    said: list[str] = []
    for url in dict.fromkeys(u for u in urls if u):
        health = service_health(url)
        if health is None or health.get("model_name") not in (None, model_name):
            continue
        if not rollout_open and (health.get("canary_weight") or 0) > 0:
            off = canary_off(url, token)  # its lease drops it anyway
            said.append(f"the service at {url} routed a canary no rollout owns: {off}")
        serving = served_version(url)
        if champion is None or serving == champion:
            continue
        served = "no model" if serving is None else f"v{serving}"
        what = f"the service at {url} served {served}, the registry names v{champion}"
        try:
            reload_champion(url, token, expect=champion)
        except Exception as exc:
            log.warning("%s; reload failed: %s", what, exc)
            said.append(f"{what}; reload failed ({type(exc).__name__}), the next run retries")
            continue
        releases.record_service_reload(
            models_dir, logs_dir, model_name, champion, url, reason=f"{what}: reloaded"
        )
        said.append(f"{what}: reloaded, it serves v{champion} now")
    return "; ".join(said) or None
