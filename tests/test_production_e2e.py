"""Production outside the working directory, end to end (issue 18): the registry on an `mlflow
server` backed by PostgreSQL with proxied artifacts and basic auth, three model-service replicas
sharing one rollout (routing and predictions in a PostgreSQL store) behind a real nginx, and the
apps in a PostgreSQL table. Nothing of production lives in the project folders the runner runs in.

One test, in order: a first champion; a better candidate promoted by `runner.py` through every
canary step while a replica is killed in the middle of a step (no answer ever comes from a version
that is neither champion nor canary); the killed replica restarted, following the shared routing;
the canary's share across replicas within a binomial bound of its weight; a bad candidate rolled
back through the same set-up; an operator's rollback reaching every replica; and a fresh clone
with only the URLs set continuing from the same champion (no retraining: the last training's
state comes from the registry)."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pandas as pd
import pytest
import sqlalchemy as sa

from lib import registry
from lib.delivery import progressive as deployer
from lib.delivery import replayer
from lib.delivery.service_process import ServiceProcess
from lib.errors import RegistryUnavailable
from lib.pipeline import data, synth, training
from lib.pipeline.contracts import DeployInputs
from tests.support.deploy import DEPLOY_SETTINGS, FAST, make_runner_project
from tests.support.load_balancer import Nginx, require_nginx
from tests.support.mlflow_server import MlflowServer
from tests.support.notify import LOOPBACK
from tests.support.postgres import throwaway_postgres
from tests.support.serving import until

pytestmark = pytest.mark.e2e

NAME = "playstore-rating"
USER, PASSWORD = "prod-admin", "Prod-s3cret-51c0ffee"  # a value nothing else contains
TOKEN = "prod-admin-token-0123456789"
ADMIN = {"Authorization": f"Bearer {TOKEN}"}
POLL = 0.5  # the replicas' routing_poll_seconds
REPLICAS = 3
ROLLOUT = [
    "--set", "cv_folds=3", "--set", "smoke_rows=20", "--set", "canary_steps=[5,25,50,100]",
    "--set", "analysis_seconds=2", "--set", "check_every_seconds=0.5",
    "--set", "max_wait_seconds=120", "--set", "replay_rate=150",
    "--set", "replay_label_share=1.0", "--set", "replay_label_delay_seconds=[0,0]",
    "--set", "lease_seconds=60",  # a loaded CI machine stalls a renewal for seconds
    "--set", "canary_analysis={min_requests: 50, min_feedback: 40, alpha: 0.01, "
             "p99_floor_ms: 150, max_p99_ms: 1500}",
]  # fmt: skip
WEAK = ["--set", "candidates=[logistic_regression]", "--set", "features=[]"]
UP_TO_DEPLOY = "detect,train,compare,decide,deploy"  # (06 monitor: after the second run)
BETTER = [
    "--set", "candidates=[hist_gradient_boosting]",
    "--set", "features=[engagement,versions,genres]",
]  # fmt: skip


def _database(url: str, name: str) -> str:
    """Create database `name` on the cluster of `url`; its URL."""
    engine = sa.create_engine(url, isolation_level="AUTOCOMMIT")
    with engine.connect() as conn:
        conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
    engine.dispose()
    return url.rsplit("/", 1)[0] + f"/{name}"


@dataclass
class Production:
    home: Path
    mlflow: MlflowServer
    store_url: str
    apps_source: str
    replicas: list[ServiceProcess]
    lb: Nginx

    def env(self) -> dict[str, str]:
        """What an operator's shell holds: URLs and credentials, nothing else of production."""
        env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "PIPELINE_"))}
        return {
            **env,
            "MLFLOW_TRACKING_URI": self.mlflow.url,
            "MLFLOW_TRACKING_USERNAME": USER,
            "MLFLOW_TRACKING_PASSWORD": PASSWORD,
            "SERVING_ADMIN_TOKEN": TOKEN,
            "PIPELINE_SERVING_URL": self.lb.url,
            "PIPELINE_STORE_URL": self.store_url,
            "PIPELINE_DATA_PATH": self.apps_source,
        }

    def client(self) -> Any:
        from mlflow import MlflowClient

        return MlflowClient(tracking_uri=self.mlflow.url, registry_uri=self.mlflow.url)

    def champion(self) -> str | None:
        return registry.alias_version(self.client(), NAME, "champion")

    def served(self) -> list[str | None]:
        """The champion version each running replica serves (its /health)."""
        versions = []
        for replica in self.replicas:
            health = httpx.get(f"{replica.url}/health", timeout=10).json()
            versions.append((health.get("champion") or {}).get("version"))
        return versions


