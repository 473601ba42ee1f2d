"""The model service refuses hostile input as the caller's mistake (4xx), never as a model error.

Each test pins down one attack found against the service: overflowing numbers aimed at the
canary, request ids the response header cannot carry, deep JSON, huge bodies, wrong content
types, disclosure (paths, exception text, routing without a token, a CDN page), version aliases,
and /health's view of the registry (an interrupted promotion, a registry outage).
"""

from __future__ import annotations

import asyncio
import gzip
import http.client
import json
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient

from lib import registry
from lib.serving import schemas
from lib.serving.app import create_app
from lib.serving.settings import MAX_BODY_BYTES
from tests.support.serving import FEEDBACK, MODEL, RAW_APP, TOKEN, Store, credentials_for
from tests.support.serving import admin_headers as _admin
from tests.support.serving import id_for as _id_for
from tests.support.serving import metric_total as _metric
from tests.support.serving import model_service as _service
from tests.support.serving import serving_settings as _settings

PROJECT = Path(__file__).resolve().parents[1]
MiB = 1024 * 1024


def _stored_ids(c: TestClient) -> set[str]:
    store = _service(c).store
    assert store.flush(timeout=30)
    return set(store.window(0)["request_id"])


def _without(app: dict[str, Any], *keys: str) -> dict[str, Any]:
    return {k: v for k, v in app.items() if k not in keys}


# ------------------------------------------------------------------ 1, 5: numbers and strings

HOSTILE_VALUES = [
    ({**_without(RAW_APP, "Size"), "size_mb": "9" * 400}, "size_mb"),
    ({**RAW_APP, "Size": "1" + "0" * 306 + "G"}, "Size"),
    ({**RAW_APP, "Size": "9" * 60 + "G"}, "Size"),
    ({**RAW_APP, "Size": 1e300}, "Size"),
    ({**RAW_APP, "Reviews": 1e308}, "Reviews"),
    ({**RAW_APP, "Reviews": "9" * 400}, "Reviews"),
    ({**RAW_APP, "Reviews": 2e10}, "Reviews"),
    ({**RAW_APP, "Installs": "1" + "0" * 300 + "+"}, "Installs"),
    ({**RAW_APP, "Installs": 1e12}, "Installs"),
    ({**RAW_APP, "Price": 1e6}, "Price"),
    ({**RAW_APP, "Price": "$99999"}, "Price"),
    ({**RAW_APP, "Category": "GAME" * 250_000}, "Category"),
    ({**RAW_APP, "Content Rating": "x" * 101}, "Content Rating"),
    ({**RAW_APP, "Type": " " + "free" * 100}, "Type"),
    ({**RAW_APP, "Last Updated": "January 7, 2018" * 10}, "Last Updated"),
]


@pytest.mark.component
@pytest.mark.parametrize(("app", "field"), HOSTILE_VALUES, ids=lambda v: str(v)[:40])
def test_out_of_range_values_are_422_and_never_reach_the_model(
    client: TestClient, app: dict[str, Any], field: str
) -> None:
    """Aimed at the canary (the variant follows X-Request-ID): a 422, no model error, no row."""
    routed = client.put(
        "/admin/routing", json={"canary_version": "2", "weight": 50.0}, headers=_admin()
    )
    assert routed.status_code == 200, routed.text
    rid = _id_for(_service(client), "canary", prefix="overflow")
    resp = client.post("/predict", json=app, headers={"X-Request-ID": rid})
    assert resp.status_code == 422, resp.text[:300]
    assert resp.json()["errors"][0].startswith(f"{field}: "), resp.json()["errors"]
    assert len(resp.text) < 2000  # the junk is not echoed back whole
    assert _metric(client, "model_request_errors_total") == 0
    assert _metric(client, "model_requests_total") == 0
    assert _metric(client, "model_invalid_requests_total") == 1
    assert rid not in _stored_ids(client)


@pytest.mark.component
def test_bounds_leave_real_listings_alone(client: TestClient) -> None:
    big = {**RAW_APP, "Reviews": "78,158,306", "Installs": "10,000,000,000+", "Size": "4.5G",
           "Price": "$399.99", "Category": "AUTO_AND_VEHICLES"}  # fmt: skip
    assert client.post("/predict", json=big).status_code == 200
    edge = {**RAW_APP, "Reviews": 1e10, "Installs": 1e11, "Size": 100_000, "Price": 5000}
    assert client.post("/predict", json=edge).status_code == 200


