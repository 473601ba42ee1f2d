"""The operator's view: `status` tells the truth after a rollback, `promote` puts a registered
version back through the staging smoke tests, and every operator action reaches the index."""

from __future__ import annotations

import argparse
import itertools
import json
import signal
import sqlite3
from contextlib import closing
from pathlib import Path

import mlflow
import pytest

from lib import registry
from lib.commands import (
    cmd_approve,
    cmd_deploy,
    cmd_promote,
    cmd_reject,
    cmd_rollback,
    cmd_status,
    cmd_store_recover,
)
from lib.config import load_config
from lib.delivery import operations, rollout, rollout_end
from lib.delivery import releases as deployments
from lib.errors import PipelineError
from lib.pipeline import training
from lib.serving import prediction_store, store_journal
from lib.serving.prediction_store import PredictionStore
from tests.support.apps import typed_apps as _typed

UNREACHABLE = "http://127.0.0.1:9"  # the discard port: no service listens on loopback
_names = itertools.count()


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory):
    """One SQLite MLflow store with one logged model, registered again for each test."""
    root = tmp_path_factory.mktemp("mlflow")
    uri = f"sqlite:///{root}/mlflow.db"
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(root)  # default artifact location lands in the temp dir
        client = registry.connect(uri, "operator-tests")
        data = training.labeled_data(_typed(240, seed=3), 4.0)
        model = training.build_candidate("logistic_regression", seed=0).fit(data.X, data.y)
        with mlflow.start_run():
            model_uri = registry.log_candidate_model(model, data.X).model_uri
        yield uri, client, model_uri
    mlflow.set_tracking_uri(None)
    mlflow.set_registry_uri(None)


