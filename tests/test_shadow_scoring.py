"""Shadow scoring: during a rollout the variant that did not answer scores each answered row off
the request path, stored as '<id>#shadow' beside the answer (lib.serving.shadow)."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from fastapi.testclient import TestClient

from lib.pipeline import data, features
from lib.serving import routing
from lib.serving.app import create_app
from lib.serving.batching import Variant
from lib.serving.metrics import Metrics
from lib.serving.settings import ServingSettings
from lib.serving.shadow import ShadowScorer
from tests.support.serving import RAW_APP, Store
from tests.support.serving import admin_headers as _admin
from tests.support.serving import id_for as _id_for
from tests.support.serving import metric_total as _metric
from tests.support.serving import model_service as _service
from tests.support.serving import serving_settings as _settings


def _apps(mlstore: Store, n: int, start: int = 0) -> list[dict]:
    return mlstore.apps.iloc[start : start + n].to_dict("records")


def _expected(mlstore: Store, version: str, apps: list[dict]) -> tuple[np.ndarray, np.ndarray]:
    """What registered `version` says for raw apps: probabilities of class 1 and labels."""
    X = features.model_inputs(data.parse_records(pd.DataFrame(apps)).apps)
    pipe = mlstore.pipelines[version]
    return pipe.predict_proba(X)[:, 1], pipe.predict(X)


def _route(c: TestClient, **change: Any) -> dict[str, Any]:
    resp = c.put("/admin/routing", json=change, headers=_admin())
    assert resp.status_code == 200, resp.text
    return resp.json()


def _settled(service: routing.ModelService, rows: int, timeout: float = 120.0) -> dict[str, Any]:
    """The scorer's counts once `rows` shadow scores were made, failed or dropped."""
    deadline = time.monotonic() + timeout
    while True:
        stats = service.shadow.stats()
        if stats["scored"] + stats["failed"] + stats["dropped"] >= rows:
            return stats
        assert time.monotonic() < deadline, f"shadow scores not settled: {stats}"
        time.sleep(0.02)


class _Blocking:
    """A predictor that waits for `release` (after saying it `entered`), then predicts."""

    def __init__(self, inner: Any) -> None:
        self.inner, self.kind = inner, inner.kind
        self.entered, self.release = threading.Event(), threading.Event()

    def predict(self, rows: Any) -> Any:
        self.entered.set()
        assert self.release.wait(120)
        return self.inner.predict(rows)


class _Failing:
    kind = "failing"

    def predict(self, rows: Any) -> Any:
        raise ValueError("shadow model broke")


@pytest.mark.component
def test_every_answer_gets_the_other_variants_score_at_weight_5_and_0(
    client: TestClient, mlstore: Store
) -> None:
    """At weight 5 the champion's answers get the canary's score and the canary's answers the
    champion's; at weight 0 (the shadow step) the champion answers all, the canary scores all."""
    service = _service(client)
    _route(client, canary_version="2", weight=5.0)
    apps = _apps(mlstore, 30)
    ids = [f"w5-{i}" for i in range(20)] + [_id_for(service, "canary", "w5c")]
    answered = {}
    for rid, app in zip(ids, apps, strict=False):
        resp = client.post("/predict", json=app, headers={"X-Request-ID": rid})
        assert resp.status_code == 200, resp.text
        answered[rid] = (resp.json()["variant"], app)
    assert {v for v, _ in answered.values()} == {"champion", "canary"}
    _route(client, canary_version="2", weight=0.0, expected_weight=5.0)
    for i, app in enumerate(apps[21:]):
        body = client.post("/predict", json=app, headers={"X-Request-ID": f"w0-{i}"}).json()
        assert body["variant"] == "champion" and body["model_version"] == "1"
        answered[f"w0-{i}"] = ("champion", app)
    stats = _settled(service, len(answered))
    assert stats["scored"] == len(answered) and stats["dropped"] == stats["failed"] == 0
    window = service.store.window(0).set_index("request_id")
    assert sorted(window.index) == sorted(answered)  # shadow scores are never answers
    other = {"champion": ("canary", "2"), "canary": ("champion", "1")}
    for rid, (variant, app) in answered.items():
        row = window.loc[rid]
        assert row["variant"] == variant
        assert (row["shadow_variant"], row["shadow_version"]) == other[variant]
        proba, labels = _expected(mlstore, other[variant][1], [app])
        assert row["shadow_probability"] == pytest.approx(proba[0], abs=1e-9)
        assert row["shadow_label"] == labels[0] and pd.isna(row["shadow_error"])
        assert row["shadow_latency_ms"] >= 0
    assert _metric(client, "model_shadow_scores_total") == len(answered)
    health = client.get("/health").json()["shadow"]
    assert health["enabled"] and health["active"] and health["scored"] == len(answered)


