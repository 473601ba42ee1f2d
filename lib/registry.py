"""MLflow: the tracking store, candidate runs, the registry and its aliases (`candidate`,
`champion`, `previous`). Models are saved with skops trusting only library types, so loading one
never runs arbitrary code. A registry that cannot answer raises RegistryUnavailable, never "no
such alias" (a rollout once recorded `champion None` during an outage), within seconds thanks to
bounded HTTP retries (bound_http_retries).
"""

from __future__ import annotations

import importlib.metadata
import json
import logging
import os
import re
import shutil
import tempfile
import time
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pandas as pd

from lib.atomic_files import replace_dir
from lib.config import redact_url
from lib.errors import RegistryUnavailable

log = logging.getLogger(__name__)

SAFE_TYPE_PREFIXES = ("sklearn.", "numpy.", "scipy.", "builtins.")
# A partial runs only a function that skops lists (and that must pass the prefixes) on its own:
# boosting with native categorical features keeps partial(sklearn...check_array, ...).
SAFE_TYPES = frozenset({"functools.partial"})
# Pinned from the running environment: MLflow otherwise spends seconds inferring them.
_REQUIREMENT_PACKAGES = ("scikit-learn", "skops", "numpy", "pandas", "scipy")

# MLflow's HTTP client defaults (MLFLOW_HTTP_REQUEST_MAX_RETRIES=7, ..._BACKOFF_FACTOR=2,
# ..._TIMEOUT=120 s) retry one call for minutes: a rollback during an outage took 12 minutes.
# With these, a refused connection fails in ~7 s and a hung server in under a minute, while
# a server restart of a few seconds is still ridden out. A value the user set is kept.
HTTP_RETRY_DEFAULTS = {
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "3",
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "10",
}
# MLflow's answer for a model, version or alias that does not exist. Both stores (SQLite and a
# tracking server) raise RESOURCE_DOES_NOT_EXIST for a missing model or version and
# INVALID_PARAMETER_VALUE for a missing alias of an existing model (MLflow 3.x).
NOT_FOUND_CODES = frozenset({"RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE"})
# Errors about the request itself (not an outage): passed through unchanged.
_CALLER_ERROR_CODES = NOT_FOUND_CODES | {"RESOURCE_ALREADY_EXISTS", "INVALID_STATE"}


