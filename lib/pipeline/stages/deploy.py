"""05 deploy: staging and smoke tests, then canary steps with analysis, then promotion; any
failed check rolls back (see lib.delivery.progressive for the sequence and its guarantees)."""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import pandas as pd

from lib import registry
from lib.config import resolve_data
from lib.delivery import progressive, replayer
from lib.pipeline import data
from lib.pipeline.contracts import DeployInputs, DeployOutputs
from lib.pipeline.stages import compare
from lib.settings import store_url, tracking_uri

log = logging.getLogger(__name__)


@dataclass
class Plan:
    client: Any
    tracking_uri: str
    version: str
    champion: str | None
    holdout: pd.DataFrame
    settings: progressive.DeploySettings


def plan(inputs: DeployInputs, root: Path) -> Plan:
    uri = tracking_uri(inputs.tracking_uri, root)
    client = registry.connect(uri, inputs.experiment)
    version = compare.candidate_version(client, inputs.model_name, inputs.candidate_version)
    apps = data.read_apps(resolve_data(inputs.data_path, root)).apps
    holdout = replayer.holdout_apps(apps, inputs.target_threshold, inputs.test_size, inputs.seed)
    same_names = {f.name for f in fields(progressive.DeploySettings)} - {"store_url"}
    settings = progressive.DeploySettings(
        **inputs.model_dump(include=same_names), store_url=store_url(inputs.store_url, root)
    )
    champion = registry.alias_version(client, inputs.model_name, "champion")
    return Plan(client, uri, version, champion, holdout, settings)


def plan_table(inputs: DeployInputs, p: Plan) -> pd.DataFrame:
    return pd.Series(
        {
            "candidate": f"v{p.version}",
            "champion": f"v{p.champion}",
            "steps": list(inputs.steps),
            "window (s)": inputs.analysis_seconds,
            "held-out apps to replay": len(p.holdout),
            "service": inputs.serving_url or "started by this stage",
        },
        name="rollout",
    ).to_frame()


def deploy(inputs: DeployInputs, root: Path, p: Plan) -> progressive.DeployOutcome:
    """The rollout; run alone (act_on_production False, the notebook's default) only the plan:
    a notebook opened to read must not deploy to whatever registry the environment names."""
    if not inputs.act_on_production:
        why = (
            f"run alone: v{p.version} planned, not deployed (set act_on_production = True to "
            f"deploy it on purpose, or python runner.py deploy {p.version})"
        )
        log.warning("05 deploy %s", why)
        return progressive.DeployOutcome("planned", p.version, p.champion, why, [], None, [])
    return progressive.deploy(
        root,
        p.client,
        inputs.model_name,
        p.tracking_uri,
        p.version,
        p.holdout,
        p.settings,
        root / inputs.models_dir,
        root / inputs.logs_dir,
        inputs.run_id,
    )


def checks_table(outcome: progressive.DeployOutcome) -> pd.DataFrame:
    """What every check of every step saw (or the smoke tests', when no step ran)."""
    rows = [
        {
            "step": step.get("step", f"{step['weight']}%"),  # "shadow": weight 0, no answers
            "verdict": step["verdict"],
            "check": check["name"],
            "status": check["status"],
            "what it saw": check["message"],
        }
        for step in outcome.steps
        for check in step.get("checks", [])
    ]
    if rows:
        return pd.DataFrame(rows)
    return pd.DataFrame(outcome.smoke["checks"] if outcome.smoke else [])


def headline(outcome: progressive.DeployOutcome) -> str:
    why = f" ({outcome.rollback_reason})" if outcome.rollback_reason else ""
    note = f"; NOTE: {outcome.note}" if outcome.note else ""
    return f"outcome: {outcome.outcome}{why}{note}"


def outputs(outcome: progressive.DeployOutcome) -> DeployOutputs:
    same_names = {k: v for k, v in asdict(outcome).items() if k in DeployOutputs.model_fields}
    return DeployOutputs(**same_names, deployed_version=str(outcome.version))


def run(inputs: DeployInputs, root: Path) -> DeployOutputs:
    return outputs(deploy(inputs, root, plan(inputs, root)))
