"""Progress of long steps on the terminal of whoever runs the pipeline, never in the reports.

Inside a Papermill kernel stdout/stderr are the notebook's outputs, and so is file descriptor 2:
ipykernel pipes it into the notebook too (`capture_fd_output`), keeping a copy of the original,
the runner's terminal, as `sys.stderr.fileno()`. With PIPELINE_PROGRESS=1 (set by runner.py)
lines go to that terminal, else to DEBUG.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
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
        os.write(terminal(), f"{INDENT}{text}\n".encode("utf-8", errors="replace"))


def terminal() -> int:
    """The runner's terminal: in a kernel that captures file descriptor 2 into the notebook,
    the copy of the original that `sys.stderr.fileno()` gives; else descriptor 2."""
    try:
        return sys.stderr.fileno()
    except (AttributeError, OSError, ValueError):  # a stream with no descriptor
        return 2


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


class ProgressHandler(logging.Handler):
    """Log records of a library, as progress lines: the runner's terminal, never a report."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            report("%s: %s", record.name, record.getMessage())
        except Exception:  # a broken record must not break the stage
            self.handleError(record)


class DebugStream:
    """A stream whose text goes to DEBUG: MLflow's event messages ("Successfully registered
    model ..."), which would otherwise be the notebook's stderr."""

    def write(self, text: str) -> int:
        if text.strip():
            log.debug("mlflow: %s", text.rstrip())
        return len(text)

    def flush(self) -> None:
        pass


def quiet_libraries() -> None:
    """Keep MLflow's own output out of the notebook (in a kernel, stderr is a cell's output):
    its event messages go to DEBUG, its INFO lines are dropped, its warnings and errors become
    progress lines. Called by each stage notebook at the start."""
    from mlflow.utils import logging_utils

    # `eprint` looks its stream up at each call; MLflow's own switch (disable_logging) is
    # switched back on by some of its calls (log_model), so the stream itself is replaced
    logging_utils.MLFLOW_LOGGING_STREAM = DebugStream()
    mlflow_log = logging.getLogger("mlflow")
    mlflow_log.handlers = [ProgressHandler(logging.WARNING)]
