"""Talking to a running model service's admin API: move canary traffic, reload the champion.
A refused routing change is a `RolloutFailed`: the step rolls back with the service's answer."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

log = logging.getLogger(__name__)

RELOAD_ATTEMPTS = 3  # tries to reach the service at the end of a promotion or rollback
RELOAD_BACKOFF_SECONDS = 0.5  # doubled after each failed try
SERVICE_RELOADED = "reloaded"
# How long a deployer waits for every live replica to apply a routing change before it measures
# a step: a replica reads the shared routing every routing_poll_seconds (1 s by default), then
# loads a version it does not hold yet off its event loop (seconds; tens for a large model).
# A replica that has not applied it by then fails the step (never measured on mixed routing).
REPLICA_APPLY_SECONDS = 60.0
REPLICA_CHECK_SECONDS = 0.25  # between two looks at the replicas' applied generations


class RolloutFailed(Exception):
    """A step failed: the message is the rollback reason."""


class RoutingChanged(RolloutFailed):
    """The service's canary weight is not the one the caller set last (`expected_weight`): a
    person or an expired lease moved it; the message is the service's."""


def admin_headers(token: str | None) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"} if token else {}


def set_routing(
    url: str,
    token: str | None,
    version: str | None,
    weight: float,
    lease_seconds: float | None = None,
    expected_weight: float | None = None,
) -> dict[str, Any]:
    """Move traffic on the production service. With `expected_weight` (the weight this caller
    set last) a compare-and-set: RoutingChanged when the weight is another one now."""
    import httpx

    body: dict[str, Any] = {"canary_version": version, "weight": weight}
    if lease_seconds:
        body["lease_seconds"] = lease_seconds
    if expected_weight is not None:
        body["expected_weight"] = expected_weight
    resp = httpx.put(f"{url}/admin/routing", json=body, headers=admin_headers(token), timeout=60)
    if resp.status_code == 409 and expected_weight is not None:  # the service's sentence
        try:
            detail = resp.json().get("detail")
        except (ValueError, AttributeError):
            detail = None
        raise RoutingChanged(detail if isinstance(detail, str) and detail else resp.text[:200])
    if resp.status_code != 200:
        raise RolloutFailed(f"routing change refused: HTTP {resp.status_code} {resp.text[:200]}")
    return resp.json()


def replicas_behind(answer: dict[str, Any], generation: int) -> list[str]:
    """The live replicas in an admin answer that have not applied `generation` yet."""
    return [
        str(r.get("replica_id"))
        for r in answer.get("replicas") or []
        if (r.get("applied_generation") or 0) < generation
    ]


def wait_applied(
    url: str,
    token: str | None,
    answer: dict[str, Any],
    timeout: float = REPLICA_APPLY_SECONDS,
    sleep: Callable[[float], None] = time.sleep,
) -> dict[str, Any]:
    """Wait until every live replica applied the routing generation of `answer` (the service's
    answer to a change), reading GET /admin/routing (any replica: they all list the others).
    One replica, or a service without shared routing: returns at once. RolloutFailed when some
    replica has not applied it within `timeout` (the step is not measured on mixed routing)."""
    import httpx

    generation = answer.get("generation")
    if not isinstance(generation, int):
        return answer
    behind = replicas_behind(answer, generation)
    deadline = time.monotonic() + timeout
    while behind:
        if time.monotonic() >= deadline:
            raise RolloutFailed(
                f"routing generation {generation} not applied by replica(s) {', '.join(behind)} "
                f"within {timeout:g} s: not measured on mixed routing"
            )
        sleep(REPLICA_CHECK_SECONDS)
        try:
            resp = httpx.get(f"{url}/admin/routing", headers=admin_headers(token), timeout=10)
        except httpx.TransportError as exc:
            log.info("replicas' generations not read: %s", type(exc).__name__)
            continue
        if resp.status_code == 200:
            answer = resp.json()
            behind = replicas_behind(answer, generation)
    return answer


def canary_off(url: str, token: str | None) -> str:
    """Canary weight 0 before anything else moves; says what happened, never raises (a service
    that cannot be reached drops the canary itself when its lease ends)."""
    try:
        set_routing(url, token, None, 0)
        return "canary weight 0"
    except Exception as exc:
        log.warning("could not set the canary weight to 0 on %s: %s", url, exc)
        return f"canary weight not set ({type(exc).__name__}); its lease drops it"


def reload_champion(url: str, token: str | None, expect: str | None = None) -> None:
    """Make the service follow the champion alias, then check what it serves: a service that
    answers 200 but still serves another version than `expect` is not reloaded (raises)."""
    import httpx

    resp = httpx.post(f"{url}/admin/reload", headers=admin_headers(token), timeout=60)
    if resp.status_code != 200:
        raise RuntimeError(f"reload refused: HTTP {resp.status_code} {resp.text[:200]}")
    wait_applied(url, token, resp.json())  # every replica serves it before it is checked
    if expect is not None and (serving := served_version(url)) != str(expect):
        raise RuntimeError(f"after the reload the service serves v{serving}, not v{expect}")


def service_health(url: str, timeout: float = 3.0) -> dict[str, Any] | None:
    """The service's /health, or None when it does not answer (never raises)."""
    import httpx

    try:
        body = httpx.get(f"{url}/health", timeout=timeout).json()
    except Exception as exc:
        log.info("no /health from %s: %s", url, type(exc).__name__)
        return None
    return body if isinstance(body, dict) else None


def served_version(url: str) -> str | None:
    """The champion version the service says it serves now (None: none, or no answer)."""
    health = service_health(url)
    version = ((health or {}).get("champion") or {}).get("version")
    return None if version in (None, "") else str(version)


def reload_with_retries(
    reload: Callable[[], Any] | None, attempts: int = RELOAD_ATTEMPTS
) -> str | None:
    """Tell the service to follow the aliases; a few tries, then say why not (never raise)."""
    if reload is None:
        return None
    delay = RELOAD_BACKOFF_SECONDS
    for attempt in range(1, attempts + 1):
        try:
            reload()
            return SERVICE_RELOADED
        except Exception as exc:  # reported in the record, not hidden: see the module doc
            error = f"{type(exc).__name__}: {str(exc)[:200]}"
            log.warning("service reload %d/%d failed: %s", attempt, attempts, error)
        if attempt < attempts:
            time.sleep(delay)
            delay *= 2
    return f"not reloaded ({error})"
