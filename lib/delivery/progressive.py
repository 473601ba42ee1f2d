"""Progressive delivery of an approved candidate: staging, smoke tests, canary steps, promotion.

As in Flagger and Argo Rollouts: a staging instance serves the candidate for smoke tests, then the
production service sends it each canary weight, held for the analysis window and until enough
samples arrived. Any failed check, a service that stops answering or an exception rolls back at
once; the weight is leased, so if this process dies the service drops the canary itself and the
next runner rolls back from the state file. A failure during `promoting` other than a promotion
undone everywhere is not a rollback: the next run finishes it (lib.delivery.rollout_end).
"""

from __future__ import annotations

import logging
import os
import secrets
import time
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from lib import progress, registry
from lib.config_sections import AnalysisConfig, step_name, step_weight
from lib.delivery import canary, releases, rollout
from lib.delivery.replayer import Replayer, app_request
from lib.delivery.rollout_end import promote_rollout, raise_if_promotion_open, roll_back_rollout
from lib.delivery.service_control import (
    REPLICA_APPLY_SECONDS,
    RolloutFailed,
    RoutingChanged,
    set_routing,
    wait_applied,
)
from lib.delivery.service_process import ServiceProcess
from lib.delivery.smoke import run_smoke_tests
from lib.errors import RegistryUnavailable
from lib.pipeline import features

log = logging.getLogger(__name__)

# How long the staging instance may take to load the candidate before the smoke tests run (its
# registry look-up goes on in the background after a bounded start-up): generous, as it only
# delays a rollout whose model loads slowly, never a healthy one.
STAGING_LOAD_SECONDS = 180.0


@dataclass
class DeploySettings:
    """Parameters of one rollout. No defaults here: they come from the config through the 05
    deploy stage's contract (lib.pipeline.contracts.DeployInputs), the one place they live."""

    steps: list[int | str]  # canary weights in percent, maybe after `shadow` (weight 0)
    analysis_seconds: float  # the canary window per step
    max_wait_seconds: float  # beyond the window, waiting for enough samples
    check_every_seconds: float  # fail fast between window ends
    replay_rate: float  # requests per second when the stage brings its own traffic
    replay: bool  # False: real users provide the traffic
    replay_label_share: float  # of replayed requests that ever get a label
    replay_label_delay_seconds: list[float]  # [low, high]: when each label arrives
    smoke_rows: int
    smoke_max_p95_ms: float
    lease_seconds: float
    serving_url: str | None  # a running production service; None: start one
    store_url: str  # the production service's prediction store
    analysis: dict[str, Any]  # AnalysisConfig fields


@dataclass
class DeployOutcome:
    outcome: str  # "promoted" | "rolled_back" | "planned" (05 run alone: nothing done)
    version: str
    champion_before: str | None
    rollback_reason: str | None
    timeline: list[dict[str, Any]]
    smoke: dict[str, Any] | None
    steps: list[dict[str, Any]]
    note: str | None = None  # a fault beside the outcome: service not reloaded, promotion undone


@dataclass
class Timeline:
    """What happened when, for the notebook's plot and the report."""

    logs_dir: Path | None = None  # each event is also one line of logs/deployment.log
    version: str | None = None
    champion: str | None = None  # the version in production, on every log line
    events: list[dict[str, Any]] = field(default_factory=list)
    started: float = field(default_factory=time.monotonic)

    def add(self, phase: str, weight: float, event: str, **details: Any) -> None:
        t = round(time.monotonic() - self.started, 2)
        at = rollout.now_iso()
        self.events.append(
            {"t": t, "at": at, "phase": phase, "weight": weight, "event": event, **details}
        )
        if self.logs_dir is not None:
            releases.log_transition(
                self.logs_dir, f"rollout_{phase}", version=self.version, champion=self.champion,
                weight=weight, detail=event,
            )  # fmt: skip
        log.info("rollout %s @%s%%: %s", phase, weight, event)


def known_rows(model: Any, holdout: pd.DataFrame, n: int) -> list[tuple[dict[str, Any], int]]:
    """Request bodies with the label the registered model gives them offline."""
    sample = holdout.head(n)
    labels = model.predict(features.model_inputs(sample))
    return [
        (app_request(row), int(label))
        for (_, row), label in zip(sample.iterrows(), labels, strict=True)
    ]


