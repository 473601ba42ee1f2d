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
        canary, "analyze", lambda window, cfg: seen.append(window) or analyze(window, cfg)
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
