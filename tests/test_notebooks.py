"""Notebooks are stored clean, have a tagged parameters cell, and agree with the runner."""

import json
from pathlib import Path

import pytest

import runner
from lib.config import STAGES, PipelineConfig

NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"


@pytest.mark.parametrize("path", sorted(NOTEBOOKS.glob("*.ipynb")), ids=lambda p: p.name)
def test_stored_without_outputs(path: Path) -> None:
    book = json.loads(path.read_text())
    for cell in book["cells"]:
        if cell["cell_type"] == "code":
            assert cell["outputs"] == [], f"{path.name}: a code cell has outputs"
            assert cell["execution_count"] is None, f"{path.name}: a cell has an execution count"


@pytest.mark.parametrize("stage", STAGES)
def test_one_tagged_parameters_cell_and_runner_passes_exactly_those(tmp_path: Path, stage) -> None:
    import papermill

    path = NOTEBOOKS / f"{runner.NOTEBOOKS[stage]}.ipynb"
    book = json.loads(path.read_text())
    tagged = [c for c in book["cells"] if "parameters" in c.get("metadata", {}).get("tags", [])]
    assert len(tagged) == 1, f"{path.name} needs exactly one cell tagged 'parameters'"
    declared = set(papermill.inspect_notebook(str(path)))
    ctx = {"run_id": "r", "tracking_uri": "sqlite:///x.db"}
    params = runner.stage_parameters(stage, PipelineConfig(), ctx, tmp_path, tmp_path / "r", False)
    assert set(params) == declared
    runner.check_parameters(path, params)  # does not raise


def test_check_parameters_names_missing_and_unknown() -> None:
    from lib.errors import PipelineError

    path = NOTEBOOKS / "01_detect.ipynb"
    with pytest.raises(PipelineError, match=r"not passed: \['data_path'.*unknown.*\['bogus'\]"):
        runner.check_parameters(path, {"bogus": 1, "run_id": "x"})


@pytest.mark.e2e
def test_each_notebook_runs_with_its_defaults_from_the_notebooks_folder(project: Path) -> None:
    """What a data scientist does: open notebooks/ in Jupyter and run 01..04 unchanged."""
    import papermill

    from lib.pipeline import scraps

    out = project / "executed"
    out.mkdir()
    for stage in STAGES:
        name = f"{runner.NOTEBOOKS[stage]}.ipynb"
        papermill.execute_notebook(
            str(project / "notebooks" / name),
            str(out / name),
            cwd=str(project / "notebooks"),
            kernel_name="python3",
            progress_bar=False,
        )
    assert (project / "data" / "googleplaystore_clean.csv").exists()
    assert (project / "mlflow.db").exists()  # the project's default store, found from notebooks/
    decided = scraps.read(out / "04_decide.ipynb")
    assert decided["decision"] in {"auto", "manual", "reject"}
    assert scraps.read(out / "02_train.ipynb")["candidate_version"] == "1"