@pytest.mark.component
def test_a_bad_row_in_a_batch_refuses_the_batch_before_the_queue(client: TestClient) -> None:
    batch = [RAW_APP, {**RAW_APP, "Size": "1" + "0" * 306 + "G"}, RAW_APP]
    resp = client.post("/predict", json=batch, headers={"X-Request-ID": "bad-batch"})
    assert resp.status_code == 422 and resp.json()["errors"][0].startswith("instances[1]: Size")
    assert _metric(client, "model_requests_total") == 0
    assert not {"bad-batch-0", "bad-batch-2"} & _stored_ids(client)


@pytest.mark.component
def test_overflowing_feedback_and_admin_numbers_are_422(client: TestClient) -> None:
    big = 10**400  # a JSON integer beyond float
    rid = client.post("/predict", json=RAW_APP).json()["request_id"]
    for body in ({"request_id": rid, "rating": big}, {"request_id": rid, "rating": 1e308}):
        resp = client.post("/feedback", headers=FEEDBACK, json=body)
        assert resp.status_code == 422 and "rating" in resp.json()["detail"], resp.text
    for body in (
        {"canary_version": "2", "weight": big},
        {"canary_version": "2", "lease_seconds": big},
    ):
        resp = client.put("/admin/routing", json=body, headers=_admin())
        assert resp.status_code == 422, resp.text


# ------------------------------------------------------------------------- 2: request ids

BAD_IDS = ["😀", "用户-1", "\u202eabc", "１２３", "a b", "x" * 129, "tab\there", "semi;colon"]


@pytest.mark.component
@pytest.mark.parametrize("rid", BAD_IDS)
def test_request_ids_outside_the_grammar_are_422_before_anything_is_stored(
    client: TestClient, rid: str
) -> None:
    resp = client.post("/predict", json={**RAW_APP, "request_id": rid})
    assert resp.status_code == 422, resp.text
    assert resp.json()["errors"][0].startswith("request_id: ")
    assert "A-Z a-z 0-9" in resp.json()["detail"]
    header = client.post("/predict", json=RAW_APP, headers={"X-Request-ID": rid.encode("utf-8")})
    assert header.status_code == 422, header.text
    assert header.json()["errors"][0].startswith("X-Request-ID: ")
    assert _metric(client, "model_requests_total") == 0
    assert _stored_ids(client) == set()
    if len(rid) <= 128:  # (a longer one can name an item of a batch: "<request id>-<index>")
        feedback = client.post(
            "/feedback", headers=FEEDBACK, json={"request_id": rid, "rating": 4.0}
        )
        assert feedback.status_code == 422 and "request_id" in feedback.json()["detail"]


@pytest.mark.component
def test_a_utf8_request_id_header_is_refused_not_stored_garbled(client: TestClient) -> None:
    resp = client.post("/predict", json=RAW_APP, headers={"X-Request-ID": "café".encode()})
    assert resp.status_code == 422 and "X-Request-ID" in resp.json()["detail"]
    assert _stored_ids(client) == set()


@pytest.mark.component
def test_good_request_ids_pass_and_both_places_are_checked(client: TestClient) -> None:
    longest = "A.b_c:d-9" * 14 + "xx"  # 128 characters
    resp = client.post("/predict", json=RAW_APP, headers={"X-Request-ID": longest})
    assert resp.status_code == 200 and resp.headers["x-request-id"] == longest
    assert client.post("/predict", json={**RAW_APP, "request_id": 12345}).json()[
        "request_id"] == "12345"  # fmt: skip
    both = client.post(
        "/predict", json={**RAW_APP, "request_id": "😀"}, headers={"X-Request-ID": "ok"}
    )
    assert both.status_code == 422  # the header wins, but a bad body id is not silently kept
    assert len(client.post("/predict", json=RAW_APP).json()["request_id"]) == 32  # generated
    batch = client.post("/predict", json=[RAW_APP] * 2, headers={"X-Request-ID": longest})
    assert batch.status_code == 200
    item = f"{longest}-1"
    assert (
        client.post(
            "/feedback", headers=FEEDBACK, json={"request_id": item, "rating": 4.5}
        ).status_code
        == 200
    )


OTHER_APP = {**RAW_APP, "Reviews": "3", "Installs": "100+", "Size": "2.5M", "Category": "TOOLS"}


def _probability(c: TestClient, app: dict[str, Any]) -> float:
    return c.post("/predict", json=app).json()["probability"]  # under a generated id


