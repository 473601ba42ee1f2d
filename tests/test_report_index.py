"""reports/index.html from fake run folders: rows, order, relative links, escaping, bad input."""

from __future__ import annotations

import json
import re
import typing
from datetime import UTC, datetime
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import unquote

import pytest

from lib.pipeline import contracts as c
from lib.pipeline import orchestrator, run_record
from lib.pipeline.executors import StageResult
from lib.pipeline.run_record import RunOutputs
from lib.watch.report_index import (
    OUTCOMES,
    collect_runs,
    record_operator_action,
    write_index,
)


class Table(HTMLParser):
    """The index's rows: run folder, cell texts and hrefs of each <tr data-run=...>."""

    def __init__(self) -> None:
        super().__init__()
        self.rows: list[dict] = []
        self.scripts = 0
        self._cell: list[str] | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        if tag == "script":
            self.scripts += 1
        if tag == "tr" and "data-run" in a:
            self.rows.append({"run": a["data-run"], "cells": [], "links": []})
        elif self.rows and tag == "td":
            self._cell = []
        elif self.rows and tag == "a" and a.get("href"):
            self.rows[-1]["links"].append(a["href"])

    def handle_endtag(self, tag: str) -> None:
        if tag == "td" and self._cell is not None:
            self.rows[-1]["cells"].append(" ".join("".join(self._cell).split()))
            self._cell = None

    def handle_data(self, data: str) -> None:
        if self._cell is not None:
            self._cell.append(data)


def _run(
    reports: Path,
    run_id: str,
    started: str,
    outcome: str,
    stages: list[str],
    results: dict | None = None,
    failed_stage: str | None = None,
    **extra: object,
) -> Path:
    """A run folder as runner.py writes it: paths in report.json relative to the project root."""
    run_dir = reports / run_id
    run_dir.mkdir(parents=True)
    records = []
    for i, name in enumerate(stages, 1):
        stem = f"0{i}_{name}"
        (run_dir / f"{stem}.ipynb").write_text("{}")
        (run_dir / f"{stem}.html").write_text(f"<html>{name}</html>")
        records.append(
            {
                "name": name,
                "status": "failed" if name == failed_stage else "ok",
                "seconds": 1.0,
                "notebook": f"reports/{run_id}/{stem}.ipynb",
                "html": f"reports/{run_id}/{stem}.html",
                "error": None,
                "scraps": {},
            }
        )
    summary = {
        "run_id": run_id,
        "started": started,
        "finished": started,
        "trigger": "manual",
        "outcome": outcome,
        "error": None,
        "results": results or {},
        "stages": records,
        **extra,
    }
    (run_dir / "report.json").write_text(json.dumps(summary))
    return run_dir


@pytest.fixture
def reports(tmp_path: Path) -> Path:
    reports = tmp_path / "reports"
    all_stages = ["detect", "train", "compare", "decide", "deploy"]
    metrics = {"roc_auc": 0.8123, "accuracy": 0.7912}
    _run(reports, "20261101-090000-aaaa", "2026-11-01T09:00:00+00:00", "no_training", ["detect"])
    _run(
        reports,
        "20261102-090000-bbbb",
        "2026-11-02T09:00:00+00:00",
        "promoted",
        all_stages,
        {"decision": "auto", "score": 80, "metrics": metrics, "candidate_version": "2",
         "deployed_version": "2"},
        notifications=[{"kind": "slack", "target": "#ml", "ok": True, "error": None},
                       {"kind": "email", "target": "ops@x", "ok": False, "error": "refused"}],
    )  # fmt: skip
    _run(
        reports,
        "20261103-090000-cccc",
        "2026-11-03T09:00:00+00:00",
        "rolled_back",
        all_stages,
        {"decision": "auto", "score": 75, "metrics": metrics,
         "rollback_reason": "canary accuracy <0.70> & dropping"},
        failed_stage="deploy",
    )  # fmt: skip
    _run(
        reports,
        "20261104-090000-dddd",
        "2026-11-04T09:00:00+00:00",
        "awaiting_approval",
        ["detect", "train", "compare", "decide"],
        {"decision": "manual", "score": 60, "metrics": {"roc_auc": "n/a"}},
        trigger="<script>alert(1)</script>",
    )
    bad = reports / "20261105-090000-eeee"
    bad.mkdir()
    (bad / "report.json").write_text('{"run_id": "20261105-090000-eeee", "outcome": ')
    (bad / "01_detect.html").write_text("<html>detect</html>")
    return reports


