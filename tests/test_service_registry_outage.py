"""The model service starts during a registry outage (issue 15, part 3).

What must hold: start-up gives up on the registry after a bounded time and the port opens; the
champion alias is served from models/production (its recorded version), and /health says where
the champion came from and that the registry has not confirmed it; no copy, or one that cannot
be trusted, is a 503 naming the reason, never a crash; a staging instance never falls back;
when the registry answers again the service follows it by itself (the same version is
confirmed, another one is loaded). Also: /health lists a canary only while it takes traffic.
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import socket
import time
from pathlib import Path
from typing import Any

import httpx
import mlflow
import pytest
from fastapi.testclient import TestClient

from lib import registry
from lib.delivery.service_process import ServiceProcess, free_port
from lib.errors import RegistryUnavailable
from lib.pipeline import data, training
from lib.serving import routing
from lib.serving.app import create_app
from lib.serving.settings import ServingSettings
from tests.support.mlflow_server import MlflowServer
from tests.support.serving import MODEL, RAW_APP, TOKEN, Store

PROJECT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def copies(mlstore: Store, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:  # noqa: F811
    """models/production/ as promotions write it, for versions 1 and 2 (copied per test)."""
    root = tmp_path_factory.mktemp("copies")
    return {
        version: registry.save_local_copy(
            mlstore.pipelines[version],
            root / f"v{version}",
            {"model_name": MODEL, "version": version, "reason": "test"},
        )
        for version in ("1", "2")
    }


def _models_dir(tmp_path: Path, copies: dict[str, Path], version: str | None) -> Path:
    models = tmp_path / "models"
    models.mkdir()
    if version is not None:
        shutil.copytree(copies[version], models / "production")
    return models


def _settings(tmp_path: Path, models: Path, uri: str, **overrides: Any) -> ServingSettings:
    values: dict[str, Any] = dict(
        model_name=MODEL,
        tracking_uri=uri,
        store_url=f"sqlite:///{tmp_path}/predictions.db",
        admin_token=TOKEN,
        lease_check_seconds=0.05,
        registry_check_seconds=0,
        models_dir=models,
    )
    values.update(overrides)
    return ServingSettings(**values)


@pytest.fixture
def refused_uri(monkeypatch: pytest.MonkeyPatch) -> str:
    """An MLflow server URI on a loopback port nobody listens on; no HTTP retries (the bound on
    a registry that does not answer at all is test_a_hung_registry_...)."""
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    return f"http://127.0.0.1:{free_port()}"


def _wait_for(condition: Any, what: str, seconds: float = 60.0) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"still waiting for {what}")
        time.sleep(0.05)


# ---------------------------------------------------------------------------- start-up


@pytest.mark.component
def test_registry_down_at_start_serves_the_production_copy(
    tmp_path: Path, copies: dict[str, Path], refused_uri: str
) -> None:
    models = _models_dir(tmp_path, copies, "2")
    with TestClient(create_app(_settings(tmp_path, models, refused_uri))) as c:
        health = c.get("/health").json()
        assert health["status"] == "ok" and health["ready"] is True
        assert health["champion"] == {
            "version": "2",
            "source": "models/production",
            "confirmed_by_registry": False,
        }
        assert "serving v2 from models/production" in health["warning"]
        assert "has not confirmed it" in health["warning"]
        assert health["registry"]["reachable"] is False
        answer = c.post("/predict", json=RAW_APP)
        assert answer.status_code == 200, answer.text
        assert (answer.json()["model_version"], answer.json()["variant"]) == ("2", "champion")


@pytest.mark.component
def test_a_hung_registry_is_given_up_after_the_start_bound(
    tmp_path: Path, copies: dict[str, Path], caplog: pytest.LogCaptureFixture
) -> None:
    """A server that accepts connections and never answers: MLflow's retries alone would wait
    (timeout x retries); start-up stops waiting at registry_start_seconds."""
    models = _models_dir(tmp_path, copies, "1")
    with socket.socket() as hung:
        hung.bind(("127.0.0.1", 0))
        hung.listen(16)  # never accepted: the request gets no answer
        uri = f"http://127.0.0.1:{hung.getsockname()[1]}"
        settings = _settings(tmp_path, models, uri, registry_start_seconds=1)
        with caplog.at_level(logging.WARNING, logger="lib.serving.routing"):
            with TestClient(create_app(settings)) as c:
                health = c.get("/health").json()
                assert health["ready"] is True
                assert health["champion"]["source"] == "models/production"
                assert health["registry"]["error"] == "registry unreachable (RegistryUnavailable)"
                assert c.post("/predict", json=RAW_APP).json()["model_version"] == "1"
    assert "no answer within 1 s" in caplog.text


def _no_version(production: Path) -> None:
    meta = json.loads((production / "deployment.json").read_text())
    del meta["version"]
    (production / "deployment.json").write_text(json.dumps(meta))


def _unreadable(production: Path) -> None:
    (production / "deployment.json").write_text("{not json")


def _other_model(production: Path) -> None:
    meta = json.loads((production / "deployment.json").read_text())
    (production / "deployment.json").write_text(json.dumps({**meta, "model_name": "other"}))


def _broken_model(production: Path) -> None:
    (production / "model.skops").write_bytes(b"not a skops file")


@pytest.mark.component
@pytest.mark.parametrize(
    "damage, reason",
    [
        (None, "models/production holds no model"),
        (_no_version, "models/production/deployment.json names no version"),
        (_unreadable, "models/production/deployment.json is missing or unreadable"),
        (_other_model, "models/production holds model 'other', not 'svc-model'"),
        (_broken_model, "models/production (v1) could not be loaded (BadZipFile"),
    ],
)
def test_no_usable_copy_is_a_503_with_the_reason(
    tmp_path: Path, copies: dict[str, Path], refused_uri: str, damage: Any, reason: str
) -> None:
    models = _models_dir(tmp_path, copies, None if damage is None else "1")
    if damage is not None:
        damage(models / "production")
    with TestClient(create_app(_settings(tmp_path, models, refused_uri))) as c:
        answer = c.post("/predict", json=RAW_APP)
        assert answer.status_code == 503
        detail = answer.json()["detail"]
        assert detail.startswith("no champion model yet: the MLflow registry (http://127.0.0.1:")
        assert "could not be reached at start-up" in detail
        assert reason in detail and str(tmp_path) not in detail
        health = c.get("/health")
        assert health.status_code == 200  # alive, and saying why it cannot serve
        assert health.json()["status"] == "no_champion" and health.json()["detail"] == detail


@pytest.mark.component
def test_a_staging_instance_never_serves_the_production_copy(
    tmp_path: Path, copies: dict[str, Path], refused_uri: str
) -> None:
    models = _models_dir(tmp_path, copies, "1")
    settings = _settings(tmp_path, models, refused_uri, champion_alias="staging")
    with TestClient(create_app(settings)) as c:
        answer = c.post("/predict", json=RAW_APP)
        assert answer.status_code == 503
        assert "alias 'staging' does not fall back to models/production" in answer.json()["detail"]
        assert c.get("/health").json()["champion"] is None


@pytest.mark.component
def test_a_copy_with_untrusted_types_is_refused(tmp_path: Path, copies: dict[str, Path]) -> None:
    """The local loader trusts library types only, whatever the copy's MLmodel file lists."""
    import skops.io as sio

    production = shutil.copytree(copies["1"], tmp_path / "production")
    sio.dump({"model": argparse.Namespace(x=1)}, production / "model.skops")
    with pytest.raises(ValueError, match="argparse.Namespace"):
        registry.load_local_copy(production)
    assert hasattr(registry.load_local_copy(copies["2"]), "predict_proba")


