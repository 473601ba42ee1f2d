"""The project root and the default locations under it, each defined once (issue 16).

`lib` never finds its data next to its own source (installed, it sits in site-packages): the
project is ``PIPELINE_ROOT`` or the nearest directory holding `runner.py`. This module imports
nothing of the domain, so any module may import it.
"""

from __future__ import annotations

import os
from pathlib import Path
from urllib.parse import unquote, urlsplit, urlunsplit

from lib.errors import ConfigError

ROOT_ENV = "PIPELINE_ROOT"  # an explicit project directory, over the working directory
MARKER = "runner.py"  # what makes a directory the project
TRACKING_DB = "mlflow.db"
# Where MLflow's HTTP client reads a tracking server's basic-auth credentials
CREDENTIAL_VARS = ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD")
STORE_DB = "predictions.db"
MODELS_DIR = "models"
PRODUCTION_DIR = "production"  # under models/: the mirror of the champion the service falls back to


def project_root(start: Path | None = None) -> Path:
    """The project directory: ``PIPELINE_ROOT`` if set, else the nearest directory holding
    `runner.py` at or above `start` (default: the working directory). Notebooks resolve their
    relative paths against it whether Jupyter started them in `notebooks/` or Papermill at the
    root; no project found is a ConfigError, never a silent fallback to lib's location."""
    explicit = os.environ.get(ROOT_ENV, "").strip()
    if explicit:
        root = Path(explicit).expanduser().resolve()
        if not root.is_dir():
            raise ConfigError(f"{ROOT_ENV}={explicit}: not a directory")
        return root
    here = (start or Path.cwd()).resolve()
    for candidate in (here, *here.parents):
        if (candidate / MARKER).is_file():
            return candidate
    raise ConfigError(
        f"no project found at or above {here} (no {MARKER}): run from the project directory "
        f"or set {ROOT_ENV}"
    )


def _sqlite(path: Path) -> str:
    return f"sqlite:///{path.as_posix()}"


def tracking_uri(configured: str | None = None, root: Path | None = None) -> str:
    """The MLflow store: as given, else MLFLOW_TRACKING_URI, else SQLite in the project; an
    HTTP(S) URI without the credentials it carried (credentials_to_environment)."""
    return credentials_to_environment(
        configured
        or os.environ.get("MLFLOW_TRACKING_URI")
        or _sqlite((root or project_root()) / TRACKING_DB)
    )


def credentials_to_environment(uri: str) -> str:
    """`uri` without the ``user:password@`` of an ``http(s)://`` tracking server: they go to
    MLFLOW_TRACKING_USERNAME/PASSWORD (unless set: MLflow's client lets those win anyway), where
    MLflow reads them and the kernels and services this process starts inherit them. The URI
    then travels (notebook parameters, a service's command line, reports) with no secret."""
    parts = urlsplit(uri)
    if parts.scheme.lower() not in ("http", "https") or "@" not in parts.netloc:
        return uri
    userinfo, _, host = parts.netloc.rpartition("@")
    user, _, password = userinfo.partition(":")
    for name, value in zip(CREDENTIAL_VARS, (user, password), strict=True):
        if value:
            os.environ.setdefault(name, unquote(value))
    clean = urlunsplit(parts._replace(netloc=host))
    if os.environ.get("MLFLOW_TRACKING_URI") == uri:  # what kernels and services inherit
        os.environ["MLFLOW_TRACKING_URI"] = clean
    return clean


def store_url(configured: str | None = None, root: Path | None = None) -> str:
    """Where the service logs predictions and feedback (a SQLAlchemy URL): as given, else SQLite
    in the project."""
    return configured or _sqlite((root or project_root()) / STORE_DB)


def models_dir(root: Path | None = None) -> Path:
    """The project's models/ (candidate, production copy, rollout state)."""
    return (root or project_root()) / MODELS_DIR
