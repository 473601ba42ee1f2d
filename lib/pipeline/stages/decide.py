"""04 decide: the gate, then the score table, read on the evidence 03 compare measured.

`act` is what the runner does with the verdict: `auto` goes on to 05 deploy, `manual` parks the
rollout for a person's approval, `reject` records why and leaves production as it was.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from lib import registry, score_table
from lib.delivery import operations, releases
from lib.pipeline import scoring
from lib.pipeline.contracts import CompareInputs, DecideInputs, DecideOutputs
from lib.pipeline.stages import compare
from lib.settings import tracking_uri


def evidence(inputs: DecideInputs, root: Path) -> DecideInputs:
    """The inputs with 03 compare's evidence; run alone (no evidence given), compare again
    rather than guess."""
    if inputs.improvement_interval is not None:
        return inputs
    again = compare.compare(
        CompareInputs(
            **inputs.model_dump(include=set(CompareInputs.model_fields) - {"parent_run_id"})
        ),
        root,
    ).result
    # candidate_version, improvement_interval, candidate_interval, cv_std, reference_label
    same_names = {k: v for k, v in again.to_dict().items() if k in DecideInputs.model_fields}
    return inputs.model_copy(update={**same_names, "gate_inputs": again.gate})


def decide(inputs: DecideInputs) -> scoring.Decision:
    if inputs.improvement_interval is None or inputs.gate_inputs is None:
        raise ValueError("no evidence to decide on: call decide.evidence(inputs, root) first")
    return scoring.decide(
        inputs.improvement_interval,
        inputs.candidate_interval,
        inputs.cv_std,
        score_table.ScoreTable.from_dict(inputs.decision_table or None),
        metric=inputs.selection_metric,
        baseline_label=inputs.reference_label or "champion",
        gate=inputs.gate_inputs,
    )


def record(inputs: DecideInputs, root: Path, decision: scoring.Decision) -> DecideOutputs:
    """The verdict as tags of the version, its run and the pipeline's parent run (with
    `log_to_mlflow`, the runner's: a notebook run alone leaves the version's record as it was)."""
    client = registry.connect(tracking_uri(inputs.tracking_uri, root), inputs.experiment)
    version = compare.candidate_version(client, inputs.model_name, inputs.candidate_version)
    tags = {
        "decision": decision.verdict,
        "decision.score": decision.score,
        "decision.reasons": " | ".join(r.text for r in decision.reasons),
    }
    if inputs.log_to_mlflow:
        registry.set_version_tags(client, inputs.model_name, version, tags)
        registry.tag_run(registry.version_run_id(client, inputs.model_name, version), tags)
        if inputs.parent_run_id:
            registry.tag_run(inputs.parent_run_id, tags)
    return DecideOutputs(
        candidate_version=version,
        score=decision.score,
        decision=decision.verdict,
        reasons=[r.text for r in decision.reasons],
        decision_detail=decision.to_dict(),
    )


def run(inputs: DecideInputs, root: Path) -> DecideOutputs:
    inputs = evidence(inputs, root)
    return record(inputs, root, decide(inputs))


Action = Literal["deploy", "awaiting_approval", "rejected"]


def act(
    decided: DecideOutputs,
    *,
    root: Path,
    models_dir: str,
    logs_dir: str,
    model_name: str,
    champion_version: str | None,
    run_id: str,
    serving_url: str | None = None,
    tracking_uri: str | None = None,
    experiment: str | None = None,
) -> Action:
    """What the verdict does: `auto` deploys; `manual` parks the rollout (approve/reject
    resume it, here or, through the version's tags, on another machine); `reject` is logged,
    production untouched. `tracking_uri`: the registry (default: the one the runner opened)."""
    reasons = "; ".join(decided.reasons)
    if decided.decision == "auto":
        return "deploy"
    if decided.decision == "manual":
        import mlflow

        uri = tracking_uri or mlflow.get_registry_uri()
        client = registry.connect(uri, experiment) if experiment else registry.client_for(uri)
        operations.park_for_approval(
            root / models_dir,
            root / logs_dir,
            model_name,
            decided.candidate_version,
            champion_version,
            run_id,
            f"score {decided.score}: {reasons}",
            serving_url,
            client,
        )
        return "awaiting_approval"
    releases.log_transition(
        root / logs_dir,
        "rejected",
        version=decided.candidate_version,
        reason=f"score {decided.score}: {reasons}",
    )
    return "rejected"
