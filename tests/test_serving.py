"""The model service against a throw-away MLflow store with two real registered versions."""

from __future__ import annotations

import asyncio
import contextlib
import csv
import json
import logging
import math
import os
import signal
import socket
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pandas as pd
import pytest
from fastapi.testclient import TestClient
from pydantic import ValidationError
from threadpoolctl import threadpool_limits

from lib import registry
from lib.config import FEATURE_GROUPS
from lib.pipeline import calibration, data, features, synth, training
from lib.pipeline.features import FEATURE_COLUMNS
from lib.serving import __main__ as cli
from lib.serving import batching, compiled, routing, schemas
from lib.serving.app import create_app
from lib.serving.prediction_store import PredictionStore
from lib.serving.predictor import Predictor
from lib.serving.rows import rows_frame
from lib.serving.settings import ServingSettings
from tests.support.serving import FEEDBACK, MODEL, RAW_APP, TOKEN, Store
from tests.support.serving import admin_headers as _admin
from tests.support.serving import id_for as _id_for
from tests.support.serving import metric_total as _metric
from tests.support.serving import model_service as _service
from tests.support.serving import served_model as _served
from tests.support.serving import serving_settings as _settings

PROJECT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="class")
def refusing_client(mlstore: Store, tmp_path_factory: pytest.TempPathFactory):
    """One service for a class of cases that only send requests it must refuse (422): starting a
    service per case (model load and compile) cost more than the cases; a refused request changes
    nothing the next case sees."""
    with TestClient(create_app(_settings(mlstore, tmp_path_factory.mktemp("refusals")))) as c:
        yield c


def _expected_proba(pipe: Any, apps: list[dict]) -> np.ndarray:
    """What the full validating parser + the pipeline say for raw apps."""
    typed = data.parse_records(pd.DataFrame(apps)).apps
    return pipe.predict_proba(features.model_inputs(typed))[:, 1]


def _parse_app(app: dict) -> tuple:
    """One app object -> the model's row (ValidationError names every bad field)."""
    return schemas.App.model_validate(app).row()


def _raw_apps(mlstore: Store, n: int, start: int = 0) -> list[dict]:
    return mlstore.apps.iloc[start : start + n].to_dict("records")


# ------------------------------------------------------------------------------ predictions


@pytest.mark.component
def test_single_raw_app_matches_the_pipeline(client: TestClient, mlstore: Store) -> None:
    apps = _raw_apps(mlstore, 5)
    assert len(apps) == 5
    for app in apps:
        rid = "one-" + app["App"].replace(" ", "_")  # (a request id has no spaces)
        resp = client.post("/predict", json=app, headers={"X-Request-ID": rid})
        assert resp.status_code == 200, resp.text
        body = resp.json()
        assert set(body) == {"request_id", "label", "probability", "model_version", "variant"}
        assert body["request_id"] == rid == resp.headers["x-request-id"]
        assert (body["variant"], body["model_version"]) == ("champion", "1")
        expected = _expected_proba(mlstore.pipelines["1"], [app])[0]
        assert body["probability"] == pytest.approx(expected, abs=1e-12)
        assert body["label"] == int(mlstore.pipelines["1"].predict(
            features.model_inputs(data.parse_records(pd.DataFrame([app])).apps))[0])  # fmt: skip


@pytest.mark.component
def test_request_id_from_body_or_generated(client: TestClient) -> None:
    from_body = client.post("/predict", json={**RAW_APP, "request_id": "from-body"})
    assert from_body.json()["request_id"] == "from-body"
    generated = client.post("/predict", json=RAW_APP).json()["request_id"]
    assert len(generated) == 32 and int(generated, 16) >= 0
    resp = client.post("/predict", json={**RAW_APP, "request_id": ["x"]})
    assert resp.status_code == 422 and "request_id" in resp.json()["detail"]


@pytest.mark.component
def test_schemas_and_value_styles_give_the_same_answer(client: TestClient) -> None:
    clean = {
        "App": "Some Game", "Category": "GAME", "Rating": 4.1, "Reviews": 1234, "Size": 19.0,
        "Installs": 10000.0, "Type": "Free", "Price": 0.0, "Content Rating": "Everyone",
        "Last Updated": "January 7, 2018", "Genres": " Action", "Current Ver": "1.2.3 ",
        "Android Ver": "4.0.3 and up",
    }  # fmt: skip
    snake = {
        "category": "GAME", "reviews": "1234", "size_mb": "19M", "installs": "10000+",
        "type": "free", "price": "$0", "content_rating": "Everyone", "last_updated": "2018-01-07",
        "app": " Some Game ", "genres": "Action", "current_ver": "1.2.3",
        "android_ver": "4.0.3 and up",
    }  # fmt: skip
    snake_size = {**{k: v for k, v in snake.items() if k != "size_mb"}, "size": 19}
    other_dates = [{**RAW_APP, "Last Updated": d} for d in ("January-7-2018", "Jan 7 2018")]
    answers = {
        client.post("/predict", json=body).json()["probability"]
        for body in [RAW_APP, clean, snake, snake_size, *other_dates]
    }
    assert len(answers) == 1


@pytest.mark.component
def test_batches_in_every_shape(client: TestClient, mlstore: Store) -> None:
    apps = _raw_apps(mlstore, 6, start=10)
    expected = _expected_proba(mlstore.pipelines["1"], apps)
    for rid, body, headers in (
        ("b1", apps, {"X-Request-ID": "b1"}),
        ("b2", {"instances": apps, "request_id": "b2"}, {}),
    ):
        resp = client.post("/predict", json=body, headers=headers)
        assert resp.status_code == 200, resp.text
        out = resp.json()
        assert out["request_id"] == rid
        preds = out["predictions"]
        assert [p["request_id"] for p in preds] == [f"{rid}-{i}" for i in range(6)]
        assert {(p["variant"], p["model_version"]) for p in preds} == {("champion", "1")}
        np.testing.assert_allclose([p["probability"] for p in preds], expected, atol=1e-12)
    single_batch = client.post("/predict", json={"instances": [RAW_APP]}).json()
    assert len(single_batch["predictions"]) == 1


def _without(*keys: str) -> dict[str, Any]:
    return {k: v for k, v in RAW_APP.items() if k not in keys}


