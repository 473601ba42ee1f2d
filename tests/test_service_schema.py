"""The live service against its own /openapi.json: hostile bodies get a 4xx, never a 5xx.

schemathesis generates valid and invalid bodies, headers and paths for every operation from the
document the running service publishes, bounded in examples and time, and checks each answer
with not_a_server_error. A few hand-written hostile bodies pin down the worst cases.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error

from lib.delivery.service_process import ServiceProcess
from tests.test_serving import MODEL, RAW_APP, TOKEN, Store, mlstore  # noqa: F401 (fixture)

PROJECT = Path(__file__).resolve().parents[1]
ADMIN = {"Authorization": f"Bearer {TOKEN}"}


@pytest.fixture(scope="module")
def live(mlstore: Store, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:  # noqa: F811
    """One real service process for this module (loopback), stopped at the end."""
    tmp = tmp_path_factory.mktemp("schema")
    service = ServiceProcess(
        PROJECT, MODEL, mlstore.uri, f"sqlite:///{tmp}/predictions.db", admin_token=TOKEN,
        log_path=tmp / "service.log",
    )  # fmt: skip
    with service:
        yield service.url
        service.check()  # it must not have died under the load


@pytest.fixture(scope="module")
def live_schema(live: str):
    """The document the running service publishes (not the app object: what a client sees)."""
    return schemathesis.openapi.from_url(f"{live}/openapi.json", timeout=30)


OPERATIONS = [
    ("POST", "/predict"), ("POST", "/feedback"), ("GET", "/health"), ("GET", "/metrics"),
    ("GET", "/admin/routing"), ("PUT", "/admin/routing"), ("POST", "/admin/reload"),
]  # fmt: skip
WITH_BODY = {("POST", "/predict"), ("POST", "/feedback"), ("PUT", "/admin/routing")}
CASES = [
    (method, path, mode)
    for method, path in OPERATIONS
    for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE)
    if mode is GenerationMode.POSITIVE or (method, path) in WITH_BODY
]


def test_every_operation_is_fuzzed(live_schema) -> None:
    found = {(op.ok().method.upper(), op.ok().path) for op in live_schema.get_all_operations()}
    assert found == set(OPERATIONS)


@pytest.mark.parametrize(("method", "path", "mode"), CASES, ids=lambda v: str(v))
def test_no_operation_answers_a_server_error(
    live: str, live_schema, method: str, path: str, mode: GenerationMode
) -> None:
    """schemathesis's not_a_server_error on ~40 generated requests (valid or hostile)."""
    operation = live_schema[path][method]
    headers = ADMIN if path.startswith("/admin") else None
    calls = []

    @given(case=operation.as_strategy(generation_mode=mode))
    @settings(max_examples=40, deadline=None, database=None, phases=[Phase.generate],
              suppress_health_check=list(HealthCheck))  # fmt: skip
    def fuzz(case) -> None:
        response = case.call_and_validate(
            base_url=live, headers=headers, checks=[not_a_server_error], timeout=60
        )
        calls.append(response.status_code)

    fuzz()
    # it did send requests: many for a body, at least one for an operation without inputs
    assert len(calls) >= (10 if (method, path) in WITH_BODY else 1)
    assert all(code < 500 for code in calls)
    if mode is GenerationMode.NEGATIVE:  # (a negative case may break only a header or query)
        assert any(400 <= code < 500 for code in calls), calls


def test_openapi_describes_bodies_and_errors(live: str) -> None:
    doc = httpx.get(f"{live}/openapi.json", timeout=10).json()
    paths = doc["paths"]
    bodies = {
        (path, method): op["requestBody"]["content"]["application/json"]["schema"]["$ref"]
        for path, ops in paths.items()
        for method, op in ops.items()
        if "requestBody" in op
    }
    assert bodies == {
        ("/predict", "post"): "#/components/schemas/PredictRequest",
        ("/feedback", "post"): "#/components/schemas/Feedback",
        ("/admin/routing", "put"): "#/components/schemas/RoutingUpdate",
    }
    assert {"422", "503"} <= set(paths["/predict"]["post"]["responses"])
    assert {"404", "422"} <= set(paths["/feedback"]["post"]["responses"])
    assert {"401", "403", "422"} <= set(paths["/admin/routing"]["put"]["responses"])
    components = doc["components"]["schemas"]
    play_store, clean = components["PlayStoreApp"], components["CleanApp"]
    assert "Content Rating" in play_store["required"] and "content_rating" in clean["required"]
    assert "App" not in play_store["required"] and "app" in clean["properties"]
    assert doc["components"]["securitySchemes"]["HTTPBearer"]["scheme"] == "bearer"


HOSTILE = [
    b"\xff\xfe\x00garbage",
    b"[" * 5000 + b"]" * 5000,
    b'{"Reviews": 1e999}',
    b'{"Category": NaN}',
    b"null",
    b'"just a string"',
    b"[[]]",
    b'{"instances": [null, 7, "x"]}',
    b'{"instances": []}',
    b'{"instances": {"a": 1}}',
    b"{" + b'"Size": "1M",' * 1000 + b'"Type": "Free"}',
]


@pytest.mark.parametrize("body", HOSTILE)
def test_hostile_predict_bodies_get_422(live: str, body: bytes) -> None:
    resp = httpx.post(f"{live}/predict", content=body, timeout=30,
                      headers={"Content-Type": "application/json"})  # fmt: skip
    assert resp.status_code == 422, resp.text
    assert resp.json()["detail"]


def test_hostile_values_name_the_field(live: str) -> None:
    app = {**RAW_APP, "Reviews": 10**400, "Size": "-3M", "Last Updated": "Jan 1 3000"}
    resp = httpx.post(f"{live}/predict", json=app, timeout=30)
    assert resp.status_code == 422
    errors = resp.json()["errors"]
    assert errors == [
        f"Reviews: {str(10**400)[:77]}... is too large",
        'Size: \'-3M\' is not a size like "19M", "201k", 19.0 or "Varies with device"',
        "Last Updated: 'Jan 1 3000' is outside the supported years 1678..2261",
    ]


@pytest.mark.parametrize(
    ("path", "method", "body", "status"),
    [
        ("/feedback", "post", b"[1, 2]", 422),
        ("/feedback", "post", b'{"request_id": "x"}', 422),
        ("/feedback", "post", b'{"request_id": "never-seen", "rating": 4.5}', 404),
        ("/admin/routing", "put", b'{"weight": "lots"}', 422),
        ("/admin/routing", "put", b'{"canary_version": "999"}', 404),
        ("/admin/routing", "put", b'{"wieght": 5}', 422),
    ],
)
def test_hostile_other_bodies_get_4xx(
    live: str, path: str, method: str, body: bytes, status: int
) -> None:
    resp = httpx.request(method, f"{live}{path}", content=body, headers=ADMIN, timeout=60)
    assert resp.status_code == status, resp.text


def test_admin_routes_refuse_without_the_token(live: str) -> None:
    assert httpx.put(f"{live}/admin/routing", json={}, timeout=10).status_code == 401
    wrong = {"Authorization": "Bearer not-the-token"}
    assert httpx.post(f"{live}/admin/reload", headers=wrong, timeout=10).status_code == 403
