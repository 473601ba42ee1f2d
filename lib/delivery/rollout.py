"""The rollout state machine and its crash-safe state file (`models/rollout.json`).

One rollout at a time (phases named as in Flagger and Argo Rollouts). The file is replaced
atomically, so a SIGKILL leaves the old or the new file; an active rollout whose owner process is
gone was interrupted and is resumed or rolled back before anything else. An operator's stop is
written under the file lock only (not the runner's): from then on no canary step or promotion may
start. `promoting` keeps a baseline so recovery can tell a later operator action (`superseded`).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field, fields
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path
from typing import Any

from lib.atomic_files import write_json_atomic
from lib.config_sections import step_weight
from lib.errors import PipelineError

try:  # advisory lock between processes; absent on Windows, where the runner lock suffices
    import fcntl
except ImportError:  # pragma: no cover
    fcntl = None  # type: ignore[assignment]

log = logging.getLogger(__name__)

SCHEMA_VERSION = 1
DEFAULT_STEPS = (5, 25, 50, 100)


class Phase(StrEnum):
    AWAITING_APPROVAL = "awaiting_approval"  # parked: waits for a person (Flagger "Waiting")
    STAGING = "staging"  # the candidate is deployed beside production, no traffic
    SMOKE_TESTING = "smoke_testing"  # Flagger's pre-rollout webhooks
    CANARY = "canary"  # a share of live traffic (Flagger "Progressing")
    PROMOTING = "promoting"  # the registry and models/ are being switched
    SUCCEEDED = "succeeded"
    ROLLED_BACK = "rolled_back"  # Flagger "Failed", Argo "Degraded"
    REJECTED = "rejected"  # a parked rollout a person (or a newer decision) turned down
    SUPERSEDED = "superseded"  # an interrupted promotion overtaken by a later operator action


ACTIVE_PHASES = frozenset({Phase.STAGING, Phase.SMOKE_TESTING, Phase.CANARY, Phase.PROMOTING})
FINAL_PHASES = frozenset({Phase.SUCCEEDED, Phase.ROLLED_BACK, Phase.REJECTED, Phase.SUPERSEDED})

# Legal moves. staging -> canary skips smoke tests when none are configured; smoke_testing ->
# promoting is a first deployment, where there is no champion to compare a canary with.
TRANSITIONS: dict[Phase, frozenset[Phase]] = {
    Phase.AWAITING_APPROVAL: frozenset({Phase.STAGING, Phase.REJECTED}),
    Phase.STAGING: frozenset({Phase.SMOKE_TESTING, Phase.CANARY, Phase.ROLLED_BACK}),
    Phase.SMOKE_TESTING: frozenset({Phase.CANARY, Phase.PROMOTING, Phase.ROLLED_BACK}),
    Phase.CANARY: frozenset({Phase.CANARY, Phase.PROMOTING, Phase.ROLLED_BACK}),
    Phase.PROMOTING: frozenset({Phase.SUCCEEDED, Phase.ROLLED_BACK, Phase.SUPERSEDED}),
    **{phase: frozenset() for phase in FINAL_PHASES},
}


class RolloutError(PipelineError):
    """An illegal transition, a second concurrent rollout, or an unusable state file."""


class IllegalTransition(RolloutError):
    def __init__(self, rollout_id: str, current: Phase, target: Phase, why: str = "") -> None:
        allowed = ", ".join(sorted(TRANSITIONS[current])) or "nothing (it has finished)"
        super().__init__(
            f"rollout {rollout_id}: cannot go from {current.value} to {target.value}"
            f"{': ' + why if why else ''}; from {current.value} it may go to {allowed}"
        )


class RolloutConflict(RolloutError):
    """Never two canaries at once: another rollout is active or parked."""


class RolloutStopped(RolloutError):
    """An operator asked to stop this rollout: no more traffic, never promoted."""

    def __init__(self, state: RolloutState) -> None:
        asked = state.stop_requested or {}
        super().__init__(
            f"stopped by an operator at {asked.get('at', '?')}: "
            f"{asked.get('reason') or 'no reason given'} "
            f"(rollout of v{state.candidate_version} during {state.phase.value} at "
            f"{state.weight}%)"
        )


def now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


@dataclass
class RolloutState:
    """Everything a runner needs to resume, report or roll back one rollout."""

    rollout_id: str
    model_name: str
    candidate_version: str
    champion_version: str | None
    phase: Phase
    steps: list[int] = field(default_factory=lambda: list(DEFAULT_STEPS))  # `shadow`: 0, first
    step_index: int = -1  # index of the last step in steps reached; -1 before the first
    weight: int = 0  # % of live traffic on the canary now
    started_at: str = ""
    updated_at: str = ""
    reason: str = ""  # why it ended, or why it is parked
    run_id: str | None = None  # the pipeline run that drives it
    owner_pid: int | None = None
    serving_url: str | None = None
    history: list[dict[str, Any]] = field(default_factory=list)
    step_results: list[dict[str, Any]] = field(default_factory=list)
    # set when `promoting` begins: champion/previous/records before, later the service outcome
    promotion: dict[str, Any] | None = None
    # an operator's stop ({at, reason, by}): no canary step or promotion may follow it
    stop_requested: dict[str, Any] | None = None

    @property
    def active(self) -> bool:
        return self.phase in ACTIVE_PHASES

    @property
    def finished(self) -> bool:
        return self.phase in FINAL_PHASES

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["phase"] = self.phase.value
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RolloutState:
        """Build from a dict; raises ValueError naming what is missing or wrong."""
        if not isinstance(data, dict):
            raise ValueError(f"expected a JSON object, got {type(data).__name__}")
        known = {f.name for f in fields(cls)}
        required = {"rollout_id", "model_name", "candidate_version", "champion_version", "phase"}
        missing = sorted(required - data.keys())
        if missing:
            raise ValueError(f"missing field(s) {', '.join(missing)}")
        values = {k: v for k, v in data.items() if k in known}
        try:
            values["phase"] = Phase(values["phase"])
        except ValueError:
            raise ValueError(
                f"unknown phase {data['phase']!r} (known: {', '.join(p.value for p in Phase)})"
            ) from None
        values["candidate_version"] = str(values["candidate_version"])
        if values.get("champion_version") is not None:
            values["champion_version"] = str(values["champion_version"])
        return cls(**values)

    def describe(self) -> str:
        """One line naming the rollout, for conflict and resume messages."""
        where = f", canary weight {self.weight}%" if self.phase == Phase.CANARY else ""
        if self.phase == Phase.CANARY and self.weight == 0:
            where = ", shadow step (canary weight 0)"
        owner = f", owner pid {self.owner_pid}" if self.owner_pid else ""
        return (
            f"rollout {self.rollout_id} of {self.model_name} v{self.candidate_version} "
            f"(phase {self.phase.value}{where}{owner}, since {self.started_at})"
        )


class RolloutStore:
    """The state file of the current (or last) rollout, with archives beside it."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

    @property
    def archive_dir(self) -> Path:
        return self.path.parent / "rollouts"

    def load(self) -> RolloutState | None:
        """The stored rollout, or None when there never was one. A damaged file is an error."""
        if not self.path.exists():
            return None
        fix = (
            f"Inspect it; if no rollout is running, move it aside (mv {self.path} "
            f"{self.path}.bad) and check the registry aliases, which say what is serving."
        )
        try:
            data = json.loads(self.path.read_text())
        except (OSError, json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise RolloutError(f"rollout state {self.path} is unreadable ({exc}). {fix}") from exc
        if not isinstance(data, dict) or data.get("schema_version") != SCHEMA_VERSION:
            found = data.get("schema_version") if isinstance(data, dict) else None
            raise RolloutError(
                f"rollout state {self.path} has an unknown format (schema_version {found!r}, "
                f"expected {SCHEMA_VERSION}). {fix}"
            )
        try:
            return RolloutState.from_dict(data["state"])
        except (KeyError, TypeError, ValueError) as exc:
            raise RolloutError(f"rollout state {self.path} is invalid ({exc}). {fix}") from exc

    def save(self, state: RolloutState, path: Path | None = None) -> Path:
        """Replace the file (or `path`) atomically: the old or the new file survives any crash."""
        payload = {"schema_version": SCHEMA_VERSION, "state": state.to_dict()}
        return write_json_atomic(path or self.path, payload)

    @contextlib.contextmanager
    def locked(self) -> Iterator[None]:
        """Hold an advisory lock so two processes cannot interleave load-modify-save."""
        if fcntl is None:  # pragma: no cover
            yield
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path.parent / f".{self.path.name}.lock", "a") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)


