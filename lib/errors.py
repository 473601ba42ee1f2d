"""The project's exception types: messages say what was expected, what came and how to fix it;
the CLI prints one line for these (exit code 2) and a traceback for anything else."""

from __future__ import annotations


class PipelineError(Exception):
    """A known, user-facing failure: the CLI prints its message on one line."""

    exit_code = 2


class MissingColumnsError(PipelineError):
    """A data file lacks columns the pipeline needs; raised before anything is written."""

    def __init__(self, path: str, missing: list[str], found: list[str]) -> None:
        self.missing = list(missing)
        super().__init__(
            f"{path}: missing required column(s) {', '.join(repr(c) for c in missing)}; "
            f"found {', '.join(repr(c) for c in found) or 'no columns'}. "
            "Expected the Play Store header (App, Category, Rating, Reviews, Size, Installs, Type, "
            "Price, Content Rating, Genres, Last Updated, Current Ver, Android Ver)."
        )


class DataError(PipelineError):
    """The data cannot be used at all (unreadable, empty, no labeled rows...)."""


class ConfigError(PipelineError):
    """A configuration value or a CLI override is invalid."""


class StageError(PipelineError):
    """A notebook stage failed (its executed notebook is kept); `exit_code` is 1 unless a known
    error's documented code applies (a registry outage is 4, in a kernel as in the runner)."""

    def __init__(
        self, stage: str, message: str, notebook: str | None = None, exit_code: int = 1
    ) -> None:
        self.stage = stage
        self.notebook = notebook
        self.exit_code = exit_code
        where = f" (executed notebook: {notebook})" if notebook else ""
        super().__init__(f"stage {stage} failed: {message}{where}")


class RunnerBusyError(PipelineError):
    """Another runner holds the project lock."""

    exit_code = 3


class RegistryUnavailable(PipelineError):
    """The MLflow tracking server or registry store cannot be reached or failed (connection
    refused, timeout, 5xx, refused credentials). Not the same as a missing model or alias: acting
    on "no champion" during an outage would record a wrong state, so callers stop instead."""

    exit_code = 4

    def __init__(self, uri: str, doing: str, reason: str) -> None:
        self.uri = uri  # already redacted by the caller (lib.config.redact_url)
        self.doing = doing
        self.reason = reason
        super().__init__(
            f"MLflow registry at {uri} is unavailable while {doing}: {reason}. Check that the "
            "tracking server is running (tracking_uri / MLFLOW_TRACKING_URI), then run the "
            "command again"
        )

    def __reduce__(self) -> tuple[type, tuple[str, str, str]]:  # picklable across processes
        return (type(self), (self.uri, self.doing, self.reason))
