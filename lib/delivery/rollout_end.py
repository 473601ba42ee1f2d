"""The end of a rollout, and recovery from a dead runner: promote all or nothing, roll back, or
close as superseded when an operator acted after the runner died.

Rule for the service: a promotion whose registry, models/ and records are done but whose
service could not be reloaded is `succeeded` with a "service not reloaded" note (the service
follows the champion alias on its next reload or restart; the next run retries the reload), never
"rolled back". Recovery of an interrupted `promoting` first checks that production is still what
the rollout left (champion alias, deployments.json since the promotion began): anything else is
an operator's action, which wins; the rollout is then closed as `superseded` without promoting.
A manual rollback (lib.delivery.operations) closes any open rollout itself.

When the process dies in a phase, what holds and what the next run does first:

  phase (fault point)              guaranteed                                   next run
  staging, smoke_testing           production untouched                         rolls back
  canary n%                        champion serves; the lease drops the canary  rolls back
  promoting/after_promoting_write  nothing moved; the baseline is saved         finishes it
  promoting/after_alias_move       registry names the candidate; files,         finishes it
                                   service and records on the old champion
  promoting/after_file_swap        registry and models/ new; service old        reload, record
  promoting/after_service_reload   all new but the record                       the record
  succeeded, service not reloaded  registry, models/, record new; service old   reloads it
  rolled_back/rejected/superseded  final                                        nothing

"Finishes" always checks first that nothing happened since (else: superseded, not promoted).
"""

from __future__ import annotations

import logging
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

from lib import registry
from lib.delivery import releases, rollout
from lib.delivery.faults import fault_point
from lib.delivery.service_control import (
    SERVICE_RELOADED,
    reload_champion,
    served_version,
    service_health,
    set_routing,
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
) -> Promoted:
    """`promoting` (with the baseline recovery checks against), then registry, files, service
    and records through releases.promote, then `succeeded`. PromotionUndone propagates."""
    baseline = {
        "champion": registry.alias_version(client, model_name, "champion"),
        "previous": registry.alias_version(client, model_name, "previous"),
        "records": len(releases.history(models_dir)),
    }
    rollout.advance(store, rollout.Phase.PROMOTING, detail="all checks passed", promotion=baseline)
    fault_point("after_promoting_write")
    result = releases.promote(
        client,
        model_name,
        version,
        models_dir,
        logs_dir,
        reason=reason,
        metrics=metrics,
        reload=None
        if prod_url is None
        else (lambda: reload_champion(prod_url, token, expect=version)),
        before=baseline,
    )
    return close_promotion(store, version, prod_url, result.get("service"), baseline["champion"])


def close_promotion(
    store: rollout.RolloutStore,
    version: str,
    prod_url: str | None,
    service: str | None,
    old: str | None,
    how: str = "promoted to champion",
) -> Promoted:
    note = None
    if service not in (None, SERVICE_RELOADED):
        note = (
            f"service at {prod_url} {service}: the registry and models/ name v{version}, the "
            f"service serves v{old} until it is reloaded or restarted (the next run reloads it)"
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
) -> None:
    """Canary to 0% first (traffic), then aliases and records; production stays as it was."""
    if prod_url:
        try:
            set_routing(prod_url, token, None, 0)
        except Exception as exc:  # the lease drops the canary anyway; say so and go on
            log.warning("could not set the canary weight to 0 on %s: %s", prod_url, exc)
    try:
        releases.abort_canary(client, model_name, logs_dir, reason, str(version), models_dir)
    except RegistryUnavailable as exc:
        # rollout.json is local: it says what happened; the aliases and the deployments.json
        # record need the registry (a record without the real champion would lie) and are left
        # to the next run (finish_registry_cleanup). The outage propagates: the stage fails.
        if "registry" not in reason.lower():
            reason += f"; MLflow registry unavailable during the rollback ({exc.reason})"
        reason += "; canary alias and deployment record left for the next run"
        state = store.load()
        if state is not None and not state.finished:
            rollout.finish(store, rollout.Phase.ROLLED_BACK, reason)
        raise
    state = store.load()
    if state is not None and not state.finished:
        rollout.finish(store, rollout.Phase.ROLLED_BACK, reason)