# ---------------------------------------------------------------------------- reconciliation


@pytest.mark.component
@pytest.mark.parametrize(
    "copy, source",
    [("2", "registry"), (None, "registry"), ("1", "models/production")],
    ids=["another-version-is-loaded", "no-copy-loads-it", "same-version-is-confirmed"],
)
def test_the_service_follows_the_registry_when_it_answers_again(
    mlstore: Store,  # noqa: F811
    tmp_path: Path,
    copies: dict[str, Path],
    monkeypatch: pytest.MonkeyPatch,
    copy: str | None,
    source: str,
) -> None:
    """The registry (champion -> v1) is down at start-up, then answers again: the background
    check settles what is served, without POST /admin/reload."""
    down = True
    look_up = routing.ModelService.champion_version

    def flaky(self: routing.ModelService) -> str | None:
        if down:
            raise RegistryUnavailable("http://registry", "looking up the champion", "refused")
        return look_up(self)

    monkeypatch.setattr(routing.ModelService, "champion_version", flaky)
    models = _models_dir(tmp_path, copies, copy)
    settings = _settings(tmp_path, models, mlstore.uri, registry_check_seconds=0.05)
    with TestClient(create_app(settings)) as c:
        service: routing.ModelService = c.app.state.service
        _wait_for(lambda: service.registry_checks >= 3, "failed background checks")
        started_with = service.champion
        assert (started_with and started_with.version) == copy
        assert service.follow_registry is True
        down = False
        _wait_for(lambda: not service.follow_registry, "the registry's answer to be followed")
        health = c.get("/health").json()
        assert health["champion"] == {
            "version": "1",
            "source": source,
            "confirmed_by_registry": True,
        }
        assert health["warning"] is None and health["registry"]["matches"] is True
        if copy == "1":
            assert service.champion is started_with  # confirmed, not loaded again
        assert c.post("/predict", json=RAW_APP).json()["model_version"] == "1"