def pid_alive(pid: int | None) -> bool:
    """Whether a process with this id exists (signal 0 checks without sending anything)."""
    if not pid or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except PermissionError:  # exists, owned by someone else
        return True
    except OSError:  # ProcessLookupError: no such process
        return False
    return True


def interrupted(state: RolloutState | None) -> bool:
    """An active rollout whose driving process is gone: resume or roll back before anything."""
    return state is not None and state.active and not pid_alive(state.owner_pid)


def _note(state: RolloutState, detail: str, to: Phase | None = None) -> str:
    """Add a history entry (the move to `to`, else staying in the phase) at the current weight."""
    at = now_iso()
    to_value = (to or state.phase).value
    state.history.append(
        {"at": at, "from": state.phase.value, "to": to_value, "weight": state.weight,
         "detail": detail}
    )  # fmt: skip
    state.updated_at = at
    return at


def transition(
    state: RolloutState, target: Phase | str, weight: int | None = None, detail: str = ""
) -> RolloutState:
    """Apply one move to a state in memory (validated, recorded in history); returns it.
    `canary` moves to the given weight or the next step, only upwards (down is a rollback)."""
    target = Phase(target)

    def illegal(why: str = "") -> IllegalTransition:
        return IllegalTransition(state.rollout_id, state.phase, target, why)

    if target not in TRANSITIONS[state.phase]:
        raise illegal()
    if state.stop_requested and target in (Phase.CANARY, Phase.PROMOTING):
        raise RolloutStopped(state)
    if target == Phase.CANARY:
        if weight is None:
            if state.step_index + 1 >= len(state.steps):
                steps = f"(steps {state.steps}); promote instead"
                raise illegal(f"no canary step after {state.weight}% {steps}")
            weight = state.steps[state.step_index + 1]
        weight = int(weight)
        shadow = weight == 0 and state.steps[:1] == [0] and state.phase != Phase.CANARY
        if not (0 < weight <= 100 or shadow):
            raise illegal(f"weight {weight}% is not in 1..100 (0 only as a first shadow step)")
        if state.phase == Phase.CANARY and weight <= state.weight:
            raise illegal(f"weight {weight}% does not go above the current {state.weight}%")
        reached = [i for i, w in enumerate(state.steps) if w <= weight]
        state.step_index = reached[-1] if reached else -1
        state.weight = weight
    elif target == Phase.SUCCEEDED:
        state.weight = 100
    elif target in (Phase.ROLLED_BACK, Phase.REJECTED, Phase.SUPERSEDED):
        state.weight = 0
    elif weight is not None:
        state.weight = int(weight)
    _note(state, detail, target)
    state.phase = target
    return state