@pytest.fixture(scope="module")
def production(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Production]:
    require_nginx()
    home = tmp_path_factory.mktemp("production")
    with throwaway_postgres() as cluster, pytest.MonkeyPatch.context() as patch:
        # the replicas read the registry's credentials from their environment, as a pod would
        patch.setenv("MLFLOW_TRACKING_USERNAME", USER)
        patch.setenv("MLFLOW_TRACKING_PASSWORD", PASSWORD)
        # the machine's journal folder (a pod's volume), shared by the replicas on it
        patch.setenv("SERVING_JOURNAL_DIR", str(home / "journal"))
        mlflow_db, store_url = _database(cluster, "mlflow"), _database(cluster, "store")
        apps_url = _database(cluster, "apps")
        csv_path = home / "apps.csv"
        synth.write_default_dataset(csv_path, n=4000, seed=11)
        engine = sa.create_engine(apps_url)
        pd.read_csv(csv_path, dtype=str, keep_default_na=False).to_sql("apps", engine, index=False)
        engine.dispose()
        server = MlflowServer(home / "mlflow", backend=mlflow_db, auth=(USER, PASSWORD))
        replicas: list[ServiceProcess] = []
        lb = None
        try:
            server.start()
            serving_dir = home / "serving"  # what a pod has: no registry, no store, no data
            serving_dir.mkdir()
            options = ["--routing-poll-seconds", str(POLL), "--registry-check-seconds", "2"]
            for i in range(REPLICAS):
                replica = ServiceProcess(
                    serving_dir, NAME, server.url, store_url, admin_token=TOKEN,
                    log_path=home / f"replica{i}.log", extra_args=options,
                    models_dir=serving_dir / "models",
                )  # fmt: skip
                replicas.append(replica.start())
            lb = Nginx([r.port for r in replicas]).start()
            yield Production(home, server, store_url, f"{apps_url}#table=apps", replicas, lb)
        finally:
            if lb is not None:
                lb.stop()
            for replica in replicas:
                replica.stop()
            server.stop()


def _runner(project: Path, env: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "runner.py", *args],
        cwd=project, env=env, capture_output=True, text=True, timeout=900,
    )  # fmt: skip


def _report(project: Path) -> dict[str, Any]:
    return json.loads(sorted((project / "reports").glob("*/report.json"))[-1].read_text())


class Traffic:
    """Requests through the load balancer from a thread, each with its own id; every answer's
    version and replica are kept. Before a canary is up (`canary_seen`, set by the watcher of
    `_kill_during_a_step`: the candidate is still being trained and judged) one request every
    half second, then one every 10 ms: the load lands on the rollout, not on the training."""

    def __init__(self, url: str, body: dict[str, Any]) -> None:
        self.url, self.body = url, body
        self.answers: list[tuple[str, str, str]] = []  # (variant, version, replica)
        self.failures: Counter[int] = Counter()
        self.stopping = threading.Event()
        self.canary_seen = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        with httpx.Client(timeout=30) as http:
            while not self.stopping.is_set():
                rid = f"traffic-{uuid.uuid4().hex}"
                try:
                    resp = http.post(f"{self.url}/predict", json=self.body,
                                     headers={"X-Request-ID": rid})  # fmt: skip
                except httpx.HTTPError:
                    self.failures[0] += 1
                    continue
                if resp.status_code != 200:
                    self.failures[resp.status_code] += 1
                    continue
                answer = resp.json()
                replica = resp.headers.get("X-Replica", "")
                self.answers.append((answer["variant"], str(answer["model_version"]), replica))
                self.stopping.wait(0.01 if self.canary_seen.is_set() else 0.5)

    def __enter__(self) -> Traffic:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stopping.set()
        self.thread.join(timeout=60)