# ---------------------------------------------------------------------------- settings


@pytest.mark.component
def test_the_models_dir_reaches_the_service(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from lib import commands
    from lib.config import PipelineConfig
    from lib.serving import __main__ as cli

    seen: dict[str, Any] = {}
    monkeypatch.setattr("lib.serving.app.serve", lambda s, host, port: seen.update(s=s))
    cfg = PipelineConfig().model_copy(update={"models_dir": "mirror"})
    args = argparse.Namespace(host=None, port=None)
    assert commands.cmd_serve(cfg, tmp_path, args, lambda line: None) == 0
    assert seen["s"].models_dir == tmp_path / "mirror"

    monkeypatch.setattr(cli, "serve", lambda s, host, port: seen.update(s=s))
    cli.main(["--models-dir", str(tmp_path / "m"), "--registry-start-seconds", "3"])
    assert (seen["s"].models_dir, seen["s"].registry_start_seconds) == (tmp_path / "m", 3.0)
    monkeypatch.chdir(tmp_path)
    (tmp_path / "runner.py").write_text("")  # the project root is found from here
    assert ServingSettings().models_dir == tmp_path / "models"
    process = ServiceProcess(tmp_path, MODEL, "sqlite:///x.db", "sqlite:///p.db")
    assert process.args[process.args.index("--models-dir") + 1] == str(tmp_path / "models")


# ---------------------------------------------------------------------------- /health canary


@pytest.mark.component
def test_health_lists_a_canary_only_while_it_takes_traffic(
    mlstore: Store,  # noqa: F811
    tmp_path: Path,
) -> None:
    settings = _settings(tmp_path, tmp_path / "models", mlstore.uri)
    headers = {"Authorization": f"Bearer {TOKEN}"}
    with TestClient(create_app(settings)) as c:

        def put(body: dict[str, Any]) -> dict[str, Any]:
            answer = c.put("/admin/routing", json=body, headers=headers)
            assert answer.status_code == 200, answer.text
            return c.get("/health").json()

        assert put({"canary_version": "2", "weight": 10.0})["canary"] == {
            "version": "2",
            "weight": 10.0,
        }
        paused = put({"weight": 0})  # an admin's pause: loaded, routed nowhere
        assert paused["canary"] is None and paused["canary_weight"] == 0.0
        assert put({"weight": 20.0})["canary"] == {"version": "2", "weight": 20.0}
        assert put({"canary_version": None, "weight": 0})["canary"] is None
        put({"canary_version": "2", "weight": 50.0, "lease_seconds": 0.2})
        service: routing.ModelService = c.app.state.service
        _wait_for(lambda: service.canary is None, "the lapsed lease to unload the canary")
        lapsed = c.get("/health").json()
        assert lapsed["canary"] is None and lapsed["canary_version"] is None
        assert lapsed["lease_expired_at"] is not None
        for i in range(20):
            answer = c.post("/predict", json=RAW_APP, headers={"X-Request-ID": f"r{i}"})
            assert answer.json()["variant"] == "champion"


# ---------------------------------------------------------------------------- end to end


def _log_versions(mlstore: Store, uri: str) -> None:  # noqa: F811
    """Versions 1 and 2 of MODEL on the server (the fitted pipelines of mlstore)."""
    example = training.labeled_data(data.read_apps(mlstore.root / "apps.csv").apps, 4.0).X
    client = registry.connect(uri, "svc")
    for version in ("1", "2"):
        with mlflow.start_run():
            info = registry.log_candidate_model(mlstore.pipelines[version], example)
        assert registry.register(client, info.model_uri, MODEL, {}) == version
    registry.set_alias(client, MODEL, "champion", "2")


@pytest.mark.e2e
def test_a_service_process_started_while_the_mlflow_server_is_down(
    mlstore: Store,  # noqa: F811
    tmp_path: Path,
    copies: dict[str, Path],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """models/production holds v1; the registry names v2 and is stopped before the service
    starts. The port opens, v1 is served from the copy; the server comes back and the service
    loads v2 by itself."""
    server = MlflowServer(tmp_path / "mlflow-server").start()
    try:
        _log_versions(mlstore, server.url)
    finally:
        server.stop()
        mlflow.set_tracking_uri(None)
        mlflow.set_registry_uri(None)
    for name in registry.HTTP_RETRY_DEFAULTS:  # the service bounds MLflow's retries itself
        monkeypatch.delenv(name, raising=False)
    models = _models_dir(tmp_path, copies, "1")
    service = ServiceProcess(
        PROJECT,
        MODEL,
        server.url,
        f"sqlite:///{tmp_path}/predictions.db",
        log_path=tmp_path / "service.log",
        extra_args=["--registry-check-seconds", "1"],
        models_dir=models,
    )
    restarted = MlflowServer(server.home, port=server.port)
    try:
        service.start()  # the port opens although the registry does not answer
        health = httpx.get(f"{service.url}/health", timeout=10).json()
        assert health["ready"] is True
        assert health["champion"] == {
            "version": "1",
            "source": "models/production",
            "confirmed_by_registry": False,
        }
        answer = httpx.post(f"{service.url}/predict", json=RAW_APP, timeout=30)
        assert answer.status_code == 200 and answer.json()["model_version"] == "1"

        restarted.start()

        def follows() -> bool:
            champion = httpx.get(f"{service.url}/health", timeout=10).json()["champion"]
            return champion["version"] == "2"

        _wait_for(follows, "the service to load the registry's champion", seconds=120)
        health = httpx.get(f"{service.url}/health", timeout=10).json()
        assert health["champion"]["source"] == "registry" and health["warning"] is None
        answer = httpx.post(f"{service.url}/predict", json=RAW_APP, timeout=30)
        assert answer.status_code == 200 and answer.json()["model_version"] == "2"
        service.check()  # never crashed
    finally:
        service.stop()
        restarted.stop()
