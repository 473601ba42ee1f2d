"""`reports/index.html`: every pipeline run on one page, newest first, then what operators did.

Each `report.json` is read without trusting it (an unreadable one still gets a row), links are
relative so the folder can be copied anywhere, and the template autoescapes every report value.
"""

from __future__ import annotations

import functools
import json
import logging
import math
import os
import re
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote

import jinja2

from lib.atomic_files import write_json_atomic, write_text_atomic

logger = logging.getLogger(__name__)

INDEX_NAME = "index.html"
SUMMARY_PAGE = "summary.html"  # lib.watch.run_summary.HTML_NAME (which imports this module)
OPERATOR_FILE = "operator_actions.json"
UNREADABLE = "unreadable summary"
OUTCOMES = {  # report.json outcome (lib.pipeline.run_record.RUN_OUTCOMES) -> (label, CSS class)
    "promoted": ("promoted", "good"),
    "rolled_back": ("rolled back", "bad"),
    "planned": ("planned (not deployed)", "muted"),
    "rejected": ("rejected", "warn"),
    "awaiting_approval": ("waiting (awaiting approval)", "wait"),
    "no_training": ("no training", "muted"),
    "failed": ("failed", "bad"),
    "decided": ("decided", "info"),
    "completed": ("completed", "info"),
    "monitored": ("monitored", "info"),
    "monitor_rolled_back": ("rolled back (monitor)", "bad"),
    "running": ("running (unfinished)", "wait"),
    "cancelled": ("cancelled", "warn"),
}
VERDICTS = {  # 06 monitor's verdict -> words; older reports used `alerts` / `not_enough_evidence`
    "healthy": "healthy",
    "unhealthy": "unhealthy",
    "alerts": "unhealthy",
    "not_judged": "not judged",
    "not_enough_evidence": "not judged",
}
RUN_ID_TIME = re.compile(r"(\d{8}-\d{6})")
TEMPLATE = "index.html.j2"  # in lib/watch/templates, shipped as package data


@dataclass
class Link:
    text: str
    href: str  # relative to the index page, URL-quoted
    failed: bool = False


@dataclass
class TrendPoint:
    """One run's figures that are compared across runs: the selection metric of its candidate
    with its interval, 04 decide's score and decision, 06 monitor's live accuracy."""

    metric: str | None = None
    estimate: float | None = None
    low: float | None = None
    high: float | None = None
    n: int | None = None
    score: int | None = None
    decision: str | None = None
    live_accuracy: float | None = None
    live_n: int | None = None


@dataclass
class RunRow:
    """What the index shows about one run, already reduced to plain text and links."""

    run_id: str
    folder: str
    sort_key: float
    date: str = "—"
    trigger: str = "—"
    outcome: str = "—"
    outcome_class: str = "muted"
    decision: str = "—"
    roc_auc: str = "—"
    accuracy: str = "—"
    model: str = "—"
    monitor: str = "—"
    notifications: str = "—"
    notifications_failed: int = 0
    notes: list[str] = field(default_factory=list)
    links: list[Link] = field(default_factory=list)
    summary_href: str | None = None
    readable: bool = True
    trend: TrendPoint | None = None


# ---------------------------------------------------------------------------- reading


