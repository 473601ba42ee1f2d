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