@pytest.mark.component
def test_no_canary_no_shadow_and_shadow_off_none_either(
    client: TestClient, mlstore: Store, tmp_path: Path
) -> None:
    for i, app in enumerate(_apps(mlstore, 5)):
        assert client.post("/predict", json=app, headers={"X-Request-ID": f"n-{i}"}).is_success
    service = _service(client)
    assert service.shadow.stats() == {
        "enabled": True, "queued": 0, "scored": 0, "dropped": 0, "failed": 0,
    }  # fmt: skip
    window = service.store.window(0)
    assert len(window) == 5 and window["shadow_version"].isna().all()
    assert service.store.stats()["submitted"] == 5  # no '#shadow' row was stored either
    assert client.get("/health").json()["shadow"]["active"] is False
    off = _settings(mlstore, tmp_path / "off", shadow=False)
    (tmp_path / "off").mkdir()
    with TestClient(create_app(off)) as c:
        _route(c, canary_version="2", weight=0.0)
        assert c.post("/predict", json=RAW_APP).json()["variant"] == "champion"
        assert _service(c).store.window(0)["shadow_version"].isna().all()
        assert c.get("/health").json()["shadow"] == {
            "enabled": False, "queued": 0, "scored": 0, "dropped": 0, "failed": 0,
            "active": False,
        }  # fmt: skip


@pytest.mark.component
def test_a_full_shadow_queue_drops_and_counts_and_answers_go_on(
    mlstore: Store, tmp_path: Path
) -> None:
    with TestClient(create_app(_settings(mlstore, tmp_path, shadow_max_rows=2))) as c:
        service = _service(c)
        _route(c, canary_version="2", weight=0.0)
        blocking = _Blocking(service.canary.predictor)
        service.canary.predictor = blocking  # the shadow worker hangs in the canary's predict
        try:
            assert c.post("/predict", json=RAW_APP, headers={"X-Request-ID": "q-0"}).is_success
            assert blocking.entered.wait(120)
            for i in range(1, 6):  # two rows fit in the queue, three are dropped
                resp = c.post("/predict", json=RAW_APP, headers={"X-Request-ID": f"q-{i}"})
                assert resp.status_code == 200 and resp.json()["variant"] == "champion"
            assert service.shadow.stats()["dropped"] == 3
        finally:
            blocking.release.set()
        stats = _settled(service, 6)
        assert (stats["scored"], stats["dropped"], stats["failed"]) == (3, 3, 0)
        assert _metric(c, "model_shadow_scores_dropped_total") == 3
        window = service.store.window(0).set_index("request_id")
        assert window["shadow_version"].notna().sum() == 3 and len(window) == 6


@pytest.mark.component
def test_a_failing_shadow_model_is_stored_as_its_error_and_answers_are_unaffected(
    client: TestClient, mlstore: Store
) -> None:
    service = _service(client)
    _route(client, canary_version="2", weight=0.0)
    service.canary.predictor = _Failing()
    app = _apps(mlstore, 1)[0]
    resp = client.post("/predict", json=app, headers={"X-Request-ID": "f-1"})
    assert resp.status_code == 200 and resp.json()["variant"] == "champion"
    proba, _ = _expected(mlstore, "1", [app])
    assert resp.json()["probability"] == pytest.approx(proba[0], abs=1e-9)
    batch = client.post("/predict", json=[app, app], headers={"X-Request-ID": "f-2"})
    assert batch.status_code == 200
    assert _settled(service, 3)["failed"] == 3
    window = service.store.window(0).set_index("request_id")
    for rid in ("f-1", "f-2-0", "f-2-1"):
        row = window.loc[rid]
        assert row["shadow_error"] == "ValueError: shadow model broke"
        assert row["shadow_version"] == "2" and pd.isna(row["shadow_label"])
        assert pd.isna(row["shadow_probability"]) and pd.isna(row["error"])
    assert _metric(client, "model_shadow_scores_failed_total") == 3


