"""Shared fixtures: small generated data, real data location, an isolated project copy."""

from __future__ import annotations

import logging
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

# One OpenMP/BLAS thread per process, here and in every process a test starts (runner, kernels,
# services, MLflow server): the suite fills the 2 cores with 2 xdist workers, so a second thread
# finds no free core, and OpenMP's and OpenBLAS's threads spin at their barriers waiting for a
# descheduled partner (lib/pipeline/training.py one_openmp_thread: a boosting fit took 72 s with
# 2 threads against 2 s with one on a busy machine). A test that wants more sets its own.
for _threads in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_threads, "1")

import pytest  # noqa: E402
from fastapi.testclient import TestClient  # noqa: E402
from threadpoolctl import threadpool_limits  # noqa: E402

from lib.serving.app import create_app  # noqa: E402
from tests.support import deploy, notify, serving  # noqa: E402

threadpool_limits(limits=1)  # the libraries loaded before the variables above were set

PROJECT = Path(__file__).resolve().parents[1]
# ../shared/data/playstore beside the project; PLAYSTORE_DATA points elsewhere if needed.
SHARED_DATA = Path(os.environ.get("PLAYSTORE_DATA", PROJECT.parent / "shared/data/playstore"))
# every service a test starts takes labels with this token (tests/support/serving.py)
os.environ["SERVING_FEEDBACK_TOKEN"] = "test-feedback-token-5678"


def tmpfs_temp_root(environ: dict[str, str] = os.environ, shm: Path = Path("/dev/shm")) -> None:
    """tmp_path (projects, MLflow stores, prediction stores, PostgreSQL data) in memory when the
    machine has a writable /dev/shm with room: every SQLite commit there costs microseconds
    instead of a disk fsync (about 30 ms here), and MLflow's runs, tags, metrics and migrations
    are thousands of commits over a suite. What the tests check is the same on either; a run
    that sets PYTEST_DEBUG_TEMPROOT (pytest's own variable) or PYTEST_TMP_ON_DISK=1 keeps its
    choice. Read by pytest (and xdist's workers) when the first temporary folder is made."""
    if environ.get("PYTEST_DEBUG_TEMPROOT") or environ.get("PYTEST_TMP_ON_DISK") == "1":
        return
    try:
        room = shutil.disk_usage(shm).free
    except OSError:
        return
    if room >= 8 * 2**30 and os.access(shm, os.W_OK | os.X_OK):
        environ["PYTEST_DEBUG_TEMPROOT"] = str(shm)


tmpfs_temp_root()


def require_shared_data() -> Path:
    """The real Play Store files. On a developer machine without them the tests are skipped; in
    CI (CI=true) they must be there, so their absence fails instead of silently skipping, unless
    the run declares it by design with PLAYSTORE_DATA_ABSENT=<reason> (the GitHub pull-request
    job, where nothing provides them): then they skip with that reason."""
    if not SHARED_DATA.is_dir():
        message = f"real data not found at {SHARED_DATA} (set PLAYSTORE_DATA)"
        by_design = os.environ.get("PLAYSTORE_DATA_ABSENT", "").strip()
        if by_design:
            pytest.skip(f"{message}; absent by design: {by_design}")
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            pytest.fail(message)
        pytest.skip(message)
    return SHARED_DATA


@pytest.fixture(scope="session")
def shared_data() -> Path:
    return require_shared_data()


@pytest.fixture(autouse=True)
def no_inherited_mlflow_uri(monkeypatch: pytest.MonkeyPatch) -> None:
    """MLflow exports the URI it was last pointed at to the environment (mlflow.set_tracking_uri
    sets MLFLOW_TRACKING_URI): every test starts without it, so a run never lands in an earlier
    test's store. Tests that want a server set it themselves."""
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "")
    monkeypatch.delenv("MLFLOW_TRACKING_URI")
    monkeypatch.setenv("MLFLOW_REGISTRY_URI", "")
    monkeypatch.delenv("MLFLOW_REGISTRY_URI")


