"""The rollout state machine: legal and illegal moves, history, the atomic state file."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from lib.delivery import rollout
from lib.delivery.rollout import Phase, RolloutError, RolloutState, RolloutStore
from lib.errors import PipelineError


@pytest.fixture
def store(tmp_path: Path) -> RolloutStore:
    return RolloutStore(tmp_path / "models" / "rollout.json")


def _begin(store: RolloutStore, version: str = "2", **kw) -> RolloutState:
    args = {"steps": [5, 25, 50, 100], "run_id": "run-1", "serving_url": None, **kw}
    return rollout.begin(store, "m", version, "1", **args)


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid  # reaped: no process has this id now (until the OS reuses it)


def test_full_happy_path_is_recorded(store: RolloutStore) -> None:
    state = _begin(store)
    assert state.phase == Phase.STAGING and state.owner_pid == os.getpid()
    rollout.advance(store, "smoke_testing", detail="3 smoke requests ok")
    for expected in (5, 25, 50, 100):
        state = rollout.advance(store, Phase.CANARY)
        assert state.weight == expected
        rollout.record_step(store, {"verdict": "pass", "weight_seen": expected})
    rollout.advance(store, Phase.PROMOTING)
    state = rollout.finish(store, Phase.SUCCEEDED, "all steps passed")

    loaded = store.load()
    assert loaded == state
    assert loaded.phase == Phase.SUCCEEDED and loaded.reason == "all steps passed"
    assert [(h["from"], h["to"]) for h in loaded.history] == [
        (None, "staging"),
        ("staging", "smoke_testing"),
        ("smoke_testing", "canary"),
        ("canary", "canary"),
        ("canary", "canary"),
        ("canary", "canary"),
        ("canary", "promoting"),
        ("promoting", "succeeded"),
    ]
    assert [h["weight"] for h in loaded.history[2:6]] == [5, 25, 50, 100]
    assert loaded.history[1]["detail"] == "3 smoke requests ok"
    assert all(h["at"].endswith("+00:00") for h in loaded.history)
    assert [r["weight"] for r in loaded.step_results] == [5, 25, 50, 100]
    assert (
        loaded.step_results[0]["verdict"] == "pass" and loaded.step_results[0]["phase"] == "canary"
    )
    assert loaded.step_index == 3


@pytest.mark.parametrize(
    ("path", "target"),
    [
        ([], Phase.PROMOTING),  # staging -> promoting skips every check
        ([Phase.SMOKE_TESTING], Phase.STAGING),  # no going back
        ([Phase.SMOKE_TESTING, Phase.CANARY], Phase.SMOKE_TESTING),
        ([Phase.SMOKE_TESTING, Phase.CANARY, Phase.PROMOTING], Phase.CANARY),
    ],
)
def test_illegal_transitions_name_from_and_to(store, path, target) -> None:
    _begin(store)
    for phase in path:
        rollout.advance(store, phase)
    before = store.load()
    with pytest.raises(rollout.IllegalTransition) as err:
        rollout.advance(store, target)
    assert isinstance(err.value, PipelineError)
    assert f"from {before.phase.value} to {target.value}" in str(err.value)
    assert store.load() == before  # nothing saved


def test_finished_rollouts_cannot_move(store: RolloutStore) -> None:
    _begin(store)
    rollout.finish(store, Phase.ROLLED_BACK, "smoke test failed")
    assert store.load().weight == 0
    with pytest.raises(rollout.IllegalTransition, match="it has finished"):
        rollout.advance(store, Phase.CANARY)
    with pytest.raises(rollout.IllegalTransition):
        rollout.finish(store, Phase.SUCCEEDED, "no")


def test_finish_and_advance_are_not_interchangeable(store: RolloutStore) -> None:
    _begin(store)
    with pytest.raises(RolloutError, match="finish"):
        rollout.advance(store, Phase.ROLLED_BACK)
    with pytest.raises(RolloutError, match="final phase"):
        rollout.finish(store, Phase.CANARY, "x")


def test_canary_weights_only_go_up_and_steps_end(store: RolloutStore) -> None:
    _begin(store, steps=[10, 100])
    rollout.advance(store, Phase.CANARY, weight=30)
    with pytest.raises(rollout.IllegalTransition, match="does not go above"):
        rollout.advance(store, Phase.CANARY, weight=20)
    assert rollout.advance(store, Phase.CANARY).weight == 100  # next step after 30
    with pytest.raises(rollout.IllegalTransition, match="promote instead"):
        rollout.advance(store, Phase.CANARY)


def test_first_deployment_may_promote_after_smoke_tests(store: RolloutStore) -> None:
    rollout.begin(store, "m", "1", None)
    rollout.advance(store, Phase.SMOKE_TESTING)
    assert rollout.advance(store, Phase.PROMOTING).phase == Phase.PROMOTING


def test_bad_steps_are_refused(store: RolloutStore) -> None:
    with pytest.raises(RolloutError, match="increasing"):
        _begin(store, steps=[50, 25])
    assert store.load() is None


def test_never_two_rollouts_at_once(store: RolloutStore) -> None:
    first = _begin(store, "2")
    with pytest.raises(rollout.RolloutConflict) as err:
        _begin(store, "3")
    assert first.rollout_id in str(err.value) and "in progress" in str(err.value)
    assert store.load() == first


@pytest.mark.component
def test_a_dead_active_rollout_still_blocks_and_says_interrupted(store: RolloutStore) -> None:
    _begin(store, "2", owner_pid=_dead_pid())
    with pytest.raises(rollout.RolloutConflict, match="interrupted"):
        _begin(store, "3")


def test_parked_rollout_blocks_other_versions_and_is_approved_by_beginning_it(store) -> None:
    parked = _begin(store, "2", approved=False, reason="score 62: manual review")
    assert parked.phase == Phase.AWAITING_APPROVAL and not parked.active
    assert parked.reason == "score 62: manual review"
    with pytest.raises(rollout.RolloutConflict, match="awaiting approval"):
        _begin(store, "3")
    assert _begin(store, "2", approved=False) == parked  # still parked, unchanged
    approved = _begin(store, "2")
    assert approved.rollout_id == parked.rollout_id
    assert approved.phase == Phase.STAGING and approved.reason == ""
    assert [h["to"] for h in approved.history] == ["awaiting_approval", "staging"]


def test_parked_rollout_can_be_rejected_then_another_begins(store: RolloutStore) -> None:
    parked = _begin(store, "2", approved=False)
    rollout.finish(store, Phase.REJECTED, "a person said no")
    fresh = _begin(store, "3")
    assert fresh.candidate_version == "3"
    archived = store.archive_dir / f"{parked.rollout_id}.json"
    assert json.loads(archived.read_text())["state"]["phase"] == "rejected"


@pytest.mark.component
def test_approve_and_claim(store: RolloutStore) -> None:
    _begin(store, approved=False)
    assert _begin(store).phase == Phase.STAGING  # beginning the parked version approves it
    state = store.load()
    state.owner_pid = _dead_pid()
    store.save(state)
    claimed = rollout.claim(store, pid=os.getpid())
    assert claimed.owner_pid == os.getpid()
    assert claimed.history[-1]["detail"].startswith("resumed by pid")
    with pytest.raises(rollout.RolloutConflict, match="live process"):
        rollout.claim(store, pid=os.getpid() + 1_000_000)


@pytest.mark.component
def test_interrupted_needs_an_active_phase_and_a_dead_owner(store: RolloutStore) -> None:
    state = _begin(store)
    assert not rollout.interrupted(state)  # we are alive
    state.owner_pid = _dead_pid()
    assert rollout.interrupted(state)
    state.phase = Phase.AWAITING_APPROVAL  # parked is not interrupted
    assert not rollout.interrupted(state)
    state.phase = Phase.ROLLED_BACK
    assert not rollout.interrupted(state)
    assert not rollout.interrupted(None)


@pytest.mark.component
def test_pid_alive() -> None:
    assert rollout.pid_alive(os.getpid())
    assert not rollout.pid_alive(_dead_pid())
    assert not rollout.pid_alive(None)


def test_save_leaves_no_temp_files(store: RolloutStore) -> None:
    _begin(store)
    rollout.advance(store, Phase.SMOKE_TESTING)
    names = sorted(p.name for p in store.path.parent.iterdir())
    assert names == [".rollout.json.lock", "rollout.json"]


def test_crash_before_rename_keeps_the_old_file(store, monkeypatch) -> None:
    _begin(store)
    before = store.path.read_bytes()

    def crash(src, dst):
        raise OSError("simulated crash between write and rename")

    monkeypatch.setattr(rollout.os, "replace", crash)
    with pytest.raises(OSError, match="simulated crash"):
        rollout.advance(store, Phase.SMOKE_TESTING)
    monkeypatch.undo()
    assert store.path.read_bytes() == before
    assert store.load().phase == Phase.STAGING
    assert not [p for p in store.path.parent.iterdir() if p.name.endswith(".tmp")]


def test_roundtrip_to_from_dict(store: RolloutStore) -> None:
    state = _begin(store, serving_url="http://localhost:8000")
    data = json.loads(json.dumps(state.to_dict()))
    assert data["phase"] == "staging"
    assert RolloutState.from_dict(data) == state


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        ("{not json", "unreadable"),
        (json.dumps({"schema_version": 99, "state": {}}), "unknown format"),
        (json.dumps([1, 2]), "unknown format"),
        (json.dumps({"schema_version": 1, "state": {"rollout_id": "x"}}), "missing field"),
        (
            json.dumps(
                {
                    "schema_version": 1,
                    "state": {
                        "rollout_id": "x",
                        "model_name": "m",
                        "candidate_version": "2",
                        "champion_version": None,
                        "phase": "exploding",
                    },
                }
            ),
            "unknown phase",
        ),  # fmt: skip
    ],
)
def test_corrupt_state_is_a_clear_error(store: RolloutStore, content: str, expected: str) -> None:
    store.path.parent.mkdir(parents=True)
    store.path.write_text(content)
    with pytest.raises(RolloutError) as err:
        store.load()
    message = str(err.value)
    assert expected in message and str(store.path) in message and "mv " in message
    with pytest.raises(RolloutError):  # not silently replaced by a new rollout either
        _begin(store)
    assert store.path.read_text() == content


def test_promoting_keeps_its_baseline_and_may_be_superseded(store: RolloutStore) -> None:
    _begin(store)
    rollout.advance(store, Phase.SMOKE_TESTING)
    baseline = {"champion": "1", "previous": None, "records": 3}
    state = rollout.advance(store, Phase.PROMOTING, promotion=baseline)
    assert state.promotion == baseline and store.load().promotion == baseline
    rollout.note_promotion(store, service="reloaded")
    assert store.load().promotion == {**baseline, "service": "reloaded"}
    done = rollout.finish(store, Phase.SUPERSEDED, "an operator rolled back since")
    assert done.finished and not done.active and done.weight == 0
    with pytest.raises(rollout.IllegalTransition):
        rollout.finish(store, Phase.SUCCEEDED, "no")


def test_only_a_promotion_can_be_superseded(store: RolloutStore) -> None:
    _begin(store)
    rollout.advance(store, Phase.SMOKE_TESTING)
    with pytest.raises(rollout.IllegalTransition, match="to superseded"):
        rollout.finish(store, Phase.SUPERSEDED, "x")


def test_close_open_ends_an_active_rollout_and_leaves_others(store: RolloutStore) -> None:
    assert rollout.close_open(store, "operator rolled back") is None  # nothing there
    _begin(store)
    rollout.advance(store, Phase.SMOKE_TESTING)
    rollout.advance(store, Phase.PROMOTING)
    closed = rollout.close_open(store, "operator rolled back: bad reviews")
    assert closed.phase == Phase.ROLLED_BACK and closed.reason.startswith("operator rolled back")
    assert rollout.close_open(store, "again") is None  # finished: untouched
    _begin(store, version="3", approved=False, reason="manual")
    assert rollout.close_open(store, "x") is None
    assert store.load().phase == Phase.AWAITING_APPROVAL


@pytest.mark.component
def test_fault_point_is_inert_unless_named(monkeypatch) -> None:
    from lib.delivery import faults

    monkeypatch.delenv(faults.FAULT_ENV, raising=False)
    for point in faults.FAULT_POINTS:
        faults.fault_point(point)  # unset: nothing happens
    with pytest.raises(ValueError, match="unknown fault point"):
        faults.fault_point("nowhere")
    code = "from lib.delivery import faults; faults.fault_point('after_alias_move'); print('alive')"
    env = {**os.environ, faults.FAULT_ENV: "after_alias_move"}
    repo = Path(__file__).resolve().parents[1]
    proc = subprocess.run(
        [sys.executable, "-c", code], cwd=repo, env=env, capture_output=True, text=True
    )
    assert proc.returncode == 137 and "alive" not in proc.stdout
    env[faults.FAULT_ENV] = "after_file_swap"
    proc = subprocess.run([sys.executable, "-c", code], cwd=repo, env=env, capture_output=True)
    assert proc.returncode == 0


@pytest.mark.parametrize("reached", [Phase.STAGING, Phase.SMOKE_TESTING, 5, 25, 50])
def test_a_stop_request_forbids_every_later_step_and_the_promotion(
    store: RolloutStore, reached
) -> None:
    """Issue 15: an operator's stop, written while the deployer runs, is obeyed by the state
    machine itself: no canary step and no promotion can follow it; only a rollback can."""
    _begin(store)
    if reached != Phase.STAGING:
        rollout.advance(store, Phase.SMOKE_TESTING)
    for weight in (5, 25, 50):
        if isinstance(reached, int) and weight <= reached:
            rollout.advance(store, Phase.CANARY, weight=weight)
    assert rollout.stop_requested(store) is None
    stopped = rollout.request_stop(store, "operator rolled back: bad reviews", by="alice")
    assert stopped.stop_requested["reason"] == "operator rolled back: bad reviews"
    assert (
        stopped.history[-1]["detail"]
        == "stop requested by alice: operator rolled back: bad reviews"
    )
    assert rollout.stop_requested(store).rollout_id == stopped.rollout_id
    before = store.load().to_dict()
    if reached not in (Phase.STAGING,):
        for target in (Phase.CANARY, Phase.PROMOTING):
            with pytest.raises(
                rollout.RolloutStopped, match="stopped by an operator .*bad reviews"
            ):
                rollout.advance(store, target)
    else:
        with pytest.raises(rollout.RolloutStopped):
            rollout.advance(store, Phase.CANARY)
    assert store.load().to_dict() == before  # a refused move changes nothing
    again = rollout.request_stop(store, "twice")  # the first request stands
    assert again.stop_requested["reason"] == "operator rolled back: bad reviews"
    done = rollout.finish(store, Phase.ROLLED_BACK, "stopped by an operator")
    assert done.phase == Phase.ROLLED_BACK and done.weight == 0
    assert rollout.stop_requested(store) is None  # finished: nothing pending
    with pytest.raises(RolloutError, match="nothing to stop"):
        rollout.request_stop(store, "late")


def test_approve_keeps_the_service_url_of_the_parked_rollout(store: RolloutStore) -> None:
    """A parked rollout keeps its service from the start; approving may name it too: recovery
    of a promotion that approval began must know which service to reload (issue 15)."""
    parked = _begin(store, approved=False, serving_url="http://127.0.0.1:9")
    assert parked.serving_url == "http://127.0.0.1:9"
    assert _begin(store).serving_url == "http://127.0.0.1:9"
    rollout.finish(store, Phase.ROLLED_BACK, "x")
    _begin(store, version="3", approved=False)
    approved = _begin(store, version="3", serving_url="http://127.0.0.1:10")
    assert store.load().serving_url == approved.serving_url == "http://127.0.0.1:10"


def test_a_shadow_step_is_weight_0_first_and_only_first(tmp_path: Path) -> None:
    store = rollout.RolloutStore(tmp_path / "rollout.json")
    state = rollout.begin(store, "m", "2", "1", ["shadow", 5, 100], "run-1")
    assert state.steps == [0, 5, 100]
    rollout.advance(store, rollout.Phase.SMOKE_TESTING)
    shadow = rollout.advance(store, rollout.Phase.CANARY)  # the next step: the shadow one
    assert (shadow.weight, shadow.step_index) == (0, 0)
    assert "shadow step (canary weight 0)" in shadow.describe()
    assert rollout.advance(store, rollout.Phase.CANARY).weight == 5
    with pytest.raises(rollout.IllegalTransition, match="0 only as a first shadow step"):
        rollout.advance(store, rollout.Phase.CANARY, weight=0)
    with pytest.raises(rollout.RolloutError, match="maybe after shadow"):
        rollout.begin(
            rollout.RolloutStore(tmp_path / "other.json"), "m", "3", "1", [5, "shadow", 100]
        )
