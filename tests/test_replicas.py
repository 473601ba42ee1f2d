"""Several replicas, one rollout (issue 18 item 3): the routing shared through the prediction
store's database. Unit tests drive two ModelService objects on one SQLite store (no process,
no model: variants are stand-ins); the component tests run real service processes on a
throwaway PostgreSQL store, and `serve --workers 2`."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from lib.delivery import service_control
from lib.delivery.service_process import ServiceProcess
from lib.serving import routing_state
from lib.serving.batching import Variant
from lib.serving.prediction_store import make_engine
from lib.serving.routing import AdminError, ModelService, variant_bucket
from lib.serving.schemas import RoutingUpdate
from lib.serving.settings import ServingSettings
from tests.support import serving
from tests.support.postgres import throwaway_postgres
from tests.support.serving import until

SCOPE = "m@champion"
POLL = 0.2  # the component services' routing_poll_seconds
BOUND = POLL + 30.0  # the stated bound (poll + a model load), as a generous test limit


def _row(generation: int, weight: float, **values: Any) -> routing_state.SharedRouting:
    base = dict(
        scope=SCOPE, generation=generation, champion_version=None, canary_version="2",
        canary_weight=weight, lease_seconds=None, lease_expires_at=None, lease_expired_at=None,
        updated_at=time.time(), updated_by="test",
    )  # fmt: skip
    return routing_state.SharedRouting(**{**base, **values})


def test_routing_row_is_a_compare_and_set_on_its_generation(tmp_path: Path) -> None:
    engine = make_engine(f"sqlite:///{tmp_path}/p.db")
    routing_state.ensure_routing_tables(engine)
    routing_state.ensure_routing_tables(engine)  # idempotent
    assert routing_state.read_routing(engine, SCOPE) is None
    assert routing_state.write_routing(engine, _row(1, 5.0))
    assert not routing_state.write_routing(engine, _row(1, 50.0))  # someone inserted first
    assert routing_state.write_routing(engine, _row(2, 25.0))
    assert not routing_state.write_routing(engine, _row(2, 99.0))  # written from generation 1
    now = routing_state.read_routing(engine, SCOPE)
    assert now is not None and (now.generation, now.canary_weight) == (2, 25.0)
    assert routing_state.lapse_lease(engine, SCOPE, 2, "a")
    assert not routing_state.lapse_lease(engine, SCOPE, 2, "b")  # the first one wins
    lapsed = routing_state.read_routing(engine, SCOPE)
    assert lapsed is not None and lapsed.generation == 3 and lapsed.canary_weight == 0
    assert lapsed.canary_version is None and lapsed.lease_expired_at is not None


def test_heartbeats_list_the_live_replicas(tmp_path: Path) -> None:
    engine = make_engine(f"sqlite:///{tmp_path}/p.db")
    routing_state.ensure_routing_tables(engine)
    beat = dict(scope=SCOPE, host="h", pid=1, started_at=0.0, champion_version="1",
                canary_version=None, canary_weight=0.0)  # fmt: skip
    routing_state.heartbeat(engine, {**beat, "replica_id": "a", "seen_at": 100.0,
                                     "applied_generation": 1})  # fmt: skip
    routing_state.heartbeat(engine, {**beat, "replica_id": "b", "seen_at": 50.0,
                                     "applied_generation": 1})  # fmt: skip
    routing_state.heartbeat(engine, {**beat, "replica_id": "a", "seen_at": 101.0,
                                     "applied_generation": 2})  # fmt: skip
    live = routing_state.live_replicas(engine, SCOPE, 90.0)
    assert [(r["replica_id"], r["applied_generation"]) for r in live] == [("a", 2)]


class _Fleet:
    """Two replicas (ModelService objects) on one SQLite store; loading a version makes a
    stand-in variant (no model), counted per replica."""

    def __init__(self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        self.loads: list[tuple[str, str]] = []
        url = f"sqlite:///{tmp_path}/predictions.db"
        self.replicas = []
        for name in ("a", "b"):
            monkeypatch.setenv("SERVING_REPLICA_ID", name)
            settings = ServingSettings(model_name="m", store_url=url, tracking_uri="unused")
            service = ModelService(settings)
            service.champion = Variant("champion", "1", None)  # type: ignore[arg-type]
            service.load_variant = self._loader(name)  # type: ignore[method-assign]
            self.replicas.append(service)
        self.a, self.b = self.replicas

    def _loader(self, replica: str) -> Any:
        def load(name: str, version: str) -> Variant:
            self.loads.append((replica, version))
            return Variant(name, version, None)  # type: ignore[arg-type]

        return load

    def close(self) -> None:
        for service in self.replicas:
            service.store.close()


@pytest.fixture
def fleet(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[_Fleet]:
    f = _Fleet(tmp_path, monkeypatch)
    yield f
    f.close()


def test_a_cancellation_racing_the_routing_stores_answer_is_not_lost(
    fleet: _Fleet, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The routing poll is cancelled at shutdown. When the database's answer arrives in the same
    turn as the cancellation, the poll must still end (Python 3.11's wait_for returned the answer
    instead, the poll ran on, and a CI run's service did not stop within 60 s)."""
    from concurrent import futures

    from lib.serving import routing

    answer: futures.Future = futures.Future()
    monkeypatch.setattr(routing, "_in_daemon_thread", lambda work, name: answer)

    async def scenario() -> None:
        call = asyncio.ensure_future(fleet.a._db(lambda engine: "row"))
        await asyncio.sleep(0)  # the call waits for the database
        answer.set_result("row")  # the answer and ...
        call.cancel()  # ... the cancellation, in one turn of the loop
        with pytest.raises(asyncio.CancelledError):
            await call

    asyncio.run(scenario())


