"""Issue 17's Done-when: with labels arriving only after the rollout, 06 monitor run later rolls
back a promoted version whose realized accuracy is significantly worse than its predecessor's on
the same requests, and reports the estimated vs realized accuracy. A real prediction store and a
real MLflow registry in tmp; the rollout's rows follow the store's shadow contract."""

from __future__ import annotations

import time

import numpy as np
import pytest

from lib import registry
from lib.delivery import releases
from lib.pipeline.contracts import MonitorInputs
from lib.pipeline.run_record import RunOutputs, notifications
from lib.pipeline.stages import monitor
from lib.serving.prediction_store import SHADOW_SUFFIX, PredictionStore
from lib.watch import notify
from tests.support.deploy import NAME, World

pytestmark = pytest.mark.component

UNREACHABLE = "http://127.0.0.1:9"  # the discard port: the rollback's reload says it failed
DAY = 86400.0


def _prediction(rid: str, at: float, variant: str, version: str, label: int, **kw) -> dict:
    probability = 0.9 if label == 1 else 0.1  # confident either way: estimated accuracy 0.9
    return {
        "request_id": rid, "created_at": at, "variant": variant, "model_version": version,
        "label": label, "probability": probability, "latency_ms": 4.0, "error": None, **kw,
    }  # fmt: skip


def _rollout(store: PredictionStore, new: str, old: str, new_accuracy: float) -> dict[str, int]:
    """Two days ago, `new` was the canary of `old`: every request answered by one and scored in
    the shadow by the other. On the same requests `new` is right `new_accuracy` of the time (its
    validation accuracy: the check against validation sees nothing) and `old` 15 points more
    often; both as confident, so the label-free estimate sees no difference. No label yet."""
    rng = np.random.default_rng(7)
    started = time.time() - 2 * DAY
    k_new = round(100 * new_accuracy) + 1
    k_old = min(k_new + 15, 99)
    truth, rows = {}, []
    for i in range(1500):
        rid, y = f"r{i}", int(rng.random() < 0.6)
        right_new, right_old = i % 100 < k_new, i % 100 < k_old
        label_new, label_old = (y if right_new else 1 - y), (y if right_old else 1 - y)
        canary = (i // 100) % 5 == 0  # a fifth of the requests, in blocks: exact accuracies
        at = started + i
        answer = ("canary", new, label_new) if canary else ("champion", old, label_old)
        shadow = ("champion", old, label_old) if canary else ("canary", new, label_new)
        rows.append(_prediction(rid, at, *answer))
        rows.append(_prediction(rid + SHADOW_SUFFIX, at + 0.01, *shadow, shadow_of=rid))
        truth[rid] = y
    assert store.record_predictions(rows) == len(rows)
    return truth


def _inputs(world: World, on_worse: str) -> MonitorInputs:
    return MonitorInputs(
        model_name=NAME, experiment="deploy-tests", tracking_uri=world.uri,
        data_path="data/apps.csv", store_url=world.store_url, serving_url=UNREACHABLE,
        window_seconds=3 * DAY, act_on_production=True,  # as the runner passes it
        monitoring_config={
            "label_lag_seconds": DAY, "on_worse_than_predecessor": on_worse,
            "min_feedback": 100, "min_requests": 50,
        },
    )  # fmt: skip


@pytest.mark.parametrize("on_worse", ["rollback", "alert"])
def test_late_labels_roll_back_a_champion_worse_than_its_predecessor(
    world: World, on_worse: str
) -> None:
    v1 = world.champion()
    v2 = world.register(world.forest(11))
    releases.promote(world.client, NAME, v2, world.models, world.logs, reason="canary passed")
    run = world.client.get_run(registry.version_run_id(world.client, NAME, v2))
    inputs = _inputs(world, on_worse)
    with PredictionStore(world.store_url) as store:
        truth = _rollout(store, v2, v1, run.data.metrics["holdout_accuracy"])
        # today's requests, labeled at once: newer than the label lag, not judged on accuracy
        recent = [_prediction(f"n{i}", time.time() - 60, "champion", v2, 1) for i in range(20)]
        recent += [
            _prediction(
                f"n{i}{SHADOW_SUFFIX}", time.time() - 60, "canary", v1, 0, shadow_of=f"n{i}"
            )
            for i in range(20)
        ]
        store.record_predictions(recent)
        for i in range(20):
            store.record_feedback(f"n{i}", None, label=0)

        # the night after the rollout: no label has come, nothing is judged, nothing moves
        early = monitor.run(inputs, world.root)
        found = early.live_metrics
        assert found["predecessor_verdict"] == "not enough evidence"
        assert found["paired_labeled"] == 0 and found["predecessor"] == v1
        assert not early.rolled_back and world.champion() == v2

        for rid, y in list(truth.items())[::2]:  # days later, half the requests get a label
            store.record_feedback(rid, None, label=y)

    late = monitor.run(inputs, world.root)
    found = late.live_metrics
    assert found["predecessor_verdict"] == "worse" and found["paired_labeled"] == 750
    assert found["labeled"] == 150  # the champion's answers in the judged window only
    assert found["paired_accuracy"] < found["predecessor_accuracy"] - 0.1
    assert found["paired_drop_lower"] > 0.02
    assert found["label_delay_p50_s"] > DAY  # labels came after the label lag
    # estimated vs realized: the calibrated probabilities promised 0.9 (both versions)
    assert found["paired_estimated_accuracy"] == pytest.approx(0.9)
    assert found["paired_estimate_gap"] == pytest.approx(0.9 - found["paired_accuracy"])
    assert "estimated (calibrated probabilities) 0.900 vs 0.900" in late.verdict_reason
    # the check against validation saw nothing: only the predecessor shows the drop
    assert not any(a["check"] == "accuracy" for a in late.alerts)
    (event, fields), *_ = notifications(RunOutputs(monitor=late), "done", "report.json", None)
    message = notify.build_message(event, **fields).body  # what the targets receive
    for evidence in (f"v{v2}", f"v{v1}", "750 labeled requests", "lower bound", "label lag"):
        assert evidence in message
    assert "predecessor_verdict worse" in message and "paired_estimated_accuracy 0.9000" in message
    if on_worse == "rollback":
        assert late.rolled_back and event == "rolled_back"
        assert "worse than its predecessor" in late.monitor_rollback_reason
        assert world.champion() == v1 and releases.production_version(world.models) == v1
    else:
        assert not late.rolled_back and event == "alert" and world.champion() == v2
        assert any(a["check"] == "against_predecessor" for a in late.alerts)


def test_a_champion_without_shadow_pairs_is_not_judged_against_its_predecessor(
    world: World,
) -> None:
    v1 = world.champion()
    at = time.time() - 2 * DAY
    with PredictionStore(world.store_url) as store:
        store.record_predictions(
            [_prediction(f"r{i}", at + i, "champion", v1, 1) for i in range(60)]
        )
        for i in range(60):
            store.record_feedback(f"r{i}", None, label=1)
    out = monitor.run(_inputs(world, "rollback"), world.root)
    found = out.live_metrics
    assert found["predecessor_verdict"] == "not judged" and not out.rolled_back
    assert found["paired_labeled"] is None and found["predecessor"] is None
