"""reports/<run-id>/summary.md and summary.html (lib.watch.run_summary): every section from the
report.json the runner writes, and the CLI's hand-over to GitHub Actions (job summary,
annotations, outputs) that no report text can turn into a workflow command."""

from __future__ import annotations

import io
import json
import re
from datetime import UTC, datetime
from html.parser import HTMLParser
from pathlib import Path

import pytest

from lib.pipeline import contracts as c
from lib.pipeline import run_record
from lib.pipeline.executors import StageResult
from lib.pipeline.run_record import RunOutputs
from lib.watch import redaction
from lib.watch import run_summary as rs


@pytest.fixture(autouse=True)
def _no_inherited_secrets() -> None:
    """Each test's text is redacted by its own secrets only: a notification test earlier in the
    same worker registers a PagerDuty component `comp`, which redacted `03_compare` here."""
    redaction.clear_registered_secrets()


INTERVAL = "stratified paired bootstrap, 2000 resamples, 95%"
REASONS = [
    'gate "no skill": ROC-AUC lower bound 0.7705 > 0.55 (estimate 0.8088 [0.7705, 0.8442], '
    "n=685): passed",
    "ROC-AUC +0.1238 [+0.0755, +0.1718] vs champion v1: lower bound +0.0755 > 0.01 → +40 "
    + "and a long tail that must never be cut " * 8,
]


def interval(estimate: float, low: float, high: float) -> dict:
    return {"estimate": estimate, "low": low, "high": high, "n": 685, "method": INTERVAL}


def detected() -> c.DetectOutputs:
    return c.DetectOutputs(
        new_apps=150, updated_apps=3, total_apps=3800, should_train=True,
        reason="150 new apps >= 100", quarantined_rows=0,
    )  # fmt: skip


def trained() -> c.TrainOutputs:
    return c.TrainOutputs(
        candidate_version="2", candidate_name="hist_gradient_boosting",
        metrics={"roc_auc": 0.8088, "accuracy": 0.8015}, cv_std=0.0087, mlflow_run_id="r",
        parent_run_id="p", holdout_digest="d", candidates={}, label_threshold=0.52,
        calibration="sigmoid",
    )  # fmt: skip


def compared() -> c.CompareOutputs:
    improvement, candidate = interval(0.1238, 0.0755, 0.1718), interval(0.8088, 0.7705, 0.8442)
    intervals = {
        "roc_auc": {"candidate": candidate, "difference": improvement, "metric": "roc_auc"},
        "accuracy": {
            "candidate": interval(0.8015, 0.7781, 0.8263),
            "difference": interval(0.0175, -0.0073, 0.0438),
        },
    }
    return c.CompareOutputs(
        candidate_version="2", champion_version="1", reference_label="champion v1",
        candidate_metrics={}, champion_metrics={}, improvement=0.1238, candidate_value=0.8088,
        stability={"cv_std": 0.0087}, improvement_interval=improvement,
        candidate_interval=candidate, gate_inputs={},
        comparison={"metric": "roc_auc", "intervals": intervals},
    )  # fmt: skip


def decided(verdict: str, score: int, reasons: list[str] | None = None) -> c.DecideOutputs:
    return c.DecideOutputs(
        candidate_version="2", score=score, decision=verdict, reasons=reasons or REASONS,
        decision_detail={},
    )  # fmt: skip


def step(weight: int, verdict: str, reason: str, accuracy_status: str = "pass") -> dict:
    checks = [
        {"name": "errors", "status": "pass", "message": "0 errors", "observed": {}},
        {
            "name": "accuracy", "status": accuracy_status, "evidence": "labels",
            "message": f"canary accuracy 0.700 vs champion 0.810 ({accuracy_status})",
            "observed": {"canary_labeled": 41, "champion_labeled": 380},
        },
    ]  # fmt: skip
    return {
        "kind": "canary", "step": f"{weight}%", "weight": weight, "verdict": verdict,
        "reason": reason, "samples": {"canary": 57, "champion": 1043}, "checks": checks,
    }  # fmt: skip


TIMELINE = [
    {"t": 0.0, "phase": "staging", "weight": 0, "event": "rollout of v2 started"},
    {"t": 30.5, "phase": "canary", "weight": 5, "event": "canary weight 5%"},
]


