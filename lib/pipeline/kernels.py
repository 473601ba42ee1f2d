"""The next stage's Jupyter kernel, started while the current stage runs.

A cold kernel costs its start and the imports of pandas, scikit-learn and MLflow (seconds of CPU)
before a notebook's first line. `KernelPool` starts the first two kernels at once (the first
without the imports: 01 detect needs few) and one ahead after that, running the imports silently
in a throw-away namespace (the executed notebook looks as if its kernel had started cold). Each
kernel is handed out once, runs in the project root, and is shut down by the pool (nbclient
neither starts nor stops a kernel given as `km=`) after its stage, on `close()` and at exit.
"""

from __future__ import annotations

import atexit
import logging
import os
import queue
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import zmq
from jupyter_client.manager import AsyncKernelManager
from jupyter_core.utils import run_sync

log = logging.getLogger(__name__)

# What lib/ and the notebooks import, directly or on first use: most of a cold stage's fixed cost.
WARM_MODULES: tuple[str, ...] = (
    "mlflow", "mlflow.models", "mlflow.pyfunc", "mlflow.sklearn",
    "mlflow.store.tracking.sqlalchemy_store", "mlflow.store.model_registry.sqlalchemy_store",
    "sqlalchemy.dialects.sqlite", "git", "sklearn.compose", "sklearn.ensemble", "sklearn.impute",
    "sklearn.inspection", "sklearn.linear_model", "sklearn.metrics", "sklearn.model_selection",
    "sklearn.pipeline", "sklearn.preprocessing", "pandas", "pandera.pandas",
    "pandera.backends.pandas.register", "matplotlib.pyplot", "matplotlib.backends.backend_agg",
    "scrapbook", "skops.io", "yaml",
)  # fmt: skip


def warm_code(modules: tuple[str, ...] = WARM_MODULES) -> str:
    """One statement importing `modules` in its own namespace; a module that fails is skipped.

    The imports run in a thread at the lowest CPU priority (on Linux nice is per thread), so a
    kernel warming up takes only the CPU the running stage leaves, and the kernel's own threads,
    which later run the notebook, keep theirs (raising it back would need privileges).
    """
    body = (
        "import importlib, os, threading\n"
        "def warm():\n"
        "    try:\n        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 19)\n"
        "    except (AttributeError, OSError):\n        pass\n"
        f"    for m in {modules!r}:\n"
        "        try:\n            importlib.import_module(m)\n"
        "        except Exception:\n            pass\n"
        "thread = threading.Thread(target=warm, daemon=True)\nthread.start()\nthread.join()\n"
    )
    return f"exec({body!r}, {{}})"  # an expression statement worth None: nothing is displayed