def test_a_change_on_one_replica_is_applied_by_the_other_at_its_poll(fleet: _Fleet) -> None:
    a, b = fleet.a, fleet.b

    async def scenario() -> None:
        await b.join_shared_routing()
        answer = await a.update_routing(RoutingUpdate(canary_version="2", weight=25.0))
        assert answer["generation"] == 1 and a.canary_weight == 25.0
        assert b.canary_weight == 0 and b.generation == 0  # not before its poll
        await b.poll_routing()
        assert (b.generation, b.canary.version, b.canary_weight) == (1, "2", 25.0)
        listed = await a.admin_routing()
        assert {(r["replica_id"], r["applied_generation"]) for r in listed["replicas"]} == {
            ("a", 1), ("b", 1)
        }  # fmt: skip
        # the same request id goes to the same variant on both
        for i in range(200):
            assert a.route(f"r{i}").name == b.route(f"r{i}").name  # type: ignore[union-attr]
        # a weight change from b, then a's stale compare-and-set: 409 with the shared weight
        await b.update_routing(RoutingUpdate(weight=0.0))
        with pytest.raises(AdminError) as refused:
            await a.update_routing(RoutingUpdate(weight=50.0, expected_weight=25.0))
        assert refused.value.status == 409
        assert str(refused.value) == "routing changed: canary weight is 0, expected 25"
        assert a.generation == b.generation == 2  # a synced before refusing

    asyncio.run(scenario())
    assert fleet.loads == [("a", "2"), ("b", "2")]  # each loaded the canary once


def test_a_lapsed_lease_drops_the_canary_everywhere(fleet: _Fleet) -> None:
    a, b = fleet.a, fleet.b

    async def scenario() -> None:
        await a.update_routing(RoutingUpdate(canary_version="2", weight=50.0, lease_seconds=60))
        await b.poll_routing()
        assert b.canary_weight == 50.0 and b.lease_deadline is not None
        b.lease_deadline = time.monotonic() - 1  # b's clock sees the lease run out first
        await b.poll_routing()  # b drops it here and writes weight 0 (generation 2)
        assert b.canary is None and b.generation == 2
        await a.poll_routing()
        assert a.canary is None and a.canary_weight == 0 and a.generation == 2
        assert a.routing()["lease_expired_at"] is not None

    asyncio.run(scenario())


def test_a_down_database_keeps_the_last_routing_and_says_so(fleet: _Fleet) -> None:
    a, b = fleet.a, fleet.b

    async def scenario() -> None:
        await a.update_routing(RoutingUpdate(canary_version="2", weight=10.0, lease_seconds=60))
        await b.poll_routing()
        b.store.engine.dispose()
        b.store.engine = make_engine("sqlite:////nonexistent-dir/x/y.db")  # unreachable
        await b.poll_routing()  # never raises
        assert b.canary_weight == 10.0  # the last applied routing is served
        report, warning = b.shared_routing_report()
        assert report["reachable"] is False and "generation 1" in (warning or "")
        b.lease_deadline = time.monotonic() - 1  # and its lease still runs out locally
        await b.poll_routing()
        assert b.canary is None
        with pytest.raises(AdminError) as refused:
            await b.update_routing(RoutingUpdate(weight=20.0))
        assert refused.value.status == 503

    asyncio.run(scenario())


