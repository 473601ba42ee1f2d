"""Stage HTML a reviewer reads in a minute: the verdict first, no code, the parameters once as
a table (credentials redacted), no stderr; partial notebooks of failed runs rendered too.

`check_stage_html` (tests/support/report_pages.py) is also applied to every stage of a real run
(tests/test_notebooks.py).
"""

from __future__ import annotations

import html
import logging
from pathlib import Path

import nbformat
import pytest
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook, new_output

from lib.pipeline import plots, report_html, verdicts
from lib.pipeline.contracts import DetectOutputs, MonitorOutputs
from tests.support.report_pages import Page, check_stage_html


def notebook(cells: list, parameters: dict | None = None) -> nbformat.NotebookNode:
    book = new_notebook(cells=cells)
    if parameters is not None:
        book.metadata["papermill"] = {"parameters": parameters}
    return book


def code(source: str, *outputs, tags: list[str] | None = None) -> nbformat.NotebookNode:
    cell = new_code_cell(source, outputs=list(outputs))
    if tags:
        cell.metadata["tags"] = tags
    return cell


def html_output(text: str) -> nbformat.NotebookNode:
    return new_output("execute_result", data={"text/html": text, "text/plain": "x"})


VERDICT = '<section class="verdict" data-tone="good"><h2>auto: v3</h2></section>'


def rendered(tmp_path: Path, book: nbformat.NotebookNode) -> tuple[Page, str]:
    path = tmp_path / "04_decide.ipynb"
    nbformat.write(book, path)
    html_path = report_html.render_html(path)
    assert html_path == tmp_path / "04_decide.html"
    return check_stage_html(html_path), html_path.read_text()


def test_verdict_first_no_code_parameters_once_no_stderr(tmp_path: Path, caplog) -> None:
    book = notebook(
        [
            new_markdown_cell("# 04 · Decide\nThe mission's score table."),
            code("import secret_module_name"),
            code('threshold = 100  # apps\nmodel_name = "m"', tags=["parameters"]),
            code('threshold = 5\nrun_id = "r1"', tags=["injected-parameters"]),
            code(
                "decision = decide_now()",
                new_output("stream", name="stderr", text="Inferred schema contains integer"),
                new_output("stream", name="stdout", text="scored 3 reasons"),
            ),
            code(
                "glue()",
                new_output("display_data", data={"application/scrapbook.scrap.json+json": {}}),
            ),
            code("verdicts.decide(decision)", html_output(VERDICT), tags=["verdict"]),
        ],
        parameters={"threshold": 5, "run_id": "r1"},
    )
    with caplog.at_level(logging.WARNING, logger="lib.pipeline.report_html"):
        page, text = rendered(tmp_path, book)
    assert page.first[0] == "section"
    assert "auto: v3" in text and text.count('class="verdict"') == 1  # moved, not copied
    assert "secret_module_name" not in text and "decide_now" not in text  # no code
    assert "scored 3 reasons" in text and "The mission's score table." in text
    assert "Inferred schema" not in text
    assert "1 stderr output(s) left out" in caplog.text  # the safety net says so
    # the parameters once: defaults, overridden by what Papermill injected
    assert page.count("details", "parameters") == 1 and text.count(">threshold<") == 1
    assert "<code>5</code>" in text and "<code>&quot;m&quot;</code>" in text


def test_credentials_in_parameters_are_redacted(tmp_path: Path) -> None:
    book = notebook(
        [
            code("tracking_uri = None\nadmin_token = None", tags=["parameters"]),
            code("verdict()", html_output(VERDICT), tags=["verdict"]),
        ],
        parameters={
            "tracking_uri": "postgresql://prod:Hunter2-pw@db.example:5432/mlflow",
            "data_path": "https://data.example/apps.csv?token=abc123secret",
            "admin_token": "tok-0123456789",
        },
    )
    _, text = rendered(tmp_path, book)
    for secret in ("Hunter2-pw", "abc123secret", "tok-0123456789"):
        assert secret not in text
    assert "db.example:5432/mlflow" in text and "data.example/apps.csv" in text


def test_a_failed_notebook_opens_with_where_it_stopped(tmp_path: Path) -> None:
    error = new_output(
        "error", ename="RegistryUnavailable", evalue="MLflow at http://u:pw@h:5000 is down",
        traceback=["Traceback", "RegistryUnavailable: down"],
    )  # fmt: skip
    book = notebook(
        [
            code("x = 1", tags=["parameters"]),
            code("compare()", error),
            code("verdicts.compare(result)", tags=["verdict"]),  # never ran
        ],
        parameters={},
    )
    page, text = rendered(tmp_path, book)
    assert page.first[1].get("data-tone") == "stop"
    assert "RegistryUnavailable" in text and "pw@" not in text


def test_render_missing_renders_only_notebooks_without_html(tmp_path: Path) -> None:
    partial = notebook([code("x = 1", tags=["parameters"]), code("deploy()")], parameters={})
    nbformat.write(partial, tmp_path / "05_deploy.ipynb")  # cancelled: no verdict, no HTML
    nbformat.write(partial, tmp_path / "04_decide.ipynb")
    (tmp_path / "04_decide.html").write_text("kept")
    assert report_html.render_missing(tmp_path) == [tmp_path / "05_deploy.html"]
    assert (tmp_path / "04_decide.html").read_text() == "kept"
    page = check_stage_html(tmp_path / "05_deploy.html")
    assert "No verdict" in "".join(page.text)


