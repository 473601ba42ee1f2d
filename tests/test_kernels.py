"""The kernel pool: fresh kernels only, run in the project root, warmed up, never left behind."""

from __future__ import annotations

import importlib.util
import json
import os
import sys
import threading
import time
from pathlib import Path
from typing import Any

import nbformat
import psutil
import pytest

import runner
from lib.config import PipelineConfig
from lib.errors import StageError
from lib.pipeline import kernels
from lib.pipeline.kernels import KernelPool, PooledKernelManager
from tests.support.notebooks import stub_notebook

# Real Jupyter kernels (and one runner.py subprocess).
pytestmark = pytest.mark.component

LIGHT = ("decimal", "email.mime.text", "xml.dom.minidom")  # quick to import, rarely preloaded
PROBE = (
    "import json, os, sys\n"
    "print(json.dumps({'cwd': os.getcwd(), 'pid': os.getpid(),\n"
    "                  'modules': [m for m in %r if m in sys.modules],\n"
    "                  'names': sorted(k for k in globals() if not k.startswith('_'))}))\n"
)


def pid_of(km: PooledKernelManager) -> int:
    return km.provisioner.process.pid


def gone(pids: list[int], kms: list[PooledKernelManager], timeout: float = 15.0) -> bool:
    """True once no kernel process is left (psutil when installed, else the managers)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        alive = [p for p in pids if psutil.pid_exists(p)
                 and psutil.Process(p).status() != psutil.STATUS_ZOMBIE]  # fmt: skip
        if not alive:
            return True
        time.sleep(0.1)
    return False


def own_kernels() -> list[int]:
    """Kernel processes started by this (test) process, found by their JPY_PARENT_PID."""
    return kernels_of(os.getpid())


def kernels_of(parent: int) -> list[int]:
    """Kernel processes whose JPY_PARENT_PID is `parent`."""
    found = []
    for proc in psutil.process_iter(["cmdline"]):
        try:
            if "ipykernel_launcher" in " ".join(proc.info["cmdline"] or []) and proc.environ().get(
                "JPY_PARENT_PID"
            ) == str(parent):
                found.append(proc.pid)
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            pass
    return found


def probe_notebook(path: Path, modules: tuple[str, ...] = LIGHT) -> Path:
    book = nbformat.v4.new_notebook()
    book.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3",
                                   "language": "python"}  # fmt: skip
    book.cells = [nbformat.v4.new_code_cell(PROBE % (modules,)),
                  nbformat.v4.new_code_cell("marker = 1")]  # fmt: skip
    nbformat.write(book, path)
    return path


def run_probe(km: PooledKernelManager, tmp_path: Path, name: str) -> tuple[dict[str, Any], Any]:
    """Execute the probe notebook in `km` through papermill, as the runner does."""
    import papermill

    source = probe_notebook(tmp_path / f"{name}_in.ipynb")
    target = tmp_path / f"{name}_out.ipynb"
    papermill.execute_notebook(str(source), str(target), kernel_name="python3",
                               progress_bar=False, km=km)  # fmt: skip
    book = nbformat.read(target, as_version=4)
    return json.loads(book.cells[0].outputs[0]["text"]), book


@pytest.fixture
def root(tmp_path: Path) -> Path:
    """A directory standing for the project root, away from the test's working directory."""
    path = tmp_path / "project root"  # a space: paths are passed as they are
    path.mkdir()
    return path


def test_default_warm_modules_exist() -> None:
    missing = [m for m in kernels.WARM_MODULES if importlib.util.find_spec(m) is None]
    assert not missing, f"WARM_MODULES names modules this environment lacks: {missing}"
    compile(kernels.warm_code(), "<warm-up>", "exec")