class _RetriesAtDebug(logging.Filter):
    """urllib3 warns once per retry ("Retrying (Retry(total=2...") with the request path: during
    an outage that buried the one-line error. The retries go to this module's DEBUG log."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno == logging.WARNING and str(record.msg).startswith("Retrying ("):
            log.debug("HTTP retry: %s", record.getMessage())
            return False
        return True


# Downloading a model from a tracking server draws tqdm bars on stderr: noise in the runner's
# output, the services' logs and the notebooks (a user's own setting is kept)
QUIET_DOWNLOADS = {"MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false"}


def bound_http_retries() -> dict[str, str]:
    """Bounded MLflow HTTP retries (and no download bars) for this process and what it starts
    (kernels, services), unless the user set them; returns the retry values in effect."""
    for name, value in {**HTTP_RETRY_DEFAULTS, **QUIET_DOWNLOADS}.items():
        os.environ.setdefault(name, value)
    pool_log = logging.getLogger("urllib3.connectionpool")
    if not any(isinstance(f, _RetriesAtDebug) for f in pool_log.filters):
        pool_log.addFilter(_RetriesAtDebug())
    return {name: os.environ[name] for name in HTTP_RETRY_DEFAULTS}


def connect(tracking_uri: str, experiment: str) -> Any:
    """Point MLflow (tracking and registry) at one store and return a client;
    RegistryUnavailable when the store cannot be reached."""
    import mlflow
    from mlflow import MlflowClient

    bound_http_retries()
    names = ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI")
    exported = {name: os.environ.get(name) for name in names}
    mlflow.set_tracking_uri(tracking_uri)
    mlflow.set_registry_uri(tracking_uri)
    for name, value in exported.items():  # MLflow also exports the URIs to the environment: a
        # runner that looked at one project's store must not point the next run, or the kernels
        # it starts, at that store
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value
    with registry_call(tracking_uri, f"opening experiment {experiment!r}"):
        mlflow.set_experiment(experiment)
    return MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)


def _client_uri(client: Any) -> str:
    import mlflow

    return getattr(client, "_registry_uri", None) or mlflow.get_registry_uri()


def _is_outage(exc: BaseException) -> bool:
    """A failure of the registry itself: unreachable, timed out, 5xx, refused credentials."""
    from mlflow.exceptions import MlflowException

    if isinstance(exc, RegistryUnavailable):
        return False  # already translated
    if isinstance(exc, MlflowException):
        return exc.error_code not in _CALLER_ERROR_CODES
    import requests  # MLflow's HTTP client

    return isinstance(exc, (requests.exceptions.RequestException, ConnectionError, TimeoutError))


def _reason(exc: BaseException, seconds: float) -> str:
    """A short cause for one line: MLflow's transport errors are paragraphs of urllib3 text."""
    from mlflow.exceptions import MlflowException

    # MLflow puts the URL in its errors
    text = redact_url(exc.message if isinstance(exc, MlflowException) else str(exc))
    status = re.search(r"too many (\d{3}) error responses", text)
    if "Connection refused" in text:
        reason = "connection refused"
    elif "timed out" in text or "timeout" in text.lower():
        reason = "no answer (timed out)"
    elif "Name or service not known" in text or "nodename nor servname" in text:
        reason = "host name not found"
    elif status:
        reason = f"HTTP {status.group(1)} server errors"
    elif isinstance(exc, MlflowException) and exc.error_code != "INTERNAL_ERROR":
        reason = f"{exc.error_code}: {text[:200]}"
    else:
        reason = f"{type(exc).__name__}: {text[:200]}"
    retries = os.environ.get("MLFLOW_HTTP_REQUEST_MAX_RETRIES")
    tried = f"{retries} retries, " if retries is not None else ""
    return f"{reason} ({tried}gave up after {seconds:.0f} s)"


@contextmanager
def registry_call(client_or_uri: Any, doing: str) -> Iterator[None]:
    """Run MLflow calls; turn an outage into RegistryUnavailable naming the (redacted) URI and
    what was being done. "Not found" and bad-request errors pass through unchanged."""
    started = time.monotonic()
    try:
        yield
    except Exception as exc:
        if not _is_outage(exc):
            raise
        uri = client_or_uri if isinstance(client_or_uri, str) else _client_uri(client_or_uri)
        error = RegistryUnavailable(
            redact_url(uri), doing, _reason(exc, time.monotonic() - started)
        )
        log.debug("%s", error, exc_info=exc)  # the caller reports it; the detail is for -v
        raise error from exc


def pip_requirements() -> list[str]:
    """Each package pinned: all are hard dependencies, installed wherever a model is saved."""
    return [f"{name}=={importlib.metadata.version(name)}" for name in _REQUIREMENT_PACKAGES]


def _only_library_types(untrusted: list[str]) -> list[str]:
    """The types skops reports as untrusted, if every one is a library type (else ValueError)."""
    unsafe = [t for t in untrusted if not t.startswith(SAFE_TYPE_PREFIXES) and t not in SAFE_TYPES]
    if unsafe:
        raise ValueError(f"model contains types skops should not trust: {unsafe}")
    return sorted(untrusted)


def skops_trusted_types(model: Any) -> list[str]:
    """The types skops must be told to trust for this model; refuse anything but library types."""
    import skops.io as sio

    return _only_library_types(sio.get_untrusted_types(data=sio.dumps(model)))


def float_columns(frame: pd.DataFrame) -> pd.DataFrame:
    """Integer columns as float for the schemas MLflow records (the model's signature, the
    logged datasets): a float column accepts a missing value, and MLflow then has no "Inferred
    schema contains integer column(s)" warning to print into the notebook."""
    return frame.astype({c: "float64" for c in frame.select_dtypes("integer").columns})


