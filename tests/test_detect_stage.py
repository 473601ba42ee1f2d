"""01 detect run alone (in-process, as the notebook calls it): data is generated only at the
project's default path, and data it cannot use is a one-line DataError naming the file, with the
quarantine written."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest

from lib.errors import DataError
from lib.pipeline import synth
from lib.pipeline.contracts import DetectInputs
from lib.pipeline.data import RAW_COLUMNS
from lib.pipeline.stages import detect

QUARANTINE = "reports/interactive/quarantine.csv"


def inputs(**values: object) -> DetectInputs:
    return DetectInputs(**{"synth_apps": 300, **values})


def test_the_default_path_is_generated_when_absent(tmp_path: Path) -> None:
    out = detect.run(inputs(), tmp_path)
    assert (tmp_path / DetectInputs().data_path).is_file()
    assert out.total_apps > 0 and out.should_train  # first run


def test_a_path_the_user_gave_is_never_generated(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"elsewhere\.csv: file not found"):
        detect.run(inputs(data_path="data/elsewhere.csv"), tmp_path)
    absent = tmp_path / "abs" / "apps.csv"
    with pytest.raises(DataError, match="file not found"):
        detect.run(inputs(data_path=str(absent)), tmp_path)
    assert not (tmp_path / "data").exists() and not absent.parent.exists()


def test_a_header_only_file_is_no_rows_not_a_type_error(tmp_path: Path) -> None:
    path = tmp_path / "data" / "apps.csv"
    path.parent.mkdir()
    path.write_text(",".join(RAW_COLUMNS) + "\n")
    with pytest.raises(DataError, match=r"apps\.csv: no rows"):
        detect.run(inputs(data_path="data/apps.csv"), tmp_path)
    path.write_text("")
    with pytest.raises(DataError, match=r"apps\.csv: empty file"):
        detect.run(inputs(data_path="data/apps.csv"), tmp_path)


def test_every_row_quarantined_stops_with_the_quarantine_written(tmp_path: Path) -> None:
    path = tmp_path / "data" / "apps.csv"
    path.parent.mkdir()
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(RAW_COLUMNS)
        for i in range(3):
            writer.writerow([f"App {i}", "GAME", "high", "1", "1M", "1+", "Free", "0", "Everyone"])
    with pytest.raises(DataError, match=r"apps\.csv: none of its 3 rows is valid.*quarantine"):
        detect.run(inputs(data_path="data/apps.csv"), tmp_path)
    with (tmp_path / QUARANTINE).open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 3 and all(r["reason"] for r in rows)


def test_a_second_file_that_is_header_only_is_named(tmp_path: Path) -> None:
    synth.write_default_dataset(tmp_path / "data" / "apps.csv", n=200, seed=3)
    (tmp_path / "data" / "batch.csv").write_text(",".join(RAW_COLUMNS) + "\n")
    with pytest.raises(DataError, match=r"batch\.csv: no rows"):
        detect.run(inputs(data_path=["data/apps.csv", "data/batch.csv"]), tmp_path)


def test_without_its_file_the_state_comes_from_the_newest_registered_training(
    tmp_path: Path,
) -> None:
    """A fresh clone or another machine counts new apps from the last training recorded in the
    registry (02 train logs its state beside the version), not as if nothing was ever trained."""
    import json

    from mlflow import MlflowClient

    from lib.pipeline import data, detection

    uri = f"sqlite:///{tmp_path / 'elsewhere' / 'mlflow.db'}"
    (tmp_path / "elsewhere").mkdir()
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    experiment = client.create_experiment("e", artifact_location=(tmp_path / "art").as_uri())
    synth.ensure_dataset(tmp_path / "apps.csv", n=300, seed=1)
    apps = data.read_apps([tmp_path / "apps.csv"]).apps
    fresh = inputs(data_path=str(tmp_path / "apps.csv"), tracking_uri=uri, threshold=10)
    assert detect.registered_state(fresh, tmp_path) is None  # nothing registered yet

    def version(state_text: str | None) -> None:
        run = client.create_run(experiment).info.run_id
        if state_text is not None:
            client.log_text(run, state_text, detection.STATE_ARTIFACT)
        client.create_model_version("playstore-rating", f"runs:/{run}/model", run)

    client.create_registered_model("playstore-rating")
    path = detection.write_state(tmp_path / "s.json", apps.head(250), "1", "r1", "d")
    version(path.read_text())  # v1: trained on 250 of the apps
    version(None)  # v2: registered by hand, no state
    version("{not json")  # v3: a damaged state
    state = detect.registered_state(fresh, tmp_path)
    assert state is not None and state["run_id"] == "r1"
    out = detect.run(fresh, tmp_path)
    known = detection.fingerprints(apps.head(250))
    assert out.new_apps == out.total_apps - len(known) > 0
    assert not (tmp_path / fresh.state_path).exists()
    # a state file in the working directory wins over the registry
    detection.write_state(tmp_path / fresh.state_path, apps, "9", "local", "d")
    assert detect.run(fresh, tmp_path).new_apps == 0
    assert json.loads((tmp_path / fresh.state_path).read_text())["run_id"] == "local"


def test_an_embedded_store_never_created_means_a_first_run(tmp_path: Path) -> None:
    out = detect.run(inputs(), tmp_path)
    assert out.should_train and not (tmp_path / "mlflow.db").exists()


def test_a_registry_failing_while_reading_the_state_stops_rather_than_retrains_all(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A registry error other than "not found" is an outage (RegistryUnavailable), never
    "nothing was trained": that would retrain everything as a first run."""
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    from lib.errors import RegistryUnavailable

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    run = client.create_run(client.create_experiment("e")).info.run_id
    client.create_registered_model("playstore-rating")
    client.create_model_version("playstore-rating", f"runs:/{run}/model", run)

    def failing(*_: object) -> str:
        raise MlflowException("503 from the artifact proxy", error_code="TEMPORARILY_UNAVAILABLE")

    monkeypatch.setattr(detect, "mlflow_text", failing)
    with pytest.raises(RegistryUnavailable):
        detect.registered_state(inputs(tracking_uri=uri), tmp_path)