@pytest.mark.component
def test_batches_get_a_shadow_per_item_and_errors_or_refusals_none(
    client: TestClient, mlstore: Store
) -> None:
    service = _service(client)
    _route(client, canary_version="2", weight=0.0)
    apps = _apps(mlstore, 4)
    resp = client.post("/predict", json=apps, headers={"X-Request-ID": "b"})
    assert resp.status_code == 200
    assert client.post("/predict", json={"App": "x"}).status_code == 422  # refused: no shadow
    service.champion.predictor = _Failing()  # the answer fails (500): nothing to shadow
    assert client.post("/predict", json=apps[0], headers={"X-Request-ID": "e"}).status_code == 500
    assert _settled(service, 4)["scored"] == 4
    window = service.store.window(0).set_index("request_id")
    proba, labels = _expected(mlstore, "2", apps)
    for i in range(4):
        row = window.loc[f"b-{i}"]
        assert row["shadow_version"] == "2" and row["shadow_label"] == labels[i]
        assert row["shadow_probability"] == pytest.approx(proba[i], abs=1e-9)
    assert window.loc["e", "error"] is not None and pd.isna(window.loc["e", "shadow_version"])
    assert service.shadow.stats()["scored"] == 4 and service.shadow.stats()["queued"] == 0


@pytest.mark.component
def test_weight_0_is_a_loaded_canary_that_answers_nobody(client: TestClient) -> None:
    routed = _route(client, canary_version="2", weight=0)
    assert routed["canary_version"] == "2" and routed["canary_weight"] == 0.0
    service = _service(client)
    assert {service.route(f"r-{i}").name for i in range(3000)} == {"champion"}
    assert client.get("/health").json()["shadow"]["active"] is True
    no_canary = {"canary_version": None, "weight": 5}
    assert client.put("/admin/routing", json=no_canary, headers=_admin()).status_code == 422
    _route(client, canary_version=None)
    assert client.put("/admin/routing", json={"weight": 5}, headers=_admin()).status_code == 409
    assert client.get("/health").json()["shadow"]["active"] is False


# ------------------------------------------------------------------------------ unit


class _Predictor:
    kind = "fake"

    def predict(self, rows: list[Any]) -> tuple[np.ndarray, np.ndarray]:
        values = np.array([float(r[0]) for r in rows])
        return values / 10, (values > 5).astype(int)


class _Store:
    def __init__(self) -> None:
        self.rows: list[dict[str, Any]] = []

    def submit(self, rows: list[dict[str, Any]]) -> None:
        self.rows.extend(rows)


def test_the_scorer_writes_the_contracts_rows_and_drops_what_is_queued_at_stop() -> None:
    store = _Store()
    scorer = ShadowScorer(store, Metrics(), enabled=True, max_rows=10)  # type: ignore[arg-type]
    canary = Variant("canary", "7", _Predictor())  # type: ignore[arg-type]
    scorer.offer(canary, ["a", "b"], [(3,), (8,)], 100.0)  # not started: it waits in the queue
    assert scorer.stats()["queued"] == 2
    scorer.start()
    deadline = time.monotonic() + 60
    while len(store.rows) < 2:
        assert time.monotonic() < deadline
        time.sleep(0.01)
    assert [r["request_id"] for r in store.rows] == ["a#shadow", "b#shadow"]
    first = store.rows[0]
    assert first["shadow_of"] == "a" and first["created_at"] == 100.0
    assert (first["variant"], first["model_version"]) == ("canary", "7")
    assert (first["label"], first["probability"], first["error"]) == (0, 0.3, None)
    assert first["features"] is None and store.rows[1]["label"] == 1
    scorer.stop()
    scorer.offer(canary, ["c"], [(1,)], 101.0)  # stopped: dropped, counted
    too_many = ShadowScorer(store, Metrics(), enabled=True, max_rows=2)  # type: ignore[arg-type]
    too_many.offer(canary, ["d", "e", "f"], [(1,), (2,), (3,)], 102.0)
    too_many.offer(canary, ["g"], [(1,)], 102.0)
    too_many.stop()  # never started: what is queued is dropped at stop
    assert scorer.stats()["dropped"] == 1 and too_many.stats()["dropped"] == 4
    assert len(store.rows) == 2


def test_shadow_settings_come_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    assert ServingSettings().shadow is True and ServingSettings().shadow_max_rows == 20_000
    monkeypatch.setenv("SERVING_SHADOW", "off")
    monkeypatch.setenv("SERVING_SHADOW_MAX_ROWS", "50")
    assert ServingSettings().shadow is False and ServingSettings().shadow_max_rows == 50
    monkeypatch.setenv("SERVING_SHADOW", "maybe")
    with pytest.raises(ValueError, match="SERVING_SHADOW"):
        ServingSettings()