def log_candidate_model(model: Any, example: pd.DataFrame) -> Any:
    """Log a fitted pipeline to the active run with signature, example and skops format."""
    import mlflow
    from mlflow.models import infer_signature

    example = float_columns(example.head(5))
    signature = infer_signature(example, model.predict_proba(example)[:, 1])
    return mlflow.sklearn.log_model(
        model,
        name="model",
        serialization_format="skops",
        skops_trusted_types=skops_trusted_types(model),
        signature=signature,
        input_example=example,
        pip_requirements=pip_requirements(),
    )


def register(client: Any, model_uri: str, model_name: str, tags: dict[str, str]) -> str:
    """Register a logged model as a new version and return its version number."""
    import mlflow

    with registry_call(client, f"registering a version of {model_name}"):
        version = mlflow.register_model(model_uri, model_name, tags=tags)
    log.info("registered %s version %s", model_name, version.version)
    return str(version.version)


def _unless_missing(client: Any, doing: str, call: Callable[..., Any], *args: Any) -> Any:
    """`call(*args)`, or None when MLflow says what it names does not exist; an outage raises
    RegistryUnavailable."""
    from mlflow.exceptions import MlflowException

    with registry_call(client, doing):
        try:
            return call(*args)
        except MlflowException as exc:
            if exc.error_code in NOT_FOUND_CODES:
                return None
            raise


def alias_version(client: Any, model_name: str, alias: str) -> str | None:
    """The version an alias points at, or None when the model or the alias does not exist
    (RegistryUnavailable when the registry cannot answer: an outage is not "no alias")."""
    doing = f"looking up {model_name}@{alias}"
    found = _unless_missing(client, doing, client.get_model_version_by_alias, model_name, alias)
    return None if found is None else str(found.version)


def model_version(client: Any, model_name: str, version: str) -> Any | None:
    """The registry's ModelVersion, or None when it does not exist (RegistryUnavailable when the
    registry cannot answer)."""
    doing = f"looking up {model_name} v{version}"
    return _unless_missing(client, doing, client.get_model_version, model_name, str(version))


def set_alias(client: Any, model_name: str, alias: str, version: str) -> None:
    """Point an alias at a version (RegistryUnavailable when the registry cannot be reached)."""
    with registry_call(client, f"setting {model_name}@{alias} to v{version}"):
        client.set_registered_model_alias(model_name, alias, str(version))
    log.info("alias %s@%s -> version %s", model_name, alias, version)


def delete_alias(client: Any, model_name: str, alias: str) -> None:
    """Remove an alias (a missing one is fine: the goal is that it does not point anywhere)."""
    doing = f"removing {model_name}@{alias}"
    _unless_missing(client, doing, client.delete_registered_model_alias, model_name, alias)
    log.info("alias %s@%s removed", model_name, alias)


def load_version(model_name: str, version: str) -> Any:
    """Load a registered version as a scikit-learn pipeline."""
    import mlflow

    with registry_call(mlflow.get_registry_uri(), f"loading {model_name} v{version}"):
        return mlflow.sklearn.load_model(f"models:/{model_name}/{version}")


def version_run_id(client: Any, model_name: str, version: str) -> str | None:
    """The run that logged a version (MLflow's not-found error when the version is missing)."""
    with registry_call(client, f"looking up the run of {model_name} v{version}"):
        return client.get_model_version(model_name, str(version)).run_id


LOCAL_COPY_METADATA = "deployment.json"  # beside a local copy's model: version, model name...


