"""The tests' nginx (tests/support/load_balancer.py) spreads requests over the replicas and
skips one that is down, without answering a request twice."""

from __future__ import annotations

import threading
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import pytest

from tests.support.load_balancer import Nginx, nginx_config

pytestmark = pytest.mark.component


class _Replica(ThreadingHTTPServer):
    def __init__(self, name: str) -> None:
        self.name = name
        self.posts = 0

        class Handler(BaseHTTPRequestHandler):
            def do_POST(handler) -> None:  # noqa: N805
                length = int(handler.headers.get("Content-Length") or 0)
                handler.rfile.read(length)
                self.posts += 1
                body = name.encode()
                handler.send_response(200)
                handler.send_header("Content-Length", str(len(body)))
                handler.end_headers()
                handler.wfile.write(body)

            def log_message(handler, *args: object) -> None:  # noqa: N805
                pass

        super().__init__(("127.0.0.1", 0), Handler)
        self.port = self.server_address[1]
        threading.Thread(target=self.serve_forever, daemon=True).start()


def test_the_configuration_names_every_replica_and_keeps_its_files_in_its_folder(tmp_path):
    text = nginx_config(tmp_path, 8000, [9001, 9002, 9003])
    assert text.count("server 127.0.0.1:900") == 3
    assert "listen 127.0.0.1:8000;" in text and "daemon off;" in text
    for line in text.splitlines():
        if "_path " in line or line.startswith(("pid", "error_log")):
            assert str(tmp_path) in line


def test_requests_are_spread_and_a_dead_replica_is_skipped() -> None:
    replicas = [_Replica("a"), _Replica("b")]
    with Nginx([r.port for r in replicas]) as lb:
        seen = Counter(httpx.post(lb.url + "/predict", content=b"{}").text for _ in range(40))
        assert set(seen) == {"a", "b"}
        replicas[0].shutdown()
        replicas[0].server_close()
        before = replicas[1].posts
        answers = [httpx.post(lb.url + "/predict", content=b"{}") for _ in range(20)]
        assert [a.status_code for a in answers] == [200] * 20
        assert {a.text for a in answers} == {"b"}
        assert replicas[1].posts - before == 20  # each request answered once, by b
    assert lb.proc is None and not lb.folder.exists()
    replicas[1].shutdown()
    replicas[1].server_close()