def _table(reports: Path) -> Table:
    index = write_index(reports)
    assert index == reports / "index.html"
    table = Table()
    table.feed(index.read_text(encoding="utf-8"))
    return table


def test_rows_newest_first_with_outcomes(reports: Path) -> None:
    table = _table(reports)
    assert [r["run"] for r in table.rows] == [
        "20261105-090000-eeee",
        "20261104-090000-dddd",
        "20261103-090000-cccc",
        "20261102-090000-bbbb",
        "20261101-090000-aaaa",
    ]
    outcome = {r["run"]: r["cells"][2] for r in table.rows}
    assert outcome["20261105-090000-eeee"].startswith("unreadable summary")
    assert outcome["20261104-090000-dddd"] == "waiting (awaiting approval)"
    assert outcome["20261103-090000-cccc"].startswith("rolled back")
    assert outcome["20261102-090000-bbbb"].startswith("promoted")
    assert outcome["20261101-090000-aaaa"] == "no training"


def test_row_shows_decision_metrics_and_failed_notifications(reports: Path) -> None:
    row = next(r for r in _table(reports).rows if r["run"] == "20261102-090000-bbbb")
    cells = row["cells"]
    assert cells[0].startswith("2026-11-02 09:00 UTC")
    assert cells[3] == "auto (score 80)"
    assert cells[4:6] == ["0.812", "0.791"]
    assert cells[9] == "1 failed of 2"
    assert "email → ops@x failed: refused" in cells[2]
    waiting = next(r for r in _table(reports).rows if r["run"] == "20261104-090000-dddd")
    assert waiting["cells"][4] == "—"  # a non-number metric is shown as missing


def test_links_are_relative_and_exist(reports: Path) -> None:
    table = _table(reports)
    promoted = next(r for r in table.rows if r["run"] == "20261102-090000-bbbb")
    notebooks = [h for h in promoted["links"] if h.endswith(".html")]
    assert len(notebooks) == 5
    for row in table.rows:
        for href in row["links"]:
            assert not href.startswith(("/", "file:", "http")) and ".." not in href
            assert (reports / unquote(href)).is_file(), href
    unreadable = next(r for r in table.rows if r["run"] == "20261105-090000-eeee")
    assert "20261105-090000-eeee/01_detect.html" in unreadable["links"]


def test_values_are_escaped(reports: Path) -> None:
    page = write_index(reports).read_text(encoding="utf-8")
    assert "<script>" not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert "canary accuracy &lt;0.70&gt; &amp; dropping" in page
    table = Table()
    table.feed(page)
    assert table.scripts == 0
    rolled = next(r for r in table.rows if r["run"] == "20261103-090000-cccc")
    assert "canary accuracy <0.70> & dropping" in rolled["cells"][2]


def test_partial_and_odd_summaries_do_not_crash(tmp_path: Path) -> None:
    reports = tmp_path / "reports"
    for name, text in {
        "20261201-000000-a": "[1, 2]",
        "20261202-000000-b": json.dumps({"stages": "oops", "results": [], "started": "never"}),
        "20261203-000000-c": json.dumps({"outcome": "promoted", "stages": [None, {"html": 3}]}),
        "20261204-000000-d": json.dumps({"stages": [{"name": "x", "html": "/etc/passwd"}]}),
    }.items():
        (reports / name).mkdir(parents=True)
        (reports / name / "report.json").write_text(text)
    (reports / "20261205-000000-e").mkdir()
    (reports / "20261205-000000-e" / "report.json").write_bytes(b"\xff\xfe\x00garbage")
    rows = collect_runs(reports)
    assert [r.folder for r in rows] == [
        "20261205-000000-e",
        "20261204-000000-d",
        "20261203-000000-c",
        "20261202-000000-b",
        "20261201-000000-a",
    ]
    unreadable = {r.folder for r in rows if not r.readable}
    assert unreadable == {"20261205-000000-e", "20261201-000000-a"}
    assert all(r.links == [] for r in rows)  # nothing outside the reports folder is linked
    assert "unreadable summary" in write_index(reports).read_text(encoding="utf-8")


