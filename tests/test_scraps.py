"""lib.pipeline.scraps: values glued in a really executed notebook, read back as the runner does.

The round trip goes through a kernel and scrapbook's own reading, so what is checked is what the
next stage really receives: plain JSON, NaN as null, NumPy as Python, strings kept as strings.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import nbformat
import numpy as np
import pytest
from nbclient import NotebookClient

from lib.json_safe import json_safe
from lib.pipeline import scraps

GLUE_CELL = """
import math
import numpy as np
from lib.pipeline import scraps

scraps.glue("count", np.int64(3))
scraps.glue("share", np.float32(0.25))
scraps.glue("missing", float("nan"))
scraps.glue("nothing", None)
scraps.glue("digits", "3")
scraps.glue("flag", np.bool_(True))
scraps.glue("curve", np.array([0.5, np.nan, math.inf]))
scraps.glue("nested", {"auc": np.float64(0.81), 7: [np.int32(1), (2, float("-inf"))]})
"""


@pytest.fixture(scope="module")
def executed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A notebook that glues one value of every kind, executed in a real kernel."""
    notebook = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(GLUE_CELL)])
    NotebookClient(notebook, timeout=120, kernel_name="python3").execute()
    path = tmp_path_factory.mktemp("scraps") / "glued.ipynb"
    nbformat.write(notebook, path)
    return path


@pytest.mark.component
def test_glued_values_read_back_as_plain_json(executed: Path) -> None:
    values = scraps.read(executed)
    assert values == {
        "count": 3,
        "share": 0.25,
        "missing": None,
        "nothing": None,
        "digits": "3",  # not parsed into the number 3
        "flag": True,
        "curve": [0.5, None, None],
        "nested": {"auc": 0.81, "7": [1, [2, None]]},
    }
    assert type(values["count"]) is int and type(values["flag"]) is bool
    json.dumps(values, allow_nan=False)


@pytest.mark.component
def test_a_name_never_glued_is_absent_not_none(executed: Path) -> None:
    values = scraps.read(executed)
    assert "never_glued" not in values
    with pytest.raises(KeyError):
        values["never_glued"]


def test_a_notebook_without_scraps_reads_as_empty(tmp_path: Path) -> None:
    path = tmp_path / "empty.ipynb"
    nbformat.write(nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("1 + 1")]), path)
    assert scraps.read(path) == {}


def test_json_safe_converts_numpy_and_non_finite_numbers() -> None:
    converted = json_safe(
        {"a": np.float64("nan"), "b": (np.int8(2), np.float32(1.5)), 3: np.array([[1, 2]])}
    )
    assert converted == {"a": None, "b": [2, 1.5], "3": [[1, 2]]}
    assert type(converted["b"][0]) is int
    assert json_safe(math.inf) is None and json_safe(-math.inf) is None
    assert json_safe("NaN") == "NaN"  # text is never touched
