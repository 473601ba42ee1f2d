"""lib.delivery.operations without a registry or a service: parking, and what `status` says the
next run does."""

from __future__ import annotations

from pathlib import Path

from lib.delivery import operations, rollout
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
