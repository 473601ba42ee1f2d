"""Progress lines go to file descriptor 2 (the runner's terminal) only when the runner asks."""

from __future__ import annotations

import pytest

from lib import progress


def test_progress_goes_to_descriptor_2_when_enabled(capfd, monkeypatch) -> None:
    monkeypatch.setenv(progress.ENV, "1")
    progress.report("candidate %d/%d %s", 1, 3, "boosting")
    out, err = capfd.readouterr()
    assert out == "" and err == f"{progress.INDENT}candidate 1/3 boosting\n"


@pytest.mark.parametrize("value", [None, "0", ""])
def test_progress_is_silent_otherwise(capfd, monkeypatch, value) -> None:
    if value is None:
        monkeypatch.delenv(progress.ENV, raising=False)
    else:
        monkeypatch.setenv(progress.ENV, value)
    progress.report("fold %d/%d done", 1, 5)
    assert capfd.readouterr() == ("", "")


def test_canary_step_line_names_the_counts(capfd, monkeypatch) -> None:
    class Analysis:
        samples = {"canary": 12, "champion": 230}
        verdict = "wait"

    monkeypatch.setenv(progress.ENV, "1")
    progress.canary_step(25, 40.4, 300, Analysis())
    err = capfd.readouterr().err
    assert "canary 25%: 40/300 s, 12 canary / 230 champion requests: wait" in err


def test_throttle_lets_one_line_through_per_period() -> None:
    throttle = progress.Throttle(3600)
    assert throttle.ready() and not throttle.ready() and throttle.ready(force=True)


def test_mlflow_says_nothing_into_a_notebook_after_quiet_libraries(capfd, monkeypatch) -> None:
    """In a kernel stderr is the notebook's: MLflow's messages go to DEBUG, also after MLflow
    switches its own event logs back on (as log_model does); its warnings are progress lines."""
    import logging

    from mlflow.utils import logging_utils

    mlflow_log = logging.getLogger("mlflow")
    monkeypatch.setattr(logging_utils, "MLFLOW_LOGGING_STREAM", logging_utils.MLFLOW_LOGGING_STREAM)
    monkeypatch.setattr(mlflow_log, "handlers", list(mlflow_log.handlers))
    monkeypatch.setenv(progress.ENV, "1")
    progress.quiet_libraries()
    logging_utils.enable_logging()
    logging_utils.eprint("Successfully registered model 'playstore-rating'.")
    logging.getLogger("mlflow.store.db.utils").info("Creating initial MLflow database tables...")
    logging.getLogger("mlflow.models").warning("the model's requirements could not be inferred")
    out, err = capfd.readouterr()
    assert out == ""
    assert (
        err == f"{progress.INDENT}mlflow.models: the model's requirements could not be inferred\n"
    )
