"""lib.delivery.operations without a registry or a service: parking, and what `status` says the
next run does."""

from __future__ import annotations

from pathlib import Path

from lib.delivery import operations, rollout, service_control
from lib.delivery.rollout import Phase, RolloutStore


def test_a_newer_manual_candidate_replaces_the_parked_one(tmp_path: Path) -> None:
    """A run whose verdict is `manual` never conflicts with an older parked candidate that nobody
    approved: the older one is rejected with the reason, logged, and the newer one waits."""
    models, logs = tmp_path / "models", tmp_path / "logs"
    url = "http://127.0.0.1:9"
    first = operations.park_for_approval(models, logs, "m", "2", "1", "run-1", "score 60", url)
    assert first.phase == Phase.AWAITING_APPROVAL and first.serving_url == url
    second = operations.park_for_approval(models, logs, "m", "3", "1", "run-2", "score 65", url)
    assert operations.awaiting_version(models) == "3" and second.serving_url == url
    archived = RolloutStore(models / "rollout.json").archive_dir / f"{first.rollout_id}.json"
    assert '"phase": "rejected"' in archived.read_text()
    assert "replaced by v3" in archived.read_text()
    lines = (logs / "deployment.log").read_text().splitlines()
    assert "rejected" in lines[-2] and "version=2" in lines[-2], lines
    again = operations.park_for_approval(models, logs, "m", "3", "1", "run-3", "score 65", url)
    assert again.rollout_id == second.rollout_id  # the same candidate stays parked as it was


def test_next_run_names_the_reload_when_the_service_serves_another_version(tmp_path) -> None:
    url = "http://127.0.0.1:8080"
    todo = operations.next_run(None, "4", "3", url)
    assert todo.startswith(f"reloads the service at {url} so that it serves v4")
    assert f"POST {url}/admin/reload" in todo
    assert operations.next_run(None, "4", "4", url) is None  # agreeing
    assert operations.next_run(None, "4", None, None) is None  # no service reachable: unknown
    store = RolloutStore(tmp_path / "rollout.json")
    rollout.begin(store, "m", "5", "4", [5, 100])
    live = store.load()  # driven by this (live) process: the service part still counts
    assert operations.next_run(live, "4", "3", url).startswith("reloads the service")
    live.owner_pid = 2**22 + 12345  # no such process: an interrupted rollout comes first
    assert operations.next_run(live, "4", "3", url).startswith("rolls back the rollout of v5")


def _deployer(store: RolloutStore, promote_first: bool, events: list[str]) -> None:
    """What 05 deploy does at its next look: roll back on a stop, or (having entered
    `promoting` just before the stop came) finish the promotion."""
    import time

    if promote_first:
        rollout.advance(store, Phase.PROMOTING)
        events.append("promoting")
    while not promote_first and rollout.stop_requested(store) is None:
        time.sleep(0.05)
    time.sleep(0.2)
    if promote_first:
        rollout.finish(store, Phase.SUCCEEDED, "v2 promoted to champion")
    else:
        rollout.finish(store, Phase.ROLLED_BACK, str(rollout.RolloutStopped(store.load())))
    events.append(store.load().phase.value)


def _canary_rollout(tmp_path: Path) -> RolloutStore:
    store = RolloutStore(tmp_path / "models" / "rollout.json")
    rollout.begin(store, "m", "2", "1", [5, 100], "run-1", "http://127.0.0.1:9")
    rollout.advance(store, Phase.SMOKE_TESTING)
    rollout.advance(store, Phase.CANARY, weight=5)
    return store


def test_stop_rollout_waits_for_the_deployer_and_takes_the_canary_off(tmp_path, monkeypatch):
    import threading

    calls: list[tuple] = []
    monkeypatch.setattr(service_control, "set_routing", lambda *a, **k: calls.append(a))
    store = _canary_rollout(tmp_path)
    events: list[str] = []
    deployer = threading.Thread(target=_deployer, args=(store, False, events))
    deployer.start()
    done, routing = operations.stop_rollout(
        tmp_path / "models", tmp_path / "logs", "bad", "http://x", 30
    )
    deployer.join()
    assert calls == [("http://127.0.0.1:9", None, None, 0)]  # the rollout's service, weight 0
    assert routing == "canary weight 0 on http://127.0.0.1:9"
    assert done.finished and done.phase == "rolled_back" and done.candidate_version == "2"
    assert done.reason.startswith("stopped by an operator") and "bad" in done.reason
    line = (tmp_path / "logs" / "deployment.log").read_text().splitlines()[-1]
    assert "operator_stop_requested" in line and "version=2" in line


def test_a_promotion_that_beat_the_stop_is_rolled_back_like_any_promotion(
    tmp_path, monkeypatch
) -> None:
    """The deployer entered `promoting` just before the stop: `rollback` must not say
    "production stays on v1"; it waits for the promotion and hands over to a real rollback."""
    import argparse
    import threading

    from lib import commands
    from lib.config import PipelineConfig

    monkeypatch.setattr(service_control, "set_routing", lambda *a, **k: None)
    store = _canary_rollout(tmp_path)
    events: list[str] = []
    deployer = threading.Thread(target=_deployer, args=(store, True, events))
    deployer.start()
    while not events:  # `promoting` was written before the stop
        pass
    said: list[str] = []
    cfg = PipelineConfig(stop_wait_seconds=30)
    args = argparse.Namespace(reason="bad")
    assert commands._stop_rollout(cfg, tmp_path, args, said.append) is None
    deployer.join()
    assert events == ["promoting", "succeeded"]
    assert not any(s.startswith("stopped:") for s in said), said
