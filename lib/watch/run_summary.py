"""`reports/<run-id>/summary.md` and `summary.html`: one run, verdict first, for a reviewer and for
GitHub's job summary.

Built from the dict the runner writes as report.json (lib.pipeline.run_record.summary), as one
list of sections rendered twice (markdown, HTML), so both say the same. Every text from the
report is redacted (lib.watch.redaction), escaped for its format and never cut. The CLI,
`python -m lib.watch.run_summary reports/<run-id> --github`, rewrites both files and hands the
verdict to GitHub Actions: the markdown to $GITHUB_STEP_SUMMARY, annotations on stdout, outputs
to $GITHUB_OUTPUT, none of which a report's text can turn into a workflow command.
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, is_dataclass, replace
from pathlib import Path
from typing import Any
from urllib.parse import quote

from lib.atomic_files import write_text_atomic
from lib.watch.redaction import redact
from lib.watch.report_index import OUTCOMES, page_template

logger = logging.getLogger(__name__)

MARKDOWN_NAME, HTML_NAME = "summary.md", "summary.html"
TEMPLATE = "summary.html.j2"  # in lib/watch/templates
LOCATION_ENV = "PIPELINE_REPORTS_LOCATION"  # where the reports artifact is (the workflow sets it)
ICONS = {"good": "✅", "bad": "❌", "warn": "⚠️", "wait": "⏸️", "info": "ℹ️", "muted": "➖"}
Z95 = 1.959963984540054


# ---------------------------------------------------------------------------- the document


@dataclass
class Link:
    text: str
    href: str  # relative to the run folder


Cell = str | Link


@dataclass
class Block:
    """A paragraph (`text`), a bullet list (`items`) or a table (`header`, `rows`)."""

    kind: str  # "p", "ul", "table"
    text: str = ""
    strong: bool = False
    items: list[str] = field(default_factory=list)
    header: list[str] = field(default_factory=list)
    rows: list[list[Cell]] = field(default_factory=list)


@dataclass
class Section:
    title: str
    blocks: list[Block]


def para(text: str, strong: bool = False) -> Block:
    return Block("p", text=text, strong=strong)


def bullets(items: list[str]) -> Block:
    return Block("ul", items=items)


def table(header: list[str], rows: list[list[Cell]]) -> Block:
    return Block("table", header=header, rows=rows)


@dataclass
class Summary:
    """One run's summary: a title, the verdict line, then the sections in order."""

    title: str
    verdict: str
    css: str
    meta: str
    sections: list[Section]


def _redacted(value: Any) -> Any:
    """Every string in the document, redacted: nothing from the report reaches a page raw."""
    if isinstance(value, str):
        return redact(value)
    if isinstance(value, list):
        return [_redacted(v) for v in value]
    if is_dataclass(value) and not isinstance(value, type):
        return replace(value, **{f.name: _redacted(getattr(value, f.name)) for f in fields(value)})
    return value


# ---------------------------------------------------------------------------- reading


