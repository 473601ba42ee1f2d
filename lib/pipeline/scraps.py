"""Values passed between stages: glued in a notebook, read back by the runner.

The only module that imports scrapbook (last released 2021), so it stays replaceable. Values are
JSON: numbers, strings, lists and dicts (NumPy scalars and NaN are converted on the way).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any


def jsonable(value: Any) -> Any:
    """NumPy scalars/arrays to Python, NaN/inf to None: JSON has no NaN."""
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if hasattr(value, "tolist") and not isinstance(value, (str, bytes)):
        return jsonable(value.tolist())
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def glue(name: str, value: Any) -> None:
    """Record a value in the executing notebook for the runner and the next stage.

    Wrapped in {"value": ...}: scrapbook's JSON encoder would otherwise parse a string such as
    "3" into the number 3 and refuse None.
    """
    import scrapbook as sb

    sb.glue(name, {"value": jsonable(value)}, encoder="json")


def read(notebook: str | Path) -> dict[str, Any]:
    """All values glued by an executed notebook, unwrapped."""
    import scrapbook as sb

    data = sb.read_notebook(str(notebook)).scraps.data_dict
    return {
        k: v["value"] if isinstance(v, dict) and set(v) == {"value"} else v for k, v in data.items()
    }


def glue_outputs(outputs: Any) -> None:
    """Glue every field of a stage's typed outputs (lib.pipeline.contracts), one scrap each."""
    for name, value in outputs.model_dump(mode="json").items():
        glue(name, value)