class Ops:
    """A project folder whose model has v1, v2, v3 registered; v1 then v2 promoted by a rollout."""

    def __init__(self, store, root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        uri, self.client, model_uri = store
        self.name = f"ops{next(_names)}"
        for _ in range(3):
            registry.register(self.client, model_uri, self.name, {})
        self.root = root
        self.models, self.logs = root / "models", root / "logs"
        (root / "runner.py").write_text("")
        self.cfg = load_config(
            root,
            None,
            {"tracking_uri": uri, "experiment": "operator-tests", "model_name": self.name,
             "serving_url": UNREACHABLE},
        )  # fmt: skip
        self.sent: list[tuple[str, dict]] = []
        monkeypatch.setattr(
            "lib.commands.send", lambda event, **f: self.sent.append((event, f)) or []
        )
        deployments.promote(self.client, self.name, "1", self.models, self.logs, reason="first")
        state = rollout.RolloutStore(self.models / "rollout.json")
        rollout.begin(state, self.name, "2", "1", run_id="run-2")
        rollout.advance(state, rollout.Phase.SMOKE_TESTING)
        rollout_end.promote_rollout(
            self.client, self.name, state, "2", self.models, self.logs, None, None, "rollout passed"
        )

    def champion(self) -> str | None:
        return registry.alias_version(self.client, self.name, "champion")

    def say(self, command, **args) -> tuple[int, list[str]]:
        lines: list[str] = []
        code = command(self.cfg, self.root, argparse.Namespace(**args), lines.append)
        return code, lines

    def actions(self) -> list[dict]:
        path = self.root / "reports" / "operator_actions.json"
        return json.loads(path.read_text()) if path.exists() else []


@pytest.fixture
def ops(store, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Ops:
    root = tmp_path / "project"
    root.mkdir()
    return Ops(store, root, monkeypatch)


@pytest.mark.component
def test_status_after_a_rollback_tells_the_truth(ops: Ops) -> None:
    code, before = ops.say(cmd_status)
    assert code == 0 and "champion v2, previous v1" in before[0]
    assert any(x.startswith("last event:") and "v2" in x for x in before)
    ops.say(cmd_rollback, reason="bad reviews")
    assert ops.champion() == "1"
    code, lines = ops.say(cmd_status)
    text = "\n".join(lines)
    assert code == 0 and "vNone" not in text, text
    assert lines[0].endswith("champion v1, previous none, candidate none, canary none")
    (event,) = [x for x in lines if x.startswith("last event:")]
    assert "rollback" in event and "v2 rolled back, v1 champion again" in event
    assert "bad reviews" in event
    (ro,) = [x for x in lines if "rollout" in x and "succeeded" in x]
    assert ro.startswith("last rollout") and "v2 is no longer champion (v1 is)" in ro
    assert "MISMATCH" not in text  # registry, models/production and deployments.json agree


@pytest.mark.component
def test_rollback_is_an_operator_action_in_the_index(ops: Ops) -> None:
    ops.say(cmd_rollback, reason="bad reviews")
    (action,) = ops.actions()
    assert action["action"] == "rollback" and action["result"] == "done"
    assert (action["version"], action["champion"]) == ("2", "1")
    assert action["reason"] == "bad reviews"
    page = (ops.root / "reports" / "index.html").read_text()
    assert 'data-action="rollback"' in page and "bad reviews" in page
    assert [event for event, _ in ops.sent] == ["rolled_back"]


@pytest.mark.component
def test_a_second_rollback_points_to_the_promote_command(ops: Ops) -> None:
    ops.say(cmd_rollback, reason="bad reviews")
    with pytest.raises(deployments.NothingToRollBack) as refused:
        ops.say(cmd_rollback, reason="again")
    message = str(refused.value)
    assert "python runner.py promote <version>" in message and "deployments.promote" not in message
    assert refused.value.exit_code == 2


def _snapshot(root: Path) -> dict[str, bytes]:
    return {str(p): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.mark.component
@pytest.mark.parametrize(
    ("version", "reason", "says"),
    [
        ("3", None, "--reason"),
        ("3", "  ", "--reason"),
        ("99", "known good", "v99 is not in the registry"),
        ("2", "known good", "v2 is already the champion"),
        ("latest", "known good", "is not a version number"),
    ],
)
def test_promote_refuses_with_one_line_and_changes_nothing(
    ops: Ops, version: str, reason: str | None, says: str
) -> None:
    before = _snapshot(ops.root)
    with pytest.raises(PipelineError) as refused:
        ops.say(cmd_promote, version=version, reason=reason)
    assert refused.value.exit_code == 2
    assert says in str(refused.value) and "\n" not in str(refused.value)
    assert _snapshot(ops.root) == before and ops.champion() == "2" and not ops.sent


def test_runner_promote_without_a_reason_exits_2_on_one_line(capsys) -> None:
    import runner

    handler = signal.getsignal(signal.SIGTERM)
    try:
        assert runner.main(["promote", "3"]) == 2  # refused before anything is opened
    finally:
        signal.signal(signal.SIGTERM, handler)
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: promote: say why with --reason") and "\n" not in err
    assert "promote" in runner.build_parser().format_help()


# --- approval across machines: the parked rollout is also in the version's tags ------------


def _tags(ops: Ops, version: str) -> dict[str, str]:
    return registry.version_tags(ops.client, ops.name, version) or {}


def _park(ops: Ops, version: str, models: Path | None = None) -> None:
    operations.park_for_approval(
        models or ops.root / "elsewhere" / "models", ops.logs, ops.name, version, "2", "run-x",
        "score 60", client=ops.client,
    )  # fmt: skip


@pytest.mark.component
def test_a_parked_rollout_is_pending_in_the_registry_and_a_newer_one_replaces_it(
    ops: Ops,
) -> None:
    _park(ops, "3")
    tags = _tags(ops, "3")
    assert tags["approval"] == "pending" and tags["approval.run_id"] == "run-x"
    assert tags["approval.reason"] == "score 60" and tags["approval.pending_at"]
    registry.register(ops.client, registry.model_version(ops.client, ops.name, "3").source,
                      ops.name, {})  # fmt: skip
    _park(ops, "4", ops.root / "third" / "models")  # another machine: only the tags tell
    assert _tags(ops, "3")["approval"] == "rejected"
    assert "replaced by v4" in _tags(ops, "3")["approval.reason"]
    assert _tags(ops, "4")["approval"] == "pending"


@pytest.mark.component
def test_reject_from_a_fresh_checkout_reads_and_writes_the_registry(
    ops: Ops, monkeypatch: pytest.MonkeyPatch
) -> None:
    _park(ops, "3")  # parked on another machine: this project's models/ knows nothing of it
    monkeypatch.setenv("GITHUB_ACTOR", "octo-reviewer")
    monkeypatch.setenv("GITHUB_REPOSITORY", "acme/apps")
    monkeypatch.setenv("GITHUB_RUN_ID", "42")
    code, lines = ops.say(cmd_reject, version="3", reason="rejected in GitHub")
    assert code == 0 and lines == ["v3 rejected; production unchanged"]
    tags = _tags(ops, "3")
    assert tags["approval"] == "rejected" and tags["approval.by"] == "octo-reviewer"
    (action,) = ops.actions()
    assert (action["action"], action["version"], action["by"]) == ("reject", "3", "octo-reviewer")
    assert action["workflow_run"] == "https://github.com/acme/apps/actions/runs/42"
    assert "rejected" in (ops.logs / "deployment.log").read_text()
    with pytest.raises(rollout.RolloutError, match="registry: approval=rejected"):
        ops.say(cmd_approve, version="3", reason=None, run_id=None)
    assert ops.champion() == "2"


@pytest.mark.component
def test_local_state_is_authoritative_and_must_agree_with_the_registry(ops: Ops) -> None:
    _park(ops, "3", ops.models)  # parked here too
    registry.set_version_tags(ops.client, ops.name, "3", {"approval": "rejected"})
    with pytest.raises(rollout.RolloutError, match="registry says approval=rejected"):
        ops.say(cmd_reject, version="3", reason="no")
    with pytest.raises(rollout.RolloutError, match=r"v1 is not awaiting approval \(v3 is"):
        operations.parked_where(ops.client, ops.name, ops.models, "1")
    assert operations.awaiting_version(ops.models) == "3"


@pytest.mark.component
@pytest.mark.parametrize(
    ("version", "tags", "says"),
    [
        (
            "3",
            {"decision": "manual"},
            "decision is manual, not auto (approve it: runner.py approve 3)",
        ),
        ("3", {}, "decision is none, not auto"),
        ("3", {"decision": "reject"}, "decision is reject, not auto"),
        ("2", {"decision": "auto"}, "v2 is already the champion"),
        ("99", {}, "v99 is not in the registry"),
        ("v3; rm -rf /", {}, "is not a version number"),
    ],
)
def test_deploy_refuses_anything_but_an_auto_decision_not_yet_champion(
    ops: Ops, version: str, tags: dict, says: str
) -> None:
    if tags:
        registry.set_version_tags(ops.client, ops.name, version, tags)
    before = _snapshot(ops.root)
    with pytest.raises(PipelineError) as refused:
        ops.say(cmd_deploy, version=version, run_id=None)
    assert refused.value.exit_code == 2
    assert says in str(refused.value) and "\n" not in str(refused.value)
    assert _snapshot(ops.root) == before and ops.champion() == "2"


def _served(rid: str) -> dict:
    return {
        "request_id": rid, "created_at": 1.0, "variant": "champion", "model_version": "1",
        "label": 1, "probability": 0.8, "latency_ms": 3.5, "error": None, "features": {},
    }  # fmt: skip


def _dead_service(url: str, ids: list[str], torn: bool = False) -> Path:
    """The journal segment of a service killed before it wrote `ids` (lock free), with a torn
    last record when `torn`: what `store-recover` is for."""
    data = store_journal.encode([_served(i) for i in ids])
    if torn:
        data += store_journal.encode([_served("torn")])[:10]
    segment = store_journal.default_dir(url) / "999999-1-1.journal"
    segment.parent.mkdir(exist_ok=True)
    segment.write_bytes(data)
    return segment


def _stored(db: Path) -> list[str]:
    with closing(sqlite3.connect(db)) as conn:
        return sorted(r[0] for r in conn.execute("SELECT request_id FROM predictions"))


def test_store_recover_writes_a_dead_services_rows_once(tmp_path: Path, capsys) -> None:
    import runner

    db = tmp_path / "predictions.db"
    url = f"sqlite:///{db}"
    with PredictionStore(url) as service:
        service.record_predictions([_served("kept")])
    segment = _dead_service(url, ["kept", "lost-1", "lost-2"], torn=True)
    handler = signal.getsignal(signal.SIGTERM)
    try:
        assert runner.main(["store-recover", "--set", f"store_url={url}"]) == 0
        first = capsys.readouterr().out
        assert runner.main(["store-recover", "--set", f"store_url={url}"]) == 0
        second = capsys.readouterr().out
    finally:
        signal.signal(signal.SIGTERM, handler)
    assert "2 row(s) recovered, 1 lost" in first  # "kept" was stored already: not recovered
    assert _stored(db) == ["kept", "lost-1", "lost-2"]
    assert not segment.exists()
    assert "0 row(s) recovered, 0 lost" in second


def test_store_recover_keeps_what_the_database_refuses_now_and_exits_1(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(prediction_store, "SQLITE_BUSY_TIMEOUT_MS", 50)  # fail fast when locked
    db = tmp_path / "predictions.db"
    url = f"sqlite:///{db}"
    with PredictionStore(url) as service:
        service.window(0)  # the tables exist
    segment = _dead_service(url, ["a", "b"])
    cfg = load_config(tmp_path, None, {"store_url": url})
    lines: list[str] = []
    lock = sqlite3.connect(db, isolation_level=None)
    try:
        lock.execute("BEGIN IMMEDIATE")  # another writer holds the database
        code = cmd_store_recover(cfg, tmp_path, argparse.Namespace(), lines.append)
    finally:
        lock.rollback()
        lock.close()
    assert code == 1, lines
    assert "0 row(s) recovered" in lines[0] and "1 journal segment(s) not replayed" in lines[1]
    assert segment.exists() and _stored(db) == []
    assert cmd_store_recover(cfg, tmp_path, argparse.Namespace(), lines.append) == 0
    assert _stored(db) == ["a", "b"] and "2 row(s) recovered" in lines[-1]


@pytest.mark.e2e
def test_promote_puts_a_known_version_back_through_staging(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Rollback, nothing left to roll back, then `promote`: a failed smoke test changes nothing;
    a passing one moves registry, models/, the running service and the records together."""
    import httpx

    from tests.support.deploy import NAME, TOKEN, World

    root = tmp_path / "project"
    (root / "data").mkdir(parents=True)
    monkeypatch.chdir(root)
    monkeypatch.setenv("SERVING_ADMIN_TOKEN", TOKEN)
    monkeypatch.setenv("PYTHONPATH", str(Path(__file__).resolve().parents[1]))
    sent: list[str] = []
    monkeypatch.setattr("lib.commands.send", lambda event, **f: sent.append(event) or [])
    w = World(root)
    v1, v2 = w.register(w.forest(1)), w.register(w.forest(2))
    for v in (v1, v2):
        deployments.promote(w.client, NAME, v, w.models, w.logs, reason=f"rollout of v{v}")

    def say(command, overrides: dict | None = None, **args) -> tuple[int, list[str]]:
        values = {"data_path": "data/apps.csv", "tracking_uri": w.uri, "experiment": "deploy-tests",
                  "serving_url": prod.url, "store_url": w.store_url, "smoke_rows": 30}  # fmt: skip
        cfg = load_config(root, None, {**values, **(overrides or {})})
        lines: list[str] = []
        return command(cfg, root, argparse.Namespace(**args), lines.append), lines

    def serving() -> str:
        return str(httpx.get(f"{prod.url}/health").json()["champion"]["version"])

    with w.service() as prod:
        assert say(cmd_rollback, reason="bad reviews")[0] == 0 and serving() == v1
        with pytest.raises(deployments.NothingToRollBack, match="python runner.py promote"):
            say(cmd_rollback, reason="again")
        code, lines = say(cmd_promote, {"smoke_max_p95_ms": 0.001}, version=v2, reason="retry")
        assert code == 1 and "smoke tests failed" in "\n".join(lines)
        assert w.champion() == v1 and serving() == v1
        assert deployments.production_version(w.models) == v1
        code, lines = say(cmd_promote, version=v2, reason="the reviews were a bot attack")
        assert code == 0, lines
        assert w.champion() == v2 and serving() == v2
        assert deployments.production_version(w.models) == v2
        assert registry.alias_version(w.client, NAME, "previous") == v1
        code, status = say(cmd_status)
    last = deployments.history(w.models)[-1]
    assert last["event"] == "promote" and last["version"] == v2
    assert "the reviews were a bot attack" in last["reason"] and last["service"] == "reloaded"
    log = (w.logs / "deployment.log").read_text().splitlines()
    assert any(x.split()[1] == "promote" and "bot attack" in x for x in log), log[-3:]
    assert rollout.RolloutStore(w.models / "rollout.json").load().phase == rollout.Phase.SUCCEEDED
    assert sent == ["rolled_back", "deployed"]
    actions = json.loads((root / "reports" / "operator_actions.json").read_text())
    assert [(a["action"], a["result"], a["champion"]) for a in actions] == [
        ("rollback", "done", v1),
        ("promote", "failed", v1),
        ("promote", "done", v2),
    ]
    (event,) = [x for x in status if x.startswith("last event:")]
    assert f"v{v2} promoted to champion" in event or f"v{v2} succeeded" in event
    assert not any("MISMATCH" in x for x in status)