def _dict(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else []


def _num(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value) if math.isfinite(value) else None


def _fmt(value: Any, digits: int = 4, sign: bool = False) -> str:
    number = _num(value)
    if number is None:
        return "—"
    return f"{number:+.{digits}f}" if sign else f"{number:.{digits}f}"


def _interval(interval: Any, sign: bool = False) -> str:
    i = _dict(interval)
    if _num(i.get("low")) is None or _num(i.get("high")) is None:
        return "—"
    return f"[{_fmt(i['low'], sign=sign)}, {_fmt(i['high'], sign=sign)}]"


def _stage(report: dict[str, Any], name: str) -> dict[str, Any]:
    """The record of stage `name` (the last one when it ran twice), or {}."""
    found = [_dict(s) for s in _list(report.get("stages")) if _dict(s).get("name") == name]
    return found[-1] if found else {}


def _outputs(report: dict[str, Any], name: str) -> dict[str, Any]:
    return _dict(_stage(report, name).get("outputs"))


def _version(value: Any) -> str:
    return f"v{value}" if value not in (None, "") else "—"


def _outcome(report: dict[str, Any]) -> tuple[str, str, str]:
    """(raw outcome, label, CSS class); a monitor rollback is the outcome whatever came first."""
    raw = str(report.get("outcome") or "unknown")
    if _dict(report.get("results")).get("rolled_back") is True and raw != "failed":
        raw = "monitor_rolled_back"
    label, css = OUTCOMES.get(raw, (raw, "muted"))
    return raw, label, css


def decision(report: dict[str, Any]) -> str:
    """04 decide's verdict (auto, manual or reject), or "" when no decision was made."""
    value = _dict(report.get("results")).get("decision")
    return value if value in ("auto", "manual", "reject") else ""


def version(report: dict[str, Any]) -> str:
    """The version this run was about: the candidate, else the one deployed or monitored."""
    results = _dict(report.get("results"))
    for key in ("candidate_version", "deployed_version", "monitored_version"):
        if results.get(key) not in (None, ""):
            return str(results[key])
    return ""


def score(report: dict[str, Any]) -> str:
    value = _dict(report.get("results")).get("score")
    return str(value) if isinstance(value, int) and not isinstance(value, bool) else ""


def failed_stages(report: dict[str, Any]) -> list[dict[str, Any]]:
    return [s for s in map(_dict, _list(report.get("stages"))) if s.get("status") == "failed"]


def verdict_line(report: dict[str, Any]) -> str:
    """`✅ promoted · decision auto · v2 · score 80/100`: what a reviewer reads first."""
    _, label, css = _outcome(report)
    head = f"{ICONS.get(css, '')} {label}".strip()
    failed = failed_stages(report)
    if failed:
        head += f" at {failed[-1].get('name')}"
    parts = [head]
    if decision(report):
        parts.append(f"decision {decision(report)}")
    if version(report):
        parts.append(f"v{version(report)}")
    if score(report):
        parts.append(f"score {score(report)}/100")
    return " · ".join(parts)


# ---------------------------------------------------------------------------- sections


def _is_local_registry(uri: str) -> bool:
    return uri.startswith(("sqlite:", "file:")) or "://" not in uri


def production_section(report: dict[str, Any]) -> Section:
    """External or self-contained; a self-contained production is said plainly to be ephemeral."""
    prod = _dict(report.get("production"))
    uri = str(prod.get("tracking_uri") or report.get("tracking_uri") or "—")
    if prod.get("mode") == "external":
        text = (
            f"External: the model service at {prod.get('serving_url')} and the registry at "
            f"{uri} outlive this job."
        )
        return Section("Production", [para(text)])
    if prod.get("mode") != "self-contained":
        return Section("Production", [para(f"Not recorded (an older report); registry {uri}.")])
    service = (
        "05 deploy started its own model service and stopped it when the stage ended"
        if _outputs(report, "deploy")
        else "a deployment starts its own model service and stops it when the stage ends"
    )
    local = _is_local_registry(uri)
    where, what = (
        (f"the registry ({uri}) is a file of this checkout", "the service and the registry")
        if local
        else (f"the registry ({uri}) is external and keeps the versions", "the service")
    )
    text = (
        f"Self-contained (ephemeral): no serving URL was configured, so {service}, and {where}. "
        f"In a CI job {what} lived only in this job: nothing deployed here is serving now."
    )
    return Section("Production", [para(text, strong=True)])


def reasons_section(report: dict[str, Any]) -> Section:
    """Why the run ended as it did, every reason in full: the error, what 01 detect found,
    04 decide's reasons, what recovery did first."""
    results = _dict(report.get("results"))
    blocks: list[Block] = []
    errors = [f"error: {report['error']}"] if report.get("error") else []
    for stage in failed_stages(report):
        if stage.get("error") and str(stage["error"]) not in str(report.get("error")):
            errors.append(f"{stage.get('name')} failed: {stage['error']}")
    if report.get("outcome") == "cancelled":
        errors.append("the run was cancelled (Ctrl-C or SIGTERM) before its end")
    if errors:
        blocks.append(bullets(errors))
    recovered = _dict(results.get("recovered"))
    if recovered.get("reason"):
        blocks.append(
            para(
                f"Before this run, recovery of an interrupted rollout: "
                f"{recovered.get('outcome')}: {recovered['reason']}"
            )
        )
    if results.get("reason"):
        counts = [
            f"{results[k]} {w}"
            for k, w in (
                ("new_apps", "new"),
                ("updated_apps", "updated"),
                ("total_apps", "apps in all"),
            )
            if results.get(k) is not None
        ]
        blocks.append(
            para(f"01 detect: {results['reason']}" + (f" ({', '.join(counts)})" if counts else ""))
        )
    if decision(report):
        blocks.append(
            para(f"04 decide: {decision(report)} at score {score(report) or '—'}/100, because:")
        )
        blocks.append(bullets([str(r) for r in _list(results.get("reasons"))] or ["(none given)"]))
    return Section("Why", blocks or [para("No stage gave a reason.")])


def _candidate_interval(report: dict[str, Any]) -> dict[str, Any]:
    compared = _outputs(report, "compare")
    found = compared.get("candidate_interval") or _dict(
        _dict(_dict(report.get("results")).get("comparison")).get("candidate_interval")
    )
    return _dict(found)


def metrics_section(report: dict[str, Any]) -> Section:
    """The selection metric with its interval, the improvement with its interval, n; then every
    metric's interval when 03 compare computed them."""
    results = _dict(report.get("results"))
    comparison = _dict(results.get("comparison"))
    metric = str(comparison.get("metric") or "the selection metric")
    candidate, improvement = _candidate_interval(report), _dict(results.get("improvement_interval"))
    lines = []
    if candidate:
        lines.append(
            f"{metric} of {_version(version(report))}: {_fmt(candidate.get('estimate'))}, "
            f"interval {_interval(candidate)}, n = {candidate.get('n', '—')}"
        )
    if improvement:
        lines.append(
            f"improvement vs {results.get('reference_label') or 'the reference'}: "
            f"{_fmt(improvement.get('estimate'), sign=True)}, interval "
            f"{_interval(improvement, sign=True)}, n = {improvement.get('n', '—')}"
        )
    if _num(results.get("cv_std")) is not None:
        lines.append(f"cross-validation std of {metric}: {_fmt(results['cv_std'])}")
    method = improvement.get("method") or candidate.get("method")
    blocks = [bullets(lines)] if lines else []
    if method:
        blocks.append(para(f"Intervals: {method}."))
    rows = [
        [
            name,
            _fmt(_dict(i.get("candidate")).get("estimate")),
            _interval(i.get("candidate")),
            _fmt(_dict(i.get("difference")).get("estimate"), sign=True),
            _interval(i.get("difference"), sign=True),
            str(_dict(i.get("candidate")).get("n", "—")),
        ]
        for name, i in sorted(
            _dict(comparison.get("intervals")).items(),
            key=lambda kv: (kv[0] != comparison.get("metric"), kv[0]),
        )
        if isinstance(i, dict)
    ]
    if rows:
        header = ["metric", "candidate", "interval", "improvement vs reference", "interval", "n"]
        blocks.append(table(header, rows))
    elif _dict(results.get("metrics")):
        plain = [[k, _fmt(v), "—"] for k, v in sorted(_dict(results["metrics"]).items())]
        blocks.append(para("Holdout metrics (no intervals: 03 compare did not run):"))
        blocks.append(table(["metric", "holdout", "interval"], plain))
    return Section("Metrics", blocks or [para("No model was trained or compared in this run.")])


def _feedback(step: dict[str, Any]) -> str:
    """Labels seen by the step's accuracy check (canary / champion), or what it judged on."""
    check = next(
        (_dict(c) for c in _list(step.get("checks")) if _dict(c).get("name") == "accuracy"), {}
    )
    observed = _dict(check.get("observed"))
    if "canary_labeled" in observed:
        return f"{observed.get('canary_labeled')} / {observed.get('champion_labeled')}"
    return f"none judged ({check['evidence']})" if check.get("evidence") else "—"


def _step_row(step: dict[str, Any]) -> list[Cell]:
    samples = _dict(step.get("samples"))
    requests = f"{samples.get('canary', '—')} / {samples.get('champion', '—')}"
    if "paired" in samples:
        requests += f" ({samples['paired']} paired)"
    checks = "; ".join(
        f"{_dict(c).get('name')} {_dict(c).get('status')}" for c in _list(step.get("checks"))
    )
    weight = step.get("weight")
    name = str(step.get("step") or f"{weight}%")
    step_text = name if name == f"{weight}%" else f"{name} ({weight}%)"
    return [step_text, requests, _feedback(step), checks or "—", str(step.get("verdict") or "—")]


NOT_DEPLOYED = {  # outcome -> why 05 deploy did not run
    "awaiting_approval": "{v} awaits approval (runner.py approve {n} or reject {n}; in GitHub, "
    "the deployment job's reviewers); production unchanged",
    "rejected": "{v} was rejected by the decision; production unchanged",
    "decided": "the run stopped after 04 decide; deployment is its own step",
    "no_training": "nothing new to train on; production unchanged",
    "failed": "the run failed before 05 deploy; production unchanged",
    "cancelled": "the run was cancelled before 05 deploy",
    "running": "the run has not reached 05 deploy (or stopped without a record)",
}


def rollout_section(report: dict[str, Any]) -> Section:
    """Every canary step (weight, requests and labels seen, checks, verdict), the outcome and
    the rollback's reason; what happened instead when 05 deploy did not run."""
    deployed = _outputs(report, "deploy")
    if not deployed:
        raw = str(report.get("outcome"))
        why = NOT_DEPLOYED.get(raw, "05 deploy did not run in this run")
        n = version(report)
        return Section("Rollout", [para(why.format(v=_version(n), n=n or "V"))])
    v, before = _version(deployed.get("deployed_version")), deployed.get("champion_before")
    if deployed.get("outcome") == "promoted":
        head = f"{v} promoted to champion (before: {_version(before) if before else 'none'})"
    else:
        head = f"{v} rolled back; " + (
            f"champion stays {_version(before)}" if before else "production has no champion"
        )
    blocks = [para(head, strong=True)]
    extra = (
        [f"rollback reason: {deployed['rollback_reason']}"]
        if deployed.get("rollback_reason")
        else []
    )
    if deployed.get("note"):
        extra.append(f"note: {deployed['note']}")
    if extra:
        blocks.append(bullets(extra))
    steps = [_dict(s) for s in _list(deployed.get("steps"))]
    if steps:
        header = [
            "step (weight)",
            "requests canary / champion",
            "labels canary / champion",
            "checks",
            "verdict",
        ]
        blocks.append(table(header, [_step_row(s) for s in steps]))
        failing = [
            f"{s.get('step')}: {_dict(c).get('name')} {_dict(c).get('status')}: "
            f"{_dict(c).get('message')}"
            for s in steps
            for c in _list(s.get("checks"))
            if _dict(c).get("status") != "pass"
        ]
        if failing:
            blocks += [para("Checks that did not pass:"), bullets(failing)]
    else:
        blocks.append(
            para(
                "No canary step completed (no champion to compare with, or the "
                "rollout stopped before its first step ended)."
            )
        )
    timeline = [
        f"+{_fmt(e.get('t'), 1)} s {e.get('phase')} (weight {e.get('weight')}%): {e.get('event')}"
        for e in map(_dict, _list(deployed.get("timeline")))
    ]
    if timeline:
        blocks += [para("Timeline:"), bullets(timeline)]
    return Section("Rollout", blocks)


def wilson(successes: float, n: int, z: float = Z95) -> tuple[float, float]:
    """The Wilson score interval of a proportion (95% by default): honest at small n."""
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)