def _monitored(verdict: str, **kw: object) -> c.MonitorOutputs:
    values: dict = dict(
        verdict=verdict, verdict_reason=None, healthy=verdict == "healthy", alerts=[],
        drift={}, rolled_back=False, monitor_rollback_reason=None, rollback_note=None,
        monitored_version="1", live_metrics={},
    )  # fmt: skip
    return c.MonitorOutputs(**{**values, **kw})


def _recorded_run(reports: Path, run_id: str, outcome: str, outputs: dict) -> Path:
    """A run folder whose report.json is what the runner writes (run_record.summary over the
    stages' typed outputs), not a hand-made dict that could drift from it."""
    run_dir = reports / run_id
    run_dir.mkdir(parents=True)
    results = []
    for i, (name, out) in enumerate(outputs.items(), 1):
        (run_dir / f"0{i}_{name}.html").write_text(f"<html>{name}</html>")
        html = f"reports/{run_id}/0{i}_{name}.html"
        results.append(StageResult(name, "ok", 1.0, c.Contract(), out, None, html))
    summary = run_record.summary(
        run_id=run_id, model_name="m", tracking_uri="sqlite:///mlflow.db", trigger="schedule",
        root=reports.parent, run_dir=run_dir, started=datetime(2026, 12, 6, tzinfo=UTC),
        results=results, outcome=outcome, outputs=RunOutputs(outputs), recovered=None,
        failure=None,
    )  # fmt: skip
    (run_dir / "report.json").write_text(json.dumps(summary))
    return run_dir


def _cells(reports: Path) -> dict[str, list[str]]:
    return {r["run"]: r["cells"] for r in _table(reports).rows}


def test_monitor_column_reads_what_the_runner_records(tmp_path: Path) -> None:
    reports = tmp_path / "reports"
    alert = {"check": "accuracy", "severity": "critical", "message": "12 points below"}
    _recorded_run(reports, "20261206-000001-a", "monitored", {"monitor": _monitored("healthy")})
    why = "service not reachable at http://127.0.0.1:8080 (ConnectError)"
    quiet = _monitored("not_judged", verdict_reason=why, healthy=None)
    _recorded_run(reports, "20261206-000002-b", "monitored", {"monitor": quiet})
    _recorded_run(
        reports, "20261206-000003-c", "monitored",
        {"monitor": _monitored("unhealthy", alerts=[alert], healthy=False)},
    )  # fmt: skip
    rolled = _monitored(
        "unhealthy", alerts=[alert], healthy=False, rolled_back=True,
        monitor_rollback_reason="accuracy 12 points below",
    )  # fmt: skip
    _recorded_run(reports, "20261206-000004-d", "monitor_rolled_back", {"monitor": rolled})
    cells = _cells(reports)
    monitor = {run: row[7] for run, row in cells.items()}
    assert monitor["20261206-000001-a"] == "v1 healthy"
    quiet_cell = monitor["20261206-000002-b"]
    assert quiet_cell.startswith("v1 not judged") and why in quiet_cell
    assert monitor["20261206-000003-c"] == "v1 unhealthy, 1 alert"
    assert monitor["20261206-000004-d"].startswith("v1 rolled back, 1 alert")
    assert cells["20261206-000001-a"][2] == "monitored"
    assert cells["20261206-000004-d"][2].startswith("rolled back (monitor)")
    assert "monitor: accuracy 12 points below" in cells["20261206-000004-d"][2]