def deployed(outcome: str = "promoted", **kw: object) -> c.DeployOutputs:
    rolled = outcome == "rolled_back"
    values: dict = dict(
        outcome=outcome, deployed_version="2", champion_before="1",
        rollback_reason="canary step 25% failed: accuracy dropped" if rolled else None,
        timeline=TIMELINE,
        steps=[step(5, "pass", "all checks pass"),
               step(25, "fail", "accuracy dropped", "fail") if rolled
               else step(25, "pass", "all checks pass")],
    )  # fmt: skip
    return c.DeployOutputs(**{**values, **kw})


def monitored(verdict: str = "healthy", **kw: object) -> c.MonitorOutputs:
    values: dict = dict(
        verdict=verdict, verdict_reason=None, healthy=verdict == "healthy", alerts=[],
        drift={"drifted_features": []}, rolled_back=False, monitor_rollback_reason=None,
        rollback_note=None, monitored_version="2",
        live_metrics={"labeled": 300, "accuracy": 0.81, "reference_accuracy": 0.80},
    )  # fmt: skip
    return c.MonitorOutputs(**{**values, **kw})


def report(
    tmp_path: Path,
    outcome: str,
    outputs: dict[str, c.Contract],
    failed: tuple[str, str] | None = None,
    serving_url: str | None = None,
    tracking_uri: str = "sqlite:///mlflow.db",
    notifications: list[dict] | None = None,
) -> tuple[Path, dict]:
    """A run folder and the report.json dict the runner writes for these stage outputs (through
    run_record.summary, so it cannot drift from the real one)."""
    run_dir = tmp_path / "reports" / "20261206-120000-abcd"
    run_dir.mkdir(parents=True)
    results = []
    for i, (name, out) in enumerate(outputs.items(), 1):
        (run_dir / f"0{i}_{name}.html").write_text(f"<html>{name}</html>")
        html = f"reports/{run_dir.name}/0{i}_{name}.html"
        results.append(StageResult(name, "ok", 1.5, c.Contract(), out, None, html))
    failure = None
    if failed is not None:
        name, error = failed
        (run_dir / f"0{len(results) + 1}_{name}.ipynb").write_text("{}")
        nb = f"reports/{run_dir.name}/0{len(results) + 1}_{name}.ipynb"
        results.append(StageResult(name, "failed", 2.0, c.Contract(), None, nb, None, error))
        failure = RuntimeError(f"stage {name} failed: {error}")
    summary = run_record.summary(
        run_id=run_dir.name, model_name="playstore-rating", tracking_uri=tracking_uri,
        trigger="schedule", root=tmp_path, run_dir=run_dir,
        started=datetime(2026, 12, 6, 12, tzinfo=UTC), results=results, outcome=outcome,
        outputs=RunOutputs(outputs), recovered=None, failure=failure, serving_url=serving_url,
    )  # fmt: skip
    summary["notifications"] = notifications or []
    (run_dir / "report.json").write_text(json.dumps(summary))
    return run_dir, summary


def sections(markdown: str) -> dict[str, str]:
    """`## title` -> the section's text; "" -> what comes before the first section."""
    parts = re.split(r"^## (.+)$", markdown, flags=re.M)
    found = {"": parts[0]}
    found.update(zip(parts[1::2], parts[2::2], strict=True))
    return found


def plain(markdown: str) -> str:
    """The markdown's text as a reader sees it (backslash escapes and entities undone)."""
    return re.sub(r"\\(.)", r"\1", markdown).replace("&amp;", "&")


def full_run(tmp_path: Path, **kw: object) -> tuple[Path, dict]:
    outputs = {
        "detect": detected(), "train": trained(), "compare": compared(),
        "decide": decided("auto", 80), "deploy": deployed(), "monitor": monitored(),
    }  # fmt: skip
    return report(tmp_path, "promoted", outputs, **kw)


