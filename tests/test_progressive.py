"""The canary steps of a rollout read the service's prediction store and never write it."""

from __future__ import annotations

import sqlite3
import time
from contextlib import closing
from pathlib import Path

import pandas as pd
import pytest

from lib.delivery import canary, progressive, rollout
from lib.delivery.service_control import RolloutFailed
from lib.serving import store_journal
from lib.serving.prediction_store import PredictionStore

URL = "http://127.0.0.1:9"  # never called: routing changes are stubbed


def _row(rid: str, at: float, variant: str) -> dict:
    return {
        "request_id": rid,
        "created_at": at,
        "variant": variant,
        "model_version": "1" if variant == "champion" else "2",
        "label": 1,
        "probability": 0.8,
        "latency_ms": 3.5,
        "error": None,
        "features": {"reviews": 10.0},
    }


def _settings(store_url: str) -> progressive.DeploySettings:
    """One 5% step whose window ends at the first look and never waits for more evidence."""
    return progressive.DeploySettings(
        steps=[5], analysis_seconds=0, max_wait_seconds=0, check_every_seconds=0,
        replay_rate=0, replay=False, replay_label_share=1.0, replay_label_delay_seconds=[0, 0],
        smoke_rows=0, smoke_max_p95_ms=0, lease_seconds=300,
        serving_url=URL, store_url=store_url, analysis={},
    )  # fmt: skip


def test_canary_steps_read_what_the_service_wrote_and_leave_a_dead_writers_journal(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    db = tmp_path / "predictions.db"
    url = f"sqlite:///{db}"
    service = PredictionStore(url, journal=False)  # the live service's writer
    service.record_predictions([_row("before", 1.0, "champion")])
    orphan = store_journal.default_dir(url) / "999999-1-1.journal"  # a killed service's rows
    orphan.parent.mkdir()
    orphan.write_bytes(store_journal.encode([_row("orphan", 2.0, "champion")]))
    journal = orphan.read_bytes()

    monkeypatch.setattr(progressive, "set_routing", lambda *a, **k: {})
    monkeypatch.setattr(progressive, "_registry_still_ours", lambda *a: None)
    seen: list[pd.DataFrame] = []
    analyze = canary.analyze
    monkeypatch.setattr(
        canary, "analyze", lambda window, cfg, **kw: seen.append(window) or analyze(window, cfg)
    )

    def traffic(_seconds: float) -> None:
        """While the step holds, the service answers and writes (its batching delay passed)."""
        now = time.time()
        service.record_predictions(
            [_row(f"ch-{i}", now, "champion") for i in range(3)]
            + [_row(f"ca-{i}", now, "canary") for i in range(2)]
        )

    state = rollout.RolloutStore(tmp_path / "rollout.json")
    rollout.begin(state, "m", "2", "1", [5], "run-1", URL)
    rollout.advance(state, rollout.Phase.SMOKE_TESTING)
    results: list[dict] = []
    try:
        with pytest.raises(RolloutFailed, match="not enough evidence"):
            progressive._canary_steps(
                (None, "m", "1"), URL, "token", "2", [], _settings(url), state,
                progressive.Timeline(), None, traffic, results,
            )  # fmt: skip
    finally:
        service.close()
    assert len(seen) == 1
    assert sorted(seen[0]["request_id"]) == ["ca-0", "ca-1", "ch-0", "ch-1", "ch-2"]
    with closing(sqlite3.connect(db)) as conn:
        stored = sorted(r[0] for r in conn.execute("SELECT request_id FROM predictions"))
    assert "orphan" not in stored and len(stored) == 6
    assert orphan.read_bytes() == journal  # left for the next service or store-recover


def _shadow_pair(rid: str, at: float, label: int) -> list[dict]:
    """The champion's answer and the canary's shadow score of the same request."""
    shadow = {**_row(f"{rid}#shadow", at, "canary"), "label": label, "features": None}
    return [_row(rid, at, "champion"), {**shadow, "shadow_of": rid, "latency_ms": 4.0}]


@pytest.mark.parametrize("canary_label, verdict", [(1, "pass"), (0, "fail")])
def test_the_shadow_step_routes_weight_0_and_judges_the_shadow_scores(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, canary_label: int, verdict: str
) -> None:
    """[shadow, 100]: the canary is set at weight 0 (it answers nobody), the step is judged on
    the champion's answers paired with the canary's shadow scores, and the record, the
    timeline and the reason name it `shadow`."""
    url = f"sqlite:///{tmp_path / 'predictions.db'}"
    service = PredictionStore(url, journal=False)
    routed: list[tuple] = []
    monkeypatch.setattr(progressive, "set_routing", lambda *a, **k: routed.append((a, k)) or {})
    monkeypatch.setattr(progressive, "_registry_still_ours", lambda *a: None)
    calls: list[bool] = []
    analyze = canary.analyze
    monkeypatch.setattr(
        canary,
        "analyze",
        lambda w, cfg, shadow=False: calls.append(shadow) or analyze(w, cfg, shadow),
    )
    sent = iter(range(10**6))

    def traffic(_seconds: float) -> None:
        now = time.time()
        rows = [row for _ in range(80) for row in _shadow_pair(f"r{next(sent)}", now, canary_label)]
        service.record_predictions(rows)

    state = rollout.RolloutStore(tmp_path / "rollout.json")
    rollout.begin(state, "m", "2", "1", ["shadow", 100], "run-1", URL)
    rollout.advance(state, rollout.Phase.SMOKE_TESTING)
    settings = _settings(url)
    settings.steps = ["shadow", 100]
    results: list[dict] = []
    timeline = progressive.Timeline()
    try:
        if verdict == "fail":
            with pytest.raises(RolloutFailed, match="canary step shadow failed: .*disagree"):
                progressive._canary_steps(
                    (None, "m", "1"), URL, "token", "2", [], settings, state, timeline, None,
                    traffic, results,
                )  # fmt: skip
        else:
            with pytest.raises(RolloutFailed, match="canary step 100%: not enough evidence"):
                progressive._canary_steps(
                    (None, "m", "1"), URL, "token", "2", [], settings, state, timeline, None,
                    traffic, results,
                )  # fmt: skip
    finally:
        service.close()
    (args, kwargs) = routed[0]
    assert args[2:4] == ("2", 0) and kwargs["expected_weight"] == 0
    assert calls[0] is True
    first = results[0]
    assert first["step"] == "shadow" and first["weight"] == 0 and first["verdict"] == verdict
    assert first["samples"]["canary"] == 0 and first["samples"]["paired"] == 80
    evidence = {c["name"]: c["evidence"] for c in first["checks"]}
    assert evidence["error_rate"] == canary.SHADOW and evidence["disagreement"] == canary.PAIRED
    stored = rollout.RolloutStore(tmp_path / "rollout.json").load()
    assert stored.step_results[0]["step"] == "shadow"
    assert stored.history[-1 if verdict == "fail" else -2]["weight"] == 0
    assert any(e["event"] == f"step shadow {verdict}" for e in timeline.events)
    if verdict == "pass":  # then the 100% step: canary rows, paired with the champion's shadows
        assert calls[1] is False and routed[-1][0][2:4] == ("2", 100)