def test_a_deployed_run_without_monitor_has_no_monitor_verdict(tmp_path: Path) -> None:
    reports = tmp_path / "reports"
    deployed = c.DeployOutputs(
        outcome="promoted", deployed_version="2", champion_before="1", rollback_reason=None,
        timeline=[], steps=[],
    )  # fmt: skip
    _recorded_run(reports, "20261207-000000-a", "promoted", {"deploy": deployed})
    (row,) = _table(reports).rows
    assert row["cells"][2] == "promoted" and row["cells"][7] == "—"


def _orchestrator_outcomes() -> set[str]:
    """Every outcome literal lib.pipeline.orchestrator can write, read from its source."""
    source = Path(orchestrator.__file__).read_text()
    found = set(re.findall(r'outcome(?:, exit_code)? = "(\w+)"', source))
    found |= set(re.findall(r'record\("(\w+)"', source))
    found |= set(typing.get_args(c.DeployOutputs.model_fields["outcome"].annotation))
    found |= {"awaiting_approval", "rejected", "no_training"}  # _next_step's returns
    return found


def test_every_outcome_the_runner_writes_is_labelled(tmp_path: Path) -> None:
    assert _orchestrator_outcomes() <= set(run_record.RUN_OUTCOMES)
    assert set(run_record.RUN_OUTCOMES) <= set(OUTCOMES)
    reports = tmp_path / "reports"
    for i, outcome in enumerate(run_record.RUN_OUTCOMES):
        _run(reports, f"20261208-0000{i:02d}-x", f"2026-12-08T00:00:{i:02d}+00:00", outcome, [])
    labels = [row["cells"][2] for row in _table(reports).rows]
    assert labels == [OUTCOMES[o][0] for o in reversed(run_record.RUN_OUTCOMES)]


def test_monitor_rollback_and_atomic_rewrite(tmp_path: Path) -> None:
    reports = tmp_path / "reports"
    rolled = _monitored(
        "unhealthy", healthy=False, alerts=[{"check": "accuracy", "message": "down"}],
        rolled_back=True, monitor_rollback_reason="accuracy down",
    )  # fmt: skip
    _recorded_run(reports, "20261206-000000-f", "monitor_rolled_back", {"monitor": rolled})
    first = write_index(reports)
    text = first.read_text(encoding="utf-8")
    assert "rolled back (monitor)" in text and "rolled back, 1 alert" in text
    assert write_index(reports) == first
    assert sorted(p.name for p in reports.iterdir() if p.is_file()) == ["index.html"]
    assert write_index(tmp_path / "empty").read_text().count("no runs yet") == 1


def test_operator_actions_have_their_own_section_newest_first(tmp_path: Path) -> None:
    reports = tmp_path / "reports"
    _run(reports, "20261101-090000-aaaa", "2026-11-01T09:00:00+00:00", "promoted", ["deploy"])
    record_operator_action(
        reports, "rollback", version="2", champion="1", result="done", reason="bad <reviews>"
    )
    record_operator_action(
        reports, "promote", version="3", champion="3", result="done", reason="fixed"
    )
    page = (reports / "index.html").read_text(encoding="utf-8")  # rewritten by each action
    assert "bad &lt;reviews&gt;" in page and "<reviews>" not in page
    actions = OperatorTable()
    actions.feed(page)
    assert [r[1:4] for r in actions.rows] == [["promote", "v3", "v3"], ["rollback", "v2", "v1"]]
    assert [r["run"] for r in _table(reports).rows] == ["20261101-090000-aaaa"]
    (reports / "operator_actions.json").write_text("{not json")
    assert "operator actions unreadable" in write_index(reports).read_text(encoding="utf-8")