@pytest.mark.component
class TestRefusedInput:
    """Invalid bodies, all sent to one service (refusing_client)."""

    @pytest.mark.parametrize(
        "body, needles",
        [
            ({**RAW_APP, "Installs": "lots"}, ["Installs", "'lots'", "1,000+"]),
            ({**RAW_APP, "Size": "huge"}, ["Size", "'huge'"]),
            ({**RAW_APP, "Type": "Freemium"}, ["Type", "'Freemium'"]),
            ({**RAW_APP, "Last Updated": "yesterday"}, ["Last Updated", "'yesterday'"]),
            ({**RAW_APP, "Price": "-$1"}, ["Price", "negative"]),
            ({**RAW_APP, "Reviews": [1, 2]}, ["Reviews", "list"]),
            ({**RAW_APP, "Reviews": True}, ["Reviews", "bool"]),
            ({**RAW_APP, "Category": 7}, ["Category", "int"]),
            ({**RAW_APP, "Category": "  "}, ["Category", "empty"]),
            ({**RAW_APP, "Installs": None}, ["Installs", "missing"]),
            ({**RAW_APP, "Genres": 5}, ["Genres", "int", "a string or null"]),
            ({**RAW_APP, "App": ["x"]}, ["App", "list"]),
            ({**_without("Current Ver"), "current_ver": 1.2}, ["current_ver", "float"]),
            ({**RAW_APP, "Android Ver": {"min": 4}}, ["Android Ver", "dict"]),
            ({**RAW_APP, "App": "x" * 201}, ["App", "201 characters", "at most 200"]),
            ({**RAW_APP, "Genres": "a;" * 51}, ["Genres", "at most 100"]),
            ({**RAW_APP, "Current Ver": "1" * 101}, ["Current Ver", "at most 100"]),
            ({**_without("Android Ver"), "android_ver": "9" * 101}, ["android_ver", "at most 100"]),
            (
                {k: v for k, v in RAW_APP.items() if k not in ("Installs", "Type")},
                ["Installs", "Type"],
            ),
            ([], ["empty batch"]),
            ({"instances": []}, ["empty batch"]),
            ({"instances": {"a": 1}}, ["instances", "list"]),
            ([RAW_APP, {**RAW_APP, "Reviews": "many"}], ["instances[1]", "Reviews", "'many'"]),
            ([RAW_APP, "not an app"], ["instances[1]", "app object"]),
            (5, ["body", "int"]),
        ],
    )
    def test_invalid_input_is_422_naming_field_and_value(
        self, refusing_client: TestClient, body: Any, needles: list[str]
    ) -> None:
        resp = refusing_client.post("/predict", json=body)
        assert resp.status_code == 422, resp.text
        detail = resp.json()["detail"]
        for needle in needles:
            assert needle in detail, detail


@pytest.mark.component
@pytest.mark.parametrize("raw", [b"not json", b"{", b"", b"\xff\xfe"])
def test_non_json_body_is_422(client: TestClient, raw: bytes) -> None:
    resp = client.post("/predict", content=raw, headers={"Content-Type": "application/json"})
    assert resp.status_code == 422 and "body" in resp.json()["detail"]
    assert _metric(client, "model_invalid_requests_total") >= 1


@pytest.mark.component
def test_no_champion_answers_503_and_health_says_so(mlstore: Store, tmp_path: Path) -> None:
    settings = _settings(mlstore, tmp_path, model_name="nobody-trained-me")
    with TestClient(create_app(settings)) as c:
        resp = c.post("/predict", json=RAW_APP)
        assert resp.status_code == 503
        assert resp.json()["detail"].startswith("no champion model yet: ")
        health = c.get("/health").json()
        assert health["status"] == "no_champion" and health["ready"] is False
        assert "no champion model yet" in health["detail"]
        assert c.post("/admin/reload", headers=_admin()).status_code == 409
        assert c.post("/predict", json=RAW_APP).status_code == 503
        assert _metric(c, "model_unavailable_requests_total") == 2


@pytest.mark.component
def test_health_and_routing_read_only(client: TestClient) -> None:
    health = client.get("/health").json()
    assert health["status"] == "ok" and health["champion_version"] == "1"
    assert health["canary_version"] is None and health["canary_weight"] == 0.0
    assert health["uptime_seconds"] >= 0 and health["predictor"] == {"champion": "compiled"}
    assert health["champion"] == {
        "version": "1",
        "source": "registry",
        "confirmed_by_registry": True,
    }
    assert health["canary"] is None and health["warning"] is None
    assert client.get("/admin/routing").status_code == 401  # the routing is admin's business
    assert client.get("/admin/routing", headers=_admin()).json()["champion_version"] == "1"


# ------------------------------------------------------------------------------- routing


@pytest.mark.component
def test_canary_share_and_sticky_variants(client: TestClient) -> None:
    resp = client.put(
        "/admin/routing", json={"canary_version": "2", "weight": 5.0}, headers=_admin()
    )
    assert resp.status_code == 200, resp.text
    assert resp.json()["canary_version"] == "2" and resp.json()["canary_weight"] == 5.0
    variants = []
    for i in range(2000):
        body = client.post("/predict", json=RAW_APP, headers={"X-Request-ID": f"user-{i}"}).json()
        variants.append(body["variant"])
        assert body["model_version"] == {"champion": "1", "canary": "2"}[body["variant"]]
    share = 100 * variants.count("canary") / len(variants)
    assert 3.5 <= share <= 6.5, share
    for i in range(0, 2000, 97):  # an id always routes to the same variant (a retry too) ...
        assert _service(client).route(f"user-{i}").name == variants[i]
        again = client.post("/predict", json=RAW_APP, headers={"X-Request-ID": f"user-{i}"})
        assert again.status_code == 409  # ... but answers once: feedback joins that answer
    # a batch goes whole to the variant of its request id
    rid = _id_for(_service(client), "canary")
    preds = client.post("/predict", json=[RAW_APP] * 3, headers={"X-Request-ID": rid}).json()
    assert {p["variant"] for p in preds["predictions"]} == {"canary"}


def test_variant_bucket_is_stable_and_in_range() -> None:
    buckets = [routing.variant_bucket(f"id-{i}") for i in range(1000)]
    assert buckets == [routing.variant_bucket(f"id-{i}") for i in range(1000)]
    assert min(buckets) >= 0 and max(buckets) < 10_000 and len(set(buckets)) > 900


