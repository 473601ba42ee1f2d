"""`python runner.py demo`, run as a new user would (the README's command in a fresh project copy):
the retrained candidate goes through every canary step to champion, the deliberately bad one is
rolled back, production stays on the good one, and the user's own state is not touched. Judged
on the demo folder's reports, registry and models/, not on what it prints."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.e2e


def _outputs(reports: Path, stage: str) -> list[dict]:
    """Every run's outputs of `stage`, in the order the runs started."""
    runs = sorted(
        (json.loads(p.read_text()) for p in reports.glob("*/report.json")),
        key=lambda r: r["started"],
    )
    return [s["outputs"] for r in runs for s in r["stages"] if s["name"] == stage]


def test_the_demo_promotes_the_better_candidate_through_the_canary_and_rolls_back_the_bad_one(
    project: Path,
) -> None:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PIPELINE_ROOT")}
    done = subprocess.run(
        [sys.executable, "runner.py", "demo"],
        cwd=project,
        env=env,
        capture_output=True,
        text=True,
        timeout=1200,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert_the_story(project)


def assert_the_story(project: Path) -> None:
    """What the demo in `project`/demo left: its reports, registry and models/."""
    demo = project / "demo"

    first, good, bad = _outputs(demo / "reports", "deploy")
    assert [d["decision"] for d in _outputs(demo / "reports", "decide")] == ["auto", "auto"]
    assert first["outcome"] == "promoted" and first["champion_before"] is None
    assert good["outcome"] == "promoted" and good["champion_before"] == first["deployed_version"]
    steps = [(s["weight"], s["verdict"]) for s in good["steps"] if s["kind"] == "canary"]
    assert steps == [(5, "pass"), (25, "pass"), (50, "pass"), (100, "pass")]
    assert bad["outcome"] == "rolled_back" and bad["champion_before"] == good["deployed_version"]
    assert "canary step 5% failed" in bad["rollback_reason"]

    from mlflow import MlflowClient

    uri = f"sqlite:///{demo / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    name = "playstore-rating"
    champion = client.get_model_version_by_alias(name, "champion")
    assert str(champion.version) == good["deployed_version"]
    bad_version = client.get_model_version(name, bad["deployed_version"])
    assert "inverted labels" in bad_version.tags["trained_on"]  # registered as what it is
    assert "canary" not in bad_version.aliases and "champion" not in bad_version.aliases
    served = json.loads((demo / "models" / "production" / "deployment.json").read_text())
    assert str(served["version"]) == good["deployed_version"]

    # the user's own project is as it was
    assert not (project / "mlflow.db").exists()
    assert not any((project / "models").iterdir()) and not any((project / "reports").iterdir())