class OperatorTable(HTMLParser):
    """The cells of each <tr data-action=...> row."""

    def __init__(self) -> None:
        super().__init__()
        self.rows: list[list[str]] = []
        self._cell: list[str] | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "tr" and "data-action" in dict(attrs):
            self.rows.append([])
        elif self.rows and tag == "td":
            self._cell = []

    def handle_endtag(self, tag: str) -> None:
        if tag == "td" and self._cell is not None:
            self.rows[-1].append(" ".join("".join(self._cell).split()))
            self._cell = None

    def handle_data(self, data: str) -> None:
        if self._cell is not None:
            self._cell.append(data)


class Tags(HTMLParser):
    """Every start tag with its attributes, and the page's text."""

    def __init__(self) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict[str, str | None]]] = []
        self.text: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, dict(attrs)))

    def handle_data(self, data: str) -> None:
        self.text.append(data)


def test_hostile_run_data_stays_text_in_the_template(tmp_path: Path) -> None:
    """Run ids, folder names, reasons and operator entries are text in every place the template
    puts them: element content and attribute values alike."""
    reports = tmp_path / "reports"
    folder = '20261209-000000-"><img src=x onerror=alert(1)>'
    run_id = "<script>alert('id')</script>"
    reason = '<script>alert("reason")</script> & <b onmouseover=x>'
    run_dir = _run(
        reports, folder, "2026-12-09T00:00:00+00:00", "rolled_back", ["deploy"],
        {"rollback_reason": reason, "decision": "<i>auto</i>", "candidate_name": "<u>m</u>",
         "candidate_version": "1"},
        trigger="'\"><svg onload=alert(2)>",
    )  # fmt: skip
    summary = json.loads((run_dir / "report.json").read_text())
    (run_dir / "report.json").write_text(json.dumps({**summary, "run_id": run_id}))
    record_operator_action(
        reports, '"><script>alert(3)</script>', version="<1>", champion="2",
        result="<done>", reason=reason,
    )  # fmt: skip
    page = (reports / "index.html").read_text(encoding="utf-8")
    parsed = Tags()
    parsed.feed(page)
    names = {tag for tag, _ in parsed.tags}
    assert not names & {"script", "img", "svg", "b", "i", "u"}, names
    assert not any(k.startswith("on") for _, attrs in parsed.tags for k in attrs)
    assert [a["data-run"] for t, a in parsed.tags if "data-run" in a] == [folder]
    action_rows = [a["data-action"] for _, a in parsed.tags if "data-action" in a]
    assert action_rows == ['"><script>alert(3)</script>']
    text = "".join(parsed.text)
    for shown in (run_id, reason, "<i>auto</i>", "<u>m</u>", "'\"><svg onload=alert(2)>"):
        assert shown in text  # shown to the reader as typed, not dropped
    (row,) = _table(reports).rows
    assert row["cells"][0].endswith(run_id) and reason in row["cells"][2]
    assert any(unquote(h).startswith(folder + "/") for h in row["links"])
    actions = OperatorTable()
    actions.feed(page)
    assert actions.rows == [
        [actions.rows[0][0], '"><script>alert(3)</script>', "v<1>", "v2", "<done>", reason]
    ]


def test_the_run_id_links_to_its_summary_page(tmp_path: Path) -> None:
    """A run with summary.html (lib.watch.run_summary) links it; an older one its report.json."""
    from lib.watch import run_summary

    reports = tmp_path / "reports"
    healthy = {"monitor": _monitored("healthy")}
    old = _recorded_run(reports, "20261206-000001-a", "monitored", healthy)
    new = _recorded_run(reports, "20261206-000002-b", "monitored", healthy)
    run_summary.write(new, json.loads((new / "report.json").read_text()))
    hrefs = {r["run"]: r["links"][0] for r in _table(reports).rows}
    assert hrefs == {
        "20261206-000002-b": "20261206-000002-b/summary.html",
        "20261206-000001-a": "20261206-000001-a/report.json",
    }
    assert (reports / unquote(hrefs[new.name])).is_file() and old.is_dir()


def _interval(estimate: float, half: float) -> dict:
    return {"estimate": estimate, "low": estimate - half, "high": estimate + half, "n": 685,
            "method": "bootstrap"}  # fmt: skip