def live_accuracy(live: Mapping[str, Any]) -> str:
    """`0.812, 95% interval [0.781, 0.840] (Wilson), n = 300 labelled`, or why there is none."""
    accuracy, n = _num(live.get("accuracy")), live.get("labeled")
    if accuracy is None or not isinstance(n, int) or isinstance(n, bool) or n <= 0:
        return f"no live accuracy ({n or 0} labelled predictions)"
    low, high = wilson(accuracy * n, n)
    return (
        f"live accuracy {accuracy:.3f}, 95% interval [{low:.3f}, {high:.3f}] (Wilson), "
        f"n = {n} labelled predictions"
    )


def monitor_section(report: dict[str, Any]) -> Section:
    """06 monitor's verdict with n and interval, or `not judged: why`, or why it did not run."""
    watched = _outputs(report, "monitor")
    if not watched:
        return Section("Monitor", [para("06 monitor did not run in this run.")])
    verdict = str(watched.get("verdict") or "—").replace("_", " ")
    head = f"{_version(watched.get('monitored_version'))} {verdict}"
    if watched.get("verdict") == "not_judged":
        head += f": {watched.get('verdict_reason') or 'no reason given'}"
    live = _dict(watched.get("live_metrics"))
    lines = [live_accuracy(live)]
    if _num(live.get("reference_accuracy")) is not None:
        lines.append(f"holdout accuracy at training: {_fmt(live['reference_accuracy'], 3)}")
    if _num(live.get("roc_auc")) is not None:
        lines.append(f"live ROC-AUC: {_fmt(live['roc_auc'], 3)}")
    if live.get("predecessor_verdict"):
        lines.append(
            f"against the predecessor {_version(live.get('predecessor'))}: "
            f"{live['predecessor_verdict']}"
        )
    lines += [
        f"alert ({_dict(a).get('severity')}, {_dict(a).get('check')}): {_dict(a).get('message')}"
        for a in _list(watched.get("alerts"))
    ]
    drifted = _list(_dict(watched.get("drift")).get("drifted_features"))
    if drifted:
        lines.append(f"drifted features: {', '.join(map(str, drifted))}")
    if watched.get("rolled_back"):
        lines.append(f"rolled back: {watched.get('monitor_rollback_reason')}")
    if watched.get("rollback_note"):
        lines.append(f"note: {watched['rollback_note']}")
    return Section("Monitor", [para(head, strong=True), bullets(lines)])


