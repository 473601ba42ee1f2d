"""One module per stage: `run(inputs, root) -> outputs` plus the steps its notebook displays.

The decisions of a stage (what to register, whether to roll back...) live here, so a notebook only
narrates and plots, and the in-process executor can run a stage without a kernel.
"""

from __future__ import annotations

import os
from pathlib import Path


def data_paths(data_path: str | list[str]) -> list[str]:
    """A stage's `data_path` parameter: one CSV, a comma-separated string or a list."""
    items = data_path if isinstance(data_path, list) else str(data_path).split(",")
    return [p.strip() for p in items if p.strip()]


def tracking_uri(configured: str | None, root: Path) -> str:
    """The MLflow store: as given, else MLFLOW_TRACKING_URI, else SQLite in the project."""
    return (
        configured
        or os.environ.get("MLFLOW_TRACKING_URI")
        or f"sqlite:///{(root / 'mlflow.db').as_posix()}"
    )


def store_url(configured: str | None, root: Path) -> str:
    """Where the service logs predictions and feedback (a SQLAlchemy URL)."""
    return configured or f"sqlite:///{(root / 'predictions.db').as_posix()}"
