"""A local `mlflow server` process for the tests that need MLflow over HTTP."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from secrets import token_hex

import pytest


def free_port() -> int:
    """A loopback port nobody listens on now (the OS picks it, so parallel workers never clash)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def sqlalchemy_to_mlflow(url: str) -> str:
    """MLflow's own spelling of a PostgreSQL URL: it picks the driver from the scheme and this
    project has psycopg 3 (`postgresql+psycopg://`), not psycopg2 (MLflow's `postgresql://`)."""
    scheme, sep, rest = url.partition("://")
    return f"postgresql+psycopg://{rest}" if sep and scheme == "postgresql" else url


class MlflowServer:
    """`mlflow server --backend-store-uri sqlite:///mlflow.db ...` as the mission runs it, in its
    own process group on 127.0.0.1; stop() may be called any number of times.

    `backend` puts the tracking store elsewhere (a PostgreSQL URL from throwaway_postgres);
    artifacts are always proxied (`--serve-artifacts`: clients see `mlflow-artifacts:` URIs and
    up/download through the server) into `artifacts/` under `home`. `auth=(user, password)`
    runs MLflow's basic-auth app with that admin (its user table in `home`): every client
    request then needs the credentials (MLFLOW_TRACKING_USERNAME/PASSWORD)."""

    def __init__(
        self,
        home: Path,
        port: int | None = None,
        backend: str | None = None,
        auth: tuple[str, str] | None = None,
    ) -> None:
        self.home = home
        self.home.mkdir(parents=True, exist_ok=True)
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.backend = sqlalchemy_to_mlflow(backend) if backend else "sqlite:///mlflow.db"
        self.artifacts = self.home / "artifacts"
        self.auth = auth
        self.log = self.home / "server.log"
        self.proc: subprocess.Popen | None = None

    def log_tail(self, chars: int = 2000) -> str:
        return self.log.read_text(errors="replace")[-chars:] if self.log.exists() else ""

    def _auth_env(self) -> dict[str, str]:
        """MLflow's basic-auth config (MLFLOW_AUTH_CONFIG_PATH): the admin, no access without
        credentials, users kept in `home`, a good credential's check cached."""
        if self.auth is None:
            return {}
        user, password = self.auth
        ini = self.home / "basic_auth.ini"
        ini.write_text(
            "[mlflow]\n"
            "default_permission = NO_PERMISSIONS\n"
            f"database_uri = sqlite:///{self.home / 'basic_auth.db'}\n"
            f"admin_username = {user}\n"
            f"admin_password = {password}\n"
            "authorization_function = mlflow.server.auth:authenticate_request_basic_auth\n"
            # a good credential is checked once, then cached: without it every request pays a
            # scrypt hash (0.1 s of CPU), and a rollout makes thousands (replicas' registry
            # checks, the stages' logging); wrong or missing credentials are refused as before
            "auth_cache_ttl_seconds = 3600\n"
        )
        ini.chmod(0o600)
        # the auth app's CSRF protection wants a fixed key (one server here: any random one)
        return {
            "MLFLOW_AUTH_CONFIG_PATH": str(ini),
            "MLFLOW_FLASK_SERVER_SECRET_KEY": token_hex(16),
        }

    def start(self, timeout: float = 120) -> MlflowServer:
        mlflow_bin = Path(sys.executable).with_name("mlflow")
        app = ["--app-name", "basic-auth"] if self.auth else []
        # a file, not a pipe: a long test's access log would fill a pipe nobody reads and block
        # the server
        with self.log.open("ab") as log:
            self.proc = self._popen(mlflow_bin, app, log)
        return self._wait_healthy(timeout)

    def _popen(self, mlflow_bin: Path, app: list[str], log: object) -> subprocess.Popen:
        return subprocess.Popen(
            [
                str(mlflow_bin),
                "server",
                "--backend-store-uri",
                self.backend,
                "--artifacts-destination",
                self.artifacts.as_uri(),
                "--serve-artifacts",
                *app,
                "--host",
                "127.0.0.1",
                "--port",
                str(self.port),
                "--workers",
                "1",
            ],
            cwd=self.home,
            # no job runner: its eight worker processes (GenAI scorers) serve nothing here
            env={**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false", **self._auth_env()},
            stdout=subprocess.DEVNULL,
            stderr=log,
            start_new_session=True,
        )

    def _wait_healthy(self, timeout: float) -> MlflowServer:
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                pytest.fail(f"mlflow server exited: {self.log_tail()}")
            try:
                with urllib.request.urlopen(f"{self.url}/health", timeout=2) as resp:
                    if resp.status == 200:
                        return self
            except OSError:
                pass
            if time.monotonic() > deadline:
                self.stop()
                pytest.fail(f"mlflow server did not answer /health within {timeout:.0f} s")
            time.sleep(0.5)

    def stop(self, sig: int = signal.SIGTERM) -> None:
        """Stop the server's whole process group (SIGKILL simulates a crash)."""
        proc, self.proc = self.proc, None
        if proc is None:
            return
        try:
            os.killpg(proc.pid, sig)
            proc.wait(timeout=20)
        except ProcessLookupError:
            pass
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
        if proc.poll() is None:
            proc.wait()
        try:  # workers left behind by a SIGKILLed parent
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