def begin(
    store: RolloutStore,
    model_name: str,
    candidate: str,
    champion: str | None,
    steps: list[int | str] | tuple[int, ...] = DEFAULT_STEPS,
    run_id: str | None = None,
    serving_url: str | None = None,
    approved: bool = True,
    owner_pid: int | None = None,
    reason: str = "",
) -> RolloutState:
    """Start a rollout in `staging`, or park it in `awaiting_approval` when not approved.
    Refuses while another rollout is active or parked for another version; beginning the parked
    version again approves it (this process drives it, on `serving_url`) or keeps it parked."""
    candidate = str(candidate)
    champion = None if champion is None else str(champion)
    steps = [step_weight(s) for s in steps]  # a first `shadow` step is weight 0
    weights = steps[1:] if steps[:1] == [0] else steps
    if not weights or any(not 0 < s <= 100 for s in weights) or steps != sorted(set(steps)):
        raise RolloutError(
            f"canary steps must be increasing weights in 1..100 (maybe after shadow), got {steps}"
        )
    pid = os.getpid() if owner_pid is None else owner_pid
    with store.locked():
        current = store.load()
        if current is not None and current.active:
            state_word = "interrupted" if interrupted(current) else "in progress"
            raise RolloutConflict(
                f"cannot begin a rollout of {model_name} v{candidate}: {current.describe()} is "
                f"{state_word}; resume it or roll it back first (never two canaries at once)"
            )
        if current is not None and current.phase == Phase.AWAITING_APPROVAL:
            if (current.model_name, current.candidate_version) != (model_name, candidate):
                raise RolloutConflict(
                    f"cannot begin a rollout of {model_name} v{candidate}: {current.describe()} "
                    f"is awaiting approval ({current.reason or 'no reason recorded'}); approve "
                    "or reject it first"
                )
            if not approved:
                return current
            transition(
                current, Phase.STAGING, detail=reason or f"approved, resumed by run {run_id}"
            )
            current.owner_pid, current.reason = pid, ""
            current.serving_url = serving_url or current.serving_url
            current.run_id = run_id or current.run_id
            store.save(current)
            log.info("approved %s", current.describe())
            return current
        if current is not None:  # finished: keep it beside the state file
            store.save(current, store.archive_dir / f"{current.rollout_id}.json")
        at = now_iso()
        stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S%fZ")
        phase = Phase.STAGING if approved else Phase.AWAITING_APPROVAL
        state = RolloutState(
            rollout_id=f"{model_name}-v{candidate}-{stamp}",
            model_name=model_name,
            candidate_version=candidate,
            champion_version=champion,
            phase=phase,
            steps=steps,
            started_at=at,
            updated_at=at,
            reason="" if approved else (reason or "awaiting approval"),
            run_id=run_id,
            owner_pid=pid,
            serving_url=serving_url,
            history=[{"at": at, "from": None, "to": phase.value, "weight": 0, "detail": reason}],
        )
        store.save(state)
        log.info("began %s", state.describe())
        return state


