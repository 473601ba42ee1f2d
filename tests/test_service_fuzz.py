"""Bounded fuzzing of the live service with hostile inputs: never a 5xx, never a model error.

hypothesis builds requests from strategies aimed at what attackers tried: numbers that overflow
or are far out of range (as JSON numbers and as strings with units), request ids outside the
grammar (any Unicode in the body, any Latin-1/UTF-8 bytes in the header), JSON nested deeper
than the parser allows, wrong content types and arbitrary JSON. A few hundred requests in all;
each answer must be < 500 with a JSON body, and at the end /metrics must count no model error
(no hostile input reached the model) and the service log no traceback.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from prometheus_client.parser import text_string_to_metric_families

from lib.delivery.service_process import ServiceProcess
from tests.support.serving import MODEL, RAW_APP, TOKEN, Store, credentials_for

pytestmark = pytest.mark.e2e
PROJECT = Path(__file__).resolve().parents[1]
ADMIN = {"Authorization": f"Bearer {TOKEN}"}
FUZZ = settings(
    max_examples=150,
    deadline=None,
    database=None,
    phases=[Phase.generate],
    suppress_health_check=list(HealthCheck),
)


@pytest.fixture(scope="module")
def live(mlstore: Store, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path]]:
    tmp = tmp_path_factory.mktemp("fuzz")
    log = tmp / "service.log"
    service = ServiceProcess(
        PROJECT,
        MODEL,
        mlstore.uri,
        f"sqlite:///{tmp}/predictions.db",
        admin_token=TOKEN,
        log_path=log,
        extra_args=["--log-level", "INFO"],
    )
    with service:
        yield service.url, log
        service.check()


@pytest.fixture(scope="module")
def http(live: tuple[str, Path]) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=live[0], timeout=60) as session:
        yield session


# ------------------------------------------------------------------------------ strategies

digits = st.text("0123456789", min_size=1, max_size=400)
number_text = st.one_of(
    digits,
    st.builds(lambda d, u: d + u, digits, st.sampled_from(["", "k", "M", "G", "+", "e308"])),
    st.builds(lambda d: "$" + d, digits),
    st.builds(lambda d: "1" + "0" * d + "G", st.integers(300, 320)),
)
huge_number = st.one_of(
    st.floats(allow_nan=False, allow_infinity=False),
    st.floats(min_value=1e9, max_value=1.7e308),
    st.integers(min_value=-(10**400), max_value=10**400),
)
anything_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=50),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4)
    ),
    max_leaves=12,
)
hostile_value = st.one_of(
    huge_number,
    number_text,
    st.text(max_size=300),
    st.builds(lambda n: "x" * n, st.integers(60, 5000)),
    anything_json,
)
FIELDS = [
    "Reviews",
    "Installs",
    "Size",
    "size_mb",
    "Price",
    "Category",
    "Content Rating",
    "Type",
    "Last Updated",
    "App",
    "Genres",
    "Current Ver",
    "Android Ver",
]
hostile_app = st.builds(
    lambda changes: {**RAW_APP, **changes},
    st.dictionaries(st.sampled_from(FIELDS), hostile_value, min_size=1, max_size=3),
)
body_id = st.one_of(
    st.text(max_size=150),
    st.integers(min_value=-(10**200), max_value=10**200),
    st.sampled_from(["😀", "用户", "\u202eabc", "１２３", "a" * 129, "ok-id", "a\ud800b"]),
)
header_id = st.binary(max_size=150).map(
    lambda raw: bytes(b for b in raw if b == 9 or 32 <= b <= 126 or b >= 128).strip()
)
content_type = st.one_of(
    st.just("application/json"),
    st.sampled_from(
        [
            "text/plain",
            "application/x-www-form-urlencoded",
            "image/png",
            "application/json; charset=latin-1",
            "multipart/form-data; boundary=x",
            "application/json; charset=utf-8",
            "APPLICATION/JSON",
        ]
    ),
    st.text(st.characters(min_codepoint=33, max_codepoint=126), min_size=1, max_size=40),
)


def _deep(depth: int, opener: str) -> bytes:
    closer = {"[": "]", '{"a":': "}"}[opener]
    return (opener * depth + "1" + closer * depth).encode()


def _encode(value: Any) -> bytes:
    return json.dumps(value, ensure_ascii=True).encode()  # lone surrogates become \ud800


# one hostile part in an otherwise valid request: a value alone, or the id alone
one_number = st.builds(
    lambda field, value: {**RAW_APP, field: value},
    st.sampled_from(["Reviews", "Installs", "Size", "Price"]),
    st.one_of(huge_number, number_text),
)
predict_body = st.one_of(
    one_number.map(_encode),
    st.builds(lambda rid: _encode({**RAW_APP, "request_id": rid}), body_id),
    st.just(_encode(RAW_APP)),  # the header id or the content type is the hostile part
    hostile_app.map(_encode),
    st.builds(lambda app, rid: _encode({**app, "request_id": rid}), hostile_app, body_id),
    st.lists(hostile_app, min_size=1, max_size=5).map(_encode),
    st.builds(
        lambda apps, rid: _encode({"instances": apps, "request_id": rid}),
        st.lists(hostile_app, min_size=1, max_size=3),
        body_id,
    ),
    st.builds(_deep, st.integers(150, 20_000), st.sampled_from(["[", '{"a":'])),
    anything_json.map(_encode),
    st.binary(max_size=200),
)


# ---------------------------------------------------------------------------------- checks


def _check(response: httpx.Response) -> None:
    assert response.status_code < 500, (response.status_code, response.text[:300])
    if response.status_code >= 400:
        assert response.json()["detail"], response.text[:300]


def _model_errors(http: httpx.Client) -> float:
    text = http.get("/metrics").text
    return sum(
        sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == "model_request_errors_total"
    )


def test_fuzz_predict(http: httpx.Client, live: tuple[str, Path]) -> None:
    statuses = []

    @FUZZ
    @given(body=predict_body, rid=st.none() | header_id, ctype=st.none() | content_type)
    def fuzz(body: bytes, rid: bytes | None, ctype: str | None) -> None:
        headers: dict[str, Any] = {}
        if rid:
            headers["X-Request-ID"] = rid
        if ctype is not None:
            headers["Content-Type"] = ctype
        response = http.post("/predict", content=body, headers=headers)
        _check(response)
        statuses.append(response.status_code)

    fuzz()
    assert len(statuses) >= 100 and any(400 <= s < 500 for s in statuses)
    assert _model_errors(http) == 0  # no hostile input reached the model
    assert "Traceback" not in live[1].read_text(errors="replace")


def test_fuzz_feedback_and_admin(http: httpx.Client, live: tuple[str, Path]) -> None:
    seen = []
    feedback = st.one_of(
        st.builds(lambda r, v: {"request_id": r, "rating": v}, body_id, hostile_value),
        st.builds(lambda r, v: {"request_id": r, "label": v}, body_id, hostile_value),
        anything_json,
    )
    routing = st.one_of(
        st.fixed_dictionaries(
            {},
            optional={
                "canary_version": hostile_value
                | st.sampled_from(["latest", "champion", "999", "1.0", None]),
                "weight": hostile_value,
                "lease_seconds": hostile_value,
            },
        ),
        anything_json,
    )

    @FUZZ
    @given(
        path=st.sampled_from(["/feedback", "/admin/routing"]),
        feedback_body=feedback,
        routing_body=routing,
        deep=st.none() | st.integers(150, 20_000),
        ctype=st.none() | content_type,
    )
    def fuzz(path: str, feedback_body: Any, routing_body: Any, deep: Any, ctype: Any) -> None:
        body = (
            _deep(deep, "[")
            if deep
            else _encode(feedback_body if path == "/feedback" else routing_body)
        )
        headers = {**credentials_for(path), **({"Content-Type": ctype} if ctype else {})}
        method = "POST" if path == "/feedback" else "PUT"
        response = http.request(method, path, content=body, headers=headers)
        _check(response)
        seen.append(response.status_code)

    fuzz()
    assert len(seen) >= 100
    assert _model_errors(http) == 0
    assert "Traceback" not in live[1].read_text(errors="replace")
