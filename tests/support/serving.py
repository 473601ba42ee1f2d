"""The model service's test world: a throw-away MLflow store with two real registered versions,
settings for a service on it, and small helpers to talk to that service."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families
from threadpoolctl import threadpool_limits

from lib import registry
from lib.config import FEATURE_GROUPS
from lib.pipeline import data, features, synth, training
from lib.serving import routing
from lib.serving.settings import ServingSettings

TOKEN = "test-admin-token-1234"
# labels are a trusted input: /feedback has its own token (tests/conftest.py puts it in the
# environment, so every service a test starts, and the replayer, have it)
FEEDBACK_TOKEN = "test-feedback-token-5678"
FEEDBACK = {"Authorization": f"Bearer {FEEDBACK_TOKEN}"}
MODEL = "svc-model"
RAW_APP = {
    "App": "Some Game",
    "Category": "GAME",
    "Rating": "4.1",
    "Reviews": "1,234",
    "Size": "19M",
    "Installs": "10,000+",
    "Type": "Free",
    "Price": "0",
    "Content Rating": "Everyone",
    "Genres": "Action",
    "Last Updated": "January 7, 2018",
    "Current Ver": "1.2.3",
    "Android Ver": "4.0.3 and up",
}


@dataclass
class Store:
    uri: str
    root: Path
    pipelines: dict[str, Any]  # version -> fitted model (the served shape, tuned threshold)
    apps: pd.DataFrame  # raw generated apps (strings), for requests


def served_model(model: Any, X: pd.DataFrame, y: pd.Series, threshold: float) -> Any:
    """The shape training registers: FixedThresholdClassifier(FrozenEstimator(model))."""
    from sklearn.frozen import FrozenEstimator
    from sklearn.model_selection import FixedThresholdClassifier

    return FixedThresholdClassifier(
        FrozenEstimator(training.for_inference(model)),
        threshold=threshold,
        response_method="predict_proba",
    ).fit(X, y)


def _fit(seed: int, X: pd.DataFrame, y: pd.Series):
    """Version 1: a small forest Pipeline; version 2: the name-text stack. Both thresholded."""
    groups = FEATURE_GROUPS if seed else features.GROUP_COLUMNS
    with threadpool_limits(limits=1):
        model = training.build_candidate("random_forest", seed, 10, groups, stack_folds=3)
        return served_model(model.fit(X, y), X, y, 0.45)


def build_store(root: Path) -> Store:
    """MLflow on SQLite in `root`: versions 1 and 2 of MODEL (two small forests), champion -> 1."""
    import mlflow
    from mlflow import MlflowClient

    uri = f"sqlite:///{root}/mlflow.db"
    MlflowClient(uri).create_experiment("svc", artifact_location=(root / "artifacts").as_uri())
    client = registry.connect(uri, "svc")
    raw = synth.generate_apps(600, seed=3)
    raw.to_csv(root / "apps.csv", index=False)
    labeled = training.labeled_data(data.read_apps(root / "apps.csv").apps, 4.0)
    pipelines = {}
    for seed in (0, 1):
        pipe = _fit(seed, labeled.X, labeled.y)
        with mlflow.start_run():
            info = registry.log_candidate_model(pipe, labeled.X)
        version = registry.register(client, info.model_uri, MODEL, {"seed": str(seed)})
        pipelines[version] = pipe
    registry.set_alias(client, MODEL, "champion", "1")
    return Store(uri, root, pipelines, raw)


def serving_settings(mlstore: Store, tmp_path: Path, **overrides: Any) -> ServingSettings:
    values = dict(
        model_name=MODEL,
        tracking_uri=mlstore.uri,
        store_url=f"sqlite:///{tmp_path}/predictions.db",
        admin_token=TOKEN,
        feedback_token=FEEDBACK_TOKEN,
        lease_check_seconds=0.05,
    )
    values.update(overrides)
    return ServingSettings(**values)


def model_service(c: TestClient) -> routing.ModelService:
    return c.app.state.service


def admin_headers(token: str = TOKEN) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def credentials_for(path: str) -> dict[str, str]:
    """The header a route with a body wants: the feedback token for /feedback, else admin's."""
    return dict(FEEDBACK) if path.endswith("/feedback") else admin_headers()


def metric_total(c: TestClient, name: str, **labels: str) -> float:
    text = c.get("/metrics").text
    total = 0.0
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                total += sample.value
    return total


def id_for(service: routing.ModelService, variant: str, prefix: str = "rid") -> str:
    """A request id that routes to `variant` under the current weight."""
    for i in range(100_000):
        rid = f"{prefix}-{i}"
        chosen = service.route(rid)
        if chosen is not None and chosen.name == variant:
            return rid
    raise AssertionError(f"no id routes to {variant}")


def until(check: Any, bound: float, what: str, every: float = 0.05) -> Any:
    """Poll `check()` until it returns something truthy; fail after `bound` seconds (a bound
    with slack, never a speed claim)."""
    deadline = time.monotonic() + bound
    while time.monotonic() < deadline:
        if result := check():
            return result
        time.sleep(every)
    raise AssertionError(f"{what}: not within {bound:g} s")