def deploy(
    root: Path,
    client: Any,
    model_name: str,
    tracking_uri: str,
    version: str,
    holdout: pd.DataFrame,
    settings: DeploySettings,
    models_dir: Path,
    logs_dir: Path,
    run_id: str,
    sleep: Callable[[float], None] = time.sleep,
) -> DeployOutcome:
    """Run one rollout of `version` to the end: promoted, or rolled back with the reason."""
    prod_url = settings.serving_url
    store = rollout.RolloutStore(models_dir / "rollout.json")
    champion = registry.alias_version(client, model_name, "champion")
    # begins, or resumes the rollout a person approved (it waited for this version)
    rollout.begin(store, model_name, version, champion, settings.steps, run_id, prod_url)
    timeline = Timeline(logs_dir, version, champion)
    timeline.add("staging", 0, f"rollout of v{version} started (champion: v{champion})")
    releases.log_transition(
        logs_dir, "rollout_started", version=version, champion=champion, run_id=run_id
    )
    records = [(app_request(r), float(r["rating"])) for _, r in holdout.iterrows()]
    model = registry.load_version(model_name, version)
    token = (prod_url and os.environ.get("SERVING_ADMIN_TOKEN")) or secrets.token_urlsafe(24)
    production: ServiceProcess | None = None
    smoke_result: dict[str, Any] | None = None
    steps: list[dict[str, Any]] = []
    try:
        smoke_result = staging_and_smoke(
            root, client, model_name, tracking_uri, version, model, holdout, settings, store,
            timeline, logs_dir,
        )  # fmt: skip
        if champion is None:  # first deployment: nothing to compare a canary with
            timeline.add("promoting", 100, "no champion yet: promoted after smoke tests")
        else:
            if prod_url is None:
                production = _start_production(
                    root, model_name, tracking_uri, settings, token, models_dir, logs_dir, store
                )
                prod_url = production.url
            registry.set_alias(client, model_name, "canary", version)  # for status/readers
            _canary_steps(
                (client, model_name, champion), prod_url, token, version, records, settings,
                store, timeline, production, sleep, steps,
            )  # fmt: skip
        done = promote_rollout(
            client, model_name, store, version, models_dir, logs_dir, prod_url, token,
            reason=f"rollout passed ({run_id})", metrics={"steps": len(steps)},
        )  # fmt: skip
        timeline.champion = version
        timeline.add("succeeded", 100, done.reason)
        return DeployOutcome(
            "promoted", version, champion, None, timeline.events, smoke_result, steps,
            note=done.note,
        )  # fmt: skip
    except Exception as exc:  # every failure rolls back; the reason is what went wrong
        raise_if_promotion_open(exc, client, model_name, store, logs_dir, version)
        reason, note = _rollback_reason(exc, store, prod_url)
        outage = exc if isinstance(exc, RegistryUnavailable) else None
        try:
            roll_back_rollout(
                client, model_name, store, logs_dir, models_dir, version, reason, prod_url, token
            )
        except RegistryUnavailable as during:  # rollout.json is closed; the registry part waits
            outage = outage or during
        timeline.add("rolled_back", 0, f"rolled back: {reason}")
        if outage is exc:  # the stage fails naming the outage (the runner exits nonzero)
            raise
        if outage is not None:
            raise outage from exc
        return DeployOutcome(
            "rolled_back", version, champion, reason, timeline.events, smoke_result, steps,
            note=note,
        )  # fmt: skip
    finally:
        if production is not None:
            production.stop()


def _start_production(
    root: Path,
    model_name: str,
    tracking_uri: str,
    settings: DeploySettings,
    token: str,
    models_dir: Path,
    logs_dir: Path,
    store: rollout.RolloutStore,
) -> ServiceProcess:
    """No production service is configured: start one for this rollout, and say where it is in
    rollout.json (an operator's stop and the next run's recovery reach it there)."""
    feedback_token = os.environ.get("SERVING_FEEDBACK_TOKEN") or secrets.token_urlsafe(24)
    production = ServiceProcess(
        root, model_name, tracking_uri, settings.store_url, admin_token=token,
        log_path=logs_dir / "service.log", models_dir=models_dir, feedback_token=feedback_token,
    ).start()  # fmt: skip
    rollout.update(store, lambda state: setattr(state, "serving_url", production.url))
    return production


def _rollback_reason(
    exc: Exception, store: rollout.RolloutStore, prod_url: str | None
) -> tuple[str, str | None]:
    """Why the rollout rolls back, and the outcome's note when the cause is a fault (a promotion
    undone, an unreachable service), not a verdict on the model."""
    import httpx

    stopped = rollout.stop_requested(store)  # whatever surfaced first, a stop is a stop
    if isinstance(exc, rollout.RolloutStopped) or stopped is not None:
        return str(exc if stopped is None else rollout.RolloutStopped(stopped)), None
    if isinstance(exc, RoutingChanged):
        return f"the canary's routing was changed outside this rollout: {exc}", None
    if isinstance(exc, releases.PromotionUndone):
        return f"{type(exc).__name__}: {exc}", f"promotion failed and was undone everywhere: {exc}"
    if isinstance(exc, RolloutFailed):
        return str(exc), None
    if isinstance(exc, RegistryUnavailable):
        weight = getattr(store.load(), "weight", 0)
        return f"registry outage at canary weight {weight}%: {exc}", None
    if isinstance(exc, httpx.TransportError):
        reason = f"production service at {prod_url} unreachable: {type(exc).__name__}: {exc}"
        return reason, reason
    return f"{type(exc).__name__}: {exc}", None


