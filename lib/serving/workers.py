"""`serve --workers N`: N replica processes on one machine behind one port.

A supervisor binds the public port once and hands that listening socket to N worker processes
(the kernel gives each new connection to one of them, and a connection waiting in the queue is
not lost when a worker dies, as it would be with one SO_REUSEPORT socket per worker). Worker i
also listens on its own port (public port + 1 + i), so each replica's /health and /metrics can
be read directly. A worker that dies (kill -9 included) is started again on the same sockets;
SIGTERM or SIGINT to the supervisor stops every worker gracefully (uvicorn's shutdown: the
prediction store is flushed). Each worker is a replica: SERVING_REPLICA_ID
`<host>-<port>-w<i>`, the routing shared through the prediction store's database.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import signal
import socket
import time
from multiprocessing.process import BaseProcess
from typing import Any

from lib.serving.settings import ServingSettings

logger = logging.getLogger(__name__)

STOP_SECONDS = 40.0  # a worker's graceful shutdown (uvicorn's 30 s and the store's flush)
RESTART_PAUSE_SECONDS = 1.0  # at most one restart a second per worker (a crash loop)


def worker_port(port: int, index: int) -> int:
    """Worker `index`'s own port (its /health and /metrics)."""
    return port + 1 + index


def worker_replica_id(port: int, index: int) -> str:
    return f"{socket.gethostname()}-{port}-w{index}"


def listening_socket(host: str, port: int) -> socket.socket:
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(2048)
    sock.set_inheritable(True)
    return sock


def _die_with_parent() -> None:
    """Linux: SIGTERM this worker when the supervisor dies, even by SIGKILL."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def run_worker(
    settings: ServingSettings, sockets: list[socket.socket], replica: str, log_level: str
) -> None:
    """One worker process: a replica named `replica` serving on `sockets`."""
    _die_with_parent()
    os.environ["SERVING_REPLICA_ID"] = replica  # before the service reads it
    logging.basicConfig(
        level=log_level.upper(),
        format=f"%(asctime)s %(levelname)s [{replica}] %(name)s: %(message)s",
    )
    from lib.serving.app import serve

    serve(settings, sockets=sockets)


class Supervisor:
    """Start N workers, restart the ones that die, stop them all on SIGTERM/SIGINT."""

    def __init__(self, settings: ServingSettings, host: str, port: int, workers: int) -> None:
        self.settings, self.host, self.port, self.workers = settings, host, port, workers
        self.public = listening_socket(host, port)
        self.own = [listening_socket(host, worker_port(port, i)) for i in range(workers)]
        self.context = multiprocessing.get_context("spawn")  # no state forked from this one
        self.processes: list[BaseProcess] = []
        self.started: list[float] = []
        self.stopping = False
        self.log_level = logging.getLevelName(logging.getLogger().getEffectiveLevel())

    def _start(self, index: int) -> BaseProcess:
        replica = worker_replica_id(self.port, index)
        process = self.context.Process(
            target=run_worker,
            args=(self.settings, [self.public, self.own[index]], replica, self.log_level),
            name=replica,
            daemon=False,
        )
        process.start()
        logger.info("worker %s: pid %s, own port %d", replica, process.pid,
                    worker_port(self.port, index))  # fmt: skip
        return process

    def _stop_signal(self, signum: int, _frame: Any) -> None:
        self.stopping = True

    def run(self) -> None:
        """Until SIGTERM or SIGINT: keep N workers running; then stop them gracefully."""
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, self._stop_signal)
        self.processes = [self._start(i) for i in range(self.workers)]
        self.started = [time.monotonic()] * self.workers
        logger.warning(
            "%d workers on http://%s:%d (own ports %d-%d)", self.workers, self.host, self.port,
            worker_port(self.port, 0), worker_port(self.port, self.workers - 1),
        )  # fmt: skip
        try:
            while not self.stopping:
                time.sleep(0.2)
                self._restart_dead()
        finally:
            self.stop()

    def _restart_dead(self) -> None:
        for index, process in enumerate(self.processes):
            if self.stopping or process.is_alive():
                continue
            if time.monotonic() - self.started[index] < RESTART_PAUSE_SECONDS:
                continue
            logger.warning("worker %s exited (code %s): starting it again", process.name,
                           process.exitcode)  # fmt: skip
            self.processes[index] = self._start(index)
            self.started[index] = time.monotonic()

    def stop(self) -> None:
        for process in self.processes:
            if process.is_alive():
                process.terminate()  # SIGTERM: uvicorn's graceful shutdown
        deadline = time.monotonic() + STOP_SECONDS
        for process in self.processes:
            process.join(max(0.1, deadline - time.monotonic()))
            if process.is_alive():
                logger.error("worker %s did not stop in time: killed", process.name)
                process.kill()
                process.join()
        for sock in (self.public, *self.own):
            sock.close()


def serve_workers(settings: ServingSettings, host: str, port: int, workers: int) -> None:
    """`serve --workers N`: N > 1 replica processes (see the module doc); 1 is `app.serve`."""
    if workers <= 1:
        from lib.serving.app import serve

        serve(settings, host, port)
        return
    if port == 0:
        raise ValueError("--workers > 1 needs a fixed --port (the workers' own ports follow it)")
    Supervisor(settings, host, port, workers).run()
