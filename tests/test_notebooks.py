"""Notebooks are stored clean, have a tagged parameters cell, and agree with the runner."""

import json
from pathlib import Path

import pytest

from lib.config import PipelineConfig
from lib.pipeline.contracts import PIPELINE, STAGES
from lib.pipeline.executors import check_parameters
from lib.pipeline.orchestrator import RunContext, inputs_for
from lib.pipeline.report_html import render_html
from lib.pipeline.run_record import RunOutputs
from tests.support.report_pages import check_stage_html

NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"


@pytest.mark.parametrize("path", sorted(NOTEBOOKS.glob("*.ipynb")), ids=lambda p: p.name)
def test_stored_without_outputs(path: Path) -> None:
    book = json.loads(path.read_text())
    for cell in book["cells"]:
        if cell["cell_type"] == "code":
            assert cell["outputs"] == [], f"{path.name}: a code cell has outputs"
            assert cell["execution_count"] is None, f"{path.name}: a cell has an execution count"


@pytest.mark.parametrize("stage", PIPELINE)
def test_one_tagged_parameters_cell_and_runner_passes_exactly_those(tmp_path: Path, stage) -> None:
    import papermill

    path = NOTEBOOKS / f"{STAGES[stage].notebook}.ipynb"
    book = json.loads(path.read_text())
    tagged = [c for c in book["cells"] if "parameters" in c.get("metadata", {}).get("tags", [])]
    assert len(tagged) == 1, f"{path.name} needs exactly one cell tagged 'parameters'"
    declared = set(papermill.inspect_notebook(str(path)))
    ctx = RunContext("r", tmp_path, tmp_path / "r", "sqlite:///x.db")
    params = inputs_for(stage, PipelineConfig(), ctx, RunOutputs()).model_dump()
    assert set(params) == declared
    check_parameters(path, STAGES[stage])  # does not raise


def test_check_parameters_names_missing_and_unknown(tmp_path: Path) -> None:
    import nbformat

    from lib.errors import PipelineError

    book = nbformat.read(NOTEBOOKS / "01_detect.ipynb", as_version=4)
    (cell,) = [c for c in book.cells if "parameters" in c.metadata.get("tags", [])]
    cell.source = cell.source.replace("data_path =", "bogus =")
    path = tmp_path / "01_detect.ipynb"
    nbformat.write(book, path)
    with pytest.raises(PipelineError, match=r"missing from the cell: \['data_path'\].*\['bogus'\]"):
        check_parameters(path, STAGES["detect"])


# what a person sets on purpose for a notebook to act (its default never does)
ON_PURPOSE = {"train": {"register_candidate": True}, "deploy": {"act_on_production": True}}


@pytest.mark.e2e
def test_each_notebook_runs_with_its_defaults_from_the_notebooks_folder(project: Path) -> None:
    """What a data scientist does: open notebooks/ in Jupyter and run 01..06 unchanged, except
    that 02 is asked to register its candidate (alone it registers nothing by default:
    tests/test_train_register.py) and 05 to deploy it (alone it only plans: tests/
    test_monitor_stage.py), so that 03..06 have one to judge."""
    import papermill

    from lib.pipeline import scraps

    out = project / "executed"
    out.mkdir()
    for stage in PIPELINE:
        name = f"{STAGES[stage].notebook}.ipynb"
        papermill.execute_notebook(
            str(project / "notebooks" / name),
            str(out / name),
            parameters=ON_PURPOSE.get(stage, {}),
            cwd=str(project / "notebooks"),
            kernel_name="python3",
            progress_bar=False,
        )
    assert (project / "data" / "googleplaystore_clean.csv").exists()
    assert (project / "mlflow.db").exists()  # the project's default store, found from notebooks/
    decided = scraps.read(out / "04_decide.ipynb")
    assert decided["decision"] in {"auto", "manual", "reject"}
    assert scraps.read(out / "02_train.ipynb")["candidate_version"] == "1"

    # What a reviewer reads (the runner's renderer): each stage opens with its verdict, shows
    # no code and no stderr, and no notebook carries stderr (silenced at the source)
    for stage in PIPELINE:
        executed = out / f"{STAGES[stage].notebook}.ipynb"
        check_stage_html(render_html(executed))
        stderr = [
            "".join(o["text"])
            for cell in json.loads(executed.read_text())["cells"]
            for o in cell.get("outputs", [])
            if o.get("name") == "stderr"
        ]
        assert stderr == [], f"{executed.name}: {stderr}"
