"""Pre-started, pre-warmed Jupyter kernels for the runner: one fresh kernel per stage.

A stage run the naive way pays a kernel start and the imports of pandas, scikit-learn and MLflow
before its first useful line (seconds each). The pool starts the *next* stage's kernel while the
current stage runs and imports the heavy modules in it, so that cost overlaps real work. The
warm-up can run at idle CPU priority: on a small machine it must use idle cores, not slow down
the stage that is running.

Rules it keeps: every kernel is handed out once and shut down after its stage (no state crosses
stages); the warm-up binds no names, records no history and bumps no execution count, so the
executed notebook looks exactly as if the kernel had been started cold; the kernel's cwd is the
project root (the notebooks find ROOT from it); every kernel it started is shut down on release,
on `close()`, on errors and at interpreter exit. Papermill hands a given `km=` to nbclient, which
uses it as is: nbclient neither starts it (it already has a kernel) nor shuts it down (it does
not own it), so shutting down is the pool's job.
"""

from __future__ import annotations

import atexit
import logging
import os
import queue
import shutil
import tempfile
import time
from collections import deque
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from jupyter_client.manager import AsyncKernelManager
from jupyter_core.utils import run_sync

log = logging.getLogger(__name__)

# What lib/ and the notebooks import, directly or on first use (MLflow's SQL stores, the model
# flavours, git for the run's source tags): importing them is most of a cold stage's fixed cost.
WARM_MODULES: tuple[str, ...] = (
    "mlflow",
    "mlflow.models",
    "mlflow.pyfunc",
    "mlflow.sklearn",
    "mlflow.store.tracking.sqlalchemy_store",
    "mlflow.store.model_registry.sqlalchemy_store",
    "sqlalchemy.dialects.sqlite",
    "git",
    "sklearn.compose",
    "sklearn.ensemble",
    "sklearn.impute",
    "sklearn.inspection",
    "sklearn.linear_model",
    "sklearn.metrics",
    "sklearn.model_selection",
    "sklearn.pipeline",
    "sklearn.preprocessing",
    "pandas",
    "pandera.pandas",
    "pandera.backends.pandas.register",
    "matplotlib.pyplot",
    "matplotlib.backends.backend_agg",
    "scrapbook",
    "skops.io",
    "yaml",
)


def import_code(modules: Sequence[str] = WARM_MODULES) -> str:
    """Import statements for `modules`; one that fails is skipped (the notebook will say why)."""
    return (
        f"import importlib\nfor name in {tuple(modules)!r}:\n"
        "    try:\n        importlib.import_module(name)\n    except Exception:\n        pass\n"
    )


DEFAULT_WARM_CODE = import_code()


# Runs the warm-up code in a thread of its own. With IDLE, that thread is SCHED_IDLE (Linux: per
# thread): it gets only CPU nobody else wants. On 2 cores, warm-ups at normal priority, and even
# at nice 19, slow the training stage's OpenMP loops 2-6x; SCHED_IDLE ones do not measurably. The
# BLAS libraries start their thread pools on import and threads inherit their creator's policy,
# so those are imported first, in the kernel's main thread. An error is re-raised there, so the
# reply says so.
_WRAPPER = """\
import os, sys, threading
try:
    import numpy, scipy.linalg
except ImportError:
    pass
errors = []
def warm():
    try:
        if IDLE and hasattr(os, "SCHED_IDLE"):
            try:
                os.sched_setscheduler(threading.get_native_id(), os.SCHED_IDLE, os.sched_param(0))
            except OSError:
                pass
        exec(compile(CODE, "<kernel warm-up>", "exec"), {"__name__": "__warmup__"})
    except BaseException as exc:
        errors.append(exc)
thread = threading.Thread(target=warm, name="kernel-warm-up", daemon=True)
thread.start()
thread.join()
if errors:
    raise errors[0]
"""


