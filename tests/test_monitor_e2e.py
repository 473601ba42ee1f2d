"""06 monitor for real: a production service, replayed traffic and feedback, runner.py."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import httpx
import pytest

from lib import registry
from lib.delivery import releases as deployments
from lib.delivery import replayer
from tests.support.deploy import NAME, World, make_runner_project, runner_settings

pytestmark = pytest.mark.e2e


def _promote_second(world: World) -> tuple[str, str]:
    v1 = world.champion()
    v2 = world.register(world.forest(11))
    deployments.promote(world.client, NAME, v2, world.models, world.logs, reason="test")
    return v1, v2


def _run_monitor(world: World, url: str, *extra: str) -> dict:
    proc = subprocess.run(
        [sys.executable, "runner.py", "--stages", "monitor", *runner_settings(world, url),
         "--set", "monitor_window_seconds=600",
         "--set", "monitoring={min_feedback: 100, min_requests: 50, min_drift_samples: 100}",
         *extra],
        cwd=world.root, env={**os.environ, "PYTHONPATH": ""}, capture_output=True, text=True,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    reports = sorted((world.root / "reports").glob("*/report.json"))
    return json.loads(reports[-1].read_text())


def test_worse_production_model_is_detected_and_rolled_back(world: World) -> None:
    make_runner_project(world.root)
    v1, v2 = _promote_second(world)
    records = [(replayer.app_request(r), float(r["rating"])) for _, r in world.holdout.iterrows()]
    with world.service() as prod:
        # feedback says the opposite of reality: the live accuracy collapses
        bad = replayer.Replayer(prod.url, records, rate=0, label_flip=True)
        with httpx.Client() as client:
            for body, rating in records[:300]:
                bad.send_one(client, body, rating)
        assert bad.stats.feedback == 300
        summary = _run_monitor(world, prod.url)
        res = summary["results"]
        assert res["rolled_back"] is True and summary["outcome"] == "monitor_rolled_back"
        assert any(a["check"] == "accuracy" and a["severity"] == "critical" for a in res["alerts"])
        assert "accuracy" in res["monitor_rollback_reason"]
        # same path as `runner.py rollback`: registry, models/ and the running service
        assert world.champion() == v1
        assert registry.alias_version(world.client, NAME, "champion") == v1
        assert deployments.production_version(world.models) == v1
        assert str(httpx.get(f"{prod.url}/health").json()["champion"]["version"]) == v1
    history = json.loads((world.models / "deployments.json").read_text())
    assert history[-1]["event"] == "rollback" and history[-1]["rolled_back_version"] == v2


def test_drifted_inputs_alert_without_rollback(world: World) -> None:
    make_runner_project(world.root)
    _, v2 = _promote_second(world)
    records = []
    for _, row in world.holdout.iterrows():
        body = replayer.app_request(row)
        body["reviews"] = (body["reviews"] or 0) * 1000 + 5e6  # a very different population
        body["installs"] = (body["installs"] or 0) * 1000 + 1e9
        body["category"] = "GAME"
        records.append((body, float(row["rating"])))
    with world.service() as prod:
        good = replayer.Replayer(prod.url, records, rate=0)
        with httpx.Client() as client:
            for body, rating in (records * 2)[:300]:
                good.send_one(client, body, rating)
        summary = _run_monitor(world, prod.url)
    res = summary["results"]
    drifted = set(res["drift"]["drifted_features"])
    assert {"reviews", "installs", "category"} <= drifted
    assert any(a["check"].startswith("drift") for a in res["alerts"])
    assert res["rolled_back"] is False and world.champion() == v2
