"""The verdict block that opens each stage's report: what was decided, the two or three numbers
that decided it, what happens next. Each notebook's cell tagged `verdict` shows one of these;
lib.pipeline.report_html moves it to the top of the HTML.
"""

from __future__ import annotations

import html
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import pandas as pd

from lib.pipeline.contracts import (
    BacktestOutputs,
    DeployOutputs,
    DetectOutputs,
    MonitorOutputs,
    TrainOutputs,
)

TONES = ("good", "wait", "stop", "info")


@dataclass(frozen=True)
class Verdict:
    """Shown in a notebook as an HTML `<section class="verdict">` (text in a terminal)."""

    title: str
    numbers: Sequence[tuple[str, str]] = field(default_factory=tuple)
    next_step: str = ""
    tone: str = "info"  # good | wait | stop | info: the block's colour

    def _repr_html_(self) -> str:
        rows = "".join(
            f"<dt>{html.escape(k)}</dt><dd>{html.escape(v)}</dd>" for k, v in self.numbers
        )
        return (
            f'<section class="verdict" data-tone="{html.escape(self.tone)}">'
            f"<h2>{html.escape(self.title)}</h2><dl>{rows}</dl>"
            f'<p class="next"><b>Next:</b> {html.escape(self.next_step)}</p></section>'
        )

    def __repr__(self) -> str:
        numbers = "".join(f"\n  {k}: {v}" for k, v in self.numbers)
        return f"{self.title}{numbers}\nNext: {self.next_step}"


def interval(i: dict[str, Any] | None, signed: bool = False) -> str:
    """`estimate [low, high] (n=..)` of an interval dict (03 compare's)."""
    if not i:
        return "n/a"
    f = "+.4f" if signed else ".4f"
    n = f", n={i['n']}" if i.get("n") is not None else ""
    return f"{i['estimate']:{f}} [{i['low']:{f}}, {i['high']:{f}}] (95%{n})"


def number(value: Any, digits: int = 4) -> str:
    if value is None or value != value:  # None or NaN: nothing was measured
        return "n/a"
    return f"{value:.{digits}f}" if isinstance(value, float) else str(value)


def detect(out: DetectOutputs) -> Verdict:
    numbers = [
        ("new apps", str(out.new_apps)),
        ("updated apps", str(out.updated_apps)),
        ("apps in the data", str(out.total_apps)),
        ("quarantined rows", str(out.quarantined_rows)),
    ]
    if out.should_train:
        return Verdict(f"Retrain: {out.reason}", numbers, "02 train trains the candidates.", "good")
    return Verdict(
        f"No retraining: {out.reason}", numbers, "the run stops here; production is unchanged.",
        "info",
    )  # fmt: skip


def train(out: TrainOutputs, metric: str) -> Verdict:
    value = out.metrics.get(metric)
    numbers = [
        (f"holdout {metric}", number(value)),
        (f"CV std of {metric}", number(out.cv_std)),
        ("served-label threshold", f"{out.label_threshold:.3f} ({out.calibration} calibration)"),
        ("candidates tried", str(len(out.candidates))),
    ]
    if out.candidate_version is None:
        return Verdict(
            f"Best candidate: {out.candidate_name} (not registered)", numbers,
            "nothing moves: run alone, 02 train registers no version (register_candidate=False).",
        )  # fmt: skip
    return Verdict(
        f"Candidate v{out.candidate_version} registered: {out.candidate_name}", numbers,
        f"03 compare judges v{out.candidate_version} against production on the same holdout rows.",
        "good",
    )  # fmt: skip


def compare(result: Any, comparable: str | None = None) -> Verdict:
    """`result`: a lib.pipeline.comparison.Comparison; `comparable`: why the comparison is not
    on the candidate's own data, when it is not (the block then says so first); by default
    what 03 compare's data check found (`result.data_check`)."""
    checked = getattr(result, "data_check", None) or {}
    if comparable is None and checked.get("comparable") is False:
        comparable = checked.get("note") or "not the data the version was trained on"
    low = result.improvement_interval.get("low")
    numbers = [
        (f"{result.metric} difference vs {result.reference_label}",
         interval(result.improvement_interval, signed=True)),
        (f"candidate {result.metric}", interval(result.candidate_interval)),
        (f"CV std of {result.metric}", number(result.cv_std)),
    ]  # fmt: skip
    if comparable:
        title, tone = f"Not comparable: {comparable}", "stop"
    elif low is not None and low > 0:
        title, tone = f"v{result.candidate_version} is better than {result.reference_label}", "good"
    elif result.improvement_interval.get("high", 0) < 0:
        title, tone = f"v{result.candidate_version} is worse than {result.reference_label}", "stop"
    else:
        title, tone = (
            f"No clear difference from {result.reference_label} (interval crosses 0)",
            "wait",
        )
    return Verdict(title, numbers, "04 decide scores this evidence (lower bounds).", tone)