@pytest.mark.skipif(not hasattr(os, "setpriority"), reason="no per-thread nice here")
def test_warm_up_imports_at_the_lowest_priority_and_leaves_the_caller_s(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "warm_probe.py").write_text(
        "import os, threading\nNICE = os.getpriority(os.PRIO_PROCESS, threading.get_native_id())\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "warm_probe", raising=False)
    before = os.getpriority(os.PRIO_PROCESS, threading.get_native_id())
    exec(kernels.warm_code(("warm_probe", "no_such_module_here")), {})
    assert sys.modules["warm_probe"].NICE == 19  # imported, at the lowest priority
    assert os.getpriority(os.PRIO_PROCESS, threading.get_native_id()) == before


@pytest.mark.parametrize("transport", ["ipc", "tcp"])
def test_pool_starts_kernels_ahead_and_close_leaves_none(root: Path, transport: str) -> None:
    pool = KernelPool(cwd=root, total=3)
    if transport == "ipc" and pool.transport != "ipc":
        pytest.skip("no IPC transport here")
    pool.transport = transport
    try:
        km = pool.acquire()
        assert km.has_kernel and pool.started == 2  # the one handed out and the next one
        started = [km, pool.ahead[0][0]]
        pids = [pid_of(k) for k in started]
        assert all(k.has_kernel for k in started)
    finally:
        pool.close()
    assert gone(pids, started), "kernel processes left after close()"
    assert not any(Path(k.connection_file).exists() for k in started if k.connection_file)
    with pytest.raises(RuntimeError, match="closed"):
        pool.acquire()


def test_handed_out_kernel_runs_in_root_warmed_and_clean(
    root: Path, tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    with KernelPool(cwd=root, code=kernels.warm_code(LIGHT), total=2) as pool:
        pool.release(pool.acquire())  # the first kernel is started cold; the next one is warm
        km = pool.acquire()
        seen, book = run_probe(km, tmp_path, "warm")
        assert km.has_kernel, "nbclient must leave a kernel it does not own running"
        pool.release(km)
    assert gone([seen["pid"]], [km])
    assert Path(seen["cwd"]).resolve() == root.resolve()
    assert seen["modules"] == list(LIGHT)
    # the warm-up left nothing a cold kernel would not have: no names, no history, no output
    cold = {"In", "Out", "exit", "get_ipython", "open", "quit", "json", "os", "sys"}  # with probe's
    assert set(seen["names"]) <= cold, f"names left by the warm-up: {set(seen['names']) - cold}"
    counts = [c.execution_count for c in book.cells]
    assert counts == [1, 2], f"the warm-up shifted the execution counts: {counts}"
    assert [o["output_type"] for o in book.cells[0].outputs] == ["stream"]
    if pool.transport == "ipc":
        assert "without encryption" not in capfd.readouterr().err


def test_consecutive_kernels_are_never_the_same(root: Path, tmp_path: Path) -> None:
    with KernelPool(cwd=root, total=2) as pool:
        first = pool.acquire()
        seen_first, _ = run_probe(first, tmp_path, "first")
        pool.release(first)
        second = pool.acquire()
        seen_second, _ = run_probe(second, tmp_path, "second")
        pool.release(second)
    assert second is not first and second.kernel_id != first.kernel_id
    assert seen_second["pid"] != seen_first["pid"]
    assert "marker" not in seen_second["names"]  # nothing of the first stage's state


def test_errors_and_interrupts_shut_every_kernel_down(root: Path) -> None:
    for error in (RuntimeError, KeyboardInterrupt):
        with pytest.raises(error), KernelPool(cwd=root, total=3) as pool:
            km = pool.acquire()
            started = [km, pool.ahead[0][0]]
            pids = [pid_of(k) for k in started]
            raise error("stage interrupted")
        assert len(started) == 2
        assert gone(pids, started), f"kernels left after {error.__name__}"


def test_a_kernel_that_dies_while_starting_is_reported_and_reaped(root: Path) -> None:
    """The executor then lets papermill start a kernel of its own (the test after the next)."""
    with KernelPool(cwd=root, code="import os\nos._exit(3)\n", total=2) as pool:
        pool.release(pool.acquire())  # the first kernel starts without the warm-up
        dying = pool.ahead[0][0]
        dying_pid = pid_of(dying)
        with pytest.raises(RuntimeError, match="died"):
            pool.acquire()
    assert gone([dying_pid], [dying])
    assert own_kernels() == []


def test_close_waits_for_released_kernels(root: Path) -> None:
    pool = KernelPool(cwd=root, total=1)
    km = pool.acquire()
    pid = pid_of(km)
    pool.release(km)
    pool.close()  # waits for the kernel that was asked to shut down
    assert gone([pid], [km], timeout=0.5)


# -- the runner with the pool ----------------------------------------------------------------


@pytest.fixture
def small_project(project: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Path, PipelineConfig]:
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    cfg = PipelineConfig(synth_apps=300)
    return project, cfg


def spy_pools(monkeypatch: pytest.MonkeyPatch) -> list[KernelPool]:
    pools: list[KernelPool] = []

    class SpyPool(KernelPool):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            pools.append(self)

    monkeypatch.setattr(kernels, "KernelPool", SpyPool)
    return pools


def detect_glues(should_train: bool, reason: str) -> str:
    """A stub 01 detect's body: every output its contract declares."""
    values = {"new_apps": 0, "updated_apps": 0, "total_apps": 10, "should_train": should_train,
              "reason": reason, "quarantined_rows": 0}  # fmt: skip
    return "".join(f"scraps.glue({k!r}, {v!r})\n" for k, v in values.items())


def test_no_training_shuts_the_prestarted_kernel_down(
    small_project: tuple[Path, PipelineConfig], monkeypatch: pytest.MonkeyPatch
) -> None:
    project, cfg = small_project
    stub_notebook(project, "detect", detect_glues(False, "stub: nothing new"))
    pools = spy_pools(monkeypatch)
    result = runner.run(cfg, project, force=False, run_id="notrain")
    assert result.outcome == "no_training" and [s.name for s in result.stages] == ["detect"]
    assert pools[0].started == 2, "the train kernel should have been started during detect"
    assert own_kernels() == []


def test_failing_stage_keeps_its_record_and_leaves_no_kernel(
    small_project: tuple[Path, PipelineConfig], monkeypatch: pytest.MonkeyPatch
) -> None:
    project, cfg = small_project
    stub_notebook(project, "detect", detect_glues(True, "stub: train"))
    stub_notebook(project, "train", 'raise RuntimeError("boom in train")\n')
    pools = spy_pools(monkeypatch)
    with pytest.raises(StageError, match="stage train failed: .*boom in train") as caught:
        runner.run(cfg, project, force=True, run_id="fails")
    result = caught.value.result  # type: ignore[attr-defined]
    assert result.exit_code == 1 and result.outcome == "failed"
    failed = result.stages[-1]
    assert failed.name == "train" and failed.status == "failed"
    assert Path(failed.notebook).exists() and failed.html and Path(failed.html).exists()
    assert pools[0].started == 3  # detect's, train's, and compare's started ahead
    assert own_kernels() == []


def test_runner_without_pool_still_works(
    small_project: tuple[Path, PipelineConfig], monkeypatch: pytest.MonkeyPatch
) -> None:
    project, cfg = small_project
    stub_notebook(project, "detect", detect_glues(False, "stub"))
    pools = spy_pools(monkeypatch)
    result = runner.run(cfg, project, run_id="cold", kernel_pool=False)
    assert result.outcome == "no_training" and result.stages[0].outputs.reason == "stub"
    assert pools == []


def test_a_pool_that_cannot_hand_out_a_kernel_lets_papermill_start_one(
    small_project: tuple[Path, PipelineConfig], monkeypatch: pytest.MonkeyPatch
) -> None:
    project, cfg = small_project
    stub_notebook(project, "detect", detect_glues(False, "stub: fallback"))

    def dead(self: KernelPool) -> None:
        raise RuntimeError("kernel died while starting")

    monkeypatch.setattr(KernelPool, "acquire", dead)
    result = runner.run(cfg, project, run_id="fallback")
    assert result.outcome == "no_training"
    assert result.stages[0].outputs.reason == "stub: fallback"
    assert own_kernels() == []


def test_sigterm_stops_the_runner_its_kernels_and_writes_its_record(
    small_project: tuple[Path, PipelineConfig],
) -> None:
    """What CI cancellation does: SIGTERM to `runner.py` mid-stage. The runner exits (143), shuts
    down the running and the pre-started kernels, and leaves the run's record so far."""
    import signal
    import subprocess
    import sys

    project, _ = small_project
    stub_notebook(project, "detect", detect_glues(True, "stub: train"))
    stub_notebook(project, "train", "import time\ntime.sleep(600)\n")
    proc = subprocess.Popen(
        [sys.executable, "runner.py", "--set", "synth_apps=300", "--run-id", "cancelled"],
        cwd=project, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 240
        while not (project / "reports" / "cancelled" / "report.json").exists():
            assert proc.poll() is None and time.monotonic() < deadline, proc.stdout.read()
            time.sleep(0.5)
        started = kernels_of(proc.pid)
        assert started, "the train kernel (and the next ones) should be running"
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 143, out
    assert "stopped by SIGTERM" in out
    assert gone(started, [], timeout=30), "kernels left behind after SIGTERM"
    report = json.loads((project / "reports" / "cancelled" / "report.json").read_text())
    assert report["outcome"] == "cancelled"
    assert [s["name"] for s in report["stages"]] == ["detect"]  # what finished before the signal
