"""Progress of long steps on the terminal of whoever runs the pipeline, never in the reports.

Inside a Papermill kernel stdout/stderr are the notebook's outputs, but file descriptor 2 is the
runner's terminal: with PIPELINE_PROGRESS=1 (set by runner.py) lines go there, else to DEBUG.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time

from lib.config_sections import step_name

ENV = "PIPELINE_PROGRESS"
INDENT = "      "  # under the runner's "[2/6] train ..." line
log = logging.getLogger(__name__)


def report(message: str, *args: object) -> None:
    """One progress line (printf-style arguments); never raises."""
    text = message % args if args else message
    log.debug("%s", text)
    if os.environ.get(ENV) != "1":
        return
    with contextlib.suppress(OSError):  # no terminal (closed descriptor): progress is optional
        os.write(2, f"{INDENT}{text}\n".encode("utf-8", errors="replace"))


def canary_step(weight: float, elapsed: float, window: float, analysis: object) -> None:
    """A canary step as it stands: time in the window, requests per variant (and paired, with
    shadow scores), the verdict; weight 0 is the `shadow` step."""
    samples = getattr(analysis, "samples", {}) or {}
    paired = f", {samples['paired']} paired" if "paired" in samples else ""
    report(
        "canary %s: %.0f/%.0f s, %d canary / %d champion requests%s: %s",
        step_name(weight), elapsed, window, samples.get("canary", 0),
        samples.get("champion", 0), paired, getattr(analysis, "verdict", "?"),
    )  # fmt: skip


class Throttle:
    """At most one line per `seconds` (the first and any forced one always pass)."""

    def __init__(self, seconds: float = 10.0) -> None:
        self.seconds = seconds
        self.last: float | None = None

    def ready(self, force: bool = False) -> bool:
        now = time.monotonic()
        if force or self.last is None or now - self.last >= self.seconds:
            self.last = now
            return True
        return False
