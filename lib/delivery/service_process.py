"""Start and stop model-service processes (production or staging) on loopback: a process
group each, SIGTERM then SIGKILL, so no uvicorn outlives a failed stage or a test."""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from lib import settings

log = logging.getLogger(__name__)


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def _die_with_parent() -> None:
    """Linux: SIGTERM this child when the process that started it dies, even by SIGKILL."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except OSError:
        pass


def _kill_group(pgid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError):  # the group is gone already
        os.killpg(pgid, sig)


class ServiceError(RuntimeError):
    """The service did not come up (with what it printed)."""


class ServiceProcess:
    """One `python -m lib.serving` process; a context manager that always stops it."""

    def __init__(
        self,
        root: Path,
        model_name: str,
        tracking_uri: str,
        store_url: str,
        champion_alias: str = "champion",
        admin_token: str | None = None,
        log_path: Path | None = None,
        extra_args: list[str] | None = None,
        models_dir: Path | None = None,
        feedback_token: str | None = None,
    ) -> None:
        self.root = Path(root)
        # models/production/ serves the champion when the registry is down at start-up
        self.models_dir = Path(models_dir or settings.models_dir(self.root))
        self.host = "127.0.0.1"
        self.port = free_port(self.host)
        options = {
            "host": self.host, "port": self.port, "model-name": model_name,
            "tracking-uri": tracking_uri, "store-url": store_url,
            "champion-alias": champion_alias, "models-dir": self.models_dir, "log-level": "WARNING",
        }  # fmt: skip
        flags = [a for k, v in options.items() for a in (f"--{k}", str(v))]
        self.args = [sys.executable, "-m", "lib.serving", *flags, *(extra_args or [])]
        self.admin_token, self.feedback_token = admin_token, feedback_token
        self.log_path = log_path
        self.proc: subprocess.Popen | None = None
        self.exit_code: int | None = None  # set by stop(); negative: killed by that signal
        self.crashed = False  # stop() found it had already exited on its own

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self, timeout: float = 90.0) -> ServiceProcess:
        env = dict(os.environ)
        if self.admin_token:
            env["SERVING_ADMIN_TOKEN"] = self.admin_token
        if self.feedback_token:
            env["SERVING_FEEDBACK_TOKEN"] = self.feedback_token
        out: Any = subprocess.DEVNULL
        if self.log_path is not None:
            self.log_path.parent.mkdir(parents=True, exist_ok=True)
            out = self.log_path.open("ab")
        self.proc = subprocess.Popen(
            self.args,
            cwd=self.root,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            preexec_fn=_die_with_parent,  # an instance started for a stage ends with it
        )
        self.wait_ready(timeout)
        log.info("service up at %s (pid %d)", self.url, self.proc.pid)
        return self

    def _poll_health(self, timeout: float, answered: Callable[[Any], bool]) -> bool:
        """Poll /health until `answered(response)` or `timeout`; a crash raises ServiceError."""
        import httpx

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.check()
            with contextlib.suppress(httpx.HTTPError, ValueError, AttributeError):
                if answered(httpx.get(f"{self.url}/health", timeout=2)):
                    return True
            time.sleep(0.3)
        return False

    def wait_ready(self, timeout: float) -> None:
        if self._poll_health(timeout, lambda resp: resp.status_code in (200, 503)):
            return
        self.stop()
        raise ServiceError(f"service did not answer /health within {timeout:.0f} s{self._tail()}")

    def wait_serving(self, version: str, timeout: float) -> bool:
        """Wait until /health names `version`: a registry slower than the service's bounded
        start-up look-up loads the model a little later, and a smoke test must not race it."""

        def serves(resp: Any) -> bool:
            return str((resp.json().get("champion") or {}).get("version")) == str(version)

        return self._poll_health(timeout, serves)

    def _tail(self) -> str:
        if self.log_path is None or not self.log_path.exists():
            return ""
        return ": " + self.log_path.read_text(errors="replace")[-800:].strip()

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def check(self) -> None:
        """Raise ServiceError if the process exited on its own (a crash), with its log's tail."""
        if self.proc is not None and self.proc.poll() is not None:
            raise ServiceError(
                f"service at {self.url} exited with code {self.proc.returncode}{self._tail()}"
            )

    def stop(self, timeout: float = 15.0) -> int | None:
        """SIGTERM the process group, SIGKILL it after `timeout`; the exit code (None: none ran).
        A process that had exited already is logged as an error (`crashed`)."""
        if self.proc is None:
            return self.exit_code
        proc, pgid = self.proc, self.proc.pid
        if proc.poll() is not None:
            self.crashed = True
            log.error("service at %s had exited by itself with code %s%s", self.url,
                      proc.returncode, self._tail())  # fmt: skip
        else:
            _kill_group(pgid, signal.SIGTERM)
            try:
                proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                _kill_group(pgid, signal.SIGKILL)
                proc.wait()
        _kill_group(pgid, signal.SIGKILL)  # anything the leader left behind
        self.exit_code = proc.returncode
        self.proc = None
        return self.exit_code

    def __enter__(self) -> ServiceProcess:
        return self.start() if self.proc is None else self

    def __exit__(self, *exc: object) -> None:
        self.stop()