@pytest.mark.component
@pytest.mark.parametrize("written", [False, True], ids=["pending", "written"])
def test_a_repeated_request_id_is_409_and_feedback_joins_the_first(
    client: TestClient, written: bool
) -> None:
    """Two answers under one id left one row holding the second prediction, and the feedback
    for the first joined it. Now the repeat is refused (409): nothing predicted, counted or
    stored; the row and its feedback stay the first answer's. Whether the first row is still
    in the writer's queue (pending) or in the database, the answer is the same."""
    store = _service(client).store
    first_p, other_p = _probability(client, RAW_APP), _probability(client, OTHER_APP)
    assert first_p != other_p  # (else the store could not tell the two answers apart)
    assert store.flush(timeout=30)
    if not written:
        store._queue.min_interval = 3600  # the writer gathers: the first row stays queued
    first = client.post("/predict", json=RAW_APP, headers={"X-Request-ID": "dup-1"})
    assert first.status_code == 200 and first.json()["probability"] == first_p
    if written:
        assert store.flush(timeout=30)
    else:
        assert store.stats()["pending"] == 1  # dup-1's row, the only one since the flush
    requests_before = _metric(client, "model_requests_total")
    for again in (
        client.post("/predict", json=OTHER_APP, headers={"X-Request-ID": "dup-1"}),
        client.post("/predict", json={**OTHER_APP, "request_id": "dup-1"}),
        client.post(
            "/predict",
            json={**OTHER_APP, "request_id": "dup-1"},
            headers={"X-Request-ID": " dup-1 "},
        ),
    ):
        assert again.status_code == 409, again.text
        assert again.json()["detail"].startswith("request id 'dup-1' was already used")
        assert again.json()["request_id"] == "dup-1"
    assert _metric(client, "model_requests_total") == requests_before
    assert _metric(client, "model_request_errors_total") == 0
    assert _metric(client, "model_repeated_request_ids_total") == 3
    feedback = client.post(
        "/feedback", headers=FEEDBACK, json={"request_id": "dup-1", "rating": 4.5}
    )
    assert feedback.status_code == 200, feedback.text
    assert feedback.json()["prediction"]["probability"] == first_p
    window = store.window(0).set_index("request_id")
    assert window.loc["dup-1", "probability"] == first_p and window.loc["dup-1", "true_label"] == 1
    assert store.stats()["rejected"] == 0  # refused before anything was queued


@pytest.mark.component
def test_batch_item_ids_are_unique_with_single_ids(client: TestClient) -> None:
    """A batch's items are '<id>-<index>': they may not reuse an answered id either way."""
    assert client.post("/predict", json=RAW_APP, headers={"X-Request-ID": "x-1"}).status_code == 200
    clash = client.post("/predict", json=[RAW_APP] * 3, headers={"X-Request-ID": "x"})
    assert clash.status_code == 409, clash.text
    assert clash.json()["detail"].startswith("request id 'x': item id 'x-1' was already used")
    batch = client.post("/predict", json={"instances": [RAW_APP] * 2, "request_id": "b"})
    assert batch.status_code == 200
    for again in (
        client.post("/predict", json=[OTHER_APP] * 2, headers={"X-Request-ID": "b"}),
        client.post("/predict", json=OTHER_APP, headers={"X-Request-ID": "b-1"}),
    ):
        assert again.status_code == 409, again.text
    assert client.post("/predict", json=OTHER_APP, headers={"X-Request-ID": "b"}).status_code == 200
    assert _stored_ids(client) == {"x-1", "b-0", "b-1", "b"}
    assert _metric(client, "model_repeated_request_ids_total") == 3


@pytest.mark.component
def test_a_request_id_held_by_a_request_in_flight_is_409(client: TestClient) -> None:
    """Two requests with one id at the same moment: the second is refused while the first is
    being answered (its id is held from the check to the store), not after both answered."""
    store = _service(client).store
    assert store.hold(["flying"]) is None  # what a request does before it predicts
    try:
        resp = client.post("/predict", json=RAW_APP, headers={"X-Request-ID": "flying"})
        assert resp.status_code == 409, resp.text
    finally:
        store.release(["flying"])
    answered = client.post("/predict", json=RAW_APP, headers={"X-Request-ID": "flying"})
    assert answered.status_code == 200


