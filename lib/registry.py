"""MLflow: the tracking store, candidate runs, the registry and its aliases.

MLflow is the source of truth for models. Aliases (not the deprecated stages) say what each
version is: `candidate` (just trained), `champion` (production), `previous`. Models are saved
with skops, trusting only scikit-learn/NumPy/SciPy types, so loading one never runs our code
or arbitrary pickles.
"""

from __future__ import annotations

import importlib.metadata
import json
import logging
import shutil
import tempfile
import warnings
from pathlib import Path
from typing import Any

import pandas as pd

from lib.atomic_files import replace_dir

log = logging.getLogger(__name__)

SAFE_TYPE_PREFIXES = ("sklearn.", "numpy.", "scipy.", "builtins.")
# Pinned from the running environment: MLflow otherwise spends seconds inferring them.
_REQUIREMENT_PACKAGES = ("scikit-learn", "skops", "numpy", "pandas", "scipy")


def connect(tracking_uri: str, experiment: str) -> Any:
    """Point MLflow (tracking and registry) at one store and return a client."""
    import mlflow
    from mlflow import MlflowClient

    mlflow.set_tracking_uri(tracking_uri)
    mlflow.set_registry_uri(tracking_uri)
    mlflow.set_experiment(experiment)
    return MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)


def redact_uri(uri: str) -> str:
    """A tracking URI without user:password, for logs and reports."""
    if "@" in uri and "://" in uri:
        scheme, rest = uri.split("://", 1)
        return f"{scheme}://***@{rest.split('@', 1)[1]}"
    return uri


def pip_requirements() -> list[str]:
    reqs = []
    for name in _REQUIREMENT_PACKAGES:
        try:
            reqs.append(f"{name}=={importlib.metadata.version(name)}")
        except importlib.metadata.PackageNotFoundError:
            reqs.append(name)
    return reqs


def skops_trusted_types(model: Any) -> list[str]:
    """The types skops must be told to trust for this model; refuse anything but library types."""
    import skops.io as sio

    untrusted = sio.get_untrusted_types(data=sio.dumps(model))
    unsafe = [t for t in untrusted if not t.startswith(SAFE_TYPE_PREFIXES)]
    if unsafe:
        raise ValueError(f"model contains types skops should not trust: {unsafe}")
    return sorted(untrusted)


def log_candidate_model(model: Any, example: pd.DataFrame, name: str = "model") -> Any:
    """Log a fitted pipeline to the active run with signature, example and skops format."""
    import mlflow
    from mlflow.models import infer_signature

    example = example.head(5)
    signature = infer_signature(example, model.predict_proba(example)[:, 1])
    return mlflow.sklearn.log_model(
        model,
        name=name,
        serialization_format="skops",
        skops_trusted_types=skops_trusted_types(model),
        signature=signature,
        input_example=example,
        pip_requirements=pip_requirements(),
    )


def register(client: Any, model_uri: str, model_name: str, tags: dict[str, str]) -> str:
    """Register a logged model as a new version and return its version number."""
    import mlflow

    version = mlflow.register_model(model_uri, model_name, tags=tags)
    log.info("registered %s version %s", model_name, version.version)
    return str(version.version)


def alias_version(client: Any, model_name: str, alias: str) -> str | None:
    """The version an alias points at, or None (no model, or alias not set)."""
    from mlflow.exceptions import MlflowException

    try:
        return str(client.get_model_version_by_alias(model_name, alias).version)
    except MlflowException:
        return None


def set_alias(client: Any, model_name: str, alias: str, version: str) -> None:
    client.set_registered_model_alias(model_name, alias, str(version))
    log.info("alias %s@%s -> version %s", model_name, alias, version)


def load_version(model_name: str, version: str) -> Any:
    """Load a registered version as a scikit-learn pipeline."""
    import mlflow

    return mlflow.sklearn.load_model(f"models:/{model_name}/{version}")


def version_run_id(client: Any, model_name: str, version: str) -> str | None:
    return client.get_model_version(model_name, str(version)).run_id


def save_local_copy(model: Any, target: Path, metadata: dict[str, Any]) -> Path:
    """Mirror a model into models/<name>/ atomically: build beside it, then swap by rename."""
    import mlflow

    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
    try:
        model_dir = staging / "model"
        mlflow.sklearn.save_model(
            model,
            model_dir,
            serialization_format="skops",
            skops_trusted_types=skops_trusted_types(model),
            pip_requirements=pip_requirements(),
        )
        (model_dir / "deployment.json").write_text(json.dumps(metadata, indent=2, default=str))
        replace_dir(model_dir, target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


def start_pipeline_run(run_name: str, tags: dict[str, str], params: dict[str, Any]) -> str:
    """The parent run that groups every candidate of one pipeline run; returns its id."""
    import mlflow

    with mlflow.start_run(run_name=run_name, tags=tags) as run:
        mlflow.log_params({k: str(v)[:500] for k, v in params.items()})
        return run.info.run_id


def log_candidate_run(
    parent_run_id: str,
    result: Any,
    train_frame: pd.DataFrame,
    holdout_frame: pd.DataFrame,
    data_source: str,
    figures: dict[str, Any],
    tags: dict[str, str],
) -> tuple[str, str]:
    """One child run per candidate: params, holdout + CV metrics, data sets, plots and the model.

    Returns (run_id, model_uri).
    """
    import mlflow

    with mlflow.start_run(run_id=parent_run_id):
        with mlflow.start_run(run_name=result.name, nested=True, tags=tags) as run:
            mlflow.log_params({"candidate": result.name, **result.params})
            metrics = {f"holdout_{k}": v for k, v in result.holdout.items()}
            for metric, stats in result.cv.items():
                metrics[f"cv_{metric}_mean"] = stats["mean"]
                metrics[f"cv_{metric}_std"] = stats["std"]
            metrics["fit_seconds"] = result.fit_seconds
            mlflow.log_metrics({k: float(v) for k, v in metrics.items() if v == v})
            for context, frame in (("training", train_frame), ("holdout", holdout_frame)):
                with warnings.catch_warnings():  # MLflow's hints here are not actionable
                    warnings.filterwarnings("ignore", message=".*interpreted in multiple ways")
                    warnings.filterwarnings("ignore", message=".*integer column")
                    dataset = mlflow.data.from_pandas(
                        frame, source=data_source, targets="label", name=f"playstore-{context}"
                    )
                mlflow.log_input(dataset, context=context)
            for name, fig in figures.items():
                mlflow.log_figure(fig, f"plots/{name}.png")
            info = log_candidate_model(result.model, train_frame.drop(columns=["label"]))
            return run.info.run_id, info.model_uri


def tag_run(run_id: str, tags: dict[str, Any]) -> None:
    """Add tags to a finished run (used by compare/decide to record what they concluded)."""
    from mlflow import MlflowClient

    client = MlflowClient()
    for key, value in tags.items():
        client.set_tag(run_id, key, str(value)[:5000])


def log_metrics_to_run(run_id: str, metrics: dict[str, float]) -> None:
    from mlflow import MlflowClient

    client = MlflowClient()
    for key, value in metrics.items():
        if value is not None and value == value:
            client.log_metric(run_id, key, float(value))


def set_version_tags(client: Any, model_name: str, version: str, tags: dict[str, Any]) -> None:
    for key, value in tags.items():
        client.set_model_version_tag(model_name, str(version), key, str(value)[:5000])