def private(code: str, idle: bool = True) -> str:
    """`code` wrapped to run in a throw-away namespace, in a thread (SCHED_IDLE if `idle`).

    The notebook's namespace stays as a cold kernel's; the wrapper is an expression statement
    whose value is None, so nothing is displayed and `_`/`Out` stay untouched.
    """
    env = f"{{'__name__': '__warmup__', 'CODE': {code!r}, 'IDLE': {bool(idle)}}}"
    return f"exec(compile({_WRAPPER!r}, '<kernel warm-up>', 'exec'), {env})"


def _cpu_sample(pid: int | None) -> tuple[float, float] | None:
    """(now, CPU seconds used so far by the process, all threads) from /proc; None elsewhere."""
    if pid is None:
        return None
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return time.monotonic(), (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return None


class PooledKernelManager(AsyncKernelManager):
    """A kernel manager that remembers its clients, so the pool can close nbclient's too."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.pool_clients: list[Any] = []

    def client(self, **kwargs: Any) -> Any:
        kc = super().client(**kwargs)
        self.pool_clients.append(kc)
        return kc

    def close_clients(self) -> None:
        """Stop every client's channels: nbclient leaves them open on a kernel it does not own."""
        while self.pool_clients:
            try:
                self.pool_clients.pop().stop_channels()
            except Exception as exc:  # best effort: the kernel is going away anyway
                log.debug("stopping a kernel client: %s", exc)


def ipc_available() -> bool:
    """IPC (Unix sockets) avoids TCP ports and ipykernel's "TCP without encryption" warning."""
    import zmq

    return os.name == "posix" and bool(zmq.has("ipc"))


@dataclass
class _Starting:
    """A kernel launched ahead of need, with the id of its warm-up (or kernel_info) request."""

    km: PooledKernelManager
    kc: Any
    msg_id: str
    idle: bool = False  # the warm-up runs at idle priority


class _Starved(Exception):
    """A kernel's idle-priority warm-up makes no progress while a stage waits for it."""


class KernelPool:
    """Hands out fresh kernels, keeping `ahead` of them started (and warming up) in advance.

    `total` is how many kernels the caller will ask for (e.g. the number of stages): the pool
    starts none in advance beyond it. None: no limit. `ahead` and `idle` may change between two
    `acquire` calls (the runner warms only one kernel, at full priority, while detect runs).
    """

    def __init__(
        self,
        kernel_name: str = "python3",
        cwd: str | Path | None = None,
        warm_code: str | None = DEFAULT_WARM_CODE,
        total: int | None = None,
        ahead: int = 1,
        idle: bool = True,
        transport: str | None = None,
        startup_timeout: float = 120.0,
        exit_grace: float = 1.0,
    ) -> None:
        self.kernel_name = kernel_name
        self.cwd = str(Path(cwd or os.getcwd()).resolve())
        self.warm_code = warm_code
        self.remaining = total  # kernels still to be handed out
        self.ahead = ahead
        # warm up, and let released kernels exit, in idle CPU time only (SCHED_IDLE, Linux)
        self.idle = idle
        self.transport = transport or ("ipc" if ipc_available() else "tcp")
        self.startup_timeout = startup_timeout
        # close() gives a released kernel this long to exit before SIGTERM, then SIGKILL: by then
        # it has answered the shutdown request and run its exit handlers, and what is left is
        # ~1.5 s of interpreter teardown after the last stage, which nobody needs
        self.exit_grace = exit_grace
        self.started = 0  # kernels launched so far (tests, bench)
        self._pending: deque[_Starting] = deque()  # started in advance, oldest first
        self._out: list[PooledKernelManager] = []  # handed out, not yet released
        self._stopping: list[PooledKernelManager] = []  # asked to shut down, maybe still exiting
        self._ipc_dir: str | None = None
        self._closed = False
        atexit.register(self._cleanup)  # last resort, e.g. a second Ctrl-C during close()

    # -- public API ------------------------------------------------------------------------

    def prestart(self) -> None:
        """Launch kernels and queue their warm-up until `ahead` are waiting; does not block."""
        self._check_open()
        limit = self.ahead if self.remaining is None else min(self.ahead, self.remaining)
        while len(self._pending) < limit:
            self._pending.append(self._start(warm=True))

    def acquire(self, prestart_next: bool = True) -> PooledKernelManager:
        """A running kernel nobody else has used; then launches the next one if `prestart_next`.

        Waits for the kernel started ahead (and its warm-up). With none started ahead it starts
        one without warm-up: importing modules the notebook may not need would not overlap
        anything. The caller must `release` it (or `close` the pool).
        """
        self._check_open()
        self._reap()
        starting = self._pending.popleft() if self._pending else self._start(warm=False)
        try:
            km = self._ready(starting)
        except _Starved:  # a busy machine: importing in the notebook, at normal priority, is faster
            log.info("warm-up starved of CPU; starting a kernel without it")
            km = self._ready(self._start(warm=False))
        except RuntimeError as exc:  # died at start: an IPC socket it could not bind, maybe
            if self.transport != "ipc":
                raise
            log.warning("kernel over IPC did not start (%s); falling back to TCP", exc)
            self.transport = "tcp"
            km = self._ready(self._start(warm=False))
        self._out.append(km)
        if self.remaining is not None:
            self.remaining -= 1
        if prestart_next:
            self.prestart()
        return km

    def release(self, km: PooledKernelManager) -> None:
        """Ask a handed-out kernel to shut down; it is never handed out again.

        Does not wait for the process to exit (a kernel that imported MLflow takes ~1.5 s to
        exit): it is reaped later, and `close` waits for it, escalating to SIGTERM/SIGKILL.
        """
        if km in self._out:
            self._out.remove(km)
        km.close_clients()
        try:
            if km.has_kernel:
                run_sync(km.request_shutdown)()
                self._stopping.append(km)
                if self._pending or self.remaining != 0:  # its exit must not slow the next stage
                    self._lower_priority(km)
                return
        except Exception as exc:
            log.warning("shutdown request to kernel %s failed: %s", km.kernel_id, exc)
        self._shutdown(km, now=True)

    @contextmanager
    def kernel(self, prestart_next: bool = True) -> Iterator[PooledKernelManager]:
        """`acquire` + `release`, whatever happens in between."""
        km = self.acquire(prestart_next)
        try:
            yield km
        finally:
            self.release(km)

    def close(self) -> None:
        """Shut down every kernel of the pool and wait until their processes are gone.

        Kernels started ahead or still handed out are killed; released ones get their normal
        grace period. Safe to call twice; also runs at interpreter exit.
        """
        self._closed = True
        self._cleanup()
        atexit.unregister(self._cleanup)

    def __enter__(self) -> KernelPool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- internals -------------------------------------------------------------------------

    def _cleanup(self) -> None:
        while self._pending:
            self._shutdown(self._pending.popleft().km, now=True)
        while self._out:
            self._shutdown(self._out.pop(), now=True)
        while self._stopping:
            self._finish(self._stopping.pop(), self.exit_grace)
        if self._ipc_dir:
            shutil.rmtree(self._ipc_dir, ignore_errors=True)

    def _check_open(self) -> None:
        if self._closed:
            raise RuntimeError("the kernel pool is closed")

    def _start(self, warm: bool) -> _Starting:
        """Launch a kernel process and send its first request; does not wait for either.

        ZeroMQ queues the request until the kernel binds its sockets, and the kernel runs it
        before anything the notebook's client sends, so "ready" means "warmed up".
        """
        km = PooledKernelManager(kernel_name=self.kernel_name, transport=self.transport)
        if self.transport == "ipc":
            if self._ipc_dir is None:  # short and private: socket paths are limited to ~100 bytes
                self._ipc_dir = tempfile.mkdtemp(prefix="kpool-")
            km.ip = os.path.join(self._ipc_dir, f"k{self.started}")
        self.started += 1
        try:
            run_sync(km.start_kernel)(
                cwd=self.cwd,
                # what nbclient passes when it starts a kernel itself: no history database
                extra_arguments=["--HistoryManager.hist_file=:memory:"],
            )
            kc = km.client()
            kc.start_channels(iopub=False, stdin=False, hb=False, control=False)
            idle = warm and self.idle
            if warm and self.warm_code:
                code = private(self.warm_code, idle)
                msg_id = kc.execute(code, silent=True, store_history=False, allow_stdin=False)
            else:
                msg_id = kc.kernel_info()
        except BaseException:
            self._shutdown(km, now=True)
            raise
        return _Starting(km, kc, msg_id, idle)

    def _ready(self, starting: _Starting) -> PooledKernelManager:
        """Block until the kernel has answered its first request; kill it if it never does.

        An idle-priority warm-up that gets under a quarter of a core while we wait for it is
        abandoned (`_Starved`): other processes keep the CPUs busy, and it could take minutes.
        """
        km, kc = starting.km, starting.kc
        process = getattr(km.provisioner, "process", None)
        pid = process.pid if process is not None else None
        try:
            get_reply, is_alive = run_sync(kc.get_shell_msg), run_sync(km.is_alive)
            deadline = time.monotonic() + self.startup_timeout
            last = _cpu_sample(pid) if starting.idle else None
            while True:
                if time.monotonic() > deadline:
                    raise TimeoutError(f"kernel not ready after {self.startup_timeout:.0f}s")
                try:
                    reply = get_reply(timeout=1.0)
                except queue.Empty:
                    if not is_alive():
                        raise RuntimeError("kernel died while starting") from None
                    sample = _cpu_sample(pid) if last else None
                    if last and sample and sample[1] - last[1] < 0.25 * (sample[0] - last[0]):
                        raise _Starved() from None
                    last = sample
                    continue
                if reply.get("parent_header", {}).get("msg_id") == starting.msg_id:
                    break
            content = reply.get("content", {})
            if content.get("status", "ok") != "ok":
                log.warning("kernel warm-up failed: %s: %s", content.get("ename"),
                            content.get("evalue"))  # fmt: skip
        except BaseException:
            self._shutdown(km, now=True)
            raise
        km.close_clients()  # the notebook gets its own client from km.client()
        return km

    def _lower_priority(self, km: PooledKernelManager) -> None:
        """SCHED_IDLE for the main thread of an exiting kernel (its interpreter teardown)."""
        process = getattr(km.provisioner, "process", None)
        if self.idle and process is not None and hasattr(os, "SCHED_IDLE"):
            try:
                os.sched_setscheduler(process.pid, os.SCHED_IDLE, os.sched_param(0))
            except OSError:  # gone already, or not allowed: it only costs some CPU
                pass

    def _reap(self) -> None:
        """Free the files of released kernels that have exited; never waits."""
        for km in list(self._stopping):
            process = getattr(km.provisioner, "process", None)
            if process is None or process.poll() is not None:
                self._stopping.remove(km)
                self._finish(km)

    def _finish(self, km: PooledKernelManager, waittime: float | None = None) -> None:
        """Wait for a kernel asked to shut down (SIGTERM, then SIGKILL if it lingers); free it."""
        try:
            if km.has_kernel:
                run_sync(km.finish_shutdown)(waittime=waittime)
            run_sync(km.cleanup_resources)()
        except Exception as exc:
            log.warning("kernel %s did not stop cleanly: %s", km.kernel_id, exc)
            self._shutdown(km, now=True)

    def _shutdown(self, km: PooledKernelManager, now: bool) -> None:
        """Stop the kernel process and free its files; never raises (used on error paths)."""
        km.close_clients()
        try:
            if km.has_kernel:
                run_sync(km.shutdown_kernel)(now=now)
            else:
                run_sync(km.cleanup_resources)()
        except Exception as exc:
            log.warning("could not shut down kernel %s cleanly: %s", km.kernel_id, exc)
            process = getattr(km.provisioner, "process", None)
            if process is not None and process.poll() is None:
                process.kill()
