"""The live service against its own /openapi.json: hostile bodies get a 4xx, never a 5xx.

schemathesis generates valid and invalid bodies, headers and paths for every operation from the
document the running service publishes, bounded in examples and time, and checks each answer
with not_a_server_error. A few hand-written hostile bodies pin down the worst cases.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import jsonschema_rs
import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from pydantic import ValidationError
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error

from lib.delivery.service_process import ServiceProcess
from lib.serving import schemas
from tests.support.serving import (
    FEEDBACK_TOKEN,
    MODEL,
    RAW_APP,
    TOKEN,
    Store,
    credentials_for,
)

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


@pytest.mark.component
def test_every_operation_is_fuzzed(live_schema) -> None:
    found = {(op.ok().method.upper(), op.ok().path) for op in live_schema.get_all_operations()}
    assert found == set(OPERATIONS)


@pytest.mark.component
@pytest.mark.parametrize(("method", "path", "mode"), CASES, ids=lambda v: str(v))
def test_no_operation_answers_a_server_error(
    live: str, live_schema, method: str, path: str, mode: GenerationMode
) -> None:
    """schemathesis's not_a_server_error on ~40 generated requests (valid or hostile)."""
    operation = live_schema[path][method]
    headers = credentials_for(path) if path != "/predict" else None
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


@pytest.mark.component
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
    assert {"401", "403", "404", "422"} <= set(paths["/feedback"]["post"]["responses"])
    assert {"401", "403", "422"} <= set(paths["/admin/routing"]["put"]["responses"])
    components = doc["components"]["schemas"]
    play_store, clean = components["App"]["anyOf"]  # an app in either spelling
    assert "Content Rating" in play_store["required"] and "content_rating" in clean["required"]
    assert "App" not in play_store["required"] and "app" in clean["properties"]
    assert doc["components"]["securitySchemes"]["HTTPBearer"]["scheme"] == "bearer"


@pytest.mark.component
def test_schemathesis_with_every_check_finds_nothing(live: str, tmp_path: Path) -> None:
    """`schemathesis run --checks all` on the live document (every phase: coverage, fuzzing):
    valid bodies are answered, invalid ones refused, every answer as documented (status,
    content type, schema, Allow of a 405, 401/403 without the token). Seeded: the same cases
    every run (other seeds and 300 examples per operation also pass)."""
    for token, paths, examples in (  # each route its credential
        (TOKEN, ["--exclude-path", "/feedback"], "20"),
        (FEEDBACK_TOKEN, ["--include-path", "/feedback"], "10"),
    ):
        command = [
            sys.executable, "-m", "schemathesis.cli", "run", f"{live}/openapi.json", "--checks",
            "all", "--header", f"Authorization: Bearer {token}", *paths, "--max-examples", examples,
            "--seed", "1", "--generation-database", "none", "--request-timeout", "60",
            "--no-color", "--output-truncate", "false",
        ]  # fmt: skip
        run = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=600)
        assert run.returncode == 0, run.stdout[-8000:] + run.stderr[-2000:]
        assert " passed" in run.stdout and "failed" not in run.stdout.split("SUMMARY")[-1]


@pytest.mark.component
def test_metrics_are_documented_as_prometheus_text(live: str) -> None:
    responses = httpx.get(f"{live}/openapi.json", timeout=10).json()["paths"]["/metrics"]["get"]
    assert set(responses["responses"]["200"]["content"]) == {"text/plain"}
    answer = httpx.get(f"{live}/metrics", timeout=10)
    assert answer.headers["content-type"].startswith("text/plain")


@pytest.mark.component
@pytest.mark.parametrize(
    ("method", "path", "allowed"),
    [("OPTIONS", "/admin/routing", {"GET", "PUT"}), ("DELETE", "/admin/routing", {"GET", "PUT"}),
     ("GET", "/predict", {"POST"}), ("PUT", "/health", {"GET"})],
)  # fmt: skip
def test_a_405_names_every_method_of_the_path(
    live: str, method: str, path: str, allowed: set[str]
) -> None:
    answer = httpx.request(method, f"{live}{path}", headers=ADMIN, timeout=10)
    assert answer.status_code == 405
    assert {m.strip() for m in answer.headers["allow"].split(",")} == allowed


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


@pytest.mark.component
@pytest.mark.parametrize("body", HOSTILE)
def test_hostile_predict_bodies_get_422(live: str, body: bytes) -> None:
    resp = httpx.post(f"{live}/predict", content=body, timeout=30,
                      headers={"Content-Type": "application/json"})  # fmt: skip
    assert resp.status_code == 422, resp.text
    assert resp.json()["detail"]


@pytest.mark.component
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


@pytest.mark.component
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
    resp = httpx.request(
        method, f"{live}{path}", content=body, headers=credentials_for(path), timeout=60
    )
    assert resp.status_code == status, resp.text