def _judged(version: str, estimate: float, score: int, verdict: str, metric: str) -> dict:
    """Typed outputs of 03 compare and 04 decide, for the trends."""
    candidate = _interval(estimate, 0.04)
    compared = c.CompareOutputs(
        candidate_version=version, champion_version=None, reference_label="baseline",
        candidate_metrics={}, champion_metrics=None, improvement=0.1, candidate_value=estimate,
        stability={}, improvement_interval=_interval(0.1, 0.05), candidate_interval=candidate,
        gate_inputs={}, comparison={"metric": metric, "candidate_interval": candidate},
    )  # fmt: skip
    decided = c.DecideOutputs(
        candidate_version=version, score=score, decision=verdict, reasons=["r"],
        decision_detail={},
    )  # fmt: skip
    return {"compare": compared, "decide": decided}


class Sparks(HTMLParser):
    """Each <figure data-series=...>: its dots' classes and titles, its interval bars."""

    def __init__(self) -> None:
        super().__init__()
        self.series: dict[str, dict[str, list]] = {}
        self._title: list[str] | None = None
        self._current: dict[str, list] | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        if tag == "figure" and "data-series" in a:
            self._current = self.series.setdefault(str(a["data-series"]), {
                "dots": [], "titles": [], "bars": 0})  # fmt: skip
        elif self._current is not None and tag == "circle":
            self._current["dots"].append(a["class"])
            self._title = []
        elif self._current is not None and tag == "line":
            self._current["bars"] += 1

    def handle_endtag(self, tag: str) -> None:
        if tag == "circle" and self._title is not None and self._current is not None:
            self._current["titles"].append("".join(self._title))
            self._title = None
        elif tag == "figure":
            self._current = None

    def handle_data(self, data: str) -> None:
        if self._title is not None:
            self._title.append(data)


def test_trends_across_runs(tmp_path: Path) -> None:
    """The selection metric with its interval, the score by decision and the live accuracy,
    oldest run first, as inline SVG (no script) and as a table."""
    reports = tmp_path / "reports"
    metric = "roc_auc<img src=x onerror=alert(1)>"
    _recorded_run(reports, "20261206-000001-a", "promoted", _judged("1", 0.70, 50, "auto", metric))
    _recorded_run(reports, "20261206-000002-b", "awaiting_approval",
                  _judged("2", 0.74, 60, "manual", metric))  # fmt: skip
    live = _monitored("healthy", live_metrics={"labeled": 250, "accuracy": 0.812})
    _recorded_run(reports, "20261206-000003-c", "monitored", {"monitor": live})
    _recorded_run(reports, "20261206-000004-d", "rejected",
                  _judged("3", 0.71, 20, "reject", metric))  # fmt: skip
    page = write_index(reports).read_text(encoding="utf-8")
    assert "<img" not in page and "<script" not in page
    sparks = Sparks()
    sparks.feed(page)
    selection = sparks.series[f"{metric} of the candidate"]
    assert selection["dots"] == ["good", "wait", "warn"] and selection["bars"] == 3
    assert selection["titles"][0] == "20261206-000001-a: 0.7000 [0.660, 0.740], n=685"
    scores = sparks.series["04 decide score (colour: decision)"]
    assert scores["dots"] == ["good", "wait", "warn"]
    assert [t.split(": ")[1] for t in scores["titles"]] == ["50 → auto", "60 → manual",
                                                            "20 → reject"]  # fmt: skip
    accuracy = sparks.series["06 monitor live accuracy"]
    assert accuracy["titles"] == ["20261206-000003-c: 0.812, n=250 labelled"]
    rows = OperatorTable()  # the same cell reader, on the trends table's rows
    rows.feed(page.replace("data-trend=", "data-action="))
    assert rows.rows[0][0].endswith("20261206-000004-d")
    assert rows.rows[0][1:] == [metric, "0.710 [0.670, 0.750], n=685", "20", "reject", "—"]
    assert rows.rows[1][-1] == "0.812 (n=250)"
    assert len(rows.rows) == 4