def test_a_promoted_and_monitored_run_has_every_section_in_order(tmp_path: Path) -> None:
    failed_note = {"kind": "slack", "target": "slack://***", "ok": False, "error": "HTTP 500"}
    ok_note = {"kind": "email", "target": "ops@x", "ok": True, "error": None}
    run_dir, data = full_run(tmp_path, notifications=[failed_note, ok_note])
    text = rs.to_markdown(rs.write(run_dir, data, location="https://ci/artifacts/42"))
    assert (run_dir / "summary.md").read_text() == text
    found = sections(text)
    assert list(found)[1:] == ["Production", "Why", "Metrics", "Rollout", "Monitor",
                               "Notifications", "Reports", "Stages"]  # fmt: skip
    first = [line for line in found[""].splitlines() if line and not line.startswith("# ")][0]
    assert plain(first) == "**✅ promoted · decision auto · v2 · score 80/100**"
    why = plain(found["Why"])
    for reason in REASONS:  # in full, never cut
        assert reason in why
    assert "01 detect: 150 new apps >= 100 (150 new, 3 updated, 3800 apps in all)" in why
    metrics = plain(found["Metrics"])
    assert "roc_auc of v2: 0.8088, interval [0.7705, 0.8442], n = 685" in metrics
    assert "improvement vs champion v1: +0.1238, interval [+0.0755, +0.1718], n = 685" in metrics
    assert "| accuracy | 0.8015 | [0.7781, 0.8263] | +0.0175 | [-0.0073, +0.0438] | 685 |" in (
        metrics
    )
    rollout = plain(found["Rollout"])
    assert "v2 promoted to champion (before: v1)" in rollout
    assert "| 25% | 57 / 1043 | 41 / 380 | errors pass; accuracy pass | pass |" in rollout
    assert "+30.5 s canary (weight 5%): canary weight 5%" in rollout
    monitor = plain(found["Monitor"])
    assert "v2 healthy" in monitor
    assert "live accuracy 0.810, 95% interval [0.762, 0.850] (Wilson), n = 300" in monitor
    assert "2 sent, 1 failed" in found["Notifications"]
    assert "slack → slack://*** : HTTP 500".replace(" :", ":") in plain(found["Notifications"])
    assert "https://ci/artifacts/42" in found["Reports"]
    assert "| monitor | ok | 1.5 s | 06_monitor.html |" in plain(found["Stages"])


class Page(HTMLParser):
    """The summary page: links, scripts, the first element of the body and all text."""

    def __init__(self) -> None:
        super().__init__()
        self.links: list[str] = []
        self.scripts = 0
        self.body_first: tuple[str, dict] | None = None
        self._in_body = False
        self.text: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        if tag == "script":
            self.scripts += 1
        if tag == "a":
            self.links.append(str(a.get("href")))
        if self._in_body and self.body_first is None and tag != "h1":
            self.body_first = (tag, a)
        self._in_body = self._in_body or tag == "body"

    def handle_data(self, data: str) -> None:
        self.text.append(data)


def test_the_html_says_the_same_and_links_each_stage_report(tmp_path: Path) -> None:
    run_dir, data = full_run(tmp_path)
    rs.write(run_dir, data)
    page = Page()
    page.feed((run_dir / "summary.html").read_text())
    assert page.scripts == 0
    assert page.body_first == ("section", {"class": "verdict good"})
    assert page.links == [f"0{i}_{n}.html" for i, n in enumerate(
        ["detect", "train", "compare", "decide", "deploy", "monitor"], 1)]  # fmt: skip
    assert all((run_dir / href).is_file() for href in page.links)
    text = "".join(page.text)
    for reason in REASONS:
        assert reason in text
    assert str(run_dir.resolve()) in text  # no PIPELINE_REPORTS_LOCATION: the local folder


def test_production_mode_says_plainly_when_it_was_ephemeral(tmp_path: Path) -> None:
    run_dir, data = full_run(tmp_path)
    assert data["production"] == {
        "mode": "self-contained", "tracking_uri": "sqlite:///mlflow.db", "serving_url": None
    }  # fmt: skip
    text = plain(sections(rs.to_markdown(rs.build(data, run_dir)))["Production"])
    assert "Self-contained (ephemeral)" in text and "05 deploy started its own model" in text
    assert "In a CI job the service and the registry lived only in this job" in text
    run_dir, data = full_run(tmp_path / "remote", tracking_uri="http://mlflow.example:5000")
    text = plain(sections(rs.to_markdown(rs.build(data, run_dir)))["Production"])
    assert "the registry (http://mlflow.example:5000) is external" in text
    assert "In a CI job the service lived only in this job" in text
    other = tmp_path / "other"
    run_dir, data = full_run(
        other, serving_url="https://bob:s3cret@serving.example/", tracking_uri=(
            "https://alice:hunter2pw@mlflow.example")
    )  # fmt: skip
    assert data["production"]["mode"] == "external"
    text = rs.to_markdown(rs.build(data, run_dir))
    assert "s3cret" not in text and "hunter2pw" not in text
    production = plain(sections(text)["Production"])
    assert "External: the model service at https://***@serving.example/" in production
    assert "outlive this job" in production