def _kill_during_a_step(
    prod: Production, victim: ServiceProcess, weight: float, traffic: Traffic
) -> dict:
    """Watch the shared routing (through another replica) until the canary is at `weight`,
    then kill `victim` with SIGKILL; what was seen. Tells `traffic` once a canary is up; polls
    every 0.5 s before (training takes minutes), every 0.1 s after (a step takes seconds)."""
    seen: dict[str, Any] = {}
    watcher = prod.replicas[0]

    def watch() -> None:
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline and victim.alive():
            try:
                routing = httpx.get(f"{watcher.url}/admin/routing", headers=ADMIN, timeout=5).json()
            except httpx.HTTPError:
                time.sleep(0.2)
                continue
            if routing.get("canary_version") is not None:
                traffic.canary_seen.set()
            if routing.get("canary_weight") == weight:
                os.killpg(victim.proc.pid, signal.SIGKILL)
                seen.update(routing=routing, at=time.monotonic())
                return
            time.sleep(0.1 if traffic.canary_seen.is_set() else 0.5)

    thread = threading.Thread(target=watch, daemon=True)
    thread.start()
    seen["thread"] = thread
    return seen


def _binomial_bound(n: int, p: float, sigmas: float = 4.5) -> float:
    return sigmas * math.sqrt(p * (1 - p) / n)


def _bad_candidate(prod: Production, logs: Path) -> tuple[str, deployer.DeployOutcome]:
    """A forest trained on inverted labels, registered on the server and rolled out through
    the load balancer by the deployer 05 deploy runs."""
    import mlflow

    apps = data.read_apps([prod.apps_source]).apps
    labeled = training.labeled_data(apps, 4.0)
    train_idx, _ = training.holdout_split(labeled.keys, labeled.y, 0.2, 42)
    X, y = labeled.X.iloc[train_idx], labeled.y.iloc[train_idx]
    forest = training.build_candidate("random_forest", 3, 40, groups=["engagement"])
    model = training.for_inference(forest.fit(X, 1 - y))
    client = registry.connect(prod.mlflow.url, "bad-candidate")
    defaults = DeployInputs().model_dump(include=set(DEPLOY_SETTINGS))
    settings = deployer.DeploySettings(
        **{**defaults, **FAST, "serving_url": prod.lb.url, "store_url": prod.store_url}
    )
    holdout = replayer.holdout_apps(apps, 4.0, 0.2, 42)
    try:
        with mlflow.start_run():
            info = registry.log_candidate_model(model, X.head(5))
        version = registry.register(client, info.model_uri, NAME, {})
        outcome = deployer.deploy(
            logs.parent, client, NAME, prod.mlflow.url, version, holdout, settings,
            logs.parent / "models", logs, "bad-candidate",
        )  # fmt: skip
    finally:
        mlflow.set_tracking_uri(None)
        mlflow.set_registry_uri(None)
    return version, outcome


