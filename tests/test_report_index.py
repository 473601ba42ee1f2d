"""reports/index.html from fake run folders: rows, order, relative links, escaping, bad input."""

from __future__ import annotations

import json
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import unquote

import pytest

from lib.watch.report_index import collect_runs, write_index


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


def test_monitor_rollback_and_atomic_rewrite(tmp_path: Path) -> None:
    reports = tmp_path / "reports"
    _run(
        reports,
        "20261206-000000-f",
        "2026-12-06T00:00:00+00:00",
        "promoted",
        ["detect"],
        {"monitor": {"healthy": False, "alerts": [{"check": "accuracy"}], "rolled_back": True}},
    )
    first = write_index(reports)
    text = first.read_text(encoding="utf-8")
    assert "rolled back (monitor)" in text and "rolled back, 1 alert" in text
    assert write_index(reports) == first
    assert sorted(p.name for p in reports.iterdir() if p.is_file()) == ["index.html"]
    assert write_index(tmp_path / "empty").read_text().count("no runs yet") == 1