def test_a_failed_run_gives_its_error_in_full(tmp_path: Path) -> None:
    error = "the data server went away: " + "x" * 500
    run_dir, data = report(
        tmp_path, "failed", {"detect": detected(), "train": trained()}, failed=("compare", error)
    )
    text = plain(rs.to_markdown(rs.build(data, run_dir)))
    found = sections(text)
    assert "❌ failed at compare · v2" in found[""]
    assert error in found["Why"]
    assert "Holdout metrics (no intervals: 03 compare did not run)" in found["Metrics"]
    assert "the run failed before 05 deploy" in found["Rollout"]
    assert "06 monitor did not run" in found["Monitor"]
    assert "| compare | failed | 2.0 s | 03_compare.ipynb |" in found["Stages"]
    assert rs.annotations(data) == [
        "::error title=Run failed::" + rs.escape_data(f"stage compare failed: {error}")
    ]


@pytest.mark.parametrize(
    ("verdict", "outcome", "level", "title", "rollout"),
    [
        ("manual", "awaiting_approval", "warning", "Awaiting approval", "v2 awaits approval"),
        ("reject", "rejected", "error", "Rejected", "v2 was rejected by the decision"),
    ],
)
def test_manual_and_reject_decisions(
    tmp_path: Path, verdict: str, outcome: str, level: str, title: str, rollout: str
) -> None:
    outputs = {"detect": detected(), "train": trained(), "compare": compared(),
               "decide": decided(verdict, 45)}  # fmt: skip
    run_dir, data = report(tmp_path, outcome, outputs)
    found = sections(plain(rs.to_markdown(rs.build(data, run_dir))))
    assert f"decision {verdict} · v2 · score 45/100" in found[""]
    assert f"04 decide: {verdict} at score 45/100" in found["Why"]
    assert rollout in found["Rollout"] and "production unchanged" in found["Rollout"]
    (line,) = rs.annotations(data)
    assert line.startswith(f"::{level} title={title}::v2 ")
    assert "(score 45/100)" in line and rs.escape_data(REASONS[1]) in line


def test_a_rollback_shows_the_failing_step_and_its_reason(tmp_path: Path) -> None:
    outputs = {"detect": detected(), "train": trained(), "compare": compared(),
               "decide": decided("auto", 80), "deploy": deployed("rolled_back")}  # fmt: skip
    run_dir, data = report(tmp_path, "rolled_back", outputs)
    found = sections(plain(rs.to_markdown(rs.build(data, run_dir))))
    assert "❌ rolled back · decision auto · v2" in found[""]
    rollout = found["Rollout"]
    assert "v2 rolled back; champion stays v1" in rollout
    assert "rollback reason: canary step 25% failed: accuracy dropped" in rollout
    assert "| 25% | 57 / 1043 | 41 / 380 | errors pass; accuracy fail | fail |" in rollout
    assert "25%: accuracy fail: canary accuracy 0.700 vs champion 0.810 (fail)" in rollout
    assert "06 monitor did not run" in found["Monitor"]
    assert rs.annotations(data) == [
        "::error title=Rolled back::v2: canary step 25%25 failed: accuracy dropped"
    ]
    first = deployed("rolled_back", champion_before=None, steps=[])
    run_dir, data = report(tmp_path / "first", "rolled_back", {"deploy": first})
    rollout = sections(plain(rs.to_markdown(rs.build(data, run_dir))))["Rollout"]
    assert "v2 rolled back; production has no champion" in rollout
    assert "No canary step completed" in rollout


