"""Promotion, rollback and canary abort on a throw-away MLflow SQLite store with real models."""

from __future__ import annotations

import hashlib
import itertools
import json
from pathlib import Path

import mlflow
import numpy as np
import pytest

from lib import registry
from lib.delivery import releases as deployments
from lib.delivery import service_control
from lib.delivery.releases import DeploymentError, NothingToRollBack
from lib.pipeline import training
from tests.support.apps import typed_apps as _typed

_names = itertools.count()


@pytest.fixture(scope="module")
def mlflow_store(tmp_path_factory: pytest.TempPathFactory):
    """One SQLite store with two logged models (logistic regression, random forest)."""
    root = tmp_path_factory.mktemp("mlflow")
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(root)  # default artifact location lands in the temp dir
        client = registry.connect(f"sqlite:///{root}/mlflow.db", "test-deployments")
        data = training.labeled_data(_typed(240, seed=3), 4.0)
        uris, models = {}, {}
        for name in ("logistic_regression", "random_forest"):
            model = training.build_candidate(name, seed=0, rf_trees=10).fit(data.X, data.y)
            with mlflow.start_run():
                uris[name] = registry.log_candidate_model(model, data.X).model_uri
            models[name] = model
        yield client, uris, models, data.X.head(30)
    mlflow.set_tracking_uri(None)
    mlflow.set_registry_uri(None)


@pytest.fixture
def env(mlflow_store, tmp_path: Path):
    """A fresh registered model with v1 = LR, v2 = RF, v3 = LR, and empty models/ and logs/."""
    client, uris, models, X = mlflow_store
    name = f"m{next(_names)}"
    for kind in ("logistic_regression", "random_forest", "logistic_regression"):
        registry.register(client, uris[kind], name, {"kind": kind})
    return {
        "client": client,
        "name": name,
        "models": tmp_path / "models",
        "logs": tmp_path / "logs",
        "X": X,
        "proba": {
            "1": models["logistic_regression"].predict_proba(X),
            "2": models["random_forest"].predict_proba(X),
            "3": models["logistic_regression"].predict_proba(X),
        },
    }


def _promote(env, version: str, reason: str = "", **kw):
    return deployments.promote(
        env["client"], env["name"], version, env["models"], env["logs"], reason=reason, **kw
    )


def _rollback(env, reason: str = "canary failed", **kw):
    return deployments.rollback(
        env["client"], env["name"], env["models"], env["logs"], reason, **kw
    )


def _alias(env, alias: str) -> str | None:
    return registry.alias_version(env["client"], env["name"], alias)


def _serves(env, version: str) -> None:
    """models:/<name>@champion and models/production/ both hold that version's model."""
    assert _alias(env, "champion") == version
    loaded = mlflow.sklearn.load_model(f"models:/{env['name']}@champion")
    np.testing.assert_allclose(loaded.predict_proba(env["X"]), env["proba"][version])
    local = mlflow.sklearn.load_model(str(env["models"] / "production"))
    np.testing.assert_allclose(local.predict_proba(env["X"]), env["proba"][version])
    assert deployments.production_version(env["models"]) == version


def _log_lines(env) -> list[str]:
    return (env["logs"] / "deployment.log").read_text().splitlines()