def test_the_deployer_waits_for_every_live_replica(monkeypatch: pytest.MonkeyPatch) -> None:
    answers = iter([
        {"generation": 4, "replicas": [{"replica_id": "a", "applied_generation": 4},
                                       {"replica_id": "b", "applied_generation": 4}]},
    ])  # fmt: skip

    class _Resp:
        status_code = 200

        def json(self) -> Any:
            return next(answers)

    monkeypatch.setattr(httpx, "get", lambda *a, **k: _Resp())
    first = {"generation": 4, "replicas": [
        {"replica_id": "a", "applied_generation": 4}, {"replica_id": "b", "applied_generation": 3}
    ]}  # fmt: skip
    slept: list[float] = []
    done = service_control.wait_applied("http://x", None, first, sleep=slept.append)
    assert service_control.replicas_behind(done, 4) == [] and len(slept) == 1
    one = {"generation": 1, "replicas": [{"replica_id": "a", "applied_generation": 1}]}
    assert service_control.wait_applied("http://x", None, one, sleep=slept.append) is one
    stuck = {"generation": 5, "replicas": [{"replica_id": "b", "applied_generation": 4}]}
    monkeypatch.setattr(httpx, "get", lambda *a, **k: type("R", (), {"status_code": 503})())
    with pytest.raises(service_control.RolloutFailed, match="replica\\(s\\) b within 0 s"):
        service_control.wait_applied("http://x", None, stuck, timeout=0, sleep=slept.append)


def test_serve_takes_a_number_of_workers() -> None:
    import runner

    assert runner.build_parser().parse_args(["serve", "--workers", "3"]).workers == 3
    assert runner.build_parser().parse_args(["serve"]).workers == 1  # one process, as before


# ------------------------------------------------------------------ real processes (component)

PROJECT = Path(__file__).resolve().parents[1]
ADMIN = serving.admin_headers()


@pytest.fixture(scope="module")
def postgres() -> Iterator[str]:
    with throwaway_postgres() as url:
        yield url


