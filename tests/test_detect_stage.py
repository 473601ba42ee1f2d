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
