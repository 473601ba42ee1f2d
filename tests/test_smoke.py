"""lib.delivery.smoke against a small stand-in service over real HTTP.

The stand-in answers like lib.serving does (the /health and /predict shapes the smoke checks
read); each test breaks one thing and checks that exactly that check fails, with why.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from lib.delivery.smoke import run_smoke_tests

# Every test binds a local HTTP server on a thread (a socket).
pytestmark = pytest.mark.component

CHECKS = ["model_loaded", "known_rows", "response_schema", "bad_input_422", "latency"]


@dataclass
class Behaviour:
    """What the stand-in does; the defaults are a healthy service of version 7."""

    version: str = "7"
    flip_label_of: str | None = None  # the app whose label is wrong
    accept_bad_input: bool = False
    drop_field: str | None = None  # left out of single-row answers
    delay_s: float = 0.0


def label_of(body: dict[str, Any]) -> int:
    """The stand-in model: popular apps are good."""
    return int(float(body["installs"]) >= 1000)


def make_handler(behaviour: Behaviour) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args: Any) -> None:  # keep the test output quiet
            pass

        def reply(self, status: int, payload: Any) -> None:
            data = json.dumps(payload).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self) -> None:
            if self.path == "/health":
                self.reply(200, {"status": "ok", "champion": {"version": behaviour.version}})
            else:
                self.reply(404, {"detail": "not found"})

        def answer(self, body: dict[str, Any]) -> dict[str, Any]:
            label = label_of(body)
            if body.get("app") == behaviour.flip_label_of:
                label = 1 - label
            return {
                "request_id": "r-1",
                "label": label,
                "probability": 0.9 if label else 0.1,
                "model_version": behaviour.version,
                "variant": "champion",
            }

        def do_POST(self) -> None:
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            time.sleep(behaviour.delay_s)
            rows = body["instances"] if "instances" in body else [body]
            for row in rows:
                try:
                    float(row["installs"])
                except ValueError:
                    if not behaviour.accept_bad_input:
                        self.reply(422, {"detail": [{"loc": ["installs"], "msg": "not a number"}]})
                        return
                    row["installs"] = 0
            if "instances" in body:
                self.reply(200, {"predictions": [self.answer(r) for r in rows]})
                return
            answer = self.answer(body)
            answer.pop(behaviour.drop_field or "", None)
            self.reply(200, answer)

    return Handler


@pytest.fixture
def service() -> Iterator[tuple[str, Behaviour]]:
    behaviour = Behaviour()
    server = ThreadingHTTPServer(("127.0.0.1", 0), make_handler(behaviour))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/", behaviour
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


KNOWN = [
    ({"app": "Popular", "installs": 50_000}, 1),
    ({"app": "Obscure", "installs": 10}, 0),
]


def smoke(url: str, **kwargs: Any):
    kwargs.setdefault("latency_requests", 4)
    return run_smoke_tests(url, "7", KNOWN, **kwargs)


def failed(result) -> list[str]:
    return [c.name for c in result.checks if not c.passed]


def test_a_healthy_service_passes_every_check(service) -> None:
    url, _ = service
    result = smoke(url)
    assert result.passed, result.failures
    assert [c.name for c in result.checks] == CHECKS
    assert result.to_dict()["passed"] is True
    assert "2/2 known rows" in result.checks[1].message


def test_a_service_with_another_version_fails_the_version_checks(service) -> None:
    url, behaviour = service
    behaviour.version = "6"
    result = smoke(url)
    assert not result.passed
    assert failed(result) == ["model_loaded", "known_rows"]
    assert "serving version 6 (expected 7)" in result.failures[0]


def test_a_wrong_label_on_a_known_row_fails_known_rows_only(service) -> None:
    url, behaviour = service
    behaviour.flip_label_of = "Obscure"
    result = smoke(url)
    assert failed(result) == ["known_rows"]
    assert "1/2 known rows gave the offline label" in result.failures[0]


def test_a_service_accepting_bad_input_fails_the_422_check(service) -> None:
    url, behaviour = service
    behaviour.accept_bad_input = True
    result = smoke(url)
    assert failed(result) == ["bad_input_422"]
    assert "HTTP 200" in result.failures[0]


def test_an_answer_missing_a_documented_field_fails_the_schema_check(service) -> None:
    url, behaviour = service
    behaviour.drop_field = "model_version"
    result = smoke(url)
    assert failed(result) == ["response_schema"]
    assert "model_version missing" in result.failures[0]


def test_a_slow_service_fails_the_latency_check(service) -> None:
    url, behaviour = service
    behaviour.delay_s = 0.05
    result = smoke(url, max_p95_ms=20.0, latency_requests=3)
    assert failed(result) == ["latency"]
    assert "over 3 single-row requests (bound 20 ms)" in result.failures[0]


def test_an_unreachable_service_fails_every_check_without_raising() -> None:
    with ThreadingHTTPServer(("127.0.0.1", 0), BaseHTTPRequestHandler) as probe:
        port = probe.server_address[1]  # a port that was free; nothing listens once closed
    result = run_smoke_tests(f"http://127.0.0.1:{port}", "7", KNOWN, timeout=2.0)
    assert not result.passed
    assert failed(result) == CHECKS
    assert all("Error" in c.message for c in result.checks), result.failures