def notifications_section(report: dict[str, Any]) -> Section:
    sent = [_dict(n) for n in _list(report.get("notifications"))]
    failed = [n for n in sent if not n.get("ok")]
    if not sent:
        return Section("Notifications", [para("None sent.")])
    head = f"{len(sent)} sent, {len(failed)} failed."
    lines = [f"{n.get('kind')} → {n.get('target')}: {n.get('error')}" for n in failed]
    return Section("Notifications", [para(head)] + ([bullets(lines)] if lines else []))


def stages_section(report: dict[str, Any], run_dir: Path) -> Section:
    """Every stage with its time and a link to its HTML (else its notebook) in the run folder."""
    rows: list[list[Cell]] = []
    for stage in map(_dict, _list(report.get("stages"))):
        link: Cell = "—"
        for key in ("html", "notebook"):
            name = Path(str(stage.get(key) or "")).name
            if name and (run_dir / name).is_file():
                link = Link(name, quote(name))
                break
        status = str(stage.get("status") or "—")
        rows.append([str(stage.get("name")), status, f"{_fmt(stage.get('seconds'), 1)} s", link])
    total = sum(_num(_dict(s).get("seconds")) or 0.0 for s in _list(report.get("stages")))
    blocks = [table(["stage", "status", "time", "report"], rows)] if rows else []
    blocks.append(para(f"{len(rows)} stage(s), {total:.1f} s in all."))
    return Section("Stages", blocks)


