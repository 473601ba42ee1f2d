"""runner.py on a PostgreSQL table: trains, stops when nothing is new, and retrains when the
table grows by 150 apps, the same as on a CSV (tests/test_pipeline_e2e.py)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pandas as pd
import pytest
import sqlalchemy as sa

from lib.pipeline import synth
from tests.support.pipeline import run_pipeline
from tests.support.postgres import throwaway_postgres

pytestmark = pytest.mark.e2e

GENERATED = {"features": ["engagement", "versions", "genres"]}  # as tests/test_pipeline_e2e.py


@pytest.fixture
def postgres() -> Iterator[str]:
    with throwaway_postgres() as url:
        yield url


def test_a_postgresql_table_grown_by_150_apps_is_retrained_on(project: Path, postgres: str) -> None:
    csv_path = project / "data" / "apps.csv"
    synth.write_default_dataset(csv_path, n=1500, seed=3)
    engine = sa.create_engine(postgres)
    table = pd.read_csv(csv_path, dtype=str, keep_default_na=False)
    table.to_sql("apps", engine, index=False)
    source = f"{postgres}#table=apps"

    first, _ = run_pipeline(project, data_path=source, **GENERATED)
    assert first.exit_code == 0 and first.scraps["should_train"] is True
    report = json.loads((first.report_dir / "report.json").read_text())
    assert report["results"]["data_sources"] == [source.replace("postgres@", "***@")]
    assert len(report["results"]["data_digest"]) == 16

    again, _ = run_pipeline(project, data_path=source, **GENERATED)
    assert again.outcome == "no_training" and again.scraps["new_apps"] == 0

    batch = synth.append_new_apps(csv_path, n=150)
    batch.astype(str).to_sql("apps", engine, index=False, if_exists="append")
    engine.dispose()
    third, _ = run_pipeline(project, data_path=source, **GENERATED)
    assert third.scraps["new_apps"] == 150 and third.scraps["should_train"] is True
    assert third.scraps["data_digest"] != first.scraps["data_digest"]
    assert third.scraps["candidate_version"] is not None
