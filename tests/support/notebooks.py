"""Stand-in stage notebooks for the runner tests that are about control flow, not a stage."""

from __future__ import annotations

from pathlib import Path

import nbformat

from lib.pipeline.contracts import STAGES


def stub_notebook(project: Path, stage: str, body: str) -> None:
    """Replace a stage's notebook by one with the same parameters cell and `body`."""
    path = project / "notebooks" / f"{STAGES[stage].notebook}.ipynb"
    real = nbformat.read(path, as_version=4)
    (params,) = [c for c in real.cells if "parameters" in c.metadata.get("tags", [])]
    setup = next(c for c in real.cells if c.cell_type == "code")  # finds ROOT, imports lib
    finds_root = setup.source.split("import pandas")[0]
    book = nbformat.v4.new_notebook(metadata=real.metadata)
    book.cells = [
        nbformat.v4.new_code_cell(finds_root + "from lib.pipeline import scraps\n"),
        params,
        nbformat.v4.new_code_cell(body),
    ]  # fmt: skip
    nbformat.write(book, path)