def test_render_missing_never_raises(tmp_path: Path, caplog) -> None:
    (tmp_path / "broken.ipynb").write_text("{not json")
    assert report_html.render_missing(tmp_path) == []
    assert "could not render broken.ipynb" in caplog.text


def test_the_page_is_small() -> None:
    """nbconvert's `lab` template embeds 257 KiB of CSS in every page; ours is a few KiB."""
    page = report_html.page(notebook([code("x", html_output(VERDICT), tags=["verdict"])]), "t")
    assert len(page.encode()) < 8_000


def test_verdict_blocks_render_as_a_section() -> None:
    detected = verdicts.detect(
        DetectOutputs(
            new_apps=3, updated_apps=1, total_apps=900, should_train=False,
            reason="only 3 new apps (threshold 100)", quarantined_rows=0,
        )
    )  # fmt: skip
    block = Page(f"<body>{detected._repr_html_()}</body>")
    assert block.first == ("section", {"class": "verdict", "data-tone": "info"})
    assert "No retraining: only 3 new apps (threshold 100)" in "".join(block.text)
    assert "stops here" in repr(detected)
    judged = verdicts.monitor(
        MonitorOutputs(
            verdict="not_judged", verdict_reason="service not reachable", healthy=None,
            alerts=[], drift={}, rolled_back=False, monitor_rollback_reason=None,
            rollback_note=None, monitored_version="2", live_metrics={"labeled": 0},
        )
    )  # fmt: skip
    assert judged.title == "Not judged: service not reachable" and judged.tone == "wait"


def test_reasons_are_a_whole_html_table() -> None:
    from lib.pipeline.scoring import Decision, Reason

    why = "improvement lower bound +0.0120 > 0.01 on roc_auc: the candidate is better " * 2
    decision = Decision(80, "auto", reasons=(Reason("improvement", 0.012, "> 0.01", 40, why),))
    table = verdicts.reasons(decision).data
    assert html.escape(why.strip()) in table and "…" not in table and "verdict: auto" in table


@pytest.mark.parametrize(
    ("chart", "args"),
    [
        (plots.rollout_timeline, ([],)),
        (plots.prediction_distribution, ([0.2, 0.7], [])),
        (plots.live_vs_validation, ({"labeled": 0, "accuracy": None},)),
    ],
)
def test_a_chart_with_nothing_to_draw_is_a_sentence(chart, args) -> None:
    import pandas as pd

    said = chart(*args)
    assert isinstance(said, plots.Sentence) and said.startswith("No ")
    assert said._repr_html_().startswith('<p class="no-chart">')
    assert isinstance(plots.traffic(pd.DataFrame()), plots.Sentence)


def partial_stage(error: BaseException):
    """A stage that leaves a partial notebook in the run folder, then stops with `error`."""

    def fn(inputs, root: Path):
        partial = notebook([code("x = 1", tags=["parameters"]), code("train()")], parameters={})
        nbformat.write(partial, root / "reports" / inputs.run_id / "02_train.ipynb")
        raise error

    return fn


@pytest.mark.component
@pytest.mark.parametrize("error", [KeyboardInterrupt(), RuntimeError("the data went away")])
def test_a_failed_or_cancelled_run_renders_its_partial_notebooks(tmp_path: Path, error) -> None:
    from lib.config import load_config
    from lib.errors import StageError
    from lib.pipeline.executors import InProcessExecutor
    from lib.pipeline.orchestrator import run

    root = tmp_path / "project"
    root.mkdir()
    (root / "runner.py").write_text("")
    cfg = load_config(root, None, {"synth_apps": 300})
    detected = DetectOutputs(
        new_apps=300, updated_apps=0, total_apps=300, should_train=True, reason="first run",
        quarantined_rows=0,
    )  # fmt: skip
    stages = {"detect": lambda inputs, root: detected, "train": partial_stage(error)}
    expected = KeyboardInterrupt if isinstance(error, KeyboardInterrupt) else StageError
    with pytest.raises(expected):
        run(cfg, root, ["detect", "train"], run_id="r1", executor=InProcessExecutor(root, stages))
    page = check_stage_html(root / "reports" / "r1" / "02_train.html")
    assert "No verdict" in "".join(page.text)


def test_the_compare_verdict_says_first_when_the_data_is_not_the_training_data() -> None:
    from lib.pipeline.comparison import Comparison

    def comparison(check: dict) -> Comparison:
        return Comparison(
            metric="roc_auc", candidate_version="2", champion_version="1",
            reference_label="champion v1", candidate_metrics={}, reference_metrics={},
            improvement=0.05, candidate_value=0.8, cv_mean=0.8, cv_std=0.01, holdout_rows=500,
            holdout_digest="x",
            improvement_interval={"estimate": 0.05, "low": 0.02, "high": 0.08, "n": 500},
            candidate_interval={"estimate": 0.8, "low": 0.75, "high": 0.85, "n": 500},
            data_check=check,
        )  # fmt: skip

    note = "not comparable to the recorded training data (read abc, trained on def)"
    alone = verdicts.compare(comparison({"comparable": False, "note": note}))
    assert alone.title == f"Not comparable: {note}" and alone.tone == "stop"
    same = verdicts.compare(comparison({"comparable": True, "note": ""}))
    assert same.title == "v2 is better than champion v1" and same.tone == "good"