@dataclass(frozen=True)
class Recovery:
    """What recovery did: `promoted` (an interrupted promotion finished, or its service reload
    completed), `rolled_back` (a real rollback of the candidate), `superseded` (an operator
    acted after the interruption; production left as the operator set it) or `reconciled` (no
    rollout was pending, but a service served another version than the registry names, or
    routed a canary no rollout owns, and was brought in line)."""

    outcome: Literal["promoted", "rolled_back", "superseded", "reconciled"]
    version: str  # the interrupted rollout's candidate
    champion: str | None  # the version in production afterwards
    reason: str

    def __str__(self) -> str:
        return self.reason

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


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
    before `promoting`; finish a promotion that died during `promoting` unless production
    changed since (then close it as superseded, touching nothing); reload a service that missed
    the end of a finished promotion. None when nothing was pending. Registry errors propagate.
    """
    store = rollout.RolloutStore(models_dir / "rollout.json")
    state = store.load()
    if state is None:
        return None
    token = os.environ.get("SERVING_ADMIN_TOKEN")
    if not rollout.interrupted(state):
        left = _finish_registry_cleanup(client, model_name, state, models_dir, logs_dir)
        return left or _reload_missed(client, model_name, store, state, models_dir, logs_dir, token)
    version = state.candidate_version
    if state.phase == rollout.Phase.PROMOTING:
        rollout.claim(store, os.getpid(), detail="recovering an interrupted promotion")
        changed = changed_since_promotion(client, model_name, models_dir, state)
        if changed is not None:
            return _supersede(client, model_name, store, state, models_dir, logs_dir, changed)
        base = state.promotion or {}
        url = state.serving_url
        try:
            result = releases.promote(
                client,
                model_name,
                version,
                models_dir,
                logs_dir,
                reason="promotion finished after an interrupted run",
                reload=None if not url else (lambda: reload_champion(url, token, version)),
                before=base if "champion" in base else None,
            )
        except releases.PromotionUndone as exc:
            reason = f"interrupted promotion of v{version} could not be finished: {exc}"
            roll_back_rollout(
                client, model_name, store, logs_dir, models_dir, version, reason, url, token
            )
            champion = registry.alias_version(client, model_name, "champion")
            return Recovery("rolled_back", version, champion, reason)
        done = close_promotion(
            store, version, url, result.get("service"), base.get("champion"),
            how="promoted: finished the promotion an interrupted run had begun",
        )  # fmt: skip
        text = f"finished the interrupted promotion of v{version}"
        return Recovery(
            "promoted", version, version, text + (f"; {done.note}" if done.note else "")
        )
    reason = (
        f"interrupted: the process running the rollout (pid {state.owner_pid}, the 05 deploy "
        f"kernel of run {state.run_id}) died during {state.phase} at {state.weight}%"
    )
    rollout.claim(store, os.getpid(), detail="rolling back an interrupted rollout")
    roll_back_rollout(
        client,
        model_name,
        store,
        logs_dir,
        models_dir,
        version,
        reason,
        state.serving_url,
        token,
    )
    champion = registry.alias_version(client, model_name, "champion")
    return Recovery(
        "rolled_back",
        version,
        champion,
        f"rolled back the interrupted rollout of v{version} ({reason})",
    )


def _supersede(
    client: Any,
    model_name: str,
    store: rollout.RolloutStore,
    state: rollout.RolloutState,
    models_dir: Path,
    logs_dir: Path,
    changed: str,
) -> Recovery:
    """Close an interrupted promotion overtaken by a later action, without promoting: no canary
    traffic, no alias of the candidate left; the champion stays whatever the operator set."""
    version = state.candidate_version
    reason = f"interrupted promotion of v{version} superseded: {changed}; not promoted"
    token = os.environ.get("SERVING_ADMIN_TOKEN")
    if state.serving_url:
        try:
            set_routing(state.serving_url, token, None, 0)
        except Exception as exc:  # the lease drops the canary anyway; say so and go on
            log.warning("could not set the canary weight to 0 on %s: %s", state.serving_url, exc)
    record = releases.abort_canary(
        client, model_name, logs_dir, reason, version, models_dir, event="rollout_superseded"
    )
    rollout.finish(store, rollout.Phase.SUPERSEDED, reason)
    log.warning("%s", reason)
    return Recovery("superseded", version, record["champion_version"], reason)


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
    return Recovery(
        "rolled_back",
        version,
        record["champion_version"],
        f"removed the alias(es) {removed} of v{version} left by a rollout that ended "
        f"{state.phase} while the registry was unreachable",
    )


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
    if state.phase != rollout.Phase.SUCCEEDED or not url:
        return None
    if service in (None, SERVICE_RELOADED):
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
    return Recovery(
        "promoted",
        version,
        champion,
        f"the service at {url} now serves v{version} (its reload had failed after the promotion)",
    )


def reconcile_services(
    client: Any,
    model_name: str,
    models_dir: Path,
    logs_dir: Path,
    urls: list[str | None],
    token: str | None,
) -> str | None:
    """The last step of recovery, at every runner start: each production service this project
    knows of (the rollout's, the configured one) serves the version the registry names and,
    when no rollout is open, routes no canary. A service that does not answer, or serves
    another model, is left alone; a reload that fails is said (the next run tries again).
    Returns what was done or found, in words; None when every service already agreed."""
    champion = registry.alias_version(client, model_name, "champion")
    state = rollout.RolloutStore(models_dir / "rollout.json").load()
    rollout_open = state is not None and state.active
    said: list[str] = []
    for url in dict.fromkeys(u for u in urls if u):
        health = service_health(url)
        if health is None or health.get("model_name") not in (None, model_name):
            continue
        if not rollout_open and (health.get("canary_weight") or 0) > 0:
            try:
                set_routing(url, token, None, 0)
                said.append(f"the service at {url} routed a canary no rollout owns: weight 0")
            except Exception as exc:  # its lease drops it anyway
                said.append(f"could not take the stray canary off {url} ({type(exc).__name__})")
        serving = served_version(url)
        if champion is None or serving == champion:
            continue
        what = f"the service at {url} served {_named(serving)}, the registry names v{champion}"
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


def _named(version: str | None) -> str:
    return "no model" if version is None else f"v{version}"