def staging_and_smoke(
    root: Path,
    client: Any,
    model_name: str,
    tracking_uri: str,
    version: str,
    model: Any,
    holdout: pd.DataFrame,
    settings: DeploySettings,
    store: rollout.RolloutStore,
    timeline: Timeline,
    logs_dir: Path,
) -> dict[str, Any]:
    """Deploy `version` to a staging instance and smoke-test it (RolloutFailed when it fails);
    the operator's promote (lib.delivery.operations) runs the same gate."""
    registry.set_alias(client, model_name, "staging", str(version))
    staging_store = f"sqlite:///{(logs_dir / 'staging-predictions.db').as_posix()}"
    try:
        staging = ServiceProcess(
            root,
            model_name,
            tracking_uri,
            staging_store,
            champion_alias="staging",
            log_path=logs_dir / "staging.log",
        ).start()
    except Exception as exc:
        raise RolloutFailed(f"staging deploy failed: {exc}") from exc
    try:
        timeline.add("staging", 0, f"staging instance up at {staging.url}")
        rollout.advance(store, rollout.Phase.SMOKE_TESTING, detail=staging.url)
        known = known_rows(model, holdout, settings.smoke_rows)
        # else model_loaded says what it serves; a loaded machine (CI) took over 60 s here
        staging.wait_serving(str(version), timeout=STAGING_LOAD_SECONDS)
        result = run_smoke_tests(staging.url, str(version), known, settings.smoke_max_p95_ms)
        rollout.record_step(store, {"kind": "smoke", **result.to_dict()})
        timeline.add(
            "smoke_testing",
            0,
            "smoke tests " + ("passed" if result.passed else "failed"),
            checks={c.name: c.passed for c in result.checks},
        )
        if not result.passed:
            raise RolloutFailed("smoke tests failed: " + "; ".join(result.failures))
        return result.to_dict()
    finally:
        staging.stop()
        try:
            registry.delete_alias(client, model_name, "staging")  # a missing alias is fine
        except RegistryUnavailable as exc:  # the next registry call stops the rollout
            log.warning("staging alias left on v%s: %s", version, exc)


def _registry_still_ours(client: Any, model_name: str, champion: str | None, version: str) -> None:
    """Before the canary gets more traffic: the registry answers (RegistryUnavailable, which
    rolls back at this step, when it does not), the champion is still the one the canary is
    compared with, and the `canary` alias still names this version (else someone acted)."""
    now = registry.alias_version(client, model_name, "champion")
    if now != champion:
        raise RolloutFailed(
            f"the champion alias moved from v{champion} to v{now} during the canary"
        )
    canary_alias = registry.alias_version(client, model_name, "canary")
    if canary_alias != str(version):
        raise RolloutFailed(
            f"the canary alias names v{canary_alias}, not v{version}, during the canary"
        )


def _canary_steps(
    registry_view: tuple[Any, str, str | None],
    url: str,
    token: str,
    version: str,
    records: list[tuple[dict, float]],
    settings: DeploySettings,
    store: rollout.RolloutStore,
    timeline: Timeline,
    production: ServiceProcess | None,
    sleep: Callable[[float], None],
    results: list[dict[str, Any]],
) -> None:
    """Run every canary step; each step's summary is appended to `results` as it ends, so a
    failed rollout still reports what its steps saw."""
    from lib.serving.prediction_store import PredictionReader

    cfg = AnalysisConfig.model_validate(settings.analysis)
    replayer = None
    if settings.replay:
        low, high = settings.replay_label_delay_seconds
        replayer = Replayer(
            url, records, rate=settings.replay_rate,
            label_share=settings.replay_label_share, label_delay=(low, high),
            feedback_token=production.feedback_token if production else None,  # None: env's
        )  # fmt: skip
    began, around = time.time(), (production, replayer, store)
    with PredictionReader(settings.store_url) as predictions, replayer or nullcontext():
        last_weight = 0  # what this rollout set last: a routing change by anyone else stops it
        for step in settings.steps:
            weight, name = step_weight(step), step_name(step_weight(step))
            _registry_still_ours(*registry_view, version)
            rollout.advance(  # refused once an operator asked to stop (RolloutStopped)
                store, rollout.Phase.CANARY, weight=weight, detail=_step_detail(weight)
            )
            _route_step(url, token, version, weight, settings.lease_seconds, last_weight)
            last_weight = weight
            timeline.add("canary", weight, _step_detail(weight))
            analysis = _hold_step(
                url, token, version, weight, settings, cfg, predictions, began, around, sleep
            )
            summary = {
                "kind": "canary", "step": name, "weight": weight, **canary.summarize_step(analysis)
            }  # fmt: skip
            results.append(summary)
            rollout.record_step(store, summary)
            timeline.add(
                "canary",
                weight,
                f"step {name} {analysis.verdict}",
                checks={c.name: c.status for c in analysis.checks},
                samples=analysis.samples,
            )
            if analysis.verdict == "fail":
                raise RolloutFailed(f"canary step {name} failed: {analysis.reason}")
        if replayer is not None and replayer.stats.labels_pending:
            # the ratings of this rollout's users that were not due yet arrive after it, as
            # real late labels do: 06 monitor judges on them (after a failed step they are
            # dropped with the stopped replayer: the canary's answers are rolled back anyway)
            late = replayer.deliver_pending()
            log.info("%d replayed label(s) delivered after the canary steps", late)