def local_copy_metadata(model_dir: Path) -> dict[str, Any] | None:
    """What a local copy (save_local_copy) says it holds, or None (absent or unreadable)."""
    try:
        data = json.loads((model_dir / LOCAL_COPY_METADATA).read_text())
    except (OSError, json.JSONDecodeError, UnicodeDecodeError):
        return None
    return data if isinstance(data, dict) else None


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
        (model_dir / LOCAL_COPY_METADATA).write_text(json.dumps(metadata, indent=2, default=str))
        replace_dir(model_dir, target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


def load_local_copy(model_dir: Path) -> Any:
    """Load a model that save_local_copy wrote (models/production/ when the registry is down),
    trusting the registry's types, never the copy's own MLmodel list (anyone who can write the
    directory could extend it): a tampered copy raises instead of running its code."""
    import skops.io as sio
    import yaml

    model_dir = Path(model_dir)
    spec = yaml.safe_load((model_dir / "MLmodel").read_text(encoding="utf-8"))
    flavor = (spec.get("flavors") or {}).get("sklearn") if isinstance(spec, dict) else None
    if not isinstance(flavor, dict) or flavor.get("serialization_format") != "skops":
        raise ValueError(f"{model_dir} is not a scikit-learn model saved with skops")
    path = model_dir / str(flavor.get("pickled_model"))
    if path.resolve().parent != model_dir.resolve():
        raise ValueError(f"{model_dir}: the model file must be inside the directory")
    trusted = _only_library_types(sio.get_untrusted_types(file=path))
    return sio.load(path, trusted=trusted)


def start_pipeline_run(run_name: str, tags: dict[str, str], params: dict[str, Any]) -> str:
    """The parent run that groups every candidate of one pipeline run; returns its id."""
    import mlflow

    with registry_call(mlflow.get_tracking_uri(), f"starting the MLflow run {run_name!r}"):
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
    """One child run per candidate (params, holdout + CV metrics, data, plots, model): its
    (run_id, model_uri)."""
    import mlflow

    with mlflow.start_run(run_id=parent_run_id):
        with mlflow.start_run(run_name=result.name, nested=True, tags=tags) as run:
            mlflow.log_params({"candidate": result.name, **result.params})
            metrics = {f"holdout_{k}": v for k, v in result.holdout.items()}
            metrics |= {f"cv_{m}_{s}": v[s] for m, v in result.cv.items() for s in ("mean", "std")}
            metrics["fit_seconds"] = result.fit_seconds
            mlflow.log_metrics({k: float(v) for k, v in metrics.items() if v == v})
            for context, frame in (("training", train_frame), ("holdout", holdout_frame)):
                with warnings.catch_warnings():  # MLflow's hint here is not actionable
                    warnings.filterwarnings("ignore", message=".*interpreted in multiple ways")
                    dataset = mlflow.data.from_pandas(
                        float_columns(frame),
                        source=data_source,
                        targets="label",
                        name=f"playstore-{context}",
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
    with registry_call(client.tracking_uri, f"tagging run {run_id}"):
        for key, value in tags.items():
            client.set_tag(run_id, key, str(value)[:5000])


def log_metrics_to_run(run_id: str, metrics: dict[str, float]) -> None:
    from mlflow import MlflowClient

    client = MlflowClient()
    with registry_call(client.tracking_uri, f"logging metrics to run {run_id}"):
        for key, value in metrics.items():
            if value is not None and value == value:
                client.log_metric(run_id, key, float(value))


def set_version_tags(client: Any, model_name: str, version: str, tags: dict[str, Any]) -> None:
    with registry_call(client, f"tagging {model_name} v{version}"):
        for key, value in tags.items():
            client.set_model_version_tag(model_name, str(version), key, str(value)[:5000])


def version_tags(client: Any, model_name: str, version: str) -> dict[str, str] | None:
    """A version's tags, or None when the version does not exist (RegistryUnavailable when the
    registry cannot answer)."""
    found = model_version(client, model_name, version)
    return None if found is None else dict(found.tags or {})


def versions_tagged(client: Any, model_name: str, key: str, value: str) -> list[str]:
    """The versions of a model whose tag `key` is `value` (filtered here: every store, every
    MLflow version), oldest first."""
    with registry_call(client, f"listing the versions of {model_name}"):
        found = client.search_model_versions(f"name = '{model_name}'")
    return sorted((str(v.version) for v in found if (v.tags or {}).get(key) == value), key=int)


def client_for(uri: str) -> Any:
    """A client of the store at `uri` (tracking and registry), without changing MLflow's
    process-wide URIs or experiment (connect does both)."""
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=uri, registry_uri=uri)