def real_step(weight: int, canary_accuracy: float) -> dict:
    """A step record as 05 deploy writes it: lib.delivery.canary's own analysis of a window
    (600 champion and 200 canary requests, all labelled), summarized as progressive does."""
    import numpy as np
    import pandas as pd

    from lib.delivery import canary

    def variant(name: str, n: int, accuracy: float) -> pd.DataFrame:
        true = np.arange(n) % 2
        label = np.where(np.arange(n) < round(accuracy * n), true, 1 - true).astype(float)
        return pd.DataFrame({
            "request_id": [f"{name}-{i}" for i in range(n)], "variant": name,
            "created_at": 1_700_000_000 + np.arange(n) * 0.1, "label": label,
            "model_version": "2" if name == "canary" else "1", "probability": 0.3 + 0.4 * label,
            "latency_ms": 20.0 + np.arange(n) % 7, "error": None, "true_label": true.astype(float),
        })  # fmt: skip

    frame = pd.concat([variant("champion", 600, 0.8), variant("canary", 200, canary_accuracy)])
    analysis = canary.analyze(frame)
    return {"kind": "canary", "step": f"{weight}%", "weight": weight,
            **canary.summarize_step(analysis)}  # fmt: skip


def test_steps_as_the_canary_analysis_records_them(tmp_path: Path) -> None:
    steps = [real_step(5, 0.8), real_step(25, 0.55)]
    assert [s["verdict"] for s in steps] == ["pass", "fail"]
    out = deployed("rolled_back", steps=steps, rollback_reason=f"canary step 25% failed: "
                   f"{steps[1]['reason']}")  # fmt: skip
    run_dir, data = report(tmp_path, "rolled_back", {"deploy": out})
    rollout = sections(plain(rs.to_markdown(rs.build(data, run_dir))))["Rollout"]
    rows = [line for line in rollout.splitlines() if line.startswith("| 5")]
    assert len(rows) == 1 and rows[0].startswith("| 5% | 200 / 600 | 200 / 600 | ")
    assert "accuracy pass" in rows[0] and rows[0].endswith(" | pass |")
    failing = next(line for line in rollout.splitlines() if line.startswith("| 25%"))
    assert "accuracy fail" in failing and failing.endswith(" | fail |")
    message = next(c["message"] for c in steps[1]["checks"] if c["name"] == "accuracy")
    assert f"25%: accuracy fail: {message}" in rollout


def test_monitor_not_judged_unhealthy_and_rolled_back(tmp_path: Path) -> None:
    why = "service not reachable at http://127.0.0.1:8080 (ConnectError)"
    quiet = monitored("not_judged", verdict_reason=why, healthy=None, live_metrics={})
    run_dir, data = report(tmp_path, "monitored", {"monitor": quiet})
    monitor = sections(plain(rs.to_markdown(rs.build(data, run_dir))))["Monitor"]
    assert f"v2 not judged: {why}" in monitor
    assert "no live accuracy (0 labelled predictions)" in monitor
    assert rs.annotations(data) == []
    alert = {"check": "accuracy", "severity": "critical", "message": "12 points below"}
    rolled = monitored(
        "unhealthy", healthy=False, alerts=[alert], rolled_back=True,
        monitor_rollback_reason="accuracy 12 points below", rollback_note="rolled back v2 -> v1",
    )  # fmt: skip
    run_dir, data = report(tmp_path / "b", "monitor_rolled_back", {"monitor": rolled})
    found = sections(plain(rs.to_markdown(rs.build(data, run_dir))))
    assert "rolled back (monitor)" in found[""]
    assert "alert (critical, accuracy): 12 points below" in found["Monitor"]
    assert "rolled back: accuracy 12 points below" in found["Monitor"]
    assert rs.annotations(data) == [
        "::error title=Rolled back by the monitor::v2: accuracy 12 points below"
    ]


def test_wilson_interval() -> None:
    low, high = rs.wilson(243, 300)
    assert round(low, 3) == 0.762 and round(high, 3) == 0.850
    assert rs.wilson(0, 10)[0] == 0.0 and rs.wilson(10, 10)[1] == pytest.approx(1.0)


def test_annotation_escaping_follows_github() -> None:
    assert rs.escape_data("100% sure\r\nnext") == "100%25 sure%0D%0Anext"
    assert rs.escape_property("a: b, c%") == "a%3A b%2C c%25"
    assert rs.annotation("error", "Run failed", "line 1\nline 2") == (
        "::error title=Run failed::line 1%0Aline 2"
    )


