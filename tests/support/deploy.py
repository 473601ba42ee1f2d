"""The progressive-deployment test world: a project folder with an MLflow store, a champion,
held-out apps and a production service; built once per worker and copied per test."""

from __future__ import annotations

import dataclasses
import shutil
import sqlite3
from pathlib import Path

import mlflow

from lib import registry
from lib.delivery import progressive as deployer
from lib.delivery import replayer
from lib.delivery.service_process import ServiceProcess
from lib.pipeline import data, evaluation, synth, training
from lib.pipeline.contracts import DeployInputs

REPO = Path(__file__).resolve().parents[2]
NAME = "playstore-rating"
TOKEN = "test-admin-token-0123456789"
DEPLOY_SETTINGS = [f.name for f in dataclasses.fields(deployer.DeploySettings)]
FAST = {
    "steps": [5, 25, 50, 100],
    "analysis_seconds": 2.0,
    "max_wait_seconds": 120.0,
    "check_every_seconds": 0.5,
    "replay_rate": 200.0,
    # every request labeled at once: these tests judge on labels (label-free: override them)
    "replay_label_share": 1.0,
    "replay_label_delay_seconds": [0.0, 0.0],
    "smoke_rows": 30,
    "lease_seconds": 6.0,
    # small samples for speed; alpha 0.01 keeps a healthy canary from failing by chance
    # latency bounds loose enough for a loaded 2-core machine; the slow-candidate test tightens them
    "analysis": {
        "min_requests": 50,
        "min_feedback": 40,
        "alpha": 0.01,
        "p99_floor_ms": 150.0,
        "max_p99_ms": 1500.0,
    },
}


def make_runner_project(root: Path) -> None:
    """Copy runner.py, lib/, notebooks/ and pipeline.yaml into a test project folder."""
    for name in ("lib", "notebooks"):
        shutil.copytree(REPO / name, root / name, ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("runner.py", "pipeline.yaml"):
        shutil.copy2(REPO / name, root / name)


def runner_settings(world: World, url: str) -> list[str]:
    return [
        "--set", "data_path=data/apps.csv", "--set", f"serving_url={url}",
        "--set", f"store_url={world.store_url}", "--set", f"tracking_uri={world.uri}",
        "--set", "experiment=deploy-tests",
    ]  # fmt: skip


class World:
    """A project folder with an MLflow store, a champion, held-out apps and a service."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.models = root / "models"
        self.logs = root / "logs"
        self.uri = f"sqlite:///{root / 'mlflow.db'}"
        self.store_url = f"sqlite:///{root / 'predictions.db'}"
        self.client = registry.connect(self.uri, "deploy-tests")
        path = root / "data" / "apps.csv"
        synth.ensure_dataset(path, n=2500, seed=5)  # a copied world has it already
        apps = data.read_apps(path).apps
        self.labeled = training.labeled_data(apps, 4.0)
        self.train_idx, self.test_idx = training.holdout_split(
            self.labeled.keys, self.labeled.y, 0.2, 42
        )
        self.holdout = replayer.holdout_apps(apps, 4.0, 0.2, 42)
        self.X = self.labeled.X.iloc[self.train_idx]
        self.y = self.labeled.y.iloc[self.train_idx]

    def register(self, model, example=None) -> str:
        model = training.for_inference(model)
        with mlflow.start_run():
            if example is None:  # validation figures, as 02 train logs them (06 monitor reads them)
                X_test = self.labeled.X.iloc[self.test_idx]
                scores = evaluation.evaluate(
                    self.labeled.y.iloc[self.test_idx], model.predict_proba(X_test)[:, 1]
                )
                mlflow.log_metrics({f"holdout_{k}": v for k, v in scores.items()})
            info = registry.log_candidate_model(
                model, self.X.head(5) if example is None else example
            )
        return registry.register(self.client, info.model_uri, NAME, {})

    def forest(self, seed: int, flip: bool = False, trees: int = 40, **kw):
        # a plain pipeline (no name-text stack), so a test can reach the forest's parameters
        pipe = training.build_candidate("random_forest", seed, trees, groups=["engagement"])
        if kw:
            pipe.named_steps["model"].set_params(**kw)
        return pipe.fit(self.X, 1 - self.y if flip else self.y)

    def service(self) -> ServiceProcess:
        return ServiceProcess(
            self.root,
            NAME,
            self.uri,
            self.store_url,
            admin_token=TOKEN,
            log_path=self.logs / "prod.log",
        )

    def deploy(self, version: str, url: str, **overrides) -> deployer.DeployOutcome:
        defaults = DeployInputs().model_dump(include=set(DEPLOY_SETTINGS))
        settings = deployer.DeploySettings(
            **{**defaults, **FAST, **overrides, "serving_url": url, "store_url": self.store_url}
        )
        return deployer.deploy(
            self.root,
            self.client,
            NAME,
            self.uri,
            version,
            self.holdout,
            settings,
            self.models,
            self.logs,
            "test-run",
        )

    def champion(self) -> str | None:
        return registry.alias_version(self.client, NAME, "champion")


def champion_world(root: Path) -> World:
    """A World in `root` with v1 (a 40-tree forest) registered and promoted: what every
    progressive-deployment test starts from. Call it with `root` as the working directory (MLflow
    puts the artifacts of a new experiment under ./mlruns)."""
    from lib.delivery import releases as deployments

    (root / "data").mkdir(parents=True, exist_ok=True)
    world = World(root)
    v1 = world.register(world.forest(1))
    deployments.promote(world.client, NAME, v1, world.models, world.logs, reason="initial")
    mlflow.set_tracking_uri(None)
    return world


def copy_world(template: World, root: Path) -> World:
    """A private copy of `template`'s project in `root`: the same store, versions, aliases and
    records, with every absolute path that named the template renamed, so nothing the copy does
    touches the template or another test's copy."""
    shutil.copytree(template.root, root)
    relocate_paths(root, str(template.root), str(root))
    return World(root)


def relocate_paths(root: Path, old: str, new: str) -> None:
    """Rename `old` to `new` in every text value of root/mlflow.db (artifact locations of
    experiments, runs, logged models and model versions) and in the MLmodel files under root."""
    with sqlite3.connect(root / "mlflow.db") as conn:
        tables = [r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")]
        for table in tables:
            for name in [r[1] for r in conn.execute(f'PRAGMA table_info("{table}")')]:
                column = f'"{name}"'
                conn.execute(
                    f'UPDATE "{table}" SET {column} = replace({column}, ?, ?) '
                    f"WHERE typeof({column}) = 'text' AND instr({column}, ?) > 0",
                    (old, new, old),
                )
    conn.close()
    for path in root.rglob("MLmodel"):
        text = path.read_text()
        if old in text:
            path.write_text(text.replace(old, new))