def build(report: dict[str, Any], run_dir: Path, location: str | None = None) -> Summary:
    """The summary of one run from its report.json dict; `location`: where the reports artifact
    is (default: env PIPELINE_REPORTS_LOCATION, else the run folder)."""
    where = location or os.environ.get(LOCATION_ENV, "").strip() or str(run_dir.resolve())
    meta = " · ".join(
        f"{label} {report[k]}"
        for k, label in (
            ("model_name", "model"),
            ("trigger", "trigger"),
            ("started", "started"),
            ("finished", "finished"),
        )
        if report.get(k)
    )
    summary = Summary(
        title=f"Run {report.get('run_id') or run_dir.name}",
        verdict=verdict_line(report),
        css=_outcome(report)[2],
        meta=meta,
        sections=[
            production_section(report),
            reasons_section(report),
            metrics_section(report),
            rollout_section(report),
            monitor_section(report),
            notifications_section(report),
            Section("Reports", [para(f"Reports artifact: {where}")]),
            stages_section(report, run_dir),
        ],
    )
    return _redacted(summary)


# ---------------------------------------------------------------------------- rendering

MD_SPECIAL = re.compile(r"([\\`*_\[\]<>|~#!])")
NEWLINES = re.compile(r"\r\n|\r|\n")


def md(text: str) -> str:
    """`text` as literal markdown text on one line: markup characters backslash-escaped, `&` as
    an entity, line breaks as `<br>` (GitHub renders it; nothing else of the text is markup)."""
    text = MD_SPECIAL.sub(r"\\\1", text.replace("&", "&amp;"))
    if re.match(r"([-+*=]+|\d+[.)])(\s|$)", text):  # a list item, a rule or a heading line
        text = "\\" + text
    return NEWLINES.sub("<br>", text)