def _snapshot(*roots: Path) -> dict[str, str]:
    return {
        str(p): hashlib.sha256(p.read_bytes()).hexdigest()
        for root in roots
        if root.exists()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


@pytest.mark.component
def test_first_promotion(env) -> None:
    registry.set_alias(env["client"], env["name"], "canary", "1")
    result = _promote(env, "1", reason="score 85", metrics={"roc_auc": 0.77})
    _serves(env, "1")
    assert _alias(env, "previous") is None
    assert _alias(env, "canary") is None
    assert result["aliases_removed"] == ["canary"] and result["archived"] is None
    meta = deployments.production_metadata(env["models"])
    assert meta["version"] == "1" and meta["reason"] == "score 85"
    assert meta["run_id"] == registry.version_run_id(env["client"], env["name"], "1")
    assert meta["promoted_at"].endswith("+00:00")
    [record] = deployments.history(env["models"])
    assert record["event"] == "promote" and record["version"] == "1"
    assert record["previous_version"] is None and record["metrics"] == {"roc_auc": 0.77}
    [line] = _log_lines(env)
    assert " promote " in line and "version=1" in line and 'reason="score 85"' in line
    assert line.split(" ")[0].endswith("+00:00")


@pytest.mark.component
def test_second_promotion_keeps_the_first_as_previous(env) -> None:
    _promote(env, "1")
    result = _promote(env, "2", reason="better")
    _serves(env, "2")
    assert _alias(env, "previous") == "1"
    [copy] = deployments.previous_copies(env["models"])
    assert copy.name.endswith("-v1") and str(copy) == result["archived"]
    assert json.loads((copy / "deployment.json").read_text())["version"] == "1"
    assert [r["previous_version"] for r in deployments.history(env["models"])] == [None, "1"]
    assert len(_log_lines(env)) == 2
    assert not [p for p in env["models"].iterdir() if p.name.startswith(".")]


@pytest.mark.component
def test_rollback_restores_previous_and_records_it(env) -> None:
    _promote(env, "1")
    _promote(env, "2")
    result = _rollback(env, reason="accuracy dropped 8.9 points")
    _serves(env, "1")
    assert _alias(env, "previous") is None  # v1 had no predecessor in the history
    assert result["rolled_back_version"] == "2" and result["restored_from"].endswith("-v1")
    meta = deployments.production_metadata(env["models"])
    assert meta["rolled_back_version"] == "2" and meta["restored_at"]
    assert meta["reason"] == "accuracy dropped 8.9 points"
    record = deployments.history(env["models"])[-1]
    assert record["event"] == "rollback" and record["version"] == "1"
    assert record["previous_version"] == "2"
    line = _log_lines(env)[-1]
    assert " rollback " in line and "rolled_back_version=2" in line and "version=1" in line
    tags = env["client"].get_model_version(env["name"], "2").tags
    assert tags["rollback_reason"] == "accuracy dropped 8.9 points"


@pytest.mark.component
def test_nothing_to_roll_back_changes_nothing(env) -> None:
    with pytest.raises(NothingToRollBack, match="no champion"):
        _rollback(env)
    _promote(env, "1")
    before = _snapshot(env["models"], env["logs"])
    aliases = {a: _alias(env, a) for a in ("champion", "previous", "canary")}
    with pytest.raises(NothingToRollBack) as err:
        _rollback(env)
    assert "`previous` alias is not set" in str(err.value)
    assert "nothing was changed" in str(err.value)
    assert _snapshot(env["models"], env["logs"]) == before
    assert {a: _alias(env, a) for a in aliases} == aliases
    _serves(env, "1")


@pytest.mark.component
def test_repeated_rollbacks_walk_back_and_then_stop(env) -> None:
    for version in ("1", "2", "3"):
        _promote(env, version)
    _rollback(env)
    _serves(env, "2")
    assert _alias(env, "previous") == "1"  # from the history, never the rolled-back v3
    _rollback(env)
    _serves(env, "1")
    assert _alias(env, "previous") is None
    before = _snapshot(env["models"], env["logs"])
    with pytest.raises(NothingToRollBack):
        _rollback(env)
    assert _snapshot(env["models"], env["logs"]) == before


@pytest.mark.component
def test_only_five_previous_copies_are_kept(env) -> None:
    for version in ("1", "2", "1", "2", "1", "2", "1"):
        _promote(env, version)
    copies = deployments.previous_copies(env["models"])
    assert len(copies) == 5
    assert [c.name[-2:] for c in copies] == ["v2", "v1", "v2", "v1", "v2"]
    assert len(deployments.history(env["models"])) == 7
    assert len(_log_lines(env)) == 7
    _serves(env, "1")


@pytest.mark.component
def test_rollback_mirrors_from_the_registry_when_the_copy_is_gone(env) -> None:
    _promote(env, "1")
    _promote(env, "2")
    for copy in deployments.previous_copies(env["models"]):
        for f in sorted(copy.rglob("*"), reverse=True):
            f.rmdir() if f.is_dir() else f.unlink()
        copy.rmdir()
    result = _rollback(env)
    assert result["restored_from"] == "registry"
    _serves(env, "1")


@pytest.mark.component
def test_promoting_the_champion_again_is_idempotent(env) -> None:
    _promote(env, "1")
    _promote(env, "2")
    again = _promote(env, "2")
    assert again["already_champion"] and again["archived"] is None
    assert _alias(env, "previous") == "1"
    assert len(deployments.history(env["models"])) == 2
    assert len(deployments.previous_copies(env["models"])) == 1


class Killed(BaseException):
    """Stands for kill -9 in-process: no `except Exception` handler sees it."""


def _die_at(monkeypatch, point: str) -> None:
    def fault(name: str) -> None:
        if name == point:
            raise Killed(name)

    monkeypatch.setattr(deployments, "fault_point", fault)


@pytest.mark.component
def test_promotion_interrupted_after_the_registry_is_completed_by_a_rerun(env, monkeypatch):
    _promote(env, "1")
    _die_at(monkeypatch, "after_alias_move")
    with pytest.raises(Killed):
        _promote(env, "2")
    monkeypatch.undo()
    assert _alias(env, "champion") == "2" and _alias(env, "previous") == "1"
    assert deployments.production_version(env["models"]) == "1"  # stale mirror
    _promote(env, "2")
    _serves(env, "2")
    assert _alias(env, "previous") == "1"  # not overwritten by the re-run
    assert [r["version"] for r in deployments.history(env["models"])] == ["1", "2"]


@pytest.mark.component
def test_promotion_whose_files_cannot_be_swapped_is_undone_everywhere(env, monkeypatch):
    """Issue 9 item 2: models/production not writable after the aliases moved."""
    _promote(env, "1")
    _promote(env, "2")
    for _ in range(6):  # repeated failures never pile up copies in models/previous
        registry.set_alias(env["client"], env["name"], "canary", "3")

        def refuse(*args, **kwargs):
            raise PermissionError("[Errno 1] Operation not permitted: 'models/production'")

        monkeypatch.setattr(deployments, "_swap_production", refuse)
        with pytest.raises(deployments.PromotionUndone, match="stay on v2"):
            _promote(env, "3")
        monkeypatch.undo()
        _serves(env, "2")
        assert _alias(env, "previous") == "1"
        assert len(deployments.previous_copies(env["models"])) <= 1
    last = deployments.history(env["models"])[-1]
    assert last["event"] == "promote_undone" and last["champion_version"] == "2"
    assert "PermissionError" in last["reason"]
    assert "champion=2" in _log_lines(env)[-1] and "promote_undone" in _log_lines(env)[-1]
    assert not [p for p in env["models"].iterdir() if p.name.startswith(".")]


@pytest.mark.component
def test_first_promotion_undone_leaves_no_champion(env, monkeypatch):
    def refuse(*args, **kwargs):
        raise PermissionError("read-only")

    monkeypatch.setattr(deployments, "_swap_production", refuse)
    with pytest.raises(deployments.PromotionUndone):
        _promote(env, "1")
    assert _alias(env, "champion") is None and _alias(env, "previous") is None


@pytest.mark.component
def test_service_reload_failure_is_a_note_not_a_rollback(env, monkeypatch):
    monkeypatch.setattr(service_control, "RELOAD_BACKOFF_SECONDS", 0.01)
    _promote(env, "1")
    calls = []

    def unreachable() -> None:
        calls.append(1)
        raise ConnectionError("connection refused")

    result = _promote(env, "2", reload=unreachable)
    assert len(calls) == service_control.RELOAD_ATTEMPTS
    _serves(env, "2")  # the promotion stands: registry, models/ and the record
    assert result["service_reloaded"] is False
    record = deployments.history(env["models"])[-1]
    assert record["event"] == "promote" and record["champion_version"] == "2"
    assert record["service"].startswith("not reloaded (ConnectionError")
    assert "champion=2" in _log_lines(env)[-1] and "not reloaded" in _log_lines(env)[-1]
    again = _promote(env, "2", reload=lambda: None)  # a re-run finishes the service part
    assert again["service_reloaded"] is True
    assert deployments.history(env["models"])[-1]["service"] == "reloaded"


@pytest.mark.component
def test_rollback_removes_the_canary_alias_and_reloads(env) -> None:
    _promote(env, "1")
    _promote(env, "2")
    registry.set_alias(env["client"], env["name"], "canary", "3")
    reloads = []
    result = _rollback(env, reload=lambda: reloads.append(_alias(env, "champion")))
    assert _alias(env, "canary") is None
    assert reloads == ["1"]  # the service reloaded after the champion moved
    assert result["service"] == "reloaded" and result["champion_version"] == "1"
    assert "champion=1" in _log_lines(env)[-1]


@pytest.mark.component
def test_rollback_interrupted_after_the_registry_is_completed_by_a_rerun(env, monkeypatch):
    _promote(env, "1")
    _promote(env, "2")

    def crash(*args, **kwargs):
        raise OSError("killed")

    monkeypatch.setattr(deployments, "_restore_copy", crash)
    with pytest.raises(OSError):
        _rollback(env, version="2")
    monkeypatch.undo()
    assert _alias(env, "champion") == "1"
    assert deployments.production_version(env["models"]) == "2"
    result = _rollback(env, version="2")  # does not walk back any further
    _serves(env, "1")
    assert result["rolled_back_version"] == "2"
    assert _rollback(env, version="2")["already_done"]
    assert [r["event"] for r in deployments.history(env["models"])] == [
        "promote", "promote", "rollback"]  # fmt: skip


@pytest.mark.component
def test_rollback_of_a_version_that_is_not_champion_is_refused(env) -> None:
    _promote(env, "1")
    _promote(env, "2")
    before = _snapshot(env["models"], env["logs"])
    with pytest.raises(NothingToRollBack, match="v3 is not the champion"):
        _rollback(env, version="3")
    assert _snapshot(env["models"], env["logs"]) == before
    assert _alias(env, "champion") == "2"


@pytest.mark.component
def test_promoting_an_unknown_version_changes_nothing(env) -> None:
    _promote(env, "1")
    before = _snapshot(env["models"], env["logs"])
    with pytest.raises(DeploymentError, match="version 99 is not in the registry"):
        _promote(env, "99")
    assert _snapshot(env["models"], env["logs"]) == before
    assert _alias(env, "champion") == "1"


@pytest.mark.component
def test_abort_canary_leaves_production_alone(env) -> None:
    _promote(env, "1")
    registry.set_alias(env["client"], env["name"], "canary", "2")
    registry.set_alias(env["client"], env["name"], "staging", "2")
    before = _snapshot(env["models"] / "production")
    record = deployments.abort_canary(
        env["client"], env["name"], env["logs"], "p99 812 ms > 500 ms", "2",
        models_dir=env["models"],
    )  # fmt: skip
    assert _alias(env, "canary") is None and _alias(env, "staging") is None
    assert record["aliases_removed"] == ["canary", "staging"]
    _serves(env, "1")
    assert _snapshot(env["models"] / "production") == before
    assert deployments.history(env["models"])[-1]["event"] == "canary_rollback"
    line = _log_lines(env)[-1]
    assert "canary_rollback" in line and "version=2" in line and "champion=1" in line


@pytest.mark.component
def test_abort_canary_keeps_another_versions_alias(env) -> None:
    registry.set_alias(env["client"], env["name"], "canary", "3")
    deployments.abort_canary(
        env["client"], env["name"], env["logs"], "x", "2", models_dir=env["models"]
    )
    assert _alias(env, "canary") == "3"


def test_log_line_is_one_line_and_redacted(tmp_path: Path) -> None:
    line = deployments.log_transition(
        tmp_path, "promote", version="2", reason="two\nlines", admin_token="abc123",
        tracking_uri="postgresql://u:pw@db/x",
    )  # fmt: skip
    text = (tmp_path / "deployment.log").read_text()
    assert text == line + "\n" and text.count("\n") == 1
    assert "abc123" not in text and "admin_token=***" in text
    assert "pw@" not in text and "postgresql://***@db/x" in text
    assert 'reason="two\\nlines"' in text


def test_a_registry_outage_reason_reaches_the_log_unmangled(tmp_path: Path) -> None:
    """An `@alias` later in a reason is not a URL's userinfo (the log said
    "MLflow registry at http://***@champion"); a real one is still hidden."""
    outage = (
        "registry outage at canary weight 5%: MLflow registry at {uri} is unavailable while "
        "looking up playstore-rating@champion: connection refused"
    )
    for uri in ("http://127.0.0.1:5000", "http://ops:s3cret@127.0.0.1:5000"):
        deployments.log_transition(
            tmp_path, "rolled_back", version="2", reason=outage.format(uri=uri)
        )
    first, second = (tmp_path / "deployment.log").read_text().splitlines()
    assert outage.format(uri="http://127.0.0.1:5000") in first
    assert outage.format(uri="http://***@127.0.0.1:5000") in second
    assert "s3cret" not in second


def test_corrupt_history_is_an_error_not_a_reset(tmp_path: Path) -> None:
    assert deployments.history(tmp_path) == []
    (tmp_path / "deployments.json").write_text("{oops")
    with pytest.raises(DeploymentError, match="unreadable"):
        deployments.history(tmp_path)