NEXT_AFTER_DECISION = {
    "auto": ("05 deploy rolls it out progressively (canary).", "good"),
    "manual": ("the rollout waits for a person: approve or reject.", "wait"),
    "reject": ("nothing is deployed; production is unchanged.", "stop"),
}


def decide(decision: Any, version: str | None = None) -> Verdict:
    """`decision`: a lib.pipeline.scoring.Decision."""
    numbers = [("score", f"{decision.score} (read on: {decision.evidence.replace('_', ' ')})")]
    numbers += [(r.criterion, r.text) for r in decision.reasons if r.observed == r.observed][:3]
    next_step, tone = NEXT_AFTER_DECISION.get(decision.verdict, ("", "info"))
    who = f"v{version}" if version else "the candidate"
    return Verdict(f"{decision.verdict}: {who}, score {decision.score}", numbers, next_step, tone)


def deploy(out: DeployOutputs) -> Verdict:
    passed = [s for s in out.steps if s.get("verdict") == "pass"]
    steps = f"{len(passed)} of {len(out.steps)} passed" if out.steps else "none run"
    numbers = [
        ("canary steps", steps),
        ("champion before", out.champion_before or "none"),
    ]
    if out.note:
        numbers.append(("note", out.note))
    if out.outcome == "planned":
        return Verdict(
            f"Not deployed: v{out.deployed_version} planned only",
            [("why", out.rollback_reason or "")], "production is unchanged.", "info",
        )  # fmt: skip
    if out.outcome == "promoted":
        return Verdict(
            f"Promoted: v{out.deployed_version} is the champion", numbers,
            "06 monitor watches it in production.", "good",
        )  # fmt: skip
    numbers.insert(0, ("why", out.rollback_reason or "n/a"))
    return Verdict(
        f"Rolled back: v{out.deployed_version} is not deployed", numbers,
        f"production stays on {out.champion_before or 'no champion'}.", "stop",
    )  # fmt: skip


def monitor(out: MonitorOutputs) -> Verdict:
    m = out.live_metrics
    numbers = [
        ("live accuracy", f"{number(m.get('accuracy'))} (n={m.get('labeled') or 0} labeled)"),
        ("validation accuracy", number(m.get("reference_accuracy"))),
        ("alerts", str(len(out.alerts))),
        ("drifted features", ", ".join(out.drift.get("drifted_features") or []) or "none"),
    ]
    who = f"v{out.monitored_version}"
    if out.rolled_back:
        why = out.monitor_rollback_reason or "n/a"
        return Verdict(f"Rolled back {who}: {why}", numbers, "the previous version serves.", "stop")
    if out.verdict == "healthy":
        return Verdict(
            f"{who} is healthy", numbers, "nothing to do; the next run watches again.", "good"
        )
    if out.verdict == "unhealthy":
        return Verdict(
            f"{who} is unhealthy: {out.verdict_reason}", numbers,
            "alerts raised, no rollback: read the alerts below.", "wait",
        )  # fmt: skip
    return Verdict(
        f"Not judged: {out.verdict_reason}", numbers,
        "judge again once the service is reachable and feedback has arrived.", "wait",
    )  # fmt: skip


def backtest(out: BacktestOutputs) -> Verdict:
    s = out.backtest_summary
    acc = s.get("mean_accuracy", {})
    numbers = [
        ("steps", str(s.get("steps"))),
        ("promoted a worse model", str(s.get("promoted_worse"))),
        ("rejected a better model", str(s.get("rejected_better"))),
        ("mean accuracy: policy / always / never",
         " / ".join(number(acc.get(k)) for k in ("policy", "always", "never"))),
    ]  # fmt: skip
    bad = bool(s.get("promoted_worse"))
    title = f"The policy {'promoted a worse model' if bad else 'never promoted a worse model'}"
    return Verdict(
        title, numbers, "read the replay table below; nothing in production changed.",
        "stop" if bad else "good",
    )  # fmt: skip


def table(frame: pd.DataFrame, index: bool = False) -> Any:
    """A table shown whole: no cell is cut with "…" where the text is the point."""
    from IPython.display import HTML

    with pd.option_context("display.max_colwidth", None):
        return HTML(frame.to_html(index=index, na_rep="", border=0))


def reasons(decision: Any) -> Any:
    """The score's reasons as an HTML table (criterion, value read, rule, points, why), with the
    total: readable at any size, unlike a picture of a table."""
    rows = [
        {
            "criterion": r.criterion,
            "read": number(None if r.observed != r.observed else r.observed),
            "rule": r.rule,
            "points": f"{r.points:+d}",
            "why": r.text,
        }
        for r in decision.reasons
    ]
    rows.append({"criterion": "total", "read": "", "rule": f"verdict: {decision.verdict}",
                 "points": str(decision.score), "why": ""})  # fmt: skip
    return table(pd.DataFrame(rows))


def full_text() -> None:
    """Tables in this notebook show every cell's text whole (pandas cuts at 50 characters with
    "…": a reason or a check's message is the point of its row)."""
    pd.set_option("display.max_colwidth", None)