def _md_cell(cell: Cell) -> str:
    return f"{md(cell.text)}" if isinstance(cell, Link) else md(cell)


def to_markdown(summary: Summary) -> str:
    """GitHub-flavoured markdown: what $GITHUB_STEP_SUMMARY shows. Stage reports are named, not
    linked: a relative link means nothing in a job summary (they are in the reports artifact)."""
    out = [f"# {md(summary.title)}", "", f"**{md(summary.verdict)}**", ""]
    if summary.meta:
        out += [md(summary.meta), ""]
    for section in summary.sections:
        out += [f"## {md(section.title)}", ""]
        for block in section.blocks:
            if block.kind == "p":
                out.append(f"**{md(block.text)}**" if block.strong else md(block.text))
            elif block.kind == "ul":
                out += [f"- {md(item)}" for item in block.items]
            else:
                out.append("| " + " | ".join(md(h) for h in block.header) + " |")
                out.append("|" + "---|" * len(block.header))
                out += ["| " + " | ".join(_md_cell(c) for c in row) + " |" for row in block.rows]
            out.append("")
    return "\n".join(out)


def to_html(summary: Summary) -> str:
    """A standalone page: inline CSS, no script, links to each stage's HTML beside it."""
    return page_template(TEMPLATE).render(s=summary)


def write(run_dir: Path, report: dict[str, Any], location: str | None = None) -> Summary:
    """Write summary.md and summary.html into `run_dir` (atomically: a reader never sees half)."""
    summary = build(report, run_dir, location)
    write_text_atomic(run_dir / MARKDOWN_NAME, to_markdown(summary), permissions=0o644)
    write_text_atomic(run_dir / HTML_NAME, to_html(summary), permissions=0o644)
    return summary


# ---------------------------------------------------------------------------- GitHub Actions


def escape_data(text: str) -> str:
    """An annotation's message as GitHub requires: `%`, CR and LF percent-encoded, so a report's
    text stays on the command's one line and can never start a command of its own."""
    return text.replace("%", "%25").replace("\r", "%0D").replace("\n", "%0A")


def escape_property(text: str) -> str:
    """An annotation property (`title=`): the message's escapes plus `:` and `,`."""
    return escape_data(text).replace(":", "%3A").replace(",", "%2C")


def annotation(level: str, title: str, message: str) -> str:
    return f"::{level} title={escape_property(title)}::{escape_data(message)}"


