"""One project root, each default defined once (issue 16): the working directory's project (or
PIPELINE_ROOT), never the directory lib is installed in."""

from __future__ import annotations

import ast
import json
import os
from pathlib import Path

import pytest

from lib import settings
from lib.config import load_config
from lib.errors import ConfigError
from lib.serving.settings import ServingSettings
from lib.settings import CREDENTIAL_VARS, credentials_to_environment

LIB = Path(__file__).resolve().parents[1] / "lib"


@pytest.fixture
def elsewhere(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A project far from lib's source, entered through one of its subdirectories."""
    monkeypatch.delenv(settings.ROOT_ENV, raising=False)
    root = tmp_path / "proj"
    (root / "notebooks").mkdir(parents=True)
    (root / "runner.py").write_text("")
    monkeypatch.chdir(root / "notebooks")  # where Jupyter starts a notebook
    return root.resolve()


def test_service_defaults_follow_the_working_directorys_project(elsewhere: Path) -> None:
    served = ServingSettings()
    assert served.tracking_uri == f"sqlite:///{(elsewhere / 'mlflow.db').as_posix()}"
    assert served.store_url == f"sqlite:///{(elsewhere / 'predictions.db').as_posix()}"
    assert served.models_dir == elsewhere / "models"
    assert str(LIB.parent) not in served.tracking_uri + served.store_url


def test_config_and_service_share_the_defaults(elsewhere: Path) -> None:
    cfg = load_config(elsewhere, environ={})
    served = ServingSettings()
    assert cfg.resolved_tracking_uri(elsewhere) == served.tracking_uri
    assert cfg.resolved_store_url(elsewhere) == served.store_url
    assert elsewhere / cfg.models_dir == served.models_dir


def test_the_environments_tracking_uri_wins(
    elsewhere: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:5000")
    assert ServingSettings().tracking_uri == "http://127.0.0.1:5000"
    assert settings.tracking_uri("sqlite:///x.db", elsewhere) == "sqlite:///x.db"


def test_pipeline_root_names_the_project_explicitly(
    elsewhere: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    other = tmp_path / "other"
    other.mkdir()
    monkeypatch.setenv(settings.ROOT_ENV, str(other))
    assert settings.project_root() == other.resolve()
    assert ServingSettings().store_url.endswith(f"{other.resolve().as_posix()}/predictions.db")
    monkeypatch.setenv(settings.ROOT_ENV, str(tmp_path / "missing"))
    with pytest.raises(ConfigError, match="PIPELINE_ROOT"):
        settings.project_root()


def test_no_project_is_an_error_not_libs_location(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(settings.ROOT_ENV, raising=False)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError, match="no project found"):
        settings.project_root()
    with pytest.raises(ConfigError):
        ServingSettings()
    # explicit values need no project
    given = ServingSettings(tracking_uri="sqlite:///a.db", store_url="sqlite:///b.db",
                            models_dir=tmp_path)  # fmt: skip
    assert given.store_url == "sqlite:///b.db"


def test_lib_never_locates_anything_from_its_own_files() -> None:
    """`__file__` in lib/ would put data, notebooks or defaults next to the installed source."""
    offenders = [
        f"{path.relative_to(LIB.parent)}:{node.lineno}"
        for path in sorted(LIB.rglob("*.py"))
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8")))
        if isinstance(node, ast.Name) and node.id == "__file__"
    ]
    assert not offenders, "lib/ locates something from its own source: " + ", ".join(offenders)


# --- MLflow credentials (issue 18: a tracking server with basic auth) ---------------------------

_USER, _PASSWORD = "pipeline-admin", "Pg-s3cret-9d41f7c2e8"


def _no_mlflow_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """None of the variables set; whatever the code under test sets is undone after the test
    (monkeypatch restores only what it recorded: setenv records, delenv of a missing one not)."""
    for name in (*CREDENTIAL_VARS, "MLFLOW_TRACKING_URI"):
        monkeypatch.setenv(name, "")
        monkeypatch.delenv(name)


def test_credentials_in_the_uri_move_to_the_environment(monkeypatch) -> None:
    _no_mlflow_environment(monkeypatch)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "https://bob:p%40ss@mlflow.example:5000/x")
    clean = credentials_to_environment(os.environ["MLFLOW_TRACKING_URI"])
    assert clean == "https://mlflow.example:5000/x" == os.environ["MLFLOW_TRACKING_URI"]
    assert [os.environ[n] for n in CREDENTIAL_VARS] == ["bob", "p@ss"]
    # credentials already in the environment win (as in MLflow's client); other URIs unchanged
    assert credentials_to_environment("http://eve:other@h") == "http://h"
    assert os.environ["MLFLOW_TRACKING_USERNAME"] == "bob"
    for uri in ("sqlite:////srv/mlflow.db", "postgresql://u:p@db/x", "http://h:5000"):
        assert credentials_to_environment(uri) == uri


def test_the_resolved_tracking_uri_carries_no_credentials(tmp_path: Path, monkeypatch) -> None:
    """What the runner hands to notebooks (Papermill parameters land in the executed .ipynb and
    its HTML) and to the services it starts (their command line) is the resolved URI."""
    _no_mlflow_environment(monkeypatch)
    (tmp_path / "runner.py").write_text("")
    cfg = load_config(tmp_path, None, {"tracking_uri": f"http://{_USER}:{_PASSWORD}@h:5000"})
    assert _PASSWORD not in json.dumps(cfg.to_dict())
    assert cfg.resolved_tracking_uri(tmp_path) == "http://h:5000"
    assert os.environ["MLFLOW_TRACKING_PASSWORD"] == _PASSWORD  # kernels and services inherit it