HOSTILE = (
    "bad\n::set-output name=decision::auto\n::error::pwned\r\n%0A::warning::x "
    "| cell | <script>alert(1)</script> **bold** [link](javascript:alert(1)) & &lt;"
)


def test_report_text_never_becomes_a_workflow_command_or_markup(tmp_path: Path) -> None:
    outputs = {"detect": detected(), "train": trained(), "compare": compared(),
               "decide": decided("reject", 10, [HOSTILE])}  # fmt: skip
    run_dir, data = report(tmp_path, "rejected", outputs)
    data["run_id"] = "x\n::set-output name=outcome::promoted"
    lines = rs.annotations(data)
    assert len(lines) == 1 and "\n" not in lines[0] and "\r" not in lines[0]
    assert "%0A::set-output name=decision::auto%0A::error::pwned%0D%0A%250A::warning" in lines[0]
    assert rs.escape_data(HOSTILE) in lines[0]
    markdown = rs.to_markdown(rs.build(data, run_dir))
    assert not re.search(r"^::", markdown, flags=re.M)
    assert "<script>" not in markdown and "\\<script\\>" in markdown
    hostile_line = next(line for line in markdown.splitlines() if "set-output name=dec" in line)
    assert hostile_line.startswith("- bad<br>")  # one bullet, the line breaks as <br>
    assert "\\| cell \\|" in hostile_line and "\\*\\*bold\\*\\*" in hostile_line
    assert plain(hostile_line.replace("<br>", "\n")) == "- " + HOSTILE.replace("\r\n", "\n")
    html = rs.to_html(rs.build(data, run_dir))
    assert "<script>" not in html and "&lt;script&gt;alert(1)&lt;/script&gt;" in html


def test_github_output_uses_the_delimiter_form_for_line_breaks() -> None:
    assert rs.output_lines("decision", "auto") == "decision=auto\n"
    entry = rs.output_lines("run_id", "a\nb=c\nghadelimiter_x")
    name, rest = entry.split("<<", 1)
    delimiter, body = rest.split("\n", 1)
    assert name == "run_id" and delimiter.startswith("ghadelimiter_")
    assert body == f"a\nb=c\nghadelimiter_x\n{delimiter}\n"


def parse_github_output(text: str) -> dict[str, str]:
    """$GITHUB_OUTPUT as the runner reads it: `k=v` lines and `k<<DELIM` blocks."""
    found, lines = {}, iter(text.splitlines())
    for line in lines:
        if "<<" in line and ("=" not in line or line.index("<<") < line.index("=")):
            name, delimiter = line.split("<<", 1)
            body = []
            for item in lines:
                if item == delimiter:
                    break
                body.append(item)
            found[name] = "\n".join(body)
        else:
            name, value = line.split("=", 1)
            found[name] = value
    return found


def test_the_github_cli_writes_summary_annotations_and_outputs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    outputs = {"detect": detected(), "train": trained(), "compare": compared(),
               "decide": decided("manual", 60)}  # fmt: skip
    run_dir, data = report(tmp_path, "awaiting_approval", outputs)
    data["run_id"] = "gh-1-1-pipeline\nversion=999"  # a hostile run id cannot add an output
    (run_dir / "report.json").write_text(json.dumps(data))
    step_summary, github_output = tmp_path / "step.md", tmp_path / "out.txt"
    step_summary.write_text("earlier step\n")
    env = {
        "GITHUB_STEP_SUMMARY": str(step_summary), "GITHUB_OUTPUT": str(github_output),
        rs.LOCATION_ENV: "artifact reports-gh-1-1 of https://github.com/o/r/actions/runs/1",
    }  # fmt: skip
    stdout = io.StringIO()
    assert rs.github(run_dir, env, stdout) == 0
    summary = step_summary.read_text()
    assert summary.startswith("earlier step\n# Run gh-1-1-pipeline<br>version=999")
    assert summary.removeprefix("earlier step\n") == (run_dir / "summary.md").read_text() + "\n"
    assert "https://github.com/o/r/actions/runs/1" in (run_dir / "summary.html").read_text()
    (line,) = stdout.getvalue().splitlines()
    assert line.startswith("::warning title=Awaiting approval::v2 awaits approval")
    assert parse_github_output(github_output.read_text()) == {
        "run_id": "gh-1-1-pipeline\nversion=999", "outcome": "awaiting_approval",
        "decision": "manual", "version": "2", "score": "60",
    }  # fmt: skip
    monkeypatch.setattr("sys.argv", ["x"])
    empty = tmp_path / "empty"
    empty.mkdir()
    out = io.StringIO()
    assert rs.github(empty, {"GITHUB_STEP_SUMMARY": str(step_summary)}, out) == 1
    assert out.getvalue().startswith("::error title=No run report::")
    assert "the run stopped before its first stage?" in step_summary.read_text()