def annotations(report: dict[str, Any]) -> list[str]:
    """`manual` as a warning; `reject`, a failed or cancelled run and any rollback as errors."""
    results, raw = _dict(report.get("results")), _outcome(report)[0]
    v, why = _version(version(report)), "; ".join(map(str, _list(results.get("reasons"))))
    found = []
    if decision(report) == "manual" or raw == "awaiting_approval":
        found.append(
            (
                "warning",
                "Awaiting approval",
                f"{v} awaits approval (score {score(report) or '—'}/100): {why}",
            )
        )
    if decision(report) == "reject" or raw == "rejected":
        found.append(
            ("error", "Rejected", f"{v} rejected (score {score(report) or '—'}/100): {why}")
        )
    if raw in ("failed", "cancelled"):
        found.append(("error", f"Run {raw}", str(report.get("error") or verdict_line(report))))
    if raw == "rolled_back":
        found.append(("error", "Rolled back", f"{v}: {results.get('rollback_reason')}"))
    if raw == "monitor_rolled_back":
        found.append(
            (
                "error",
                "Rolled back by the monitor",
                f"{_version(results.get('monitored_version'))}: "
                f"{results.get('monitor_rollback_reason')}",
            )
        )
    return [annotation(level, title, redact(text)) for level, title, text in found]


def output_lines(name: str, value: str) -> str:
    """One `$GITHUB_OUTPUT` entry: `name=value`, or the delimiter form for a value with a line
    break, with a delimiter the value does not contain (it cannot end the value early)."""
    if not NEWLINES.search(value):
        return f"{name}={value}\n"
    delimiter = f"ghadelimiter_{os.urandom(8).hex()}"
    while delimiter in value:
        delimiter = f"ghadelimiter_{os.urandom(8).hex()}"
    return f"{name}<<{delimiter}\n{value}\n{delimiter}\n"


def outputs(report: dict[str, Any], run_id: str) -> dict[str, str]:
    return {
        "run_id": redact(str(report.get("run_id") or run_id)),
        "outcome": _outcome(report)[0],
        "decision": decision(report),
        "version": redact(version(report)),
        "score": score(report),
    }


def _append(path: str, text: str) -> None:
    with open(path, "a", encoding="utf-8") as handle:
        handle.write(text)


def github(run_dir: Path, environ: Mapping[str, str], stdout: Any) -> int:
    """Rewrite the summary (the artifact's location is known now), then hand it to GitHub:
    0 when the report could be read (the job's own exit code is the runner's), else 1."""
    report_path = run_dir / "report.json"
    try:
        report = json.loads(report_path.read_text(encoding="utf-8"))
        if not isinstance(report, dict):
            raise ValueError(f"expected a JSON object, found {type(report).__name__}")
    except (OSError, ValueError) as exc:
        message = f"no readable {report_path}: {exc} (the run stopped before its first stage?)"
        stdout.write(annotation("error", "No run report", redact(message)) + "\n")
        if environ.get("GITHUB_STEP_SUMMARY"):
            _append(environ["GITHUB_STEP_SUMMARY"], f"# Run {md(run_dir.name)}\n\n{md(message)}\n")
        return 1
    summary = write(run_dir, report, environ.get(LOCATION_ENV, "").strip() or None)
    if environ.get("GITHUB_STEP_SUMMARY"):
        _append(environ["GITHUB_STEP_SUMMARY"], to_markdown(summary) + "\n")
    for line in annotations(report):
        stdout.write(line + "\n")
    if environ.get("GITHUB_OUTPUT"):
        values = outputs(report, run_dir.name)
        _append(environ["GITHUB_OUTPUT"], "".join(output_lines(k, v) for k, v in values.items()))
    return 0


def main(argv: list[str] | None = None) -> int:
    import argparse
    import sys

    parser = argparse.ArgumentParser(
        prog="python -m lib.watch.run_summary",
        description="Write a run's summary.md and summary.html from its report.json.",
    )
    parser.add_argument("run_dir", type=Path, help="the run's folder, reports/<run-id>")
    parser.add_argument(
        "--github",
        action="store_true",
        help="also append to $GITHUB_STEP_SUMMARY, print annotations, write $GITHUB_OUTPUT",
    )
    args = parser.parse_args(argv)
    if args.github:
        return github(args.run_dir, os.environ, sys.stdout)
    try:
        report = json.loads((args.run_dir / "report.json").read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        logger.error("cannot read %s/report.json: %s", args.run_dir, exc)
        return 1
    write(args.run_dir, _dict(report))
    logger.info("wrote %s and %s", args.run_dir / MARKDOWN_NAME, args.run_dir / HTML_NAME)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