@pytest.mark.component
def test_admin_refuses_missing_or_wrong_token(
    client: TestClient, mlstore: Store, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    before = client.get("/admin/routing", headers=_admin()).json()
    change = {"canary_version": "2", "weight": 50.0}
    wrong = _admin("guessed-token-xyz")
    assert client.put("/admin/routing", json=change).status_code == 401
    assert client.put("/admin/routing", json=change, headers=wrong).status_code == 403
    assert client.post("/admin/reload", headers=wrong).status_code == 403
    assert client.post("/admin/reload", headers={"Authorization": TOKEN}).status_code == 401
    assert client.get("/admin/routing", headers=wrong).status_code == 403
    assert client.get("/admin/routing", headers=_admin()).json() == before
    assert "guessed-token-xyz" not in caplog.text and TOKEN not in caplog.text
    # no token configured at all: refused, with a message saying how to enable it
    with TestClient(create_app(_settings(mlstore, tmp_path, admin_token=None))) as c:
        resp = c.put("/admin/routing", json=change, headers=_admin())
        assert resp.status_code == 403 and "SERVING_ADMIN_TOKEN" in resp.json()["detail"]
        assert c.get("/admin/routing", headers=_admin()).status_code == 403
        assert c.get("/health").json()["canary_version"] is None


def test_settings_read_token_from_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SERVING_ADMIN_TOKEN", "from-env")
    settings = ServingSettings()
    assert settings.admin_token == "from-env" and "from-env" not in repr(settings)
    monkeypatch.delenv("SERVING_ADMIN_TOKEN")
    assert ServingSettings().admin_token is None


@pytest.mark.component
@pytest.mark.parametrize(
    "body, status, needle",
    [
        ({"canary_version": "99", "weight": 5.0}, 404, "99"),
        ({"canary_version": "2", "weight": 150}, 422, "weight"),
        ({"canary_version": "2", "weight": "5"}, 422, "weight"),
        ({"canary_version": None, "weight": 5.0}, 422, "canary"),
        ({"canary_version": "2", "weight": 5.0, "lease_seconds": -1}, 422, "lease_seconds"),
        ({"canary_version": "2", "wieght": 5.0}, 422, "wieght"),
        ({"canary_version": ["2"]}, 422, "canary_version"),
        ([1, 2], 422, "body"),
    ],
)
def test_bad_routing_changes_leave_routing_unchanged(
    client: TestClient, body: Any, status: int, needle: str
) -> None:
    before = client.get("/admin/routing", headers=_admin()).json()
    resp = client.put("/admin/routing", json=body, headers=_admin())
    assert resp.status_code == status, resp.text
    assert needle in resp.json()["detail"]
    assert client.get("/admin/routing", headers=_admin()).json() == before


@pytest.mark.component
def test_lease_expiry_drops_canary_weight(client: TestClient) -> None:
    service = _service(client)
    change = {"canary_version": "2", "weight": 50.0, "lease_seconds": 0.4}
    assert client.put("/admin/routing", json=change, headers=_admin()).status_code == 200
    time.sleep(0.2)
    renewed = client.put("/admin/routing", json=change, headers=_admin()).json()  # renews
    assert renewed["canary_weight"] == 50.0 and renewed["lease_expires_in"] > 0.3
    deadline = time.monotonic() + 10
    while service.canary_weight > 0 and time.monotonic() < deadline:
        time.sleep(0.05)  # no requests meanwhile: the background task must do it
    assert service.canary_weight == 0.0
    routing = client.get("/admin/routing", headers=_admin()).json()
    # the deployer that held the lease is gone: the canary is unloaded, not kept at 0%
    assert routing["canary_version"] is None and routing["canary_weight"] == 0.0
    assert routing["lease_expired_at"] is not None and routing["lease_expires_in"] is None
    health = client.get("/health").json()
    assert health["canary"] is None and health["canary_version"] is None
    assert _metric(client, "model_canary_weight") == 0.0
    assert _metric(client, "model_canary_lease_expirations_total") == 1
    for i in range(50):
        answer = client.post("/predict", json=RAW_APP, headers={"X-Request-ID": f"l{i}"})
        assert answer.json()["variant"] == "champion"


@pytest.mark.component
def test_lease_is_also_checked_lazily_on_requests(client: TestClient) -> None:
    service = _service(client)
    client.put(
        "/admin/routing",
        json={"canary_version": "2", "weight": 100.0, "lease_seconds": 0.01},
        headers=_admin(),
    )
    service.lease_deadline = time.monotonic() - 1  # expired, whatever the watchdog did
    service.canary_weight = 100.0
    assert client.post("/predict", json=RAW_APP).json()["variant"] == "champion"


@pytest.mark.component
def test_reload_follows_the_champion_alias(own_client: TestClient, own_store: str) -> None:
    from mlflow import MlflowClient

    client = own_client  # a service on a private copy of the store: the alias moves there
    ml = MlflowClient(tracking_uri=own_store, registry_uri=own_store)
    client.put("/admin/routing", json={"canary_version": "2", "weight": 25.0}, headers=_admin())
    unchanged = client.post("/admin/reload", headers=_admin()).json()
    assert unchanged["reloaded"] is False and unchanged["canary_version"] == "2"
    try:
        registry.set_alias(ml, MODEL, "champion", "2")  # promotion
        promoted = client.post("/admin/reload", headers=_admin())
        assert promoted.status_code == 200, promoted.text
        body = promoted.json()
        assert body["reloaded"] is True and body["champion_version"] == "2"
        assert body["previous_champion_version"] == "1"
        assert body["canary_version"] is None and body["canary_weight"] == 0.0  # it was promoted
        assert _service(client).champion.name == "champion"
        answer = client.post("/predict", json=RAW_APP).json()
        assert (answer["variant"], answer["model_version"]) == ("champion", "2")
    finally:
        registry.set_alias(ml, MODEL, "champion", "1")  # rollback
    rolled_back = client.post("/admin/reload", headers=_admin()).json()
    assert rolled_back["champion_version"] == "1"
    assert client.post("/predict", json=RAW_APP).json()["model_version"] == "1"


@pytest.mark.component
def test_a_staging_instance_serves_another_alias(
    mlstore: Store, own_store: str, tmp_path: Path
) -> None:
    from mlflow import MlflowClient

    ml = MlflowClient(tracking_uri=own_store, registry_uri=own_store)
    registry.set_alias(ml, MODEL, "staging", "2")
    settings = _settings(mlstore, tmp_path, champion_alias="staging", tracking_uri=own_store)
    with TestClient(create_app(settings)) as c:
        assert c.get("/health").json()["champion_version"] == "2"
        assert c.post("/predict", json=RAW_APP).json()["model_version"] == "2"


def test_command_line_builds_the_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    seen = {}
    monkeypatch.setattr(cli, "serve", lambda s, host, port: seen.update(s=s, at=(host, port)))
    monkeypatch.setenv("SERVING_ADMIN_TOKEN", "env-token")
    cli.main(
        ["--port", "9123", "--model-name", "m", "--tracking-uri", "sqlite:///x.db",
         "--store-url", "sqlite:///p.db", "--champion-alias", "staging", "--max-batch", "8"]
    )  # fmt: skip
    settings = seen["s"]
    assert seen["at"] == ("127.0.0.1", 9123)
    assert (settings.model_name, settings.champion_alias, settings.max_batch) == ("m", "staging", 8)
    assert settings.admin_token == "env-token" and settings.store_url == "sqlite:///p.db"


@pytest.mark.component
def test_model_error_is_counted_stored_and_isolated(client: TestClient) -> None:
    service = _service(client)
    client.put("/admin/routing", json={"canary_version": "2", "weight": 50.0}, headers=_admin())

    def broken(rows):
        raise RuntimeError("canary exploded")

    service.canary.predictor.predict = broken
    bad_id, good_id = _id_for(service, "canary"), _id_for(service, "champion")
    resp = client.post("/predict", json=RAW_APP, headers={"X-Request-ID": bad_id})
    assert resp.status_code == 500
    assert resp.json()["request_id"] == bad_id  # the detail is in the log and the store only
    assert "exploded" not in resp.text and bad_id in resp.json()["detail"]
    ok = client.post("/predict", json=RAW_APP, headers={"X-Request-ID": good_id})
    assert ok.status_code == 200 and ok.json()["variant"] == "champion"
    assert _metric(client, "model_request_errors_total", variant="canary", model_version="2") == 1
    assert _metric(client, "model_request_errors_total", variant="champion") == 0
    frame = service.store.window(0).set_index("request_id")
    assert frame.loc[bad_id, "error"] == "RuntimeError: canary exploded"
    assert pd.isna(frame.loc[bad_id, "label"]) and frame.loc[bad_id, "latency_ms"] > 0
    assert frame.loc[good_id, "error"] is None and frame.loc[good_id, "variant"] == "champion"


@pytest.mark.component
def test_metrics_exposition(client: TestClient, mlstore: Store) -> None:
    client.post("/predict", json=RAW_APP)
    client.post("/predict", json=_raw_apps(mlstore, 4))
    client.post("/predict", json={**RAW_APP, "Size": "??"})
    labels = {"variant": "champion", "model_version": "1"}
    assert _metric(client, "model_requests_total", **labels) == 2
    assert _metric(client, "model_request_errors_total", **labels) == 0
    assert _metric(client, "model_predictions_total", **labels) == 5
    assert _metric(client, "model_request_latency_seconds_count", **labels) == 2
    assert _metric(client, "model_invalid_requests_total") == 1
    assert _metric(client, "model_canary_weight") == 0.0
    text = client.get("/metrics").text
    assert 'model_request_latency_seconds_bucket{le="0.001",model_version="1"' in text
    assert 'le="5.0"' in text and 'model_predictions_total{label="' in text


# ------------------------------------------------------------------------------- feedback


@pytest.mark.component
def test_feedback_needs_its_own_token_and_a_refusal_changes_nothing(
    client: TestClient,
) -> None:
    """Labels decide rollbacks: anyone who can predict must not be able to label. Without the
    feedback token, with a wrong one or with the admin's, nothing is stored."""
    rid = client.post("/predict", json=RAW_APP).json()["request_id"]
    body = {"request_id": rid, "rating": 1.0}
    none = client.post("/feedback", json=body)
    assert none.status_code == 401 and "Bearer" in none.json()["detail"]
    assert none.headers["www-authenticate"] == "Bearer"
    for token in ("not-the-token", TOKEN):  # the admin token is not a feedback token
        refused = client.post("/feedback", json=body, headers={"Authorization": f"Bearer {token}"})
        assert refused.status_code == 403 and "token refused" in refused.json()["detail"]
    bad_body = client.post("/feedback", content=b"{oops", headers={"Content-Type": "text/x"})
    assert bad_body.status_code == 401  # the credential is checked before the body is read
    window = _service(client).store.window(0).set_index("request_id")
    assert window.loc[rid, ["true_label", "labeled_at", "label_source"]].isna().all()
    ok = client.post("/feedback", json={**body, "source": "store-sync"}, headers=FEEDBACK)
    assert ok.status_code == 200 and ok.json()["source"] == "store-sync"
    row = _service(client).store.window(0).set_index("request_id").loc[rid]
    assert row["true_label"] == 0 and row["label_source"] == "store-sync"
    assert row["labeled_at"] >= row["created_at"]  # when it arrived: the label's lag


@pytest.mark.component
def test_feedback_is_refused_when_no_feedback_token_is_configured(
    mlstore: Store, tmp_path: Path
) -> None:
    with TestClient(create_app(_settings(mlstore, tmp_path, feedback_token=None))) as c:
        rid = c.post("/predict", json=RAW_APP).json()["request_id"]
        resp = c.post("/feedback", json={"request_id": rid, "rating": 4.5}, headers=FEEDBACK)
        assert resp.status_code == 403
        assert "set SERVING_FEEDBACK_TOKEN" in resp.json()["detail"]


def test_a_feedback_token_equal_to_the_admin_token_is_refused(
    mlstore: Store, tmp_path: Path
) -> None:
    with pytest.raises(ValueError, match="SERVING_FEEDBACK_TOKEN must differ"):
        create_app(_settings(mlstore, tmp_path, feedback_token=TOKEN))


@pytest.mark.component
def test_feedback_found_replaced_unknown_invalid(client: TestClient) -> None:
    rid = client.post("/predict", json=RAW_APP).json()["request_id"]
    first = client.post("/feedback", headers=FEEDBACK, json={"request_id": rid, "rating": 4.5})
    assert first.status_code == 200, first.text
    assert first.json()["label"] == 1 and first.json()["replaced"] is False
    second = client.post(
        "/feedback", headers=FEEDBACK, json={"request_id": rid, "rating": 3.2}
    ).json()
    assert second["label"] == 0 and second["replaced"] is True
    assert (
        client.post("/feedback", headers=FEEDBACK, json={"request_id": rid, "label": 1}).json()[
            "label"
        ]
        == 1
    )
    batch = client.post("/predict", json=[RAW_APP, RAW_APP], headers={"X-Request-ID": "fb"})
    assert batch.status_code == 200
    assert (
        client.post(
            "/feedback", headers=FEEDBACK, json={"request_id": "fb-1", "rating": 5}
        ).status_code
        == 200
    )
    assert (
        client.post(
            "/feedback", headers=FEEDBACK, json={"request_id": "nope", "rating": 4}
        ).status_code
        == 404
    )
    for bad in (
        {"request_id": rid, "rating": "x"},
        {"request_id": rid, "rating": 9},
        {"request_id": rid, "label": 2},
        {"request_id": rid},
        {"rating": 4.0},
        {"request_id": rid, "rating": 4.5, "label": 0},
    ):
        resp = client.post("/feedback", headers=FEEDBACK, json=bad)
        assert resp.status_code == 422, (bad, resp.text)
    assert client.post("/feedback", headers=FEEDBACK, content=b"{oops").status_code == 422
    window = _service(client).store.window(0).set_index("request_id")
    assert window.loc[rid, "true_label"] == 1 and window.loc["fb-1", "rating"] == 5.0


# --------------------------------------------------------------------------- micro-batching


def _predictor(mlstore: Store, version: str = "1", compile_model: bool = True):
    return batching.Variant("champion", version, Predictor(
        mlstore.pipelines[version], compile_model))  # fmt: skip


@pytest.mark.component
@pytest.mark.parametrize("compile_model", [True, False])
def test_micro_batched_results_equal_per_row_results(mlstore: Store, compile_model: bool) -> None:
    variant = _predictor(mlstore, compile_model=compile_model)
    assert variant.predictor.kind == ("compiled" if compile_model else "sklearn")
    rows = [_parse_app(app) for app in _raw_apps(mlstore, 60)]
    per_row = [variant.predictor.predict([row]) for row in rows]
    reference = mlstore.pipelines["1"].predict_proba(rows_frame(rows))[:, 1]
    original = variant.predictor.predict
    sizes = []

    def slow_predict(batch):
        sizes.append(len(batch))
        time.sleep(0.05)  # while one call runs, the others queue up
        return original(batch)

    variant.predictor.predict = slow_predict

    async def run():
        batcher = batching.MicroBatcher(max_rows=16, wait_s=0.002)
        batcher.active = len(rows)  # as if all 60 requests were inside the service
        try:
            return await asyncio.gather(*(batcher.predict(variant, [r]) for r in rows))
        finally:
            await batcher.stop()

    results = asyncio.run(run())
    assert max(sizes) > 1 and max(sizes) <= 16 and sum(sizes) == 60  # it did batch
    assert [r[0][0] for r in results] == [p[0][0] for p in per_row]  # bit for bit
    assert [r[1][0] for r in results] == [p[1][0] for p in per_row]
    np.testing.assert_array_equal([r[0][0] for r in results], reference)


@pytest.mark.component
def test_idle_batcher_does_not_wait(mlstore: Store) -> None:
    variant = _predictor(mlstore)
    row = _parse_app(RAW_APP)

    async def run():
        batcher = batching.MicroBatcher(max_rows=64, wait_s=60.0)  # a wait would time out
        try:
            for _ in range(3):
                await asyncio.wait_for(batcher.predict(variant, [row]), timeout=20)
        finally:
            await batcher.stop()

    asyncio.run(run())


def test_stopping_a_task_that_swallowed_its_cancellation_cancels_it_again(caplog) -> None:
    """A task that swallows one cancellation (as 3.11's asyncio.wait_for can) still stops; one
    that never stops is left behind after the bound, with an error, instead of holding the
    service's shutdown for ever."""
    swallowed = []

    async def swallows_once() -> None:
        while True:
            try:
                await asyncio.sleep(3600)
            except asyncio.CancelledError:
                if swallowed:
                    raise
                swallowed.append(True)

    released = asyncio.Event()  # (set by the test's own clean-up only)

    async def never_stops() -> None:
        while not released.is_set():
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.sleep(3600)

    async def run() -> tuple[bool, bool]:
        once = asyncio.ensure_future(swallows_once())
        stubborn = asyncio.ensure_future(never_stops())
        await asyncio.sleep(0)
        await asyncio.wait_for(batching.stop_task(once, "once"), 20)
        await asyncio.wait_for(batching.stop_task(stubborn, "stubborn", bound=0.3), 20)
        left = stubborn.done()
        released.set()
        stubborn.cancel()
        await stubborn
        return once.cancelled(), left

    with caplog.at_level(logging.ERROR, logger="lib.serving.batching"):
        assert asyncio.run(run()) == (True, False)
    assert swallowed == [True]
    assert "stubborn did not stop within 0 s: left behind" in caplog.text


@pytest.mark.component
def test_batcher_stops_waiting_when_every_request_is_queued(mlstore: Store) -> None:
    variant = _predictor(mlstore)
    row = _parse_app(RAW_APP)
    original = variant.predictor.predict
    sizes = []

    def slow_predict(batch):
        sizes.append(len(batch))
        time.sleep(0.2)  # the first call runs while the two others queue up
        return original(batch)

    variant.predictor.predict = slow_predict

    async def run():
        batcher = batching.MicroBatcher(max_rows=64, wait_s=60.0)  # waiting for 64 would time out

        async def request():
            batcher.enter()
            try:
                return await batcher.predict(variant, [row])
            finally:
                batcher.leave()

        try:
            first = asyncio.ensure_future(request())
            await asyncio.sleep(0.05)
            return await asyncio.wait_for(asyncio.gather(first, request(), request()), 20)
        finally:
            await batcher.stop()

    assert len(asyncio.run(run())) == 3
    assert sizes == [1, 2]


@pytest.mark.component
def test_failing_job_fails_alone_in_a_batch(mlstore: Store) -> None:
    variant = _predictor(mlstore)
    rows = [_parse_app(app) for app in _raw_apps(mlstore, 8)]
    poison = rows[3]
    original = variant.predictor.predict

    def picky(batch):
        time.sleep(0.02)
        if poison in batch:
            raise ValueError("poison row")
        return original(batch)

    variant.predictor.predict = picky

    async def run():
        batcher = batching.MicroBatcher(max_rows=64, wait_s=0.002)
        try:
            return await asyncio.gather(
                *(batcher.predict(variant, [r]) for r in rows), return_exceptions=True
            )
        finally:
            await batcher.stop()

    results = asyncio.run(run())
    assert isinstance(results[3], ValueError)
    assert all(not isinstance(r, Exception) for i, r in enumerate(results) if i != 3)


@pytest.mark.component
def test_concurrent_http_requests_equal_per_row(client: TestClient, mlstore: Store) -> None:
    apps = _raw_apps(mlstore, 48, start=100)
    expected = _expected_proba(mlstore.pipelines["1"], apps)
    with ThreadPoolExecutor(16) as pool:
        answers = list(pool.map(lambda a: client.post("/predict", json=a).json(), apps))
    np.testing.assert_allclose([a["probability"] for a in answers], expected, atol=1e-12)


def _assert_serves_like_sklearn(model: Any, X: pd.DataFrame) -> Predictor:
    """Compiled, and the same probabilities (bit for bit) and labels as the model itself."""
    predictor = Predictor(training.for_inference(model))
    assert predictor.kind == "compiled", predictor.reason
    rows = [tuple(r) for r in X.itertuples(index=False)]
    proba, labels = predictor.predict(rows)
    np.testing.assert_array_equal(proba, model.predict_proba(X)[:, 1])
    np.testing.assert_array_equal(labels, model.predict(X))
    return predictor


@pytest.mark.component
def test_compiled_predictor_equals_sklearn_for_every_candidate(mlstore: Store) -> None:
    labeled = training.labeled_data(data.read_apps(mlstore.root / "apps.csv").apps, 4.0)
    for name in ("random_forest", "hist_gradient_boosting", "logistic_regression"):
        for groups in (FEATURE_GROUPS, features.GROUP_COLUMNS):  # stack, plain pipeline
            with threadpool_limits(limits=1):  # OpenMP fits crawl on a busy shared machine
                model = training.build_candidate(name, 0, 10, groups, stack_folds=3)
                model.fit(labeled.X, labeled.y)
            _assert_serves_like_sklearn(model, labeled.X)  # argmax labels
            _assert_serves_like_sklearn(_served(model, labeled.X, labeled.y, 0.4), labeled.X)


@pytest.fixture(scope="module")
def small_labeled(tmp_path_factory: pytest.TempPathFactory) -> training.LabeledData:
    root = tmp_path_factory.mktemp("small")
    synth.generate_apps(500, seed=11).to_csv(root / "apps.csv", index=False)
    return training.labeled_data(data.read_apps(root / "apps.csv").apps, 4.0)


@pytest.mark.component
def test_compiled_champion_shapes_equal_sklearn(small_labeled: training.LabeledData) -> None:
    """FixedThreshold(Frozen(Calibrated(Stacking))) as training makes it: compiled, same answers."""
    from sklearn.base import clone
    from sklearn.calibration import CalibratedClassifierCV
    from sklearn.ensemble import StackingClassifier

    lab = small_labeled
    train_idx, test_idx = training.holdout_split(lab.keys, lab.y, 0.2, 0)
    X, y = lab.X.iloc[train_idx], lab.y.iloc[train_idx]
    with threadpool_limits(limits=1):
        result = training.train_candidate(
            "hist_gradient_boosting", lab, train_idx, test_idx, training.TrainingSettings(3, 0)
        )
        # whichever calibration the data chose above, both calibrated shapes are served too
        base = training.build_candidate("hist_gradient_boosting", 0, stack_folds=3)
        oof = calibration.out_of_fold(base, X, y, 3, 0)
        fitted = clone(base).fit(X, y)
    models = [result.model]
    for method, threshold in (("isotonic", 0.42), ("sigmoid", 0.61)):
        calibrated = calibration.calibrated(fitted, oof, y, method, 3, 0)
        models.append(_served(calibrated, X, y, threshold))
    for model in models:
        predictor = _assert_serves_like_sklearn(model, lab.X)
        assert predictor.labels.threshold == model.threshold
    inner = models[1].estimator_.estimator
    assert type(inner) is CalibratedClassifierCV
    assert type(inner.calibrated_classifiers_[0].estimator) is StackingClassifier
    # the tuned threshold really decides: labels differ from the 0.5 cut somewhere
    proba = models[2].predict_proba(lab.X)[:, 1]
    assert ((proba >= 0.5) != (models[2].predict(lab.X) == 1)).any()


@pytest.mark.component
def test_unknown_estimator_falls_back_to_sklearn(small_labeled: training.LabeledData) -> None:
    from sklearn.ensemble import VotingClassifier

    lab = small_labeled
    with threadpool_limits(limits=1):
        model = VotingClassifier(
            [(n, training.build_candidate(n, 0, 5, features.GROUP_COLUMNS))
             for n in ("random_forest", "logistic_regression")],
            voting="soft",
        ).fit(lab.X, lab.y)  # fmt: skip
    predictor = Predictor(training.for_inference(model))
    assert predictor.kind == "sklearn" and "VotingClassifier" in predictor.reason
    proba, labels = predictor.predict([tuple(r) for r in lab.X.itertuples(index=False)])
    np.testing.assert_array_equal(proba, model.predict_proba(lab.X)[:, 1])
    np.testing.assert_array_equal(labels, model.predict(lab.X))


@pytest.mark.component
def test_a_compiled_difference_falls_back(mlstore: Store, monkeypatch: pytest.MonkeyPatch) -> None:
    """Never serve a wrong number: a compiled path that differs in the last bit is not used."""
    original = compiled._Logistic.proba

    def off_by_a_bit(self: Any, X: Any) -> np.ndarray:
        return np.nextafter(original(self, X), 2.0)

    monkeypatch.setattr(compiled._Logistic, "proba", off_by_a_bit)
    predictor = Predictor(mlstore.pipelines["2"])  # its stack ends in a regression
    assert predictor.kind == "sklearn" and "differs" in predictor.reason


@pytest.mark.component
def test_predict_labels_are_the_models_labels(client: TestClient, mlstore: Store) -> None:
    """/predict labels == model.predict on a few hundred apps, for both served shapes."""
    apps = _raw_apps(mlstore, 300, start=100)
    X = features.model_inputs(data.parse_records(pd.DataFrame(apps)).apps)
    for version, weight in (("1", 0.0), ("2", 100.0)):
        if weight:
            routed = client.put(
                "/admin/routing", json={"canary_version": version, "weight": weight},
                headers=_admin(),
            )  # fmt: skip
            assert routed.status_code == 200, routed.text
        out = client.post("/predict", json={"instances": apps}).json()["predictions"]
        assert {p["model_version"] for p in out} == {version}
        expected = mlstore.pipelines[version].predict(X)
        assert [p["label"] for p in out] == expected.tolist()
        np.testing.assert_allclose(
            [p["probability"] for p in out],
            mlstore.pipelines[version].predict_proba(X)[:, 1], rtol=0, atol=1e-12,
        )  # fmt: skip
        assert predictor_kind(client, version) == "compiled"


def predictor_kind(client: TestClient, version: str) -> str:
    service = _service(client)
    variant = next(v for v in (service.champion, service.canary) if v and v.version == version)
    return variant.predictor.kind


def test_optional_listing_fields_present_absent_null() -> None:
    parse = _parse_app
    name_at = FEATURE_COLUMNS.index("name")
    derived_at = [FEATURE_COLUMNS.index(c) for c in features.DERIVED]
    full = parse({**RAW_APP, "App": "  Photo Editor PRO 2 ", "Genres": "Art;Photo"})
    assert full[name_at] == "Photo Editor PRO 2"
    expected = features.derived_values(
        "Photo Editor PRO 2", "Art;Photo", "1.2.3", "4.0.3 and up", 1234.0, 10000.0
    )
    assert [full[i] for i in derived_at] == list(expected)
    bare = {k: v for k, v in RAW_APP.items()
            if k not in ("App", "Genres", "Current Ver", "Android Ver")}  # fmt: skip
    absent = parse(bare)
    null = parse({**bare, "app": None, "Genres": None, "Current Ver": None, "android_ver": None})
    empty = parse({**bare, "App": "", "Genres": " ", "Current Ver": "", "Android Ver": ""})
    assert absent[name_at] == "" and len(absent) == len(FEATURE_COLUMNS)
    np.testing.assert_array_equal(
        np.array(absent[3:name_at], dtype=float), np.array(null[3:name_at], dtype=float)
    )
    np.testing.assert_array_equal(
        np.array(absent[3:name_at], dtype=float), np.array(empty[3:name_at], dtype=float)
    )
    assert math.isnan(absent[FEATURE_COLUMNS.index("genre_count")])
    assert absent[FEATURE_COLUMNS.index("name_length")] == 0.0


@pytest.mark.component
def test_stored_features_include_the_new_inputs(client: TestClient) -> None:
    client.post("/predict", json={**RAW_APP, "App": "Chess Pro"}, headers={"X-Request-ID": "f-1"})
    service = _service(client)
    assert service.store.flush(timeout=30)
    stored = service.store.window(0, features=True).set_index("request_id").loc["f-1", "features"]
    stored = json.loads(stored) if isinstance(stored, str) else stored
    assert set(stored) == set(FEATURE_COLUMNS)
    assert stored["name"] == "Chess Pro" and stored["name_words"] == 2.0
    assert stored["android_min"] == 4.0 and stored["current_major"] == 1.2


# ------------------------------------------------------------------------------- parsing


def test_parse_app_value_styles() -> None:
    base = dict(RAW_APP)
    parse = _parse_app
    assert parse({**base, "Size": "201k"})[5] == pytest.approx(0.201)
    assert math.isnan(parse({**base, "Size": "Varies with device"})[5])
    assert math.isnan(parse({**base, "Size": None})[5])
    assert parse({**base, "Size": "1.5G"})[5] == 1500.0
    assert parse({**base, "Size": 5e-05})[5] == 5e-05  # a number is MB, even in e-notation
    with pytest.raises(ValidationError, match="Size"):
        parse({**base, "Size": -3})
    assert parse({**base, "Installs": "1000000000+"})[4] == 1e9
    assert parse({**base, "Installs": 10000.0})[4] == 10000.0
    assert parse({**base, "Price": "$4.99"})[6] == 4.99
    day = (pd.Timestamp("2026-01-03") - pd.Timestamp("1970-01-01")).days
    for text in ("January 3 2026", "January-3-2026", "2026-01-03", "Jan 3, 2026", "2026-1-3"):
        assert parse({**base, "Last Updated": text})[7] == day, text
    assert parse({**base, "Type": " PAID "})[2] == "Paid"
    assert parse({**base, "Content Rating": None})[1] == ""


def test_parse_app_equals_the_full_parser_on_tricky_values() -> None:
    """Odd but valid spellings: the same model inputs as lib.pipeline.data.parse_records."""
    variants = {
        "Reviews": ["1,234", " 12 ", "1e3", "+5", "0", 7, 3.5],
        "Size": ["19M", "201k", "1,000k", "2.5 MB", ".5M", "10", "Varies with device", "NaN", 8,
                 12.5],
        "Installs": ["1,000+", "1000000000+", "5 000", 10000.0, 0],
        "Price": ["0", "$4.99", "$1,299.00", 0.99],
        "Last Updated": ["January 7, 2018", "march-20-2025", "Dec 1 2017", "2018-01-07",
                         "2018-01-07 12:30", "2018-01-07T06:00:00.5", "SEPTEMBER 30 2016"],
        "Type": ["Free", "paid", " FREE "],
        "App": ["Photo Editor Pro", "  spaced  out ", "ÜBER app 2", "日本語アプリ", "X", "NaN",
                "Ｆｕｌｌｗｉｄｔｈ 3D", "A" * 200],
        "Genres": ["Action", "Action;Adventure", "", " ", "NaN", "Puzzle;Brain Games;", None],
        "Current Ver": ["1.2.3", "Varies with device", "", "v2.0", "NaN", "2018.01.07", None,
                        "Build 7"],
        "Android Ver": ["4.0.3 and up", "Varies with device", "", "7.0 - 7.1.1", "NaN", None],
    }  # fmt: skip
    records = []
    for column, values in variants.items():
        for value in values:
            records.append({**RAW_APP, column: value})
    bare = {k: v for k, v in RAW_APP.items() if k not in ("Genres", "Current Ver", "Android Ver")}
    records.append(bare)  # the optional fields absent
    expected = features.model_inputs(data.parse_records(pd.DataFrame(records)).apps)
    assert len(expected) == len(records)
    got = rows_frame([_parse_app(r) for r in records])
    pd.testing.assert_frame_equal(got, expected.reset_index(drop=True), rtol=1e-12)
    # snake_case spellings of the optional fields (a frame of their own: lib.pipeline.data takes one
    # spelling per column)
    snake = {**bare, "app": "Chess", "genres": "Tools", "current_ver": "3.1",
             "android_ver": "5.0 and up"}  # fmt: skip
    snake.pop("App")
    expected = features.model_inputs(data.parse_records(pd.DataFrame([snake])).apps)
    got = rows_frame([_parse_app(snake)])
    pd.testing.assert_frame_equal(got, expected.reset_index(drop=True), rtol=1e-12)


def _csv_records(path: Path) -> tuple[list[str], dict[int, dict[str, str]]]:
    with path.open(encoding="utf-8-sig", newline="") as handle:
        reader = csv.reader(handle)
        header = [h.strip() for h in next(reader)]
        rows = [r for r in reader if r]
    return header, {
        n: dict(zip(header, r, strict=True))
        for n, r in enumerate(rows, start=1)
        if len(r) == len(header)
    }


@pytest.mark.parametrize(
    "name",
    [
        "googleplaystore.csv",
        "googleplaystore_clean.csv",
        "mlflow_test_150.csv",
        "new_200_apps.csv",
        "test_150_apps.csv",
        "test_250_apps.csv",
    ],
)
def test_parse_app_equals_read_apps_on_real_files(shared_data: Path, name: str) -> None:
    path = shared_data / name
    assert path.is_file(), f"{path} is missing from the shared data"
    loaded = data.read_apps(path)
    expected = features.model_inputs(loaded.apps).reset_index(drop=True)
    _, records = _csv_records(path)
    valid_rows = loaded.apps["source_row"].tolist()
    assert len(valid_rows) > 100, "too few valid rows to compare"
    got = rows_frame([_parse_app(records[n]) for n in valid_rows])
    pd.testing.assert_frame_equal(got, expected, rtol=1e-12)
    # rows the full parser quarantines for a model input are refused here too
    for number, reason in zip(
        loaded.quarantine["source_row"], loaded.quarantine["reason"], strict=True
    ):
        if number not in records:
            continue  # wrong field count: not an object a caller could send
        about_inputs = [r for r in reason.split("; ") if not r.startswith(("App", "Rating"))]
        if about_inputs:
            with pytest.raises(ValidationError):
                _parse_app(records[number])


# ------------------------------------------------------------------------------- real server


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.component
def test_real_server_over_http(mlstore: Store, tmp_path: Path) -> None:
    port = _free_port()
    store_url = f"sqlite:///{tmp_path}/served.db"
    env = {**os.environ, "SERVING_ADMIN_TOKEN": TOKEN, "PYTHONPATH": str(PROJECT)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "lib.serving", "--host", "127.0.0.1", "--port", str(port),
         "--model-name", MODEL, "--tracking-uri", mlstore.uri, "--store-url", store_url,
         "--models-dir", str(tmp_path / "models")],  # outside a project: every path given
        cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        start_new_session=True,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            if proc.poll() is not None:
                pytest.fail(f"service exited: {proc.stderr.read().decode()[-3000:]}")
            try:
                if httpx.get(f"{url}/health", timeout=2).json()["status"] == "ok":
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                pytest.fail("service did not become healthy within 120 s")
            time.sleep(0.2)
        with httpx.Client(base_url=url, timeout=30) as http:
            answer = http.post("/predict", json=RAW_APP, headers={"X-Request-ID": "real-1"})
            assert answer.status_code == 200 and answer.json()["model_version"] == "1"
            assert http.post("/predict", json={"Installs": "lots"}).status_code == 422
            fb = http.post(
                "/feedback", headers=FEEDBACK, json={"request_id": "real-1", "rating": 4.8}
            )
            assert fb.status_code == 200 and fb.json()["label"] == 1
            routed = http.put(
                "/admin/routing",
                json={"canary_version": "2", "weight": 10.0, "lease_seconds": 60},
                headers=_admin(),
            )
            assert routed.status_code == 200 and routed.json()["canary_version"] == "2"
            assert "model_requests_total" in http.get("/metrics").text
            http.post("/predict", json=RAW_APP, headers={"X-Request-ID": "real-2"})
            os.kill(proc.pid, signal.SIGUSR1)  # an operator asks what its threads are doing
            assert http.get("/health").status_code == 200  # ... and it goes on serving
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.kill(proc.pid, signal.SIGUSR1)  # its threads' stacks, for the failure below
            time.sleep(2)
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        stderr = proc.stderr.read().decode(errors="replace")
        proc.stderr.close()
    # uvicorn re-raises the SIGTERM it handled, after its graceful shutdown (and our lifespan)
    assert proc.returncode in (0, -signal.SIGTERM), f"not stopped within 60 s:\n{stderr[-8000:]}"
    assert "Current thread" in stderr and "(most recent call first)" in stderr  # the stacks
    with PredictionStore(store_url) as store:  # written by the service, flushed at shutdown
        frame = store.window(0).set_index("request_id")
    assert {"real-1", "real-2"} <= set(frame.index)
    assert frame.loc["real-1", "true_label"] == 1


def test_a_registry_look_up_whose_caller_gave_up_ends_quietly(monkeypatch) -> None:
    """At shutdown asyncio cancels the future a look-up thread answers into; the thread must
    then finish without an InvalidStateError of its own."""
    import threading

    errors: list[BaseException] = []
    monkeypatch.setattr(threading, "excepthook", lambda args: errors.append(args.exc_value))
    go = threading.Event()
    answer = routing._in_daemon_thread(lambda: go.wait(10), "look-up-under-test")
    answer.cancel()  # what asyncio.wrap_future does when the awaiting task is cancelled
    go.set()
    for thread in threading.enumerate():
        if thread.name == "look-up-under-test":
            thread.join(10)
    assert errors == []


def test_a_shutdown_that_never_returns_is_left_behind_after_its_bound(
    mlstore: Store,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A shutdown step that never returns (once seen in a test worker: 15 min of a suite) does
    not hold the process: after SHUTDOWN_SECONDS the service says so and lets go."""
    import logging

    from lib.serving import app as service_app
    from tests.support.serving import serving_settings

    real = routing.ModelService.shutdown

    async def hangs_after_closing(self: routing.ModelService) -> None:
        await real(self)  # threads and store closed, then a wait that nothing ends
        await asyncio.Event().wait()

    monkeypatch.setattr(service_app, "SHUTDOWN_SECONDS", 0.5)
    monkeypatch.setattr(routing.ModelService, "shutdown", hangs_after_closing)
    with caplog.at_level(logging.ERROR, logger="lib.serving.app"):
        with TestClient(create_app(serving_settings(mlstore, tmp_path))) as client:
            assert client.get("/health").status_code == 200
    assert "shutdown not done after 0 s: left behind" in caplog.text
