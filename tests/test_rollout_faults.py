"""Issue 9: a promotion killed (`kill -9`) at each of its points, then recovered or rolled back
by hand; a models/production that cannot be written; a service unreachable at the final reload.

After every scenario one check holds (`assert_consistent`): the `champion` alias,
models/production, what the service serves (/health), deployments.json's last record and
logs/deployment.log's last line name the same version, and the last record says what happened.

The promotion runs in a subprocess (this file is its own driver, see `main`) with
PIPELINE_FAULT=<point>, the test hook of lib.delivery.faults, which exits with status 137 there.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
if __name__ == "__main__":  # run as the driver subprocess: the project on the path
    sys.path.insert(0, str(REPO))

from lib import registry  # noqa: E402
from lib.delivery import faults, operations, rollout, rollout_end, service_control  # noqa: E402
from lib.delivery import releases as deployments  # noqa: E402

NAME = "playstore-rating"
TOKEN = "test-admin-token-0123456789"
CANARY_WEIGHT = 50


# ---------------------------------------------------------------------------- the driver


def main(root: str, uri: str, version: str, url: str) -> None:
    """Begin a rollout of `version`, put it at 50% canary, then promote it (PIPELINE_FAULT may
    end this process at a fault point on the way)."""
    root_path = Path(root)
    models, logs = root_path / "models", root_path / "logs"
    client = registry.connect(uri, "deploy-tests")
    store = rollout.RolloutStore(models / "rollout.json")
    champion = registry.alias_version(client, NAME, "champion")
    rollout.begin(store, NAME, version, champion, [CANARY_WEIGHT], "fault-run", url)
    rollout.advance(store, rollout.Phase.SMOKE_TESTING)
    registry.set_alias(client, NAME, "canary", version)
    rollout.advance(store, rollout.Phase.CANARY, weight=CANARY_WEIGHT)
    service_control.set_routing(url, TOKEN, version, CANARY_WEIGHT, 120)
    done = rollout_end.promote_rollout(
        client, NAME, store, version, models, logs, url, TOKEN, reason="fault test"
    )
    print(done.reason)


if __name__ == "__main__":
    main(*sys.argv[1:5])
    sys.exit(0)


# ---------------------------------------------------------------------------- the tests

import httpx  # noqa: E402
import mlflow  # noqa: E402

from tests.support.deploy import World  # noqa: E402

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def shared(tmp_path_factory: pytest.TempPathFactory):
    """One project and one production service for every scenario (each scenario rolls out a
    new version from whatever the last one left: the check holds between scenarios too)."""
    root = tmp_path_factory.mktemp("faults") / "project"
    (root / "data").mkdir(parents=True)
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(root)
        mp.setenv("SERVING_ADMIN_TOKEN", TOKEN)
        mp.setenv("PYTHONPATH", str(REPO))
        mp.delenv(faults.FAULT_ENV, raising=False)
        mp.setattr(service_control, "RELOAD_BACKOFF_SECONDS", 0.05)
        w = World(root)
        first = w.register(w.forest(1, trees=10))
        deployments.promote(w.client, NAME, first, w.models, w.logs, reason="initial")
        with w.service() as prod:
            w.url = prod.url
            yield w
    mlflow.set_tracking_uri(None)


@pytest.fixture
def world(shared: World):
    """The shared project with a new candidate: `v1` the champion now, `v2` to roll out."""
    assert rollout.RolloutStore(shared.models / "rollout.json").load() is None or not (
        rollout.RolloutStore(shared.models / "rollout.json").load().active
    ), "an earlier scenario left an open rollout"
    shared.v1 = shared.champion()
    shared.v2 = shared.register(shared.forest(int(shared.v1) + 10, trees=10))
    return shared


def routing(url: str) -> dict:
    return httpx.get(f"{url}/health", timeout=10).json()  # (the routing is in /health too)


def assert_consistent(world: World, url: str, version: str, events: set[str]) -> None:
    """The one check of issue 9: every place names `version`; the last record is one of
    `events` (what really happened)."""
    assert world.champion() == version, "champion alias"
    assert deployments.production_version(world.models) == version, "models/production"
    health = httpx.get(f"{url}/health", timeout=10).json()
    assert str(health["champion"]["version"]) == version, f"service serves {health}"
    last = deployments.history(world.models)[-1]
    assert str(last["champion_version"]) == version, last
    assert last["event"] in events, last
    line = (world.logs / "deployment.log").read_text().splitlines()[-1]
    found = re.search(r" champion=(\S+)", line)
    assert found and found.group(1) == version, line
    assert registry.alias_version(world.client, NAME, "canary") is None
    assert routing(url)["canary_weight"] == 0


def kill_promotion_at(world: World, url: str, point: str) -> rollout.RolloutState:
    """Run the driver with PIPELINE_FAULT=<point>; it must die there, leaving `promoting`."""
    env = {**os.environ, faults.FAULT_ENV: point, "PYTHONPATH": str(REPO)}
    proc = subprocess.run(
        [sys.executable, __file__, str(world.root), world.uri, world.v2, url],
        cwd=world.root,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 137, proc.stdout + proc.stderr
    state = rollout.RolloutStore(world.models / "rollout.json").load()
    assert state.phase == rollout.Phase.PROMOTING and rollout.interrupted(state)
    if point != "after_service_reload":  # (a reload makes the canary the champion)
        assert routing(url)["canary_weight"] == CANARY_WEIGHT  # the dead runner left it routed
    return state


def recover(world: World) -> rollout_end.Recovery | None:
    return rollout_end.recover_interrupted(world.root, world.client, NAME, world.models, world.logs)


@pytest.mark.parametrize("point", faults.FAULT_POINTS)
def test_killed_promotion_is_finished_by_the_next_run(world: World, point: str) -> None:
    kill_promotion_at(world, world.url, point)
    info = operations.status(world.client, NAME, world.models, world.url)
    assert info["rollout"]["interrupted"]
    assert info["next_run"].startswith(f"finishes the promotion of v{world.v2}")
    if point in ("after_alias_move", "after_file_swap"):  # registry moved, service did not
        assert f"the registry names v{world.v2} champion" in info["mismatch"]
    result = recover(world)
    assert result == rollout_end.Recovery(
        "promoted", world.v2, world.v2, f"finished the interrupted promotion of v{world.v2}"
    )
    assert_consistent(world, world.url, world.v2, {"promote"})
    assert recover(world) is None  # nothing left to do
    state = rollout.RolloutStore(world.models / "rollout.json").load()
    assert state.phase == rollout.Phase.SUCCEEDED
    assert registry.alias_version(world.client, NAME, "previous") == world.v1
    copies = deployments.previous_copies(world.models)
    assert copies[-1].name.endswith(f"-v{world.v1}") and len(copies) <= deployments.KEEP_PREVIOUS
    history = deployments.history(world.models)
    assert [r["version"] for r in history if r["event"] == "promote"][-1] == world.v2
    assert sum(r["event"] == "promote" and r["version"] == world.v2 for r in history) == 1


@pytest.mark.parametrize("point", faults.FAULT_POINTS)
def test_manual_rollback_after_a_kill_wins_over_recovery(world: World, point: str) -> None:
    kill_promotion_at(world, world.url, point)
    record = operations.manual_rollback(
        world.client, NAME, world.models, world.logs, "operator says no", world.url
    )
    assert record["version"] == world.v1 and record["rolled_back_version"] == world.v2
    assert routing(world.url)["canary_weight"] == 0  # at once, not when the lease ends
    expected = {"canary_rollback"} if point == "after_promoting_write" else {"rollback"}
    assert_consistent(world, world.url, world.v1, expected)
    state = rollout.RolloutStore(world.models / "rollout.json").load()
    assert state.phase == rollout.Phase.ROLLED_BACK
    assert state.reason.startswith("operator rolled back: operator says no")
    assert recover(world) is None  # the next run does not undo the operator
    assert_consistent(world, world.url, world.v1, expected)


def test_recovery_supersedes_when_production_changed_behind_an_open_rollout(world) -> None:
    """An operator's rollback that left rollout.json open (an older runner, a crash after the
    rollback) still wins: the interrupted promotion is closed as superseded, not finished."""
    kill_promotion_at(world, world.url, "after_file_swap")
    deployments.rollback(
        world.client, NAME, world.models, world.logs, "by hand",
        reload=lambda: service_control.reload_champion(world.url, TOKEN),
    )  # fmt: skip
    result = recover(world)
    assert result.outcome == "superseded" and result.champion == world.v1
    assert "a rollback of v" in result.reason and "not promoted" in result.reason
    assert_consistent(world, world.url, world.v1, {"rollout_superseded"})
    state = rollout.RolloutStore(world.models / "rollout.json").load()
    assert state.phase == rollout.Phase.SUPERSEDED


def test_unwritable_production_undoes_the_whole_promotion(world, monkeypatch) -> None:
    def read_only(*args, **kwargs):
        raise PermissionError(13, "Permission denied", str(world.models / "production"))

    monkeypatch.setattr(deployments, "_swap_production", read_only)
    copies = len(deployments.previous_copies(world.models))
    previous = registry.alias_version(world.client, NAME, "previous")
    outcome = world.deploy(world.v2, world.url, steps=[50])
    assert outcome.outcome == "rolled_back" and "undone everywhere" in outcome.note
    assert "PermissionError" in outcome.rollback_reason
    assert "undone" in outcome.rollback_reason
    assert_consistent(world, world.url, world.v1, {"canary_rollback"})
    monkeypatch.undo()
    assert recover(world) is None  # nothing half-done for the next run
    events = [r["event"] for r in deployments.history(world.models)]
    assert events[-2:] == ["promote_undone", "canary_rollback"]
    assert registry.alias_version(world.client, NAME, "previous") == previous  # as before
    assert len(deployments.previous_copies(world.models)) == copies
    state = rollout.RolloutStore(world.models / "rollout.json").load()
    assert state.phase == rollout.Phase.ROLLED_BACK


def test_unreachable_service_at_the_final_reload_is_a_noted_promotion(world, monkeypatch) -> None:
    def unreachable(url: str, token: str | None, expect: str | None = None) -> None:
        raise httpx.ConnectError(f"connection refused by {url}")

    monkeypatch.setattr(rollout_end, "reload_champion", unreachable)
    outcome = world.deploy(world.v2, world.url, steps=[50])
    assert outcome.outcome == "promoted" and outcome.rollback_reason is None
    assert "not reloaded" in outcome.note and "ConnectError" in outcome.note
    assert world.champion() == world.v2
    assert deployments.production_version(world.models) == world.v2
    last = deployments.history(world.models)[-1]
    assert last["event"] == "promote" and last["service"].startswith("not reloaded")
    info = operations.status(world.client, NAME, world.models, world.url)
    assert info["serving_version"] == world.v1
    assert f"the service serves v{world.v1}" in info["mismatch"]
    assert info["next_run"].startswith("reloads the service")
    monkeypatch.undo()  # the service is reachable again
    result = recover(world)
    assert result.outcome == "promoted" and result.champion == world.v2
    assert_consistent(world, world.url, world.v2, {"service_reloaded"})
    assert recover(world) is None
    state = rollout.RolloutStore(world.models / "rollout.json").load()
    assert state.phase == rollout.Phase.SUCCEEDED and "not reloaded" in state.reason