def update(store: RolloutStore, change: Callable[[RolloutState], None]) -> RolloutState:
    """Load, change and save the stored rollout under the lock."""
    with store.locked():
        state = store.load()
        if state is None:
            raise RolloutError(f"no rollout in {store.path}: begin one first")
        change(state)
        store.save(state)
        return state


def advance(
    store: RolloutStore,
    phase: Phase | str,
    weight: int | None = None,
    detail: str = "",
    promotion: dict[str, Any] | None = None,
) -> RolloutState:
    """Move the stored rollout to an active phase (or the next canary step) and save it.
    `promotion`: the baseline recovery compares with (champion, previous, number of records)."""
    if Phase(phase) in FINAL_PHASES:
        raise RolloutError(f"use finish() to end a rollout (asked for {Phase(phase).value})")

    def change(state: RolloutState) -> None:
        transition(state, phase, weight, detail)
        state.promotion = dict(promotion) if promotion is not None else state.promotion

    state = update(store, change)
    log.info("%s -> %s (weight %d%%) %s", state.rollout_id, state.phase, state.weight, detail)
    return state


def note_promotion(store: RolloutStore, **facts: Any) -> RolloutState:
    """Add facts to the promotion record (e.g. whether the service reloaded)."""
    return update(store, lambda s: setattr(s, "promotion", {**(s.promotion or {}), **facts}))


def close_open(store: RolloutStore, reason: str) -> RolloutState | None:
    """An operator acted on production: end any active rollout as rolled back, saying so.
    Returns it, or None when none was open (a parked one stays parked)."""
    state = store.load()
    return None if state is None or not state.active else finish(store, Phase.ROLLED_BACK, reason)


def request_stop(store: RolloutStore, reason: str, by: str = "operator") -> RolloutState:
    """An operator stops the active rollout (no runner lock needed): from then on no canary step
    or promotion, and the deployer rolls back at its next look. RolloutError when none is active
    (a parked one is rejected instead)."""

    def change(state: RolloutState) -> None:
        if not state.active:
            raise RolloutError(f"nothing to stop: {state.describe()} is not active")
        if state.stop_requested is None:
            at = _note(state, f"stop requested by {by}: {reason}")
            state.stop_requested = {"at": at, "reason": reason, "by": by, "pid": os.getpid()}

    state = update(store, change)
    log.warning("stop requested for %s: %s", state.describe(), reason)
    return state


def stop_requested(store: RolloutStore) -> RolloutState | None:
    """The stored rollout when an operator asked to stop it, else None (a cheap read: the
    deployer calls it between its checks)."""
    state = store.load()
    return state if state is not None and state.stop_requested and state.active else None


def wait_until_settled(store: RolloutStore, seconds: float) -> RolloutState | None:
    """The stored rollout once it has finished, or its driving process is gone, or after
    `seconds` (whichever comes first): how an operator's command waits for the deployer."""
    deadline = time.monotonic() + seconds
    while True:
        state = store.load()
        settled = state is None or state.finished or not pid_alive(state.owner_pid)
        if settled or time.monotonic() >= deadline:
            return state
        time.sleep(0.25)


def claim(store: RolloutStore, pid: int | None = None, detail: str = "") -> RolloutState:
    """Take over an interrupted rollout; refuses while its owner is still alive."""

    def change(state: RolloutState) -> None:
        new = os.getpid() if pid is None else pid
        if state.active and state.owner_pid != new and pid_alive(state.owner_pid):
            raise RolloutConflict(f"{state.describe()} is still driven by a live process")
        _note(state, detail or f"resumed by pid {new}")
        state.owner_pid = new

    return update(store, change)


def record_step(store: RolloutStore, result: dict[str, Any]) -> RolloutState:
    """Keep what one analysis (or smoke test) saw, tagged with the phase and weight."""

    def change(state: RolloutState) -> None:
        if not state.active:
            raise RolloutError(
                f"cannot record a step result: {state.describe()} is not in an active phase"
            )
        state.step_results.append(
            {"at": now_iso(), "phase": state.phase.value, "step_index": state.step_index,
             "weight": state.weight, **result}
        )  # fmt: skip
        state.updated_at = state.step_results[-1]["at"]

    return update(store, change)


def finish(store: RolloutStore, phase: Phase | str, reason: str) -> RolloutState:
    """End the rollout as succeeded, rolled_back or rejected, saying why."""
    target = Phase(phase)
    if target not in FINAL_PHASES:
        raise RolloutError(
            f"finish() takes a final phase ({', '.join(sorted(FINAL_PHASES))}), got {target.value}"
        )

    def change(state: RolloutState) -> None:
        transition(state, target, detail=reason)
        state.reason = reason

    state = update(store, change)
    log.info("%s finished: %s (%s)", state.rollout_id, state.phase, reason)
    return state
