"""Two ways to run a stage with the same contract.

`PapermillExecutor` is the executor of record: the stage's notebook runs with its inputs as
parameters and the executed copy (and its HTML) is what a reviewer reads. `InProcessExecutor`
calls the stage's `run(inputs, root)` directly, without a kernel, so the runner's control flow
(gates, parking, recovery, outcomes) can be tested in seconds.
"""

from __future__ import annotations

import importlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from lib.errors import PipelineError, RegistryUnavailable
from lib.pipeline.contracts import Contract, ContractError, Stage

log = logging.getLogger(__name__)


@dataclass
class StageResult:
    """One executed stage: its typed outputs when it succeeded, the error when not."""

    name: str
    status: str  # "ok" | "failed"
    seconds: float
    inputs: Contract
    outputs: Contract | None = None
    notebook: str | None = None
    html: str | None = None
    error: str | None = None
    exit_code: int = 1  # the runner's exit code when it failed (see failure_exit_code)

    @property
    def ok(self) -> bool:
        return self.status == "ok"


# Known errors whose documented exit code a failed stage keeps instead of 1: a registry outage
# exits 4 whether the stage ran in a kernel or in this process.
CARRIED_ERRORS: tuple[type[PipelineError], ...] = (RegistryUnavailable,)


def failure_exit_code(error: BaseException | str) -> int:
    """The exit code of a stage that failed with `error`: the exception itself (in-process) or
    its class name (Papermill's `ename`, as the kernel's exception never reaches us)."""
    for known in CARRIED_ERRORS:
        if isinstance(error, known) or error == known.__name__:
            return known.exit_code
    return 1


class Executor(Protocol):
    def execute(self, stage: Stage, inputs: Contract, run_dir: Path) -> StageResult: ...


def check_parameters(notebook: Path, stage: Stage) -> None:
    """Fail before running when a notebook's `parameters` cell and the stage's declared inputs
    disagree on names."""
    import papermill

    declared = set(papermill.inspect_notebook(str(notebook)))
    expected = set(stage.inputs.model_fields)
    missing, unknown = sorted(expected - declared), sorted(declared - expected)
    if missing or unknown:
        raise PipelineError(
            f"{notebook.name}: parameters cell out of step with the contract of stage "
            f"{stage.name} (declared inputs missing from the cell: {missing or 'none'}; "
            f"parameters the contract does not declare: {unknown or 'none'}). "
            "Edit the notebook's `parameters` cell or lib/pipeline/contracts.py."
        )


class PapermillExecutor:
    """Runs the stage's notebook; with a kernel pool, in a kernel started ahead of time."""

    def __init__(self, root: Path, timeout: int, kernels: Any = None) -> None:
        self.root, self.timeout, self.kernels = root, timeout, kernels

    def execute(self, stage: Stage, inputs: Contract, run_dir: Path) -> StageResult:
        import papermill
        from papermill.exceptions import PapermillExecutionError

        from lib.pipeline import report_html, scraps

        source = self.root / "notebooks" / f"{stage.notebook}.ipynb"
        target = run_dir / source.name
        check_parameters(source, stage)
        started = time.perf_counter()
        error: str | None = None
        exit_code = 1
        km = None
        try:
            if self.kernels is not None:
                try:
                    km = self.kernels.acquire()
                except Exception as exc:  # the pool only saves time: papermill can start one
                    log.warning("no pre-started kernel for %s (%s); starting one", stage.name, exc)
            papermill.execute_notebook(
                str(source),
                str(target),
                parameters=inputs.model_dump(mode="json"),
                cwd=str(self.root),
                kernel_name="python3",
                progress_bar=False,
                execution_timeout=self.timeout,
                km=km,  # None: papermill starts (and shuts down) a kernel itself
            )
        except PapermillExecutionError as exc:
            error = f"cell {exc.exec_count}: {exc.ename}: {exc.evalue}"
            exit_code = failure_exit_code(exc.ename)
        except Exception as exc:  # kernel died, timeout...: still a failed stage with a record
            error = f"{type(exc).__name__}: {exc}"
        finally:
            if km is not None:
                self.kernels.release(km)
        seconds = time.perf_counter() - started
        html = None
        if target.exists():
            try:
                html = str(report_html.render_html(target))
            except Exception as exc:  # the .ipynb is the record; HTML is a convenience
                log.warning("could not render %s to HTML: %s", target.name, exc)
        outputs = None
        if error is None:
            try:
                outputs = stage.check_outputs(scraps.read(target))
            except ContractError as exc:
                error = str(exc)
        status = "failed" if error else "ok"
        return StageResult(
            stage.name, status, seconds, inputs, outputs, str(target), html, error, exit_code
        )


StageFunction = Callable[[Contract, Path], Contract]


class InProcessExecutor:
    """Runs `lib.pipeline.stages.<name>.run(inputs, root)` in this process; no notebook.

    `functions` replaces stage functions by name (for tests of the control flow); their
    outputs are validated against the contract like a notebook's scraps.
    """

    def __init__(self, root: Path, functions: dict[str, StageFunction] | None = None) -> None:
        self.root, self.functions = root, dict(functions or {})

    def execute(self, stage: Stage, inputs: Contract, run_dir: Path) -> StageResult:
        function = self.functions.get(stage.name)
        function = function or importlib.import_module(f"lib.pipeline.stages.{stage.name}").run
        started = time.perf_counter()
        outputs, error, exit_code = None, None, 1
        try:
            produced = function(inputs, self.root)
            outputs = stage.check_outputs(
                produced.model_dump() if isinstance(produced, Contract) else produced
            )
        except Exception as exc:  # a failed stage, reported like a failed notebook
            log.debug("stage %s failed in-process", stage.name, exc_info=True)
            error = f"{type(exc).__name__}: {exc}"
            exit_code = failure_exit_code(exc)
        status, seconds = "failed" if error else "ok", time.perf_counter() - started
        return StageResult(
            stage.name, status, seconds, inputs, outputs, error=error, exit_code=exit_code
        )
