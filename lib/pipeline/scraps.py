"""Values passed between stages: glued in a notebook, read back by the runner.

The only module that imports scrapbook (last released 2021), so it stays replaceable. Values are
JSON: numbers, strings, lists and dicts (NumPy scalars and NaN are converted on the way, by
lib.json_safe).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from lib.json_safe import json_safe


def glue(name: str, value: Any) -> None:
    """Record a value in the executing notebook for the runner and the next stage.

    Wrapped in {"value": ...}: scrapbook's JSON encoder would otherwise parse a string such as
    "3" into the number 3 and refuse None.
    """
    import scrapbook as sb

    sb.glue(name, {"value": json_safe(value)}, encoder="json")


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
