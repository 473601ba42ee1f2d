"""Stage contracts: every notebook declares exactly its contract's inputs, holds no decision
logic, and glues its typed outputs; bad values are refused with the field's name."""

from __future__ import annotations

import ast
import json
from pathlib import Path

import pytest

from lib.pipeline import contracts
from lib.pipeline.contracts import STAGES, ContractError

NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"
ALLOWED_IMPORTS = ("lib", "pandas", "warnings")
CONTROL_FLOW = (
    ast.If, ast.For, ast.While, ast.Try, ast.With, ast.FunctionDef, ast.ClassDef, ast.Lambda,
    ast.AsyncFunctionDef, ast.Match, ast.Raise,
)  # fmt: skip


def cells(stage: contracts.Stage) -> list[dict]:
    nb = json.loads((NOTEBOOKS / f"{stage.notebook}.ipynb").read_text())
    return [c for c in nb["cells"] if c["cell_type"] == "code"]


def parameters(stage: contracts.Stage) -> dict[str, object]:
    cell = next(c for c in cells(stage) if "parameters" in c["metadata"].get("tags", []))
    tree = ast.parse("".join(cell["source"]))
    values = {}
    for node in tree.body:
        assert isinstance(node, ast.Assign), f"{stage.notebook}: parameters are assignments only"
        values[node.targets[0].id] = ast.literal_eval(node.value)
    return values


@pytest.mark.parametrize("name", sorted(STAGES))
def test_parameters_cell_is_the_contracts_inputs_with_its_defaults(name: str) -> None:
    stage = STAGES[name]
    declared = parameters(stage)
    assert list(declared) == list(stage.inputs.model_fields)
    defaults = stage.inputs().model_dump()
    assert declared == defaults, {
        k: (declared[k], defaults[k]) for k in declared if declared[k] != defaults[k]
    }  # noqa: E501


@pytest.mark.parametrize("name", sorted(STAGES))
def test_parameters_cell_holds_the_configs_defaults(name: str) -> None:
    """An interactive run uses the runner's defaults: each parameter that is a config key
    (`setting`), read as that key, gives the config's default (``analysis = {}`` is the
    canary section's defaults)."""
    from lib.config import PipelineConfig

    declared, default = parameters(STAGES[name]), PipelineConfig().model_dump()
    keys = STAGES[name].inputs.config_keys()
    assert keys, f"{name}: no parameter is a config key"
    for field, key in keys.items():
        given = PipelineConfig(**{key: declared[field]}).model_dump()[key]
        assert given == default[key], (field, declared[field], default[key])


@pytest.mark.parametrize("name", sorted(STAGES))
def test_notebook_code_only_calls_lib_displays_and_glues(name: str) -> None:
    stage = STAGES[name]
    glued = 0
    for cell in cells(stage):
        source = "".join(cell["source"])
        tree = ast.parse(source)
        for node in ast.walk(tree):
            assert not isinstance(node, CONTROL_FLOW), (
                f"{stage.notebook}: decision logic ({type(node).__name__}) belongs in "
                f"lib.pipeline.stages.{name}:\n{source}"
            )
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                module = node.module if isinstance(node, ast.ImportFrom) else node.names[0].name
                where = f"{stage.notebook}: imports {module}"
                assert module.split(".")[0] in ALLOWED_IMPORTS, where
            if isinstance(node, ast.Attribute) and node.attr == "glue":
                pytest.fail(f"{stage.notebook}: glue typed outputs with scraps.glue_outputs")
            if isinstance(node, ast.Attribute) and node.attr == "glue_outputs":
                glued += 1
    assert glued == 1, f"{stage.notebook} must glue its outputs exactly once"


def test_outputs_refuse_unknown_and_missing_fields_with_their_names() -> None:
    stage = STAGES["detect"]
    good = {
        "new_apps": 3, "updated_apps": 0, "total_apps": 10, "should_train": False,
        "reason": "3 < 100", "quarantined_rows": 0,
    }  # fmt: skip
    assert stage.check_outputs(good).new_apps == 3
    with pytest.raises(ContractError, match="shuold_train"):
        stage.check_outputs({**good, "shuold_train": True})
    missing = dict(good)
    del missing["reason"]
    with pytest.raises(ContractError, match="reason"):
        stage.check_outputs(missing)
    with pytest.raises(ContractError, match="new_apps"):
        stage.check_outputs({**good, "new_apps": "many"})


def test_inputs_refuse_out_of_range_values() -> None:
    with pytest.raises(ContractError, match="analysis_seconds"):
        STAGES["deploy"].check_inputs({"analysis_seconds": 0})
    with pytest.raises(ContractError, match="cv_folds"):
        STAGES["train"].check_inputs({"cv_folds": 1})


def test_from_namespace_takes_only_declared_names() -> None:
    namespace = {"threshold": 7, "force": True, "ROOT": Path("."), "pd": object()}
    inputs = contracts.DetectInputs.from_namespace(namespace)
    assert inputs.threshold == 7 and inputs.force is True


def test_check_parameters_names_the_difference(tmp_path: Path) -> None:
    import nbformat

    from lib.pipeline.executors import check_parameters

    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3"}
    nb.metadata["language_info"] = {"name": "python"}
    cell = nbformat.v4.new_code_cell("threshold = 100\nextra = 1\n")
    cell.metadata["tags"] = ["parameters"]
    nb.cells.append(cell)
    path = tmp_path / "01_detect.ipynb"
    nbformat.write(nb, path)
    with pytest.raises(Exception, match="extra") as info:
        check_parameters(path, STAGES["detect"])
    assert "force" in str(info.value)  # declared by the contract, missing from the cell