def _dict(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _text(value: Any) -> str:
    return "—" if value is None or value == "" else str(value)


def _number(value: Any) -> str:
    if isinstance(value, bool):
        return "—"
    try:
        number = float(value)
    except (TypeError, ValueError):
        return "—"
    return f"{number:.3f}" if math.isfinite(number) else "—"


def _parse_time(value: Any) -> datetime | None:
    if not isinstance(value, str):
        return None
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def _date(when: datetime | None) -> str:
    return when.astimezone(UTC).strftime("%Y-%m-%d %H:%M UTC") if when else "—"


def _folder_time(name: str) -> datetime | None:
    match = RUN_ID_TIME.search(name)
    if not match:
        return None
    try:
        return datetime.strptime(match.group(1), "%Y%m%d-%H%M%S").replace(tzinfo=UTC)
    except ValueError:
        return None


def _href(target: Path, reports_dir: Path) -> str | None:
    """A relative, URL-quoted link to a file inside the reports folder; None otherwise."""
    try:
        rel = Path(os.path.relpath(target.resolve(), reports_dir.resolve()))
    except ValueError:  # another drive on Windows
        return None
    if rel.parts and rel.parts[0] == "..":
        return None
    return quote(rel.as_posix())


def _find(path_value: Any, reports_dir: Path, run_dir: Path) -> str | None:
    """Where a path of report.json (relative to the project root, or absolute) is now."""
    if not isinstance(path_value, str) or not path_value.strip():
        return None
    path = Path(path_value)
    candidates = [path] if path.is_absolute() else [reports_dir.parent / path, run_dir / path]
    candidates.append(run_dir / path.name)  # the folder was moved or copied
    for candidate in candidates:
        if candidate.is_file():
            href = _href(candidate, reports_dir)
            if href is not None:
                return href
    return None


def _stage_links(stages: Any, reports_dir: Path, run_dir: Path) -> list[Link]:
    links = []
    for stage in stages if isinstance(stages, list) else []:
        stage = _dict(stage)
        name = _text(stage.get("name"))
        failed = stage.get("status") == "failed"
        href = _find(stage.get("html"), reports_dir, run_dir)
        text = name
        if href is None:  # no HTML (export failed): the notebook itself is the record
            href = _find(stage.get("notebook"), reports_dir, run_dir)
            text = f"{name} (ipynb)"
        if href is not None:
            links.append(Link(text + (" ✗" if failed else ""), href, failed))
    return links


MONITOR_KEYS = ("verdict", "healthy", "alerts", "rolled_back", "monitored_version")


def _outcome(summary: dict[str, Any], monitor: dict[str, Any]) -> tuple[str, str]:
    raw = summary.get("outcome")
    if monitor.get("rolled_back") is True and raw != "failed":
        return OUTCOMES["monitor_rolled_back"]
    if raw in OUTCOMES:
        return OUTCOMES[raw]
    return (_text(raw), "muted")


def _monitor_text(monitor: dict[str, Any]) -> str:
    """`v3 healthy`, `v3 unhealthy, 2 alerts`, `v3 rolled back, 1 alert`, `v3 not judged: why`."""
    if not monitor:
        return "—"
    alerts = monitor.get("alerts")
    count = len(alerts) if isinstance(alerts, list) else alerts
    verdict = VERDICTS.get(str(monitor.get("verdict")))
    if verdict is None:  # a report without a verdict: only `healthy` can say anything
        healthy = monitor.get("healthy")
        verdict = {True: "healthy", False: "unhealthy"}.get(healthy, "not judged")
    parts = ["rolled back" if monitor.get("rolled_back") is True else verdict]
    if isinstance(count, int) and not isinstance(count, bool) and count:
        parts.append(f"{count} alert{'s' if count != 1 else ''}")
    version = monitor.get("monitored_version")
    text = (f"v{version} " if version is not None else "") + ", ".join(parts)
    reason = monitor.get("verdict_reason")
    if verdict == "not judged" and reason:
        text += f": {reason}"
    return text


def _notifications(items: Any) -> tuple[str, int, list[str]]:
    if not isinstance(items, list) or not items:
        return "—", 0, []
    failed = [_dict(i) for i in items if not _dict(i).get("ok")]
    notes = [
        f"notification {_text(n.get('kind'))} → {_text(n.get('target'))} failed: "
        f"{_text(n.get('error'))}"
        for n in failed
    ]
    return f"{len(failed)} failed of {len(items)}", len(failed), notes


def _model_text(results: dict[str, Any]) -> str:
    candidate, deployed = results.get("candidate_version"), results.get("deployed_version")
    parts = []
    if candidate is not None:
        name = results.get("candidate_name")
        parts.append(f"v{candidate}" + (f" {name}" if name else ""))
    if deployed is not None and deployed != candidate:
        parts.append(f"deployed v{deployed}")
    improvement = results.get("improvement")
    if _number(improvement) != "—":
        parts.append(f"Δ {float(improvement):+.4f}")
    return ", ".join(parts) or "—"


def _float(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value) if math.isfinite(value) else None


def _int(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _trend_point(summary: dict[str, Any], results: dict[str, Any]) -> TrendPoint | None:
    """The run's figures for the trends, or None when it has none of them."""
    comparison = _dict(results.get("comparison"))
    compare = next(
        (_dict(_dict(s).get("outputs")) for s in summary.get("stages") or []
         if isinstance(s, dict) and s.get("name") == "compare"),
        {},
    )  # fmt: skip
    interval = _dict(compare.get("candidate_interval") or comparison.get("candidate_interval"))
    live = _dict(results.get("live_metrics"))
    decision = results.get("decision")
    point = TrendPoint(
        metric=str(comparison["metric"]) if comparison.get("metric") else None,
        estimate=_float(interval.get("estimate")),
        low=_float(interval.get("low")),
        high=_float(interval.get("high")),
        n=_int(interval.get("n")),
        score=_int(results.get("score")),
        decision=decision if isinstance(decision, str) else None,
        live_accuracy=_float(live.get("accuracy")),
        live_n=_int(live.get("labeled")),
    )
    figures = (point.estimate, point.score, point.live_accuracy)
    return point if any(f is not None for f in figures) else None


def read_run(report: Path, reports_dir: Path) -> RunRow:
    """One run's row; a summary that cannot be read still gives a row that says so."""
    run_dir = report.parent
    folder = run_dir.name
    summary_page = run_dir / SUMMARY_PAGE  # lib.watch.run_summary's page, else the raw JSON
    try:
        mtime = report.stat().st_mtime
    except OSError:
        mtime = 0.0
    fallback_time = _folder_time(folder)
    row = RunRow(
        run_id=folder,
        folder=folder,
        sort_key=fallback_time.timestamp() if fallback_time else mtime,
        date=_date(fallback_time),
        summary_href=_href(summary_page if summary_page.is_file() else report, reports_dir),
    )
    summary, problem = _read_json(report, dict)
    if problem is not None:
        row.readable = False
        row.outcome, row.outcome_class = UNREADABLE, "bad"
        row.notes.append(problem)
        row.links = [
            Link(p.stem, href)
            for p in sorted(run_dir.glob("*.html"))
            if (href := _href(p, reports_dir)) is not None
        ]
        return row

    results = _dict(summary.get("results"))
    # 06 monitor's part of `results` (RunResults); {} when it did not run
    monitor = results if any(results.get(k) is not None for k in MONITOR_KEYS) else {}
    metrics = _dict(results.get("metrics"))
    started = _parse_time(summary.get("started"))
    if isinstance(summary.get("run_id"), str) and summary["run_id"].strip():
        row.run_id = summary["run_id"]
    if started is not None:
        row.sort_key, row.date = started.timestamp(), _date(started)
    row.trigger = _text(summary.get("trigger"))
    row.outcome, row.outcome_class = _outcome(summary, monitor)
    decision = results.get("decision")
    score = results.get("score")
    if decision is not None or score is not None:
        row.decision = _text(decision) + (f" (score {score})" if score is not None else "")
    row.roc_auc = _number(metrics.get("roc_auc"))
    row.accuracy = _number(metrics.get("accuracy"))
    row.model = _model_text(results)
    row.monitor = _monitor_text(monitor)
    row.notifications, row.notifications_failed, notes = _notifications(
        summary.get("notifications") or results.get("notifications")
    )
    for key in ("error", "rollback_reason", "note"):
        value = summary.get(key) if key == "error" else results.get(key)
        if value:
            row.notes.append(str(value))
    if monitor.get("monitor_rollback_reason"):
        row.notes.append(f"monitor: {monitor['monitor_rollback_reason']}")
    recovered = _dict(results.get("recovered"))
    if recovered.get("reason"):
        row.notes.append(f"recovered first: {recovered['reason']}")
    row.notes.extend(notes)
    row.links = _stage_links(summary.get("stages"), reports_dir, run_dir)
    row.trend = _trend_point(summary, results)
    return row


def collect_runs(reports_dir: Path) -> list[RunRow]:
    """Every `reports/*/report.json`, newest first (start time, else the run id's timestamp)."""
    rows = [read_run(p, reports_dir) for p in reports_dir.glob("*/report.json") if p.is_file()]
    return sorted(rows, key=lambda r: (r.sort_key, r.run_id), reverse=True)


# ---------------------------------------------------------------------------- operator actions


def _read_json(path: Path, kind: type) -> tuple[Any, str | None]:
    """The JSON `kind` (dict or list) in `path`, or None and what is wrong with the file."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        if not isinstance(data, kind):
            want = "object" if kind is dict else kind.__name__
            raise ValueError(f"expected a JSON {want}, found {type(data).__name__}")
    except (OSError, ValueError) as exc:  # JSONDecodeError and UnicodeDecodeError included
        logger.warning("report index: %s is unreadable: %s", path, exc)
        return None, f"{type(exc).__name__}: {exc}"
    return data, None


def read_operator_actions(reports_dir: Path) -> tuple[list[dict[str, Any]], str | None]:
    """The entries of operator_actions.json, oldest first, and what is wrong with the file
    when it cannot be read (None when it is fine or absent)."""
    path = reports_dir / OPERATOR_FILE
    if not path.exists():
        return [], None
    data, problem = _read_json(path, list)
    return [e for e in data or [] if isinstance(e, dict)], problem


def record_operator_action(reports_dir: Path, action: str, **fields: Any) -> dict[str, Any]:
    """Append one operator action (rollback, promote, approve, reject: version, champion after,
    result, reason...) to operator_actions.json and rewrite the index. An unreadable file is
    moved aside, never overwritten."""
    path = reports_dir / OPERATOR_FILE
    now = datetime.now(UTC)
    entry = {"at": now.isoformat(timespec="seconds"), "action": action, **fields}
    entries, problem = read_operator_actions(reports_dir)
    if problem is not None:
        aside = path.with_name(f"{path.name}.unreadable-{now.strftime('%Y%m%d-%H%M%S')}")
        path.replace(aside)
        logger.warning("moved the unreadable %s to %s", path, aside)
    write_json_atomic(path, [*entries, entry])
    write_index(reports_dir)
    return entry


def _version(value: Any) -> str:
    return "—" if value is None or value == "" else f"v{value}"


def _action_view(entry: dict[str, Any]) -> dict[str, Any]:
    """One operator action as the template shows it: plain text, escaped by the template."""
    at = _parse_time(entry.get("at"))
    result = _text(entry.get("result"))
    details = [
        f"{label}{entry[key]}"
        for key, label in (("reason", ""), ("detail", ""), ("run_id", "run "),
                           ("notifications", "notifications: "))
        if entry.get(key)
    ]  # fmt: skip
    return {
        "date": _date(at) if at else _text(entry.get("at")),
        "action": _text(entry.get("action")),
        "version": _version(entry.get("version")),
        "champion": _version(entry.get("champion")),
        "result": result,
        "css": {"done": "good", "failed": "bad", "refused": "warn"}.get(result, "info"),
        "details": details,
    }


# ---------------------------------------------------------------------------- rendering

DECISION_CSS = {"auto": "good", "manual": "wait", "reject": "warn"}
SPARK_STEP, SPARK_HEIGHT, SPARK_PAD, SPARK_MIN_WIDTH = 14, 56, 6, 160
TREND_ROWS = 12  # the trends table: the latest runs with figures


@dataclass
class Dot:
    x: float
    y: float
    css: str
    title: str  # text, escaped by the template


@dataclass
class Bar:
    x: float
    top: float
    bottom: float


@dataclass
class Spark:
    """An inline SVG sparkline: one dot per run (oldest left), an interval bar where known."""

    title: str
    width: int
    height: int
    points: str  # the polyline's "x,y x,y ...": numbers only
    dots: list[Dot]
    bars: list[Bar]
    latest: str


@dataclass
class Figure:
    """One run's value in one series: (run id, value, interval low and high, CSS class, text)."""

    run: str
    value: float
    low: float | None
    high: float | None
    css: str
    text: str


def sparkline(
    title: str, figures: list[Figure], bounds: tuple[float, float] | None = None
) -> Spark | None:
    """The series as an SVG sparkline scaled to `bounds` (low, high), else to its own range
    (intervals included)."""
    if not figures:
        return None
    known = [v for f in figures for v in (f.value, f.low, f.high) if v is not None]
    bottom, top = bounds or (min(known), max(known))
    if top - bottom < 1e-9:  # a flat series: a flat line in the middle
        margin = 0.01 * (abs(top) or 1.0)
        top, bottom = top + margin, bottom - margin
    height = SPARK_HEIGHT - 2 * SPARK_PAD

    def y(v: float) -> float:
        return round(SPARK_PAD + (top - v) / (top - bottom) * height, 1)

    dots, bars = [], []
    for i, f in enumerate(figures):
        x = SPARK_PAD + i * SPARK_STEP
        dots.append(Dot(x, y(f.value), f.css, f"{f.run}: {f.text}"))
        if f.low is not None and f.high is not None:
            bars.append(Bar(x, y(f.high), y(f.low)))
    return Spark(
        title=title,
        width=max(SPARK_MIN_WIDTH, dots[-1].x + SPARK_PAD),
        height=SPARK_HEIGHT,
        points=" ".join(f"{d.x},{d.y}" for d in dots),
        dots=dots,
        bars=bars,
        latest=f"latest {figures[-1].text} ({figures[-1].run}); {len(figures)} run(s)",
    )


def trends(rows: list[RunRow]) -> list[Spark]:
    """One sparkline per series, oldest run first: each selection metric of the candidates with
    its interval, 04 decide's score (coloured by decision), 06 monitor's live accuracy."""
    points = [(r.run_id, r.trend) for r in reversed(rows) if r.trend is not None]
    sparks = []
    for metric in dict.fromkeys(p.metric for _, p in points if p.estimate is not None):
        figures = [
            Figure(run, p.estimate, p.low, p.high, DECISION_CSS.get(p.decision or "", "info"),
                   f"{p.estimate:.4f} [{_number(p.low)}, {_number(p.high)}], n={_text(p.n)}")
            for run, p in points
            if p.estimate is not None and p.metric == metric
        ]  # fmt: skip
        sparks.append(sparkline(f"{metric or 'selection metric'} of the candidate", figures))
    scores = [
        Figure(run, float(p.score), None, None, DECISION_CSS.get(p.decision or "", "info"),
               f"{p.score} → {_text(p.decision)}")
        for run, p in points
        if p.score is not None
    ]  # fmt: skip
    sparks.append(sparkline("04 decide score (colour: decision)", scores, (0.0, 100.0)))
    live = [
        Figure(run, p.live_accuracy, None, None, "info",
               f"{p.live_accuracy:.3f}, n={_text(p.live_n)} labelled")
        for run, p in points
        if p.live_accuracy is not None
    ]  # fmt: skip
    sparks.append(sparkline("06 monitor live accuracy", live))
    return [s for s in sparks if s is not None]


def trend_rows(rows: list[RunRow]) -> list[dict[str, str]]:
    """The latest runs with figures, newest first, as text for the trends table."""
    found = []
    for row in rows:
        p = row.trend
        if p is None:
            continue
        interval = f" [{_number(p.low)}, {_number(p.high)}]" if p.low is not None else ""
        found.append({
            "run": row.run_id, "date": row.date, "metric": _text(p.metric),
            "value": (_number(p.estimate) + interval + (f", n={p.n}" if p.n else ""))
            if p.estimate is not None else "—",
            "score": _text(p.score), "decision": _text(p.decision),
            "live": f"{p.live_accuracy:.3f} (n={_text(p.live_n)})"
            if p.live_accuracy is not None else "—",
        })  # fmt: skip
        if len(found) == TREND_ROWS:
            break
    return found


@functools.cache
def page_template(name: str = TEMPLATE) -> jinja2.Template:
    """A page template of lib/watch/templates, loaded once; autoescaped (report data is never
    markup), and strict: a misspelt field fails the tests instead of rendering empty."""
    env = jinja2.Environment(
        loader=jinja2.PackageLoader("lib.watch", "templates"),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
    )
    return env.get_template(name)


def write_index(reports_dir: Path) -> Path:
    """Write `reports_dir/index.html` atomically (a reader never sees half a page): inline CSS,
    no scripts, every value escaped."""
    rows = collect_runs(reports_dir)
    entries, problem = read_operator_actions(reports_dir)
    tally = sorted(Counter(row.outcome for row in rows).items())
    page = page_template().render(
        rows=rows,
        tally=", ".join(f"{n} {label}" for label, n in tally),
        generated=datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        actions=[_action_view(e) for e in reversed(entries)],  # newest first, like the runs
        actions_problem=problem,
        sparks=trends(rows),
        trend_rows=trend_rows(rows),
    )
    target = reports_dir / INDEX_NAME
    write_text_atomic(target, page, permissions=0o644)  # the page is meant to be served
    logger.info("report index: %s", target)
    return target
