"""A real nginx in front of service replicas on loopback, for the tests and bench/serving.py.

nginx runs in the foreground (`daemon off`) in its own process group with every path (pid,
logs, temporary files) in a private folder, so several can run at once and nothing is left
behind. Its upstream is the replicas' ports, round robin with keep-alive connections; a replica
that refuses connections is taken out for `fail_timeout` and the request goes to the next one
(nginx retries a POST only when it could not be sent: a request a replica received is never
answered twice). Without nginx: skip with the reason, except in CI (CI=true), where .ci/run
installs it and its absence fails.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

from lib.delivery.service_process import free_port

NGINX_CANDIDATES = ("/usr/sbin/nginx", "/usr/local/sbin/nginx", "/usr/local/nginx/sbin/nginx")


def nginx_binary() -> str | None:
    found = shutil.which("nginx")
    if found:
        return found
    return next((path for path in NGINX_CANDIDATES if os.access(path, os.X_OK)), None)


def require_nginx() -> str:
    """nginx's path, or skip (fail in CI) with the reason."""
    found = nginx_binary()
    if found is None:
        message = "nginx not found (apt-get install nginx; .ci/run installs it)"
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            pytest.fail(message)
        pytest.skip(message)
    return found


def nginx_config(folder: Path, port: int, upstreams: list[int], workers: str = "1") -> str:
    """The whole nginx.conf: one upstream of the replicas' loopback ports, one server."""
    servers = "\n".join(
        f"        server 127.0.0.1:{p} max_fails=1 fail_timeout=2s;" for p in upstreams
    )
    temp = "\n".join(
        f"    {kind}_temp_path {folder / kind};"
        for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
    )
    user = "user root;\n" if os.geteuid() == 0 else ""  # its workers write our folder
    return f"""{user}worker_processes {workers};
daemon off;
pid {folder / "nginx.pid"};
error_log {folder / "error.log"} warn;
events {{ worker_connections 4096; }}
http {{
    access_log off;
{temp}
    upstream replicas {{
{servers}
        keepalive 128;
    }}
    server {{
        listen 127.0.0.1:{port};
        client_max_body_size 21m;
        location / {{
            proxy_pass http://replicas;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header Host $host;
            proxy_connect_timeout 2s;
            proxy_read_timeout 120s;
        }}
    }}
}}
"""


class Nginx:
    """`nginx -c <folder>/nginx.conf` on a free loopback port; `stop()` may be called any
    number of times; `upstreams()` rewrites the replica list and reloads without a restart."""

    def __init__(self, upstreams: list[int], workers: str = "1") -> None:
        self.binary = require_nginx()
        self.folder = Path(tempfile.mkdtemp(prefix="nginx-"))
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.workers = workers
        self.proc: subprocess.Popen | None = None
        self._write(upstreams)

    def _write(self, upstreams: list[int]) -> None:
        self.config = self.folder / "nginx.conf"
        self.config.write_text(nginx_config(self.folder, self.port, upstreams, self.workers))
        check = subprocess.run(
            [self.binary, "-t", "-q", "-c", str(self.config), "-p", str(self.folder)],
            capture_output=True, text=True, timeout=30,
        )  # fmt: skip
        if check.returncode != 0:
            raise RuntimeError(f"nginx refused its configuration: {check.stderr.strip()}")

    def start(self, timeout: float = 30) -> Nginx:
        self.proc = subprocess.Popen(
            [self.binary, "-c", str(self.config), "-p", str(self.folder)],
            stdout=subprocess.DEVNULL,
            stderr=open(self.folder / "stderr.log", "wb"),  # noqa: SIM115 (closed by the child)
            start_new_session=True,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"nginx exited at start: {self.log()}")
            with socket.socket() as probe:
                if probe.connect_ex(("127.0.0.1", self.port)) == 0:
                    return self
            time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"nginx did not listen on {self.port} within {timeout:g} s")

    def upstreams(self, ports: list[int]) -> None:
        """Point the load balancer at these replicas (SIGHUP: new workers, no dropped port)."""
        self._write(ports)
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGHUP)
            time.sleep(0.5)  # the old workers finish their requests and exit

    def log(self) -> str:
        parts = [p.read_text(errors="replace") for p in
                 (self.folder / "error.log", self.folder / "stderr.log") if p.exists()]  # fmt: skip
        return "\n".join(parts)[-2000:]

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is not None and proc.poll() is None:
            try:
                os.killpg(proc.pid, signal.SIGQUIT)  # graceful: finish the requests in flight
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=10)
            except ProcessLookupError:
                pass
        shutil.rmtree(self.folder, ignore_errors=True)

    def __enter__(self) -> Nginx:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