@pytest.fixture
def project(tmp_path: Path) -> Path:
    """A copy of the project's code in tmp_path: runs there never touch the real reports/models.

    (`no_inherited_mlflow_uri` keeps it on its own mlflow.db.)
    """
    root = tmp_path / "project"
    root.mkdir()
    for name in ("lib", "notebooks"):
        shutil.copytree(PROJECT / name, root / name, ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("runner.py", "pipeline.yaml"):
        shutil.copy2(PROJECT / name, root / name)
    for name in ("data", "models", "reports"):
        (root / name).mkdir()
    return root


TIERS = ("unit", "component", "e2e")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Exactly one tier per test: an unmarked test is `unit`; `component` and `e2e` are marked on
    the module (pytestmark) or the test. A test marked with two tiers fails the collection."""
    doubled = []
    for item in items:
        tiers = {mark.name for mark in item.iter_markers() if mark.name in TIERS}
        if len(tiers) > 1:
            doubled.append(f"{item.nodeid}: {', '.join(sorted(tiers))}")
        elif not tiers:
            item.add_marker(pytest.mark.unit)
    if doubled:
        raise pytest.UsageError(
            "tests with more than one tier (unit, component, e2e; mark exactly one):\n  "
            + "\n  ".join(doubled)
        )
    # The slowest tiers first (stable: a module's tests stay together): under xdist's worksteal,
    # the long end-to-end tests then start early and the cheap ones fill the gaps at the end,
    # instead of one worker finishing a 10-minute test alone.
    # Within the tier, the modules that take minutes go first (the production set-up alone takes
    # 5-11 minutes: started last, it ran alone at the end of .ci/run).
    rank = {"e2e": 0, "component": 1, "unit": 2}

    def order(item: pytest.Item) -> tuple[int, int]:
        tier = min(rank[m.name] for m in item.iter_markers() if m.name in rank)
        name = item.path.name
        return tier, LONGEST_FIRST.index(name) if name in LONGEST_FIRST else len(LONGEST_FIRST)

    items.sort(key=order)


# the modules whose tests take minutes, longest first (.ci/run's --durations)
LONGEST_FIRST = ("test_production_e2e.py", "test_notebooks.py", "test_judgement_e2e.py")


@pytest.fixture(autouse=True)
def no_leaked_log_filters() -> Iterator[None]:
    """`runner.main` run in-process installs the redacting log filter on the root logger and its
    handlers, pytest's long-lived ones included; the filter rewrites records in place, so the
    tests after it would see *** where they expect a log's words. Each test gets the filters it
    started with back."""
    root = logging.getLogger()
    before = [(each, list(each.filters)) for each in (root, *root.handlers)]
    yield
    for each, filters in before:
        each.filters[:] = filters


# --- fixtures shared by several test modules (their helpers are in tests/support/) ------------


@pytest.fixture(scope="session")
def mlstore(tmp_path_factory: pytest.TempPathFactory) -> Iterator[serving.Store]:
    """MLflow on SQLite in tmp: versions 1 and 2 of the service tests' model, champion -> 1.

    Built once per session (per worker under xdist) because the service tests only read it: a
    test that moves an alias does it in a copy (`own_store`)."""
    import mlflow

    yield serving.build_store(tmp_path_factory.mktemp("mlflow"))
    mlflow.set_tracking_uri(None)


@pytest.fixture
def own_store(mlstore: serving.Store, tmp_path: Path) -> str:
    """A private copy of the session's MLflow database (same artifacts, which nobody writes): a
    test that moves an alias moves it here, never in the shared store."""
    shutil.copy2(mlstore.root / "mlflow.db", tmp_path / "mlflow.db")
    return f"sqlite:///{tmp_path}/mlflow.db"


@pytest.fixture
def own_client(mlstore: serving.Store, own_store: str, tmp_path: Path) -> Iterator[TestClient]:
    """A model service (in process) on `own_store`."""
    settings = serving.serving_settings(mlstore, tmp_path, tracking_uri=own_store)
    with TestClient(create_app(settings)) as c:
        yield c


@pytest.fixture
def client(mlstore: serving.Store, tmp_path: Path) -> Iterator[TestClient]:
    """A model service (in process) on `mlstore`, with its own prediction store."""
    with TestClient(create_app(serving.serving_settings(mlstore, tmp_path))) as c:
        yield c


@pytest.fixture(scope="session")
def champion_world_template(tmp_path_factory: pytest.TempPathFactory) -> deploy.World:
    """The progressive-deployment tests' starting point (a store with a promoted v1), built once
    per session; tests get a copy (`world`), never this one."""
    root = tmp_path_factory.mktemp("world-template") / "project"
    with pytest.MonkeyPatch.context() as mp:
        root.mkdir()
        mp.chdir(root)
        mp.setenv("SERVING_ADMIN_TOKEN", deploy.TOKEN)
        return deploy.champion_world(root)


@pytest.fixture
def world(
    champion_world_template: deploy.World, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[deploy.World]:
    """A private project with an MLflow store, champion v1, held-out apps (a copy of the
    template), as the working directory."""
    import mlflow

    root = tmp_path / "project"
    monkeypatch.setenv("SERVING_ADMIN_TOKEN", deploy.TOKEN)
    monkeypatch.setenv("PYTHONPATH", str(PROJECT))
    w = deploy.copy_world(champion_world_template, root)
    monkeypatch.chdir(root)
    yield w
    mlflow.set_tracking_uri(None)


@pytest.fixture
def http_sink() -> Iterator[notify.HttpSink]:
    """A webhook server on 127.0.0.1 that answers 200 and records every request."""
    sink, thread = notify.start_sink()
    yield sink
    notify.stop_sink(sink, thread)


@pytest.fixture
def smtp_sink() -> Iterator[notify.SmtpSink]:
    """An SMTP server on 127.0.0.1 that wants AUTH (PLAIN/LOGIN, allowed without TLS here)."""
    with notify.serve_smtp() as sink:
        yield sink


# --- CPU time per test (PYTEST_CPU_PROFILE=<file>) -------------------------------------------


def _cpu_seconds() -> float:
    """User + system CPU of this process and of its waited-for children (kernels, servers and
    services a test starts count once they have been reaped)."""
    import resource

    own = resource.getrusage(resource.RUSAGE_SELF)
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(item: pytest.Item, nextitem: pytest.Item | None) -> Iterator[None]:
    """With PYTEST_CPU_PROFILE=<file>, append `<cpu seconds>\\t<node id>` per test (set-up, call
    and tear-down; a session fixture counts on the first test that uses it): the suite is
    CPU-bound on 2 cores, so CPU time, not the noisy wall clock, says where the time goes."""
    target = os.environ.get("PYTEST_CPU_PROFILE")
    if not target:
        yield
        return
    start = _cpu_seconds()
    yield
    with open(target, "a", encoding="utf-8") as out:
        out.write(f"{_cpu_seconds() - start:.1f}\t{item.nodeid}\n")