def test_notification_secrets_are_redacted(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    hook = "https://hooks.slack.com/services/T000/B000/XyZsecretToken123456"
    monkeypatch.setenv("SLACK_WEBHOOK", hook)
    note = {"kind": "slack", "target": "slack", "ok": False, "error": f"POST {hook} -> 500"}
    run_dir, data = full_run(tmp_path, notifications=[note])
    for page in (rs.to_markdown(rs.build(data, run_dir)), rs.to_html(rs.build(data, run_dir))):
        assert "XyZsecretToken123456" not in page


def test_an_old_report_without_production_or_stages_still_summarizes(tmp_path: Path) -> None:
    summary = rs.build({"run_id": "old", "outcome": "weird", "stages": "oops"}, tmp_path)
    text = plain(rs.to_markdown(summary))
    assert "Not recorded (an older report)" in text and "weird" in text
    assert rs.outputs({"outcome": "weird", "results": {"decision": "maybe"}}, "r") == {
        "run_id": "r", "outcome": "weird", "decision": "", "version": "", "score": ""
    }  # fmt: skip


@pytest.mark.component
def test_the_summary_of_a_real_run(tmp_path: Path) -> None:
    """A real run in-process (small generated data, a real model, MLflow, 04's real reasons):
    the runner writes summary.md and summary.html beside report.json, and the CLI hands the
    same markdown, the decision's annotation and the outputs to GitHub."""
    from lib.config import load_config
    from lib.pipeline.executors import InProcessExecutor
    from lib.pipeline.orchestrator import run

    root = tmp_path / "project"
    root.mkdir()
    (root / "runner.py").write_text("")
    small = {"synth_apps": 800, "cv_folds": 2, "candidates": ["logistic_regression"],
             "features": ["engagement"], "calibration": []}  # fmt: skip
    cfg = load_config(root, None, small)
    stages = ["detect", "train", "compare", "decide"]
    result = run(cfg, root, stages, run_id="gh-7-1-pipeline", executor=InProcessExecutor(root))
    run_dir = result.report_dir
    data = json.loads((run_dir / "report.json").read_text())
    assert data["production"]["mode"] == "self-contained"
    written = (run_dir / "summary.md").read_text()
    assert written == rs.to_markdown(rs.build(data, run_dir))
    decided_ = result.outputs["decide"]
    found = sections(plain(written))
    assert f"decision {decided_.decision} · v{decided_.candidate_version}" in found[""]
    for reason in decided_.reasons:
        assert reason in found["Why"]
    interval_ = result.outputs["compare"].improvement_interval
    assert f"n = {interval_['n']}" in found["Metrics"]
    assert "Self-contained (ephemeral)" in found["Production"]
    assert (run_dir / "summary.html").read_text().count('<section class="verdict') == 1
    step_summary, github_output = tmp_path / "step.md", tmp_path / "out.txt"
    env = {"GITHUB_STEP_SUMMARY": str(step_summary), "GITHUB_OUTPUT": str(github_output)}
    stdout = io.StringIO()
    assert rs.github(run_dir, env, stdout) == 0
    assert step_summary.read_text() == written + "\n"
    outputs = parse_github_output(github_output.read_text())
    assert outputs["run_id"] == "gh-7-1-pipeline" and outputs["outcome"] == result.outcome
    assert outputs["decision"] == decided_.decision and outputs["score"] == str(decided_.score)
    expected = {"auto": 0, "manual": 1, "reject": 1}[decided_.decision]
    assert len(stdout.getvalue().splitlines()) == expected
