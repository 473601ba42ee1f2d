"""Issue 15: a person can always stop a rollout, and recovery ends with the service serving what
the registry names. Every scenario runs the real `runner.py` (05 deploy in its kernel) against a
production service started with `runner.py serve` (`serving_url` set), as an operator would.

After every scenario one check holds (`assert_consistent`): the `champion` alias,
models/production, deployments.json's last record, logs/deployment.log's last line and the
version the service serves agree, and no canary is routed or aliased.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time

import httpx
import pytest

from lib import registry
from lib.delivery import faults, rollout
from lib.delivery import releases as deployments
from lib.delivery.service_process import ServiceProcess
from tests.support.deploy import NAME, TOKEN, World, make_runner_project, runner_settings

pytestmark = pytest.mark.e2e

QUICK = ["--set", "analysis_seconds=2", "--set", "check_every_seconds=0.5", "--set",
         "replay_rate=150", "--set", "canary_analysis={min_requests: 40, min_feedback: 30, "
         "alpha: 0.01, p99_floor_ms: 150, max_p99_ms: 1500}", "--set", "smoke_rows=20"]  # fmt: skip


def runner_serve(world: World) -> ServiceProcess:
    """The production service as an operator starts it: `python runner.py serve`."""
    service = world.service()
    service.args = [
        sys.executable, "runner.py", "serve", "--port", str(service.port),
        "--set", f"tracking_uri={world.uri}", "--set", f"store_url={world.store_url}",
    ]  # fmt: skip
    return service


def health(url: str) -> dict:
    return httpx.get(f"{url}/health", timeout=10).json()


def runner(world: World, url: str, *args: str, **kw) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "runner.py", *args, *runner_settings(world, url)],
        cwd=world.root, capture_output=True, text=True, timeout=600, **kw,
    )  # fmt: skip


def start_deploy(world: World, url: str, *extra: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "runner.py", "--stages", "deploy", *runner_settings(world, url), *extra],
        cwd=world.root, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip


def wait_for(what: str, ready, proc: subprocess.Popen | None = None, seconds: float = 240):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        value = ready()
        if value:
            return value
        if proc is not None and proc.poll() is not None:
            pytest.fail(f"the runner ended before {what}: {proc.stdout.read()}")
        time.sleep(0.2)
    pytest.fail(f"timed out waiting for {what}")


def state(world: World) -> rollout.RolloutState | None:
    return rollout.RolloutStore(world.models / "rollout.json").load()


def at_weight(world: World, url: str, weight: int):
    def ready():
        s = state(world)
        live = health(url)
        return (
            s is not None
            and s.phase == rollout.Phase.CANARY
            and s.weight == weight
            and (live["canary_weight"] == weight)
        )

    return ready


def assert_consistent(world: World, url: str, version: str) -> None:
    assert world.champion() == version, "champion alias"
    assert deployments.production_version(world.models) == version, "models/production"
    served = health(url)
    assert str(served["champion"]["version"]) == version, served
    assert served["canary_weight"] == 0, served
    last = deployments.history(world.models)[-1]
    assert str(last["champion_version"]) == version, last
    line = (world.logs / "deployment.log").read_text().splitlines()[-1]
    found = re.search(r" champion=(\S+)", line)
    assert found and found.group(1) == version, line
    assert registry.alias_version(world.client, NAME, "canary") is None
    s = state(world)
    assert s is None or not s.active, s


@pytest.fixture
def served(world: World, monkeypatch: pytest.MonkeyPatch):
    """A project with champion v1 (a copy of the shared one, tests/conftest.py `world`),
    runner.py and a `runner.py serve` production service."""
    monkeypatch.delenv(faults.FAULT_ENV, raising=False)
    make_runner_project(world.root)
    with runner_serve(world) as prod:
        world.url = prod.url
        yield world


@pytest.mark.parametrize(
    ("weight", "window"), [(5, "300"), (25, "2"), (50, "2")], ids=["5%-300s", "25%", "50%"]
)
def test_rollback_during_a_canary_step_is_obeyed_at_once(served: World, weight, window) -> None:
    world = served
    v1 = world.champion()
    v2 = world.register(world.forest(11 + weight))
    registry.set_alias(world.client, NAME, "candidate", v2)
    proc = start_deploy(world, world.url, *QUICK, "--set", f"analysis_seconds={window}")
    try:
        wait_for(f"the canary at {weight}%", at_weight(world, world.url, weight), proc)
        asked = time.monotonic()
        stop = runner(world, world.url, "rollback", "--reason", "bad reviews")
        took = time.monotonic() - asked
        assert stop.returncode == 0, stop.stdout + stop.stderr
        assert f"stopped: the rollout of v{v2} is rolled_back" in stop.stdout, stop.stdout
        assert health(world.url)["canary_weight"] == 0
        out, _ = proc.communicate(timeout=300)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, out
    assert "rolled_back" in out
    print(f"rollback at {weight}% returned after {took:.1f} s")
    ended = state(world)
    assert ended.phase == rollout.Phase.ROLLED_BACK
    assert ended.reason.startswith("stopped by an operator") and "bad reviews" in ended.reason
    assert ended.stop_requested["reason"] == "operator rolled back: bad reviews"
    assert "promoting" not in [h["to"] for h in ended.history]
    assert_consistent(world, world.url, v1)
    last = deployments.history(world.models)[-1]
    assert last["event"] == "canary_rollback" and "bad reviews" in last["reason"]
    actions = json.loads((world.root / "reports" / "operator_actions.json").read_text())
    assert actions[-1]["action"] == "rollback" and actions[-1]["result"] == "done"
    assert actions[-1]["version"] == v2 and actions[-1]["champion"] == v1
    time.sleep(3)  # longer than a lease renewal interval (lease_seconds / 3 with lease 6 s)
    assert health(world.url)["canary_weight"] == 0  # never raised again


def test_a_weight_of_0_set_by_hand_is_never_raised_again(served: World) -> None:
    world = served
    v1 = world.champion()
    v2 = world.register(world.forest(31))
    registry.set_alias(world.client, NAME, "candidate", v2)
    proc = start_deploy(world, world.url, *QUICK, "--set", "analysis_seconds=300",
                        "--set", "lease_seconds=3")  # fmt: skip
    try:
        wait_for("the canary at 5%", at_weight(world, world.url, 5), proc)
        put = httpx.put(
            f"{world.url}/admin/routing",
            json={"canary_version": None, "weight": 0},
            headers={"Authorization": f"Bearer {TOKEN}"},
        )
        assert put.status_code == 200, put.text
        out, _ = proc.communicate(timeout=300)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, out
    ended = state(world)
    assert ended.phase == rollout.Phase.ROLLED_BACK, ended
    assert "changed outside this rollout" in ended.reason, ended.reason
    assert_consistent(world, world.url, v1)
    assert all(h["to"] != "promoting" for h in ended.history)
    assert v2 != world.champion()


# the two points where the registry has moved and the service has not (tests/test_rollout_faults
# kills a promotion at every point against an external service; this is the approve path)
@pytest.mark.parametrize("point", ["after_alias_move", "after_file_swap"])
def test_approved_promotion_killed_then_next_run_serves_the_registry(served, point) -> None:
    """A `manual` rollout parked, approved with `runner.py approve`, killed while promoting:
    the next run finishes it AND the running service serves the new champion (the parked
    record keeps the service URL from the start; before issue 15 the service kept serving the
    old champion through every later run)."""
    from lib.delivery import operations

    world = served
    v2 = world.register(world.forest(41))
    operations.park_for_approval(
        world.models, world.logs, NAME, v2, world.champion(), "r", "manual", world.url
    )
    approve = runner(
        world, world.url, "approve", v2, *QUICK, "--set", "canary_steps=[50,100]",
        env={**_env(), faults.FAULT_ENV: point},
    )  # fmt: skip
    assert approve.returncode != 0, approve.stdout  # the deploy kernel died at the fault point
    assert state(world).phase == rollout.Phase.PROMOTING, approve.stdout + approve.stderr
    wait_for("the dead promoter", lambda: rollout.interrupted(state(world)), seconds=60)
    status = runner(world, world.url, "status")
    assert f"the registry names v{v2} champion" in status.stdout, status.stdout  # MISMATCH line
    nxt = runner(world, world.url, "--stages", "detect", "--set", "threshold=100000")
    assert nxt.returncode == 0, nxt.stdout + nxt.stderr
    assert f"recovered: finished the interrupted promotion of v{v2}" in nxt.stdout, nxt.stdout
    assert_consistent(world, world.url, v2)
    again = runner(world, world.url, "status")
    assert "MISMATCH" not in again.stdout and "next run" not in again.stdout, again.stdout


def test_a_service_left_on_an_old_version_is_reloaded_by_the_next_run(served: World) -> None:
    """Registry and models/ moved without the service (a promotion by another tool, a reload
    that failed): `status` names the next step and the next run performs it."""
    world = served
    v1 = world.champion()
    v2 = world.register(world.forest(51))
    deployments.promote(world.client, NAME, v2, world.models, world.logs, reason="elsewhere")
    assert health(world.url)["champion"]["version"] == v1
    status = runner(world, world.url, "status")
    assert f"the registry names v{v2} champion, the service serves v{v1}" in status.stdout
    assert f"next run: reloads the service at {world.url} so that it serves v{v2}" in (
        status.stdout
    ), status.stdout
    nxt = runner(world, world.url, "--stages", "detect", "--set", "threshold=100000")
    assert nxt.returncode == 0, nxt.stdout + nxt.stderr
    assert f"served v{v1}, the registry names v{v2}: reloaded" in nxt.stdout, nxt.stdout
    assert_consistent(world, world.url, v2)
    assert deployments.history(world.models)[-1]["event"] == "service_reloaded"


def _env() -> dict[str, str]:
    import os

    return {k: v for k, v in os.environ.items() if k != faults.FAULT_ENV}