@pytest.fixture(scope="module")
def fleet3(
    mlstore: serving.Store, postgres: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[list[ServiceProcess]]:
    """Three service processes on one PostgreSQL store. (Started one after the other from
    this thread: a service dies with the thread that started it, PR_SET_PDEATHSIG.)"""
    logs = tmp_path_factory.mktemp("replicas")
    extra = ["--routing-poll-seconds", str(POLL), "--registry-check-seconds", "0"]
    procs = [
        ServiceProcess(PROJECT, serving.MODEL, mlstore.uri, postgres, admin_token=serving.TOKEN,
                       log_path=logs / f"replica{i}.log", extra_args=extra)
        for i in range(3)
    ]  # fmt: skip
    try:
        for p in procs:
            p.start()
        yield procs
    finally:
        for p in procs:
            p.stop()


def _routing(url: str) -> dict[str, Any]:
    return httpx.get(f"{url}/admin/routing", headers=ADMIN, timeout=10).json()


def _routing_if(url: str, wanted: Any) -> dict[str, Any] | None:
    answer = _routing(url)
    return answer if wanted(answer) else None


def _put(url: str, body: dict[str, Any]) -> dict[str, Any]:
    resp = httpx.put(f"{url}/admin/routing", json=body, headers=ADMIN, timeout=60)
    assert resp.status_code == 200, resp.text
    return resp.json()


def _all_applied(fleet: list[ServiceProcess], generation: int) -> bool:
    return all(_routing(p.url)["generation"] >= generation for p in fleet)


@pytest.mark.component
def test_health_names_the_replica_that_answered(fleet3: list[ServiceProcess]) -> None:
    seen = set()
    for p in fleet3:
        resp = httpx.get(f"{p.url}/health", timeout=10)
        assert resp.json()["replica"] == resp.headers["X-Replica"]
        assert resp.json()["shared_routing"]["reachable"] is True
        seen.add(resp.json()["replica"])
        metrics = httpx.get(f"{p.url}/metrics", timeout=10).text
        assert f'model_service_replica{{replica="{resp.json()["replica"]}"}} 1.0' in metrics
    assert len(seen) == 3


@pytest.mark.component
def test_a_change_on_one_replica_reaches_all_and_routes_alike(
    fleet3: list[ServiceProcess],
) -> None:
    a, b, c = fleet3
    start = _routing(a.url)["generation"]
    answer = _put(a.url, {"canary_version": "2", "weight": 50.0, "lease_seconds": 120})
    generation = answer["generation"]
    assert generation == start + 1
    changed = time.monotonic()
    until(lambda: _all_applied(fleet3, generation), BOUND, "every replica applies the change")
    print(f"\nweight change applied by all 3 replicas in {time.monotonic() - changed:.2f} s")
    listed = until(lambda: _routing_if(c.url, lambda r: len(r["replicas"]) == 3), BOUND, "3")
    assert {r["applied_generation"] for r in listed["replicas"]} == {generation}
    assert {r["canary_weight"] for r in listed["replicas"]} == {50.0}
    # every replica routes an id by the same rule and weight: the same id, the same variant
    for i, p in enumerate(fleet3 * 10):
        rid = f"same-{i}"
        expected = "canary" if variant_bucket(rid) < 50.0 * 100 else "champion"
        body = httpx.post(f"{p.url}/predict", json=serving.RAW_APP,
                          headers={"X-Request-ID": rid}, timeout=10).json()  # fmt: skip
        assert body["variant"] == expected, (p.url, rid, body)
    # a compare-and-set from b against a's change: the shared weight decides (409)
    stale = httpx.put(f"{b.url}/admin/routing", headers=ADMIN, timeout=60,
                      json={"weight": 5.0, "expected_weight": 25.0})  # fmt: skip
    assert stale.status_code == 409, stale.text
    off = _put(b.url, {"canary_version": None, "weight": 0})
    until(lambda: _all_applied(fleet3, off["generation"]), BOUND, "canary off everywhere")


@pytest.mark.component
def test_a_lapsed_lease_drops_the_canary_on_every_replica(fleet3: list[ServiceProcess]) -> None:
    a = fleet3[0]
    answer = _put(a.url, {"canary_version": "2", "weight": 30.0, "lease_seconds": 1.0})

    def dropped() -> bool:
        health = [httpx.get(f"{p.url}/health", timeout=10).json() for p in fleet3]
        return all(h["canary_version"] is None and h["canary_weight"] == 0 for h in health)

    until(dropped, 1.0 + BOUND, "the lapsed lease drops the canary everywhere")
    after = until(
        lambda: _routing_if(fleet3[2].url, lambda r: r["generation"] > answer["generation"]),
        BOUND,
        "the lapse written to the shared row",
    )
    assert after["lease_expired_at"] is not None and after["canary_weight"] == 0


def _replica_pid(store_url: str, replica: str) -> int | None:
    engine = make_engine(store_url)
    try:
        with engine.connect() as conn:
            table = routing_state.replicas_table
            row = conn.execute(
                table.select().where(table.c.replica_id == replica)
            ).first()  # fmt: skip
        return None if row is None else int(row.pid)
    finally:
        engine.dispose()


@pytest.mark.component
def test_serve_with_two_workers(mlstore: serving.Store, tmp_path: Path) -> None:
    store_url = f"sqlite:///{tmp_path}/predictions.db"  # the default kind: one SQLite file
    service = ServiceProcess(
        PROJECT, serving.MODEL, mlstore.uri, store_url, admin_token=serving.TOKEN,
        log_path=tmp_path / "service.log",
        extra_args=["--workers", "2", "--routing-poll-seconds", str(POLL)],
    )  # fmt: skip
    own = [f"http://127.0.0.1:{service.port + 1 + i}" for i in range(2)]
    with service:
        for url in own:
            until(lambda u=url: _answers(f"{u}/health"), 90, f"{url} answers")
        seen: set[str] = set()
        for _ in range(400):  # a new connection each: the kernel hands it to either worker
            seen.add(httpx.get(f"{service.url}/health", timeout=10).headers["X-Replica"])
            if len(seen) == 2:
                break
        assert len(seen) == 2, seen
        ids = [httpx.get(f"{u}/metrics", timeout=10) for u in own]
        assert all(r.status_code == 200 for r in ids)
        replica = httpx.get(f"{own[0]}/health", timeout=10).json()["replica"]
        assert replica.endswith("-w0") and f'replica="{replica}"' in ids[0].text
        pid = until(lambda: _replica_pid(store_url, replica), 30, "the worker's heartbeat")
        os.kill(pid, signal.SIGKILL)
        until(lambda: _replica_pid(store_url, replica) not in (None, pid), 90, "a restart")
        until(lambda: _answers(f"{own[0]}/health"), 90, "the restarted worker answers")
        assert service.proc is not None
        os.kill(service.proc.pid, signal.SIGTERM)  # the supervisor only: it stops the workers
        assert service.proc.wait(timeout=60) == 0
        for url in own:
            assert not _answers(f"{url}/health")


def _answers(url: str) -> bool:
    try:
        return httpx.get(url, timeout=5).status_code == 200
    except httpx.HTTPError:
        return False


def test_a_step_is_not_measured_while_a_replica_lags(monkeypatch: pytest.MonkeyPatch) -> None:
    from lib.delivery import progressive

    lagging = {"generation": 7, "replicas": [
        {"replica_id": "a", "applied_generation": 7}, {"replica_id": "b", "applied_generation": 6}
    ]}  # fmt: skip
    monkeypatch.setattr(progressive, "set_routing", lambda *a, **k: lagging)
    answer = type("R", (), {"status_code": 200, "json": lambda self: lagging})()
    monkeypatch.setattr(httpx, "get", lambda *a, **k: answer)
    # a failed routing change: the rollout rolls back with this reason (RolloutFailed)
    with pytest.raises(service_control.RolloutFailed, match=r"generation 7 .*replica\(s\) b"):
        progressive._route_step("http://x", "t", "2", 25, 0.03, 5)
