"""The evidence 03 compare hands to 04 decide, judged by the real score table (no kernel)."""

from __future__ import annotations

import numpy as np
import pytest

from lib import score_table
from lib.pipeline import comparison, scoring, uncertainty


def _decide(y, cand, ref, metric="roc_auc") -> scoring.Decision:
    ev = comparison.compare_predictions(y, cand, ref, metric)
    g = ev["gate"]
    gate = score_table.GateInputs(
        score_table.Evidence.from_dict(g["roc_auc"]), g["accuracy"], g["majority_share"], g["n"]
    )
    return scoring.decide(
        score_table.Evidence.from_dict(ev["improvement_interval"]),
        score_table.Evidence.from_dict(ev["candidate_interval"]),
        0.01,
        metric=metric,
        gate=gate,
    )


def _skilled(n: int, seed: int, noise: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    signal = rng.normal(size=n)
    y = (signal + rng.normal(scale=noise, size=n) > -0.6).astype(int)  # about 70% positives
    proba = 1 / (1 + np.exp(-(signal + 0.6) * 1.5))
    return y, proba


def test_a_candidate_identical_to_the_champion_is_not_auto() -> None:
    y, proba = _skilled(1900, 0)
    labels = (proba >= 0.5).astype(int)
    ev = comparison.compare_predictions(y, (proba, labels), (proba, labels), "roc_auc")
    diff = ev["improvement_interval"]
    assert diff["estimate"] == diff["low"] == diff["high"] == 0.0
    decision = _decide(y, (proba, labels), (proba, labels))
    assert decision.gate_passed is True and decision.verdict != "auto"


def test_a_model_with_no_skill_is_rejected_by_the_gate_against_the_baseline() -> None:
    rng = np.random.default_rng(1)
    y = (rng.random(1900) < 0.7).astype(int)
    noise = rng.random(1900)
    baseline = uncertainty.majority_baseline(y, len(y))
    decision = _decide(y, (noise, (noise >= 0.3).astype(int)), baseline)
    assert decision.verdict == "reject" and decision.gate_passed is False
    assert any(r.criterion == "gate" and "no skill" in r.text for r in decision.reasons)


@pytest.mark.parametrize("n", [40, 120])
def test_a_modest_model_on_too_few_rows_is_not_auto(n: int) -> None:
    """ROC-AUC about 0.6: wide intervals on a handful of rows, no automatic deployment; the same
    model on plenty of rows clears the gate and the table. (Strong evidence is evidence: a model
    at 0.9 may well earn `auto` on 120 rows.)"""

    def judged(rows: int) -> scoring.Decision:
        y, proba = _skilled(rows, 2, noise=3.0)
        labels = np.ones(rows, dtype=int)  # the majority answer: the gate's accuracy floor
        return _decide(y, (proba, labels), uncertainty.majority_baseline(y, rows))

    small = judged(n)
    assert small.verdict != "auto", [r.text for r in small.reasons]
    big = judged(5000)
    assert big.verdict == "auto", [r.text for r in big.reasons]


# --- 03 compare run alone (a data scientist's notebook, its own defaults) ---------------------


def _notebook_defaults(name: str) -> dict:
    """The values of a notebook's `parameters` cell, exactly as Jupyter would run them."""
    import json
    from pathlib import Path

    book = json.loads((Path(__file__).parents[1] / "notebooks" / f"{name}.ipynb").read_text())
    (cell,) = [c for c in book["cells"] if "parameters" in c["metadata"].get("tags", [])]
    namespace: dict = {}
    exec("".join(cell["source"]), namespace)  # noqa: S102 - our own notebook's literals
    return {k: v for k, v in namespace.items() if not k.startswith("__")}


def _record_of(client, name: str, version: str) -> dict:
    """Everything a run alone must not change: the version's tags, its run's metrics (with
    their history), params and tags."""
    from lib import registry

    run_id = registry.version_run_id(client, name, version)
    run = client.get_run(run_id)
    history = {k: [m.value for m in client.get_metric_history(run_id, k)] for k in run.data.metrics}
    return {
        "version_tags": dict(client.get_model_version(name, version).tags),
        "metrics": history,
        "params": dict(run.data.params),
        "tags": {k: v for k, v in run.data.tags.items()},
    }


@pytest.fixture
def champion_as_candidate(world):
    """The issue's case: the registered champion (also @candidate, as after a promotion) with
    CV figures and the digest of the data it was trained on (not the generated default file)."""
    from lib import registry
    from lib.pipeline import synth
    from tests.support.deploy import NAME

    v = world.champion()
    run_id = registry.version_run_id(world.client, NAME, v)
    world.client.log_metric(run_id, "cv_roc_auc_mean", 0.8)
    world.client.log_metric(run_id, "cv_roc_auc_std", 0.01)
    world.client.set_model_version_tag(NAME, v, "data_digest", "0123456789abcdef")
    registry.set_alias(world.client, NAME, "candidate", v)
    synth.write_default_dataset(world.root / _notebook_defaults("03_compare")["data_path"], 1200)
    return v


@pytest.mark.component
def test_compare_run_alone_leaves_the_champions_record_unchanged_and_says_not_comparable(
    world, champion_as_candidate
) -> None:
    from lib.pipeline.contracts import CompareInputs
    from lib.pipeline.stages import compare
    from tests.support.deploy import NAME

    v = champion_as_candidate
    before = _record_of(world.client, NAME, v)
    inputs = CompareInputs.from_namespace(_notebook_defaults("03_compare"))
    assert inputs.log_to_mlflow is False and inputs.tracking_uri is None  # the project's store
    out = compare.run(inputs, world.root)
    assert _record_of(world.client, NAME, v) == before
    check = out.comparison["data_check"]
    assert check["comparable"] is False and check["trained"] == "0123456789abcdef"
    assert check["note"].startswith(compare.NOT_COMPARABLE)


@pytest.mark.component
def test_the_runner_records_the_comparison_and_the_training_data_is_comparable(
    world, champion_as_candidate
) -> None:
    """The same stage with the runner's log_to_mlflow=True writes the bounds and tags (so the
    test above proves the switch), and on the recorded data it says it is comparable."""
    from lib.pipeline import data, training
    from lib.pipeline.contracts import CompareInputs
    from lib.pipeline.stages import compare
    from tests.support.deploy import NAME

    v = champion_as_candidate
    apps = data.read_apps(world.root / "data" / "apps.csv").apps
    labeled = training.labeled_data(apps, 4.0)
    digest = training.dataset_digest(labeled.X, labeled.y)
    world.client.set_model_version_tag(NAME, v, "data_digest", digest)
    values = {**_notebook_defaults("03_compare"), "data_path": "data/apps.csv"}
    inputs = CompareInputs.from_namespace({**values, "log_to_mlflow": True})
    out = compare.run(inputs, world.root)
    assert out.comparison["data_check"]["comparable"] is True
    after = _record_of(world.client, NAME, v)
    assert "compare_roc_auc_diff_low" in after["metrics"]
    assert after["version_tags"]["compare.reference"] == "majority-class baseline"
