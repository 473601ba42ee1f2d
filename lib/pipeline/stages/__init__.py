"""One module per stage: `run(inputs, root) -> outputs` plus the steps its notebook displays.

The decisions of a stage (what to register, whether to roll back...) live here, so a notebook only
narrates and plots, and the in-process executor can run a stage without a kernel.
"""

from __future__ import annotations


def data_paths(data_path: str | list[str]) -> list[str]:
    """A stage's `data_path` parameter: one CSV, a comma-separated string or a list."""
    items = data_path if isinstance(data_path, list) else str(data_path).split(",")
    return [p.strip() for p in items if p.strip()]