@pytest.mark.component
def test_a_store_that_does_not_answer_costs_the_id_check_not_the_prediction(
    client: TestClient, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    from lib.serving import app as app_module

    store = _service(client).store
    gate = threading.Event()

    def hung(ids: list[str]) -> str | None:
        gate.wait(60)  # the database does not answer
        return None

    def broken(ids: list[str]) -> str | None:
        raise RuntimeError("a bug in the look-up")

    monkeypatch.setattr(app_module, "CLAIM_WAIT_SECONDS", 0.05)
    try:
        monkeypatch.setattr(store, "stored", hung)
        slow = client.post("/predict", json=RAW_APP, headers={"X-Request-ID": "slow-1"})
        assert slow.status_code == 200, slow.text
        assert "request id not checked: the prediction store did not answer" in caplog.text
    finally:
        gate.set()
    monkeypatch.setattr(store, "stored", broken)
    failed = client.post("/predict", json=RAW_APP, headers={"X-Request-ID": "slow-2"})
    assert failed.status_code == 200, failed.text
    assert _metric(client, "model_request_errors_total") == 0


@pytest.mark.component
def test_ids_and_versions_as_json_numbers_follow_the_document(client: TestClient) -> None:
    """/openapi.json says integer (JSON Schema's: 7.0 is one) in 0..2**53-1 for an id and
    1.. for a version, and a blank id is no id: the service takes what the document allows."""
    assert client.post("/predict", json={**RAW_APP, "request_id": 7.0}).json()["request_id"] == "7"
    for bad in (-1, 2**53, 7.5):
        refused = client.post("/predict", json={**RAW_APP, "request_id": bad})
        assert refused.status_code == 422, (bad, refused.text)
    blank = client.post("/predict", json={**RAW_APP, "request_id": "  "},
                        headers={"X-Request-ID": " "})  # fmt: skip
    assert blank.status_code == 200 and len(blank.json()["request_id"]) == 32  # a new uuid4
    routed = client.put("/admin/routing", json={"canary_version": 2.0, "weight": 5},
                        headers=_admin())  # fmt: skip
    assert routed.status_code == 200 and routed.json()["canary_version"] == "2"


@pytest.mark.component
def test_a_weight_without_a_canary_is_409_when_none_is_loaded(client: TestClient) -> None:
    """The body is fine; the state is not (no canary loaded): 409, as the document says. With
    "canary_version": null the body contradicts itself: 422, stated in the schema too."""
    no_canary = client.put("/admin/routing", json={"weight": 5}, headers=_admin())
    assert no_canary.status_code == 409, no_canary.text
    assert "none is loaded" in no_canary.json()["detail"]
    null = client.put("/admin/routing", json={"canary_version": None, "weight": 5},
                      headers=_admin())  # fmt: skip
    assert null.status_code == 422, null.text
    assert _routing_now(client)["canary_version"] is None


@pytest.mark.component
def test_lone_surrogates_never_become_ids(client: TestClient) -> None:
    for where in ((None, "\ud800"), ("\ud800", None), (None, "a\udfffb")):
        with pytest.raises(schemas.InputError):
            schemas.caller_request_id(*where)
    body = b'{"Category": "GAME", "request_id": "\\ud800"}'
    resp = client.post("/predict", content=body)
    assert resp.status_code == 422 and "not valid JSON" in resp.json()["detail"], resp.text


# ------------------------------------------------------------------------ 3: deep JSON, 500s

DEEP = 10_000


@pytest.mark.component
@pytest.mark.parametrize(
    ("method", "path"), [("POST", "/predict"), ("POST", "/feedback"), ("PUT", "/admin/routing")]
)
@pytest.mark.parametrize("opener", [b"[", b'{"a":'])
def test_deeply_nested_json_is_a_4xx_saying_so(
    client: TestClient, method: str, path: str, opener: bytes
) -> None:
    closer = b"]" if opener == b"[" else b"}"
    body = opener * DEEP + b"1" + closer * DEEP
    resp = client.request(method, path, content=body, headers=credentials_for(path))
    assert 400 <= resp.status_code < 500, resp.text
    assert "nested too deeply" in resp.json()["detail"]


@pytest.mark.component
def test_unexpected_errors_are_generic_and_recursion_is_a_400(
    client: TestClient, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    def recursing(body: schemas.PredictRequest) -> Any:
        raise RecursionError("maximum recursion depth exceeded")

    monkeypatch.setattr(schemas.PredictRequest, "parsed", recursing)
    resp = client.post("/predict", json=RAW_APP)
    assert resp.status_code == 400 and "nested too deeply" in resp.json()["detail"]

    def broken(body: schemas.PredictRequest) -> Any:
        raise RuntimeError("secret detail at /srv/private/path")

    monkeypatch.setattr(schemas.PredictRequest, "parsed", broken)
    resp = client.post("/predict", json=RAW_APP, headers={"X-Request-ID": "boom-1"})
    assert resp.status_code == 500
    assert resp.json() == {
        "detail": "internal error (request boom-1; details in the log)",
        "request_id": "boom-1",
    }
    assert "secret detail" in caplog.text and "boom-1" in caplog.text


@pytest.mark.component
def test_model_error_answer_names_the_request_not_the_exception(
    client: TestClient, caplog: pytest.LogCaptureFixture
) -> None:
    def broken(rows: Any) -> Any:
        raise ValueError("Input X contains infinity, see /home/someone/models")

    _service(client).champion.predictor.predict = broken
    resp = client.post("/predict", json=RAW_APP, headers={"X-Request-ID": "m-1"})
    assert resp.status_code == 500 and resp.json()["request_id"] == "m-1"
    assert "infinity" not in resp.text and "/home" not in resp.text
    assert "infinity" in caplog.text  # the detail is logged (and stored with the row)


# ---------------------------------------------------------------------------- 4: body size


def _asgi(
    client: TestClient, headers: list[tuple[bytes, bytes]], chunks: int, leave: bool = False
) -> dict[str, Any]:
    """Call the app directly with a body of `chunks` MiB (or a client that `leave`s before
    sending any): the status, headers and how many chunks the app pulled before answering."""
    pulled = 0
    out: dict[str, Any] = {}

    async def receive() -> dict[str, Any]:
        nonlocal pulled
        pulled += 1
        if leave:
            return {"type": "http.disconnect"}
        if pulled > chunks:
            await asyncio.sleep(3600)  # never: the app must have answered by now
        return {"type": "http.request", "body": b" " * MiB, "more_body": pulled < chunks}

    async def send(message: dict[str, Any]) -> None:
        if message["type"] == "http.response.start":
            out["status"] = message["status"]
            out["headers"] = {k.decode(): v.decode() for k, v in message["headers"]}
        elif message["type"] == "http.response.body":
            out["body"] = out.get("body", b"") + message.get("body", b"")

    scope = {
        "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST",
        "scheme": "http", "path": "/predict", "raw_path": b"/predict", "query_string": b"",
        "root_path": "", "headers": [(b"content-type", b"application/json"), *headers],
        "client": ("127.0.0.1", 1234), "server": ("127.0.0.1", 80),
    }  # fmt: skip

    async def call() -> None:
        await client.app(scope, receive, send)

    client.portal.call(call)
    return {**out, "pulled": pulled}


@pytest.mark.component
def test_oversized_body_is_413_on_content_length_before_reading(client: TestClient) -> None:
    answer = _asgi(client, [(b"content-length", str(200 * MiB).encode())], chunks=200)
    assert answer["status"] == 413 and answer["pulled"] == 0
    assert answer["headers"]["connection"] == "close"
    assert str(MAX_BODY_BYTES) in json.loads(answer["body"])["detail"]


@pytest.mark.component
def test_oversized_streamed_body_is_413_without_reading_it_all(client: TestClient) -> None:
    answer = _asgi(client, [], chunks=200)  # chunked: no Content-Length
    assert answer["status"] == 413
    assert answer["pulled"] <= MAX_BODY_BYTES // MiB + 1  # stopped at the limit, not at 200 MiB
    assert _metric(client, "model_requests_total") == 0


@pytest.mark.component
def test_a_client_leaving_mid_body_is_no_error(
    client: TestClient, caplog: pytest.LogCaptureFixture
) -> None:
    answer = _asgi(client, [], chunks=1, leave=True)
    assert "status" not in answer  # nobody to answer, and nothing raised
    assert "Traceback" not in caplog.text and _metric(client, "model_requests_total") == 0


@pytest.mark.component
def test_malformed_content_length_is_400(client: TestClient) -> None:
    answer = _asgi(client, [(b"content-length", b"12abc")], chunks=1)
    assert answer["status"] == 400 and answer["pulled"] == 0


# ----------------------------------------------------------------------- 6: content types


@pytest.mark.component
@pytest.mark.parametrize(
    "content_type",
    ["text/plain", "application/x-www-form-urlencoded", "image/png", "multipart/form-data",
     "application/json; charset=latin-1", "application/jsonx"],
)  # fmt: skip
def test_other_content_types_are_415(client: TestClient, content_type: str) -> None:
    body = json.dumps(RAW_APP).encode()
    for method, path in (("POST", "/predict"), ("POST", "/feedback"), ("PUT", "/admin/routing")):
        headers = {**credentials_for(path), "Content-Type": content_type}
        resp = client.request(method, path, content=body, headers=headers)
        assert resp.status_code == 415, (path, resp.text)
        assert "application/json" in resp.json()["detail"]
    assert _metric(client, "model_requests_total") == 0


@pytest.mark.component
@pytest.mark.parametrize("encoding", ["gzip", "deflate", "br", "GZIP", "gzip, identity", "x-own"])
def test_encoded_bodies_are_415_not_read_as_plain_json(client: TestClient, encoding: str) -> None:
    """A body the caller says is compressed is never read as plain JSON: neither the gzip bytes
    (a misleading 422) nor plain JSON mislabelled as compressed (a 200 on bytes it never meant)."""
    plain = json.dumps(RAW_APP).encode()
    for body in (gzip.compress(plain), plain):
        for method, path in (("POST", "/predict"), ("POST", "/feedback"),
                             ("PUT", "/admin/routing")):  # fmt: skip
            headers = {
                **credentials_for(path), "Content-Type": "application/json",
                "Content-Encoding": encoding,
            }  # fmt: skip
            resp = client.request(method, path, content=body, headers=headers)
            assert resp.status_code == 415, (path, resp.text)
            assert "Content-Encoding" in resp.json()["detail"]
            assert resp.headers["accept-encoding"] == "identity"
    assert _metric(client, "model_requests_total") == 0
    assert _stored_ids(client) == set()


@pytest.mark.component
def test_identity_encoding_is_plain_json(client: TestClient) -> None:
    headers = {"Content-Type": "application/json", "Content-Encoding": "Identity"}
    resp = client.post("/predict", content=json.dumps(RAW_APP).encode(), headers=headers)
    assert resp.status_code == 200, resp.text


@pytest.mark.component
@pytest.mark.parametrize(
    "content_type", ["application/json; charset=utf-8", "Application/JSON", None]
)
def test_json_content_types_and_a_missing_one_are_read(
    client: TestClient, content_type: str | None
) -> None:
    headers = {} if content_type is None else {"Content-Type": content_type}
    resp = client.post("/predict", content=json.dumps(RAW_APP).encode(), headers=headers)
    assert resp.status_code == 200, resp.text


# ------------------------------------------------------------------ 6: disclosure, contract


@pytest.mark.component
def test_no_champion_answers_do_not_show_the_store_path(mlstore: Store, tmp_path: Path) -> None:
    uri = f"sqlite:///{tmp_path}/private-dir/mlflow.db"
    (tmp_path / "private-dir").mkdir()
    settings = _settings(mlstore, tmp_path, tracking_uri=uri, registry_check_seconds=0)
    with TestClient(create_app(settings)) as c:
        for resp in (c.get("/health"), c.post("/predict", json=RAW_APP)):
            assert str(tmp_path) not in resp.text and "private-dir" not in resp.text
            assert "sqlite:///.../mlflow.db" in resp.text


@pytest.mark.component
def test_routing_needs_the_admin_token(client: TestClient) -> None:
    assert client.get("/admin/routing").status_code == 401
    assert client.get("/admin/routing", headers=_admin("wrong-token-1")).status_code == 403
    assert client.get("/admin/routing", headers=_admin()).json()["champion_version"] == "1"


@pytest.mark.component
@pytest.mark.parametrize(
    ("content", "headers"),
    [(b"{not json", {"Content-Type": "application/json"}),
     (b'{"weight": "x"}', {"Content-Type": "application/json"}),
     (b"x" * (2 << 20), {"Content-Type": "application/json"}),
     (b'{"weight": 0}', {"Content-Type": "text/plain"}),
     (b'{"weight": 0}', {"Content-Type": "application/json", "Content-Encoding": "gzip"})],
)  # fmt: skip
def test_admin_body_is_not_looked_at_without_the_token(
    client: TestClient, content: bytes, headers: dict[str, str]
) -> None:
    """A caller without the admin token learns nothing about the body's rules: 401 without a
    token and 403 with a wrong one, whatever the body (never 413, 415 or 422), nothing changed."""
    before = _routing_now(client)
    for auth, status in (({}, 401), (_admin("wrong-token-1"), 403)):
        resp = client.put("/admin/routing", content=content, headers={**headers, **auth})
        assert resp.status_code == status, (resp.status_code, resp.text[:200])
    assert _routing_now(client) == before


def _routing_now(c: TestClient) -> dict[str, Any]:
    routing = c.get("/admin/routing", headers=_admin()).json()
    return {k: routing[k] for k in ("champion_version", "canary_version", "canary_weight",
                                    "lease_seconds")}  # fmt: skip


@pytest.mark.component
def test_expected_weight_refuses_to_undo_an_operators_stop(client: TestClient) -> None:
    """The deployer's renewal names the weight it set last: after a person's stop (weight 0)
    it is refused with 409 and changes nothing, so no renewal raises the weight again."""

    def put(body: dict[str, Any]) -> Any:
        return client.put("/admin/routing", json=body, headers=_admin())

    step = {"canary_version": "2", "weight": 25, "lease_seconds": 60}
    assert put(step).status_code == 200
    assert put({**step, "expected_weight": 25}).json()["canary_weight"] == 25  # a renewal
    assert put({"weight": 0}).status_code == 200  # the operator's stop
    stopped = _routing_now(client)
    for body in ({**step, "expected_weight": 25}, {**step, "weight": 50, "expected_weight": 25},
                 {"canary_version": None, "expected_weight": 25.5}):  # fmt: skip
        refused = put(body)
        assert refused.status_code == 409, refused.text
        expected = body["expected_weight"]
        assert refused.json()["detail"] == (
            f"routing changed: canary weight is 0, expected {expected:g}"
        )
        assert _routing_now(client) == stopped
    assert put({**step, "weight": 5, "expected_weight": 0.0}).json()["canary_weight"] == 5


@pytest.mark.component
def test_expected_weight_is_compared_after_the_lease_check(client: TestClient) -> None:
    step = {"canary_version": "2", "weight": 25, "lease_seconds": 60}
    assert client.put("/admin/routing", json=step, headers=_admin()).status_code == 200
    _service(client).lease_deadline = time.monotonic() - 1  # the lease ran out unrenewed
    late = client.put("/admin/routing", json={**step, "expected_weight": 25}, headers=_admin())
    assert late.status_code == 409, late.text
    assert late.json()["detail"] == "routing changed: canary weight is 0, expected 25"
    assert _routing_now(client)["canary_weight"] == 0


@pytest.mark.component
@pytest.mark.parametrize("value", [-1, 100.5, "25", True, 10**400])
def test_expected_weight_must_be_a_percentage(client: TestClient, value: Any) -> None:
    body = {"canary_version": "2", "weight": 5, "expected_weight": value}
    resp = client.put("/admin/routing", json=body, headers=_admin())
    assert resp.status_code == 422, resp.text
    assert resp.json()["errors"][0].startswith("expected_weight: "), resp.json()
    assert _routing_now(client)["canary_version"] is None


@pytest.mark.component
@pytest.mark.parametrize("version", ["latest", "champion", "1.0", "v2", "0", "-1", " ", 0])
def test_canary_version_must_be_a_version_number(client: TestClient, version: Any) -> None:
    resp = client.put(
        "/admin/routing", json={"canary_version": version, "weight": 5}, headers=_admin()
    )
    assert resp.status_code == 422 and "canary_version" in resp.json()["detail"], resp.text
    assert client.get("/admin/routing", headers=_admin()).json()["canary_version"] is None
    assert 'variant="canary"' not in client.get("/metrics").text


@pytest.mark.component
def test_docs_page_loads_nothing_from_the_network(client: TestClient) -> None:
    page = client.get("/docs")
    assert page.status_code == 200 and "/openapi.json" in page.text
    assert "http://" not in page.text and "https://" not in page.text
    assert client.get("/redoc").status_code == 404
    paths = client.get("/openapi.json").json()["paths"]
    assert "/docs" not in paths
    assert {"413", "415"} <= set(paths["/predict"]["post"]["responses"])


# ------------------------------------------------------------- 7: the registry seen by /health


def _until(c: TestClient, check: Any, what: str) -> dict[str, Any]:
    deadline = time.monotonic() + 60
    while True:
        health = c.get("/health").json()
        if check(health):
            return health
        if time.monotonic() > deadline:
            raise AssertionError(f"/health never showed {what}: {health}")
        time.sleep(0.05)


@pytest.mark.component
def test_health_says_when_the_registry_names_another_champion(
    mlstore: Store, own_store: str, tmp_path: Path
) -> None:
    from mlflow import MlflowClient

    settings = _settings(mlstore, tmp_path, tracking_uri=own_store, registry_check_seconds=0.05)
    with TestClient(create_app(settings)) as c:
        health = c.get("/health").json()
        assert health["registry"]["champion_version"] == "1" and health["registry"]["matches"]
        assert health["warning"] is None and health["registry"]["reachable"] is True
        ml = MlflowClient(tracking_uri=own_store, registry_uri=own_store)
        registry.set_alias(ml, MODEL, "champion", "2")  # a promotion interrupted before reload
        health = _until(c, lambda h: h["registry"]["champion_version"] == "2", "v2")
        assert health["registry"]["matches"] is False and health["champion_version"] == "1"
        assert health["warning"] == (
            "the registry names v2 champion, this service serves v1: POST /admin/reload or run "
            "the pipeline"
        )
        assert health["status"] == "ok"  # it still serves
        assert c.post("/admin/reload", headers=_admin()).json()["champion_version"] == "2"
        health = c.get("/health").json()
        assert health["registry"]["matches"] is True and health["warning"] is None


@pytest.mark.component
def test_health_reports_a_registry_outage_and_recovers(
    mlstore: Store, own_store: str, tmp_path: Path
) -> None:
    settings = _settings(mlstore, tmp_path, tracking_uri=own_store, registry_check_seconds=0.05)
    with TestClient(create_app(settings)) as c:
        service = _service(c)
        good = c.get("/health").json()["registry"]["last_good_check_at"]
        assert good is not None

        def outage() -> str | None:
            raise ConnectionError("registry down")

        service.champion_version = outage  # what MLflow raises when its server is gone
        health = _until(c, lambda h: h["registry"]["reachable"] is False, "the outage")
        assert health["registry"]["error"] == "registry unreachable (ConnectionError)"
        assert health["registry"]["champion_version"] == "1"  # as of the last good check
        last_good = health["registry"]["last_good_check_at"]
        assert last_good >= good and health["registry"]["checked_at"] > last_good
        assert health["warning"].startswith("registry unreachable at ")
        assert "last good check 20" in health["warning"]
        assert health["status"] == "ok" and c.post("/predict", json=RAW_APP).status_code == 200
        del service.champion_version  # the registry is back
        _until(c, lambda h: h["registry"]["reachable"] is True, "the recovery")


@pytest.mark.component
def test_health_does_not_call_the_registry_per_request(
    mlstore: Store, own_store: str, tmp_path: Path
) -> None:
    settings = _settings(mlstore, tmp_path, tracking_uri=own_store, registry_check_seconds=3600)
    with TestClient(create_app(settings)) as c:
        service = _service(c)
        checks = service.registry_checks
        assert checks == 1  # the start-up look at the alias
        for _ in range(30):
            assert c.get("/health").json()["registry"]["matches"] is True
        assert service.registry_checks == checks


# --------------------------------------------------------------------------- a real server


@pytest.fixture(scope="module")
def live(mlstore: Store, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    from lib.delivery.service_process import ServiceProcess

    tmp = tmp_path_factory.mktemp("hardening")
    service = ServiceProcess(
        PROJECT, MODEL, mlstore.uri, f"sqlite:///{tmp}/predictions.db", admin_token=TOKEN,
        log_path=tmp / "service.log",
    )  # fmt: skip
    with service:
        yield service.url
        service.check()


def _port(url: str) -> int:
    return int(url.rsplit(":", 1)[1])


@pytest.mark.e2e
def test_deep_json_keeps_the_connection_open(live: str) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", _port(live), timeout=60)
    try:
        body = b"[" * DEEP + b"]" * DEEP
        conn.request("POST", "/predict", body=body, headers={"Content-Type": "application/json"})
        first = conn.getresponse()
        assert 400 <= first.status < 500 and b"nested too deeply" in first.read()
        assert not first.will_close
        conn.request("POST", "/predict", body=json.dumps(RAW_APP).encode(),
                     headers={"Content-Type": "application/json"})  # fmt: skip
        second = conn.getresponse()  # the same connection: uvicorn did not drop it
        assert second.status == 200, second.read()
    finally:
        conn.close()


@pytest.mark.e2e
def test_set_routing_raises_routing_changed_when_the_weight_moved(live: str) -> None:
    """The deployer's client: a 409 on expected_weight is its own RolloutFailed, carrying the
    service's sentence; without expected_weight a call applies as before."""
    from lib.delivery.service_control import RolloutFailed, RoutingChanged, set_routing

    try:
        set_routing(live, TOKEN, "2", 25, 60)
        assert set_routing(live, TOKEN, "2", 25, 60, expected_weight=25)["canary_weight"] == 25
        stop = httpx.put(f"{live}/admin/routing", json={"weight": 0}, headers=_admin(), timeout=60)
        assert stop.status_code == 200  # the operator's stop
        with pytest.raises(RoutingChanged) as caught:
            set_routing(live, TOKEN, "2", 25, 60, expected_weight=25)
        assert isinstance(caught.value, RolloutFailed)
        assert str(caught.value) == "routing changed: canary weight is 0, expected 25"
        routing = httpx.get(f"{live}/admin/routing", headers=_admin(), timeout=10).json()
        assert routing["canary_weight"] == 0 and routing["canary_version"] == "2"
        with pytest.raises(RolloutFailed) as other:  # another refusal is not RoutingChanged
            set_routing(live, TOKEN, None, 5, expected_weight=0)
        assert not isinstance(other.value, RoutingChanged) and "HTTP 422" in str(other.value)
        assert set_routing(live, TOKEN, "2", 5, 60, expected_weight=0)["canary_weight"] == 5
    finally:
        set_routing(live, TOKEN, None, 0)


@pytest.mark.e2e
def test_live_server_refuses_a_huge_content_length_without_waiting_for_it(live: str) -> None:
    with socket.create_connection(("127.0.0.1", _port(live)), timeout=60) as sock:
        sock.sendall(
            b"POST /predict HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
            + f"Content-Length: {200 * MiB}\r\n\r\n".encode()
        )  # no body is sent: an answer proves the service did not wait for 200 MiB
        answer = b""
        while b"\r\n\r\n" not in answer:
            chunk = sock.recv(65536)
            if not chunk:
                break
            answer += chunk
    assert answer.startswith(b"HTTP/1.1 413 "), answer[:200]
    assert b"connection: close" in answer.lower()