@pytest.mark.component
def test_admin_routes_refuse_without_the_token(live: str) -> None:
    assert httpx.put(f"{live}/admin/routing", json={}, timeout=10).status_code == 401
    wrong = {"Authorization": "Bearer not-the-token"}
    assert httpx.post(f"{live}/admin/reload", headers=wrong, timeout=10).status_code == 403


# ---------------------------------------------------------- the document states the validators

APP_FIELDS = schemas.App.model_json_schema()["anyOf"][0]["properties"]  # the Play Store spelling
STRING_FIELDS = [
    name
    for name, schema in APP_FIELDS.items()
    if name != "request_id" and any("pattern" in branch for branch in schema.get("anyOf", [schema]))
]


def _pattern(field: str) -> str:
    schema = APP_FIELDS[field]
    return next(b["pattern"] for b in schema.get("anyOf", [schema]) if "pattern" in b)


def _accepted(field: str, value: Any) -> bool:
    try:
        schemas.App.model_validate({**RAW_APP, field: value})
    except ValidationError:
        return False
    return True


def _allowed(field: str, value: Any) -> bool:
    """What a client that reads /openapi.json is told (the validator schemathesis uses)."""
    return jsonschema_rs.validator_for(APP_FIELDS[field]).is_valid(value)


def test_every_string_field_has_a_pattern() -> None:
    assert set(STRING_FIELDS) == set(APP_FIELDS) - {"request_id"}


@pytest.mark.parametrize("field", STRING_FIELDS)
def test_strings_the_document_allows_are_accepted(field: str) -> None:
    """Positive side: whatever matches a field's pattern is accepted (no 422 for valid data)."""

    @given(text=st.from_regex(_pattern(field), fullmatch=True))
    @settings(max_examples=300, deadline=None, database=None, derandomize=True,
              suppress_health_check=list(HealthCheck))  # fmt: skip
    def check(text: str) -> None:
        assert _allowed(field, text), repr(text)
        assert _accepted(field, text), repr(text)

    check()


@pytest.mark.parametrize("field", STRING_FIELDS)
def test_strings_the_service_accepts_are_allowed(field: str) -> None:
    """Negative side: text the service accepts is no invalid data (what schemathesis sends as
    invalid is random text that does not match: it must be refused)."""

    @given(text=st.text(max_size=24) | st.text(alphabet=GRAMMAR, max_size=12))
    @settings(max_examples=400, deadline=None, database=None, derandomize=True,
              suppress_health_check=list(HealthCheck))  # fmt: skip
    def check(text: str) -> None:
        if _accepted(field, text):
            assert _allowed(field, text), repr(text)

    check()


GRAMMAR = "0123456789,.+-$eE kKmMgGbB\t\x1c\xa0aNnA/-:TJyuMa"

# fmt: off
SPELLINGS = {
    "Reviews": [" 1,234 ", "+5", "-0", "-0.0", ".5", "5.", "0e0", "0E9", "-0e5", "1.5e-3",
                "4.5e9", "1 234", "9999999999"],
    "Installs": ["10,000+", "+1", "1,000,000,000+", "-0", "0.0", "99999999999"],
    "Price": ["$4.99", "0", "$0", "4999.99", "-$0", "+1", "$1,000"],
    "Size": ["19M", "201k", "1.5G", " 19 MB ", ".5M", "Varies with device", "VARIES WITH DEVICE",
             "NaN", "", " ", "N/A", "1,024k", "99999", "99G", "19b"],
    "Last Updated": ["January 7, 2018", "Jan 7 2018", "March-20-2025", "2018-01-07", "2018-1-7",
                     "2018-01-07T12:30", "2018-01-07 12:30:00.5", " sep 30, 2019 ", "Feb 28 1999",
                     "2261-12-31"],
    "Type": ["Free", "paid", " FREE "],
    "Category": ["GAME", " x ", "Ä" * 100],
    "Content Rating": ["Everyone", "", "  ", None],
    "App": [None, "", "x" * 200, " " * 300 + "x"],
}
# fmt: on


@pytest.mark.parametrize(("field", "value"), [(f, v) for f, vs in SPELLINGS.items() for v in vs])
def test_usual_spellings_are_allowed_and_accepted(field: str, value: Any) -> None:
    assert _accepted(field, value) and _allowed(field, value)


REFUSED = {
    "Reviews": ["", "-1", "1e400", "abc", "10000000001", "1e11", None],
    "Installs": ["lots", "-5", "1" * 13],
    "Price": ["-$1", "$5000.01", "5001"],
    "Size": ["huge", "1,000,000M", "101G", "-1M", "19.M"],
    "Last Updated": ["yesterday", "2018-02-30", "Feb 30 2018", "1600-01-01", "2018-13-01", None],
    "Type": ["Freemium", "", None],
    "Category": ["", "  ", "x" * 101, None],
    "App": ["x" * 201, 5],
}


@pytest.mark.parametrize(("field", "value"), [(f, v) for f, vs in REFUSED.items() for v in vs])
def test_refused_values_are_invalid_in_the_document(field: str, value: Any) -> None:
    assert not _accepted(field, value) and not _allowed(field, value)
