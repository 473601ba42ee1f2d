"""ServiceProcess: a real `python -m lib.serving` on loopback, started, stopped, and crashed."""

from __future__ import annotations

import logging
import os
import signal
import time
from pathlib import Path

import httpx
import pytest

from lib.delivery.service_process import ServiceError, ServiceProcess
from tests.support.serving import MODEL, RAW_APP, TOKEN, Store

# A real `python -m lib.serving` process per test.
pytestmark = pytest.mark.component

PROJECT = Path(__file__).resolve().parents[1]


def _service(mlstore: Store, tmp_path: Path, **kwargs) -> ServiceProcess:  # noqa: F811
    return ServiceProcess(
        PROJECT,
        MODEL,
        mlstore.uri,
        f"sqlite:///{tmp_path}/predictions.db",
        admin_token=TOKEN,
        log_path=tmp_path / "service.log",
        **kwargs,
    )


def _group_exists(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True


def test_start_serve_stop_leaves_no_process(mlstore: Store, tmp_path: Path) -> None:  # noqa: F811
    service = _service(mlstore, tmp_path)
    with service:
        assert service.host == "127.0.0.1" and service.alive()
        pgid = service.proc.pid
        assert os.getpgid(pgid) == pgid  # a group of its own: stop() ends all of it
        health = httpx.get(f"{service.url}/health", timeout=10).json()
        assert health["ready"] is True and health["champion"]["version"] == "1"
        assert health["champion"]["source"] == "registry"
        answer = httpx.post(f"{service.url}/predict", json=RAW_APP, timeout=30)
        assert answer.status_code == 200 and answer.json()["model_version"] == "1"
        service.check()  # alive: nothing to report
    assert service.proc is None and not service.alive()
    assert service.exit_code in (0, -signal.SIGTERM) and service.crashed is False
    assert not _group_exists(pgid)
    with pytest.raises(httpx.HTTPError):
        httpx.get(f"{service.url}/health", timeout=2)


def test_a_crashed_service_is_reported(
    mlstore: Store,  # noqa: F811
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    service = _service(mlstore, tmp_path).start()
    pgid = service.proc.pid
    try:
        os.killpg(pgid, signal.SIGKILL)  # the process dies under the deployer's feet
        deadline = time.monotonic() + 30
        while service.alive() and time.monotonic() < deadline:
            time.sleep(0.05)
        with pytest.raises(ServiceError, match="exited with code -9"):
            service.check()
    finally:
        with caplog.at_level(logging.ERROR, logger="lib.delivery.service_process"):
            code = service.stop()
    assert code == -signal.SIGKILL and service.crashed is True
    assert any("had exited by itself with code -9" in r.getMessage() for r in caplog.records)
    assert not _group_exists(pgid)


def test_a_service_that_cannot_start_says_why(mlstore: Store, tmp_path: Path) -> None:  # noqa: F811
    service = _service(mlstore, tmp_path, extra_args=["--max-batch", "many"])
    with pytest.raises(ServiceError, match=r"(?s)exited with code 2.*invalid int value"):
        service.start(timeout=60)
    assert service.alive() is False
    service.stop()
    assert service.proc is None


def test_smoke_waits_until_the_instance_serves_the_version(tmp_path: Path) -> None:
    """A staging instance whose registry look-up outlasted its start-up answers /health without
    a model for a while; the smoke tests wait for the version instead of failing on a 503."""
    import json
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    answers = iter([None, None, None, {"version": "3"}, {"version": "7"}])

    class Health(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802
            champion = next(answers, {"version": "7"})
            body = json.dumps({"champion": champion}).encode()
            self.send_response(200 if champion else 503)
            self.send_header("Content-Type", "application/json")
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Health)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        service = ServiceProcess(tmp_path, MODEL, "sqlite:///x.db", "sqlite:///p.db")
        service.port = server.server_address[1]
        assert service.wait_serving("7", timeout=30) is True
        assert next(answers, "drained") == "drained"  # it polled through the 503s and v3
        assert service.wait_serving("8", timeout=1) is False  # never served: says so, no hang
    finally:
        server.shutdown()
        server.server_close()