class PooledKernelManager(AsyncKernelManager):
    """A kernel manager that remembers its clients, so that nbclient's are closed too."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.pool_clients: list[Any] = []

    def client(self, **kwargs: Any) -> Any:
        kc = super().client(**kwargs)
        self.pool_clients.append(kc)
        return kc

    def close_clients(self) -> None:
        while self.pool_clients:
            self.pool_clients.pop().stop_channels()


class KernelPool:
    """Hands out fresh kernels, one started (and warming up) ahead, `total` at most."""

    def __init__(
        self, cwd: str | Path, total: int, code: str | None = None, timeout: float = 120.0
    ) -> None:
        self.cwd = str(Path(cwd).resolve())
        self.remaining, self.timeout = total, timeout
        self.code = warm_code() if code is None else code
        self.started = 0  # kernels launched so far
        self.ahead: list[tuple[PooledKernelManager, Any, str]] = []  # started, in hand-out order
        self._out: list[PooledKernelManager] = []  # handed out, not released yet
        self._stopping: list[PooledKernelManager] = []  # released, maybe still exiting
        # IPC where there is one: no TCP ports, no "connection without encryption" warning
        self.transport = "ipc" if zmq.has("ipc") else "tcp"
        self._ipc = tempfile.mkdtemp(prefix="kpool-")  # short: socket paths are ~100 bytes max
        self._closed = False
        atexit.register(self.close)
        try:  # a kernel that does not start now is started (or reported) by `acquire`
            for code in ("", self.code)[: min(total, 2)]:
                self.ahead.append(self._start(code))
        except Exception as exc:
            log.warning("could not start a kernel ahead: %s", exc)

    def acquire(self) -> PooledKernelManager:
        """A running kernel nobody has used (the next one started ahead, once warm); then
        starts the next. Raises if it does not start: the caller lets papermill start one."""
        if self._closed:
            raise RuntimeError("the kernel pool is closed")
        km, kc, msg_id = self.ahead.pop(0) if self.ahead else self._start("")
        try:  # the reply to its first request: the kernel is up and has run the warm-up
            deadline = time.monotonic() + self.timeout
            while True:
                try:
                    if run_sync(kc.get_shell_msg)(timeout=1)["parent_header"]["msg_id"] == msg_id:
                        break
                except queue.Empty:
                    if not run_sync(km.is_alive)():
                        raise RuntimeError("kernel died while starting") from None
                if time.monotonic() > deadline:
                    raise TimeoutError(f"kernel not ready after {self.timeout:.0f}s")
        except BaseException:
            self._stop(km, now=True)
            raise
        km.close_clients()  # the notebook gets its own client
        self._out.append(km)
        self.remaining -= 1
        if self.remaining > 0 and not self.ahead:
            self.ahead.append(self._start(self.code))
        return km

    def release(self, km: PooledKernelManager) -> None:
        """Ask `km` to shut down without waiting for it to exit (`close` does)."""
        if km in self._out:
            self._out.remove(km)
        km.close_clients()
        try:
            run_sync(km.request_shutdown)()
            self._stopping.append(km)
        except Exception as exc:
            log.warning("kernel %s did not take the shutdown request: %s", km.kernel_id, exc)
            self._stop(km, now=True)

    def close(self) -> None:
        """Shut down every kernel of the pool and wait until their processes are gone."""
        self._closed = True
        self._out += [km for km, _, _ in self.ahead]
        self.ahead.clear()
        while self._out:  # started ahead, or a stage interrupted: killed
            self._stop(self._out.pop(), now=True)
        while self._stopping:
            self._stop(self._stopping.pop(), now=False)
        shutil.rmtree(self._ipc, ignore_errors=True)
        atexit.unregister(self.close)

    def __enter__(self) -> KernelPool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _start(self, code: str) -> tuple[PooledKernelManager, Any, str]:
        """Launch a kernel in the project root and queue its first request; does not wait."""
        km = PooledKernelManager(kernel_name="python3", transport=self.transport)
        if self.transport == "ipc":
            km.ip = os.path.join(self._ipc, f"k{self.started}")
        self.started += 1
        try:  # no history database, as when nbclient starts a kernel itself
            run_sync(km.start_kernel)(
                cwd=self.cwd, extra_arguments=["--HistoryManager.hist_file=:memory:"]
            )
            kc = km.client()
            kc.start_channels(iopub=False, stdin=False, hb=False, control=False)
            if code:
                return km, kc, kc.execute(code, silent=True, store_history=False)
            return km, kc, kc.kernel_info()
        except BaseException:
            self._stop(km, now=True)
            raise

    def _stop(self, km: PooledKernelManager, now: bool) -> None:
        """Stop the kernel (a released one gets a second to exit) and free its files."""
        try:
            km.close_clients()
            if km.has_kernel and not now:
                run_sync(km.finish_shutdown)(waittime=1.0)
                run_sync(km.cleanup_resources)()
            elif km.has_kernel:
                run_sync(km.shutdown_kernel)(now=True)
            else:
                run_sync(km.cleanup_resources)()
        except Exception as exc:
            log.warning("kernel %s did not stop cleanly: %s", km.kernel_id, exc)