def test_production_outside_the_working_directory(
    production: Production, project: Path, tmp_path: Path, http_sink, monkeypatch
) -> None:
    prod = production
    hook = f"json://{LOOPBACK}:{http_sink.port}/hooks"
    env = {**prod.env(), "NOTIFY_URLS": hook}
    outputs: list[str] = []

    def run(folder: Path, *args: str, environ: dict[str, str] | None = None) -> Any:
        done = _runner(folder, environ or env, *args)
        outputs.append(done.stdout + done.stderr)
        return done

    # 0. the server wants credentials: without them the runner cannot even look
    anonymous = {k: v for k, v in env.items() if not k.startswith("MLFLOW_TRACKING_")}
    refused = run(project, "status", environ={**anonymous, "MLFLOW_TRACKING_URI": prod.mlflow.url})
    assert refused.returncode == RegistryUnavailable.exit_code, outputs[-1]
    assert "Traceback" not in refused.stderr

    # 1. a first champion (no canary: nothing to compare with), promoted on every replica; the
    # credentials inside the tracking URI this time (they move to the environment, never shown)
    inside = {**anonymous, "MLFLOW_TRACKING_URI":
              prod.mlflow.url.replace("://", f"://{USER}:{PASSWORD}@")}  # fmt: skip
    first = run(project, "--force-retrain", *ROLLOUT, *WEAK, "--stages", UP_TO_DEPLOY,
                "--set", "decision={verdicts: {auto: 0, manual: -10}}", environ=inside)  # fmt: skip
    assert first.returncode == 0, outputs[-1][-4000:]
    assert prod.mlflow.url in first.stdout  # where MLflow is, without the credentials
    v1 = prod.champion()
    assert v1 is not None and _report(project)["outcome"] == "promoted"
    until(lambda: prod.served() == [v1] * REPLICAS, 30, f"every replica serves v{v1}")

    # 2. a better candidate, by evidence, through every step; a replica killed at 25%
    victim = prod.replicas[1]
    with Traffic(prod.lb.url, replayer.app_request(_an_app(prod))) as traffic:
        kill = _kill_during_a_step(prod, victim, 25.0, traffic)
        second = run(project, "--force-retrain", *ROLLOUT, *BETTER)
        kill["thread"].join(timeout=5)
    assert second.returncode == 0, outputs[-1][-4000:]
    report = _report(project)
    results = report["results"]
    assert results["decision"] == "auto", results.get("reasons")
    v2 = str(results["candidate_version"])
    assert report["outcome"] == "promoted", (report["outcome"], results.get("rollback_reason"))
    assert "at" in kill, "the rollout never reached 25% (the replica was not killed)"
    assert prod.champion() == v2
    answered = {version for _, version, _ in traffic.answers}
    assert answered <= {v1, v2}, f"answers from versions other than v{v1}/v{v2}: {answered}"
    assert len({replica for *_, replica in traffic.answers}) == REPLICAS
    assert sum(traffic.failures.values()) < max(10, len(traffic.answers) // 20), traffic.failures

    # the killed replica is restarted (as its pod would be) and follows the shared routing
    assert not victim.alive()
    victim.stop()
    victim.start()
    until(lambda: prod.served() == [v2] * REPLICAS, 30, f"every replica serves v{v2}")

    # 3. the canary's share across replicas: v1 back as a canary at 25% for 800 requests
    _measure_the_share(prod, v1, v2, 25.0, 800)

    # 4. a bad candidate through the same set-up: rolled back, production untouched
    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", USER)
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", PASSWORD)
    monkeypatch.setenv("SERVING_ADMIN_TOKEN", TOKEN)
    _, outcome = _bad_candidate(prod, tmp_path / "bad" / "logs")
    assert outcome.outcome == "rolled_back", outcome
    assert prod.champion() == v2 and prod.served() == [v2] * REPLICAS

    def no_canary_anywhere() -> bool:  # each replica applies the rollback within one poll
        routes = [
            httpx.get(f"{r.url}/admin/routing", headers=ADMIN, timeout=10).json()
            for r in prod.replicas
        ]
        return all(r["canary_weight"] == 0 and r["canary_version"] is None for r in routes)

    until(no_canary_anywhere, 10 * POLL + 10, "every replica drops the rolled-back canary")

    # 5. an operator's rollback through the load balancer reaches every replica
    done = run(project, "rollback", "--reason", "operator test")
    assert done.returncode == 0, outputs[-1][-3000:]
    assert prod.champion() == v1
    until(lambda: prod.served() == [v1] * REPLICAS, 30, f"every replica serves v{v1}")

    # 6. a fresh clone with only the URLs: the same champion, nothing new to train on
    clone = tmp_path / "clone"
    clone.mkdir()
    make_runner_project(clone)
    status = run(clone, "status")
    assert status.returncode == 0 and f"champion v{v1}" in status.stdout, outputs[-1]
    again = run(clone, *ROLLOUT, *BETTER)
    assert again.returncode == 0, outputs[-1][-3000:]
    assert _report(clone)["outcome"] == "no_training", _report(clone)
    assert prod.champion() == v1

    # anyone with the URL loads production's model; its files are on the server's side only
    import mlflow

    mlflow.set_tracking_uri(prod.mlflow.url)
    mlflow.set_registry_uri(prod.mlflow.url)
    try:
        model = mlflow.sklearn.load_model(f"models:/{NAME}@champion")
        texts = _mlflow_texts(prod.client())
    finally:
        mlflow.set_tracking_uri(None)
        mlflow.set_registry_uri(None)
    assert hasattr(model, "predict_proba")
    assert any(prod.mlflow.artifacts.rglob("MLmodel"))
    for folder in (project, clone, prod.home / "serving"):
        assert not (folder / "mlflow.db").exists() and not (folder / "mlruns").exists()
        assert not (folder / "predictions.db").exists()

    # the password nowhere: outputs, files, MLflow params/tags, /health, notifications
    assert not [o for o in outputs if PASSWORD in o]
    for folder in (project, clone, prod.home / "serving"):
        assert _leaks(folder) == [], folder
    assert texts and not [t for t in texts if PASSWORD in t]
    assert not [r for r in prod.replicas if PASSWORD in httpx.get(f"{r.url}/health").text]
    assert not [log for log in prod.home.glob("replica*.log") if PASSWORD in log.read_text()]
    bodies = [r.body.decode() for r in http_sink.requests]
    assert any("rolled back" in b or "rollback" in b for b in bodies), bodies
    assert not [b for b in bodies if PASSWORD in b]


def _measure_the_share(prod: Production, canary: str, champion: str, weight: float, n: int):
    """`canary` at `weight` on every replica; `n` requests through the load balancer; the
    canary's share within a binomial bound of the weight, every replica answering."""
    change = {"canary_version": canary, "weight": weight, "lease_seconds": 60}
    put = httpx.put(f"{prod.lb.url}/admin/routing", headers=ADMIN, json=change, timeout=60)
    assert put.status_code == 200, put.text
    generation = put.json()["generation"]

    def applied() -> bool:
        listed = httpx.get(f"{prod.lb.url}/admin/routing", headers=ADMIN, timeout=10).json()
        return len(listed["replicas"]) == REPLICAS and all(
            r["applied_generation"] >= generation for r in listed["replicas"]
        )

    until(applied, 30, f"every replica applies {weight:g}%")
    body = replayer.app_request(_an_app(prod))
    shares: Counter[str] = Counter()
    replicas_seen = set()
    with httpx.Client(timeout=30) as http:
        for _ in range(n):
            resp = http.post(f"{prod.lb.url}/predict", json=body,
                             headers={"X-Request-ID": f"share-{uuid.uuid4().hex}"})  # fmt: skip
            assert resp.status_code == 200, resp.text
            answer = resp.json()
            assert str(answer["model_version"]) in {canary, champion}
            shares[answer["variant"]] += 1
            replicas_seen.add(resp.headers["X-Replica"])
    p = weight / 100
    assert abs(shares["canary"] / n - p) <= _binomial_bound(n, p), shares
    assert len(replicas_seen) == REPLICAS
    off = httpx.put(f"{prod.lb.url}/admin/routing", headers=ADMIN, timeout=60,
                    json={"canary_version": None, "weight": 0})  # fmt: skip
    assert off.status_code == 200, off.text


def _leaks(root: Path) -> list[str]:
    """Every file under `root` whose bytes hold the password."""
    return [str(p) for p in root.rglob("*") if p.is_file() and PASSWORD.encode() in p.read_bytes()]


def _mlflow_texts(client: Any) -> list[str]:
    """What was written to MLflow as text: every run's params and tags, every version's tags
    and source."""
    texts = []
    for experiment in client.search_experiments():
        for found in client.search_runs([experiment.experiment_id]):
            texts += [*found.data.params.values(), *found.data.tags.values()]
    for version in client.search_model_versions(f"name='{NAME}'"):
        texts += [*version.tags.values(), str(version.source)]
    return texts


def _an_app(prod: Production) -> pd.Series:
    apps = data.read_apps([prod.apps_source]).apps
    return replayer.holdout_apps(apps, 4.0, 0.2, 42).iloc[0]