def _route_step(
    url: str, token: str, version: str, weight: int, lease: float, last_weight: int
) -> None:
    """Set a step's weight (compare-and-set on the weight set last), then wait until every
    live replica applied it (REPLICA_APPLY_SECONDS, at most 2/3 of the lease, which a long
    wait then renews): a step is never measured on mixed routing (RolloutFailed instead)."""
    answer = set_routing(url, token, version, weight, lease, expected_weight=last_weight)
    began = time.monotonic()
    wait_applied(url, token, answer, timeout=min(REPLICA_APPLY_SECONDS, lease * 2 / 3))
    if time.monotonic() - began > lease / 3:  # as _hold_step would have renewed it by now
        set_routing(url, token, version, weight, lease, expected_weight=weight)


def _step_detail(weight: int) -> str:
    if weight == 0:
        return "shadow step: canary weight 0, scoring every request in the shadow"
    return f"canary weight {weight}%"


def _hold_step(
    url: str,
    token: str,
    version: str,
    weight: int,
    settings: DeploySettings,
    cfg: AnalysisConfig,
    predictions: Any,
    canary_started: float,
    around: tuple[ServiceProcess | None, Replayer | None, rollout.RolloutStore],
    sleep: Callable[[float], None],
) -> canary.Analysis:
    """Hold one step for its window and until the analysis says pass or fail. Every second it
    reads the rollout state (an operator's stop: RolloutStopped); its lease renewals only apply
    while the weight is the one it set (RoutingChanged when a person moved it, e.g. to 0)."""
    production, replayer, store = around
    step_started = time.time()
    last_lease = last_check = time.monotonic()
    deadline = settings.analysis_seconds + settings.max_wait_seconds
    shown = progress.Throttle(10.0)
    while True:
        sleep(min(1.0, settings.check_every_seconds))
        elapsed = time.time() - step_started
        if (stopped := rollout.stop_requested(store)) is not None:
            raise rollout.RolloutStopped(stopped)
        if production is not None and not production.alive():
            raise RolloutFailed("the production service stopped answering during the canary")
        if time.monotonic() - last_lease > settings.lease_seconds / 3:
            set_routing(url, token, version, weight, settings.lease_seconds, expected_weight=weight)
            last_lease = time.monotonic()
        window_end = elapsed >= settings.analysis_seconds
        if not window_end and time.monotonic() - last_check < settings.check_every_seconds:
            continue
        last_check = time.monotonic()
        window = _window(predictions, step_started, canary_started, weight)
        analysis = canary.analyze(window, cfg, shadow=weight == 0)
        if shown.ready(force=analysis.verdict == "fail" or window_end):
            progress.canary_step(weight, elapsed, settings.analysis_seconds, analysis)
        if analysis.verdict == "fail" or (window_end and analysis.verdict == "pass"):
            return analysis
        if elapsed >= deadline:
            errors = replayer.stats.last_error if replayer and replayer.stats.errors else None
            raise RolloutFailed(
                f"canary step {step_name(weight)}: not enough evidence after {elapsed:.0f} s "
                f"({analysis.reason}); rolled back rather than passed on no evidence"
                + (f"; replayer errors: {errors}" if errors else "")
            )


def _window(
    predictions: Any, step_started: float, canary_started: float, weight: int
) -> pd.DataFrame:
    """This step's canary rows against the champion's; at 100% the champion's come from the
    earlier steps of this rollout (it gets no traffic any more); at 0 (the `shadow` step) all
    are the champion's, with the canary's shadow scores. Rows the service answered in its last
    batching delay (store min_interval, 50 ms) come at the next look."""
    canary_rows = predictions.window(step_started, variant="canary")
    since = canary_started if weight >= 100 else step_started
    champion_rows = predictions.window(since, variant="champion")
    return pd.concat([champion_rows, canary_rows], ignore_index=True)
