"""Figures shown in the notebooks and logged to MLflow: one function per figure.

A chart with nothing to draw is a sentence saying so (`nothing_to_draw`), not empty axes.
"""

from __future__ import annotations

import html
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from sklearn.metrics import auc, confusion_matrix, roc_curve

if TYPE_CHECKING:
    from lib.pipeline.uncertainty import MetricComparison


class Sentence(str):
    """What a chart would have shown, said in words because there is nothing to draw."""

    def _repr_html_(self) -> str:
        return f'<p class="no-chart"><i>{html.escape(self)}</i></p>'


def nothing_to_draw(sentence: str) -> Sentence:
    """The sentence instead of an empty chart, displayed at once in a notebook (its cells end
    in `;`, which would hide a returned value)."""
    said = Sentence(sentence)
    try:
        from IPython import get_ipython
        from IPython.display import display
    except ImportError:  # pragma: no cover - IPython comes with the notebook stack
        return said
    if get_ipython() is not None:
        display(said)
    return said


def class_balance(y: pd.Series, target_threshold: float) -> Figure:
    """How many apps are above the threshold: why accuracy alone says little here."""
    counts = pd.Series(np.asarray(y)).value_counts().reindex([0, 1], fill_value=0)
    fig, ax = plt.subplots(figsize=(5, 3), layout="tight")
    bars = ax.bar(
        [f"≤ {target_threshold}", f"> {target_threshold}"],
        counts.values,
        color=["#c44e52", "#4c72b0"],
    )
    for bar, n in zip(bars, counts.values, strict=True):
        ax.annotate(
            f"{n} ({n / max(counts.sum(), 1):.1%})",
            (bar.get_x() + bar.get_width() / 2, n),
            ha="center",
            va="bottom",
        )
    ax.set(ylabel="apps", title="Class balance (rated apps)")
    return fig


def roc_curves(y_true: Sequence[int], probas: Mapping[str, Sequence[float]]) -> Figure:
    """ROC of every candidate on the same holdout."""
    fig, ax = plt.subplots(figsize=(5, 4.5), layout="tight")
    for name, proba in probas.items():
        fpr, tpr, _ = roc_curve(y_true, proba)
        ax.plot(fpr, tpr, label=f"{name} (AUC {auc(fpr, tpr):.3f})")
    ax.plot([0, 1], [0, 1], "k--", lw=0.8, label="chance")
    ax.set(xlabel="false positive rate", ylabel="true positive rate", title="ROC on the holdout")
    ax.legend(loc="lower right", fontsize=8)
    return fig


def confusion(
    y_true: Sequence[int], proba: Sequence[float], title: str, labels: Sequence[int] | None = None
) -> Figure:
    """Confusion matrix of the labels the model serves (default: the 0.5 cut)."""
    pred = (np.asarray(proba) >= 0.5).astype(int) if labels is None else np.asarray(labels)
    cm = confusion_matrix(y_true, pred, labels=[0, 1])
    fig, ax = plt.subplots(figsize=(4, 3.5), layout="tight")
    ax.imshow(cm, cmap="Blues")
    for (i, j), n in np.ndenumerate(cm):
        ax.text(
            j, i, str(n), ha="center", va="center", color="white" if n > cm.max() / 2 else "black"
        )
    ax.set_xticks([0, 1], ["≤ 4.0", "> 4.0"])
    ax.set_yticks([0, 1], ["≤ 4.0", "> 4.0"])
    ax.set(xlabel="predicted", ylabel="actual", title=title)
    return fig


def feature_importance(importance: pd.Series, title: str) -> Figure:
    """Permutation importance (drop in the selection metric when a column is shuffled)."""
    imp = importance.sort_values()
    fig, ax = plt.subplots(figsize=(5, 0.35 * len(imp) + 1), layout="tight")
    ax.barh(imp.index, imp.values, color="#4c72b0")
    ax.set(xlabel="drop in score when shuffled", title=title)
    return fig


def comparison(table: pd.DataFrame, metric: str) -> Figure:
    """Candidate vs champion (or baseline) on each metric, the selection metric highlighted."""
    fig, ax = plt.subplots(figsize=(7, 3.5), layout="tight")
    x = np.arange(len(table.index))
    width = 0.8 / len(table.columns)
    for i, col in enumerate(table.columns):
        ax.bar(x + i * width, table[col].astype(float).values, width, label=col)
    ax.set_xticks(
        x + width * (len(table.columns) - 1) / 2,
        [f"[{m}]" if m == metric else m for m in table.index],
    )
    ax.set_title(f"Same holdout rows (selection metric: {metric})")
    ax.legend(fontsize=8)
    return fig


def rollout_timeline(events: list[dict[str, Any]]) -> Figure | Sentence:
    """Canary weight over time, with each step's verdict and the final outcome."""
    if not events:
        return nothing_to_draw("No rollout timeline: the rollout recorded no event.")
    fig, ax = plt.subplots(figsize=(8, 3.5), layout="tight")
    t = [e["t"] for e in events]
    w = [e["weight"] for e in events]
    ax.step(t, w, where="post", color="#4c72b0", lw=2)
    colors = {"pass": "#55a868", "fail": "#c44e52", "wait": "#dd8452"}
    for e in events:
        verdict = next((v for v in colors if e["event"].endswith(v)), None)
        if verdict or e["phase"] in ("rolled_back", "succeeded", "smoke_testing"):
            color = colors.get(
                verdict or "", "#c44e52" if e["phase"] == "rolled_back" else "#55a868"
            )
            ax.scatter([e["t"]], [e["weight"]], color=color, zorder=3)
            ax.annotate(
                e["event"][:40],
                (e["t"], e["weight"]),
                fontsize=7,
                xytext=(3, 6),
                textcoords="offset points",
                rotation=20,
            )
    ax.set_ylim(-5, 115)
    ax.set(
        xlabel="seconds since the rollout started",
        ylabel="canary traffic %",
        title="Rollout timeline",
    )
    return fig


def drift_psi(drifts: list[Any], threshold: float) -> Figure | Sentence:
    """PSI of every model input against the training data, drifted ones in red."""
    if not any(d.psi is not None and d.psi == d.psi for d in drifts):
        return nothing_to_draw("No input drift to chart: no production inputs in the window.")
    names = [d.feature for d in drifts]
    values = [0.0 if d.psi is None or d.psi != d.psi else d.psi for d in drifts]
    colors = ["#c44e52" if d.drifted else "#4c72b0" for d in drifts]
    fig, ax = plt.subplots(figsize=(6, 0.35 * max(len(names), 1) + 1.2), layout="tight")
    ax.barh(names, values, color=colors)
    ax.axvline(threshold, color="k", ls="--", lw=0.8, label=f"PSI threshold {threshold}")
    ax.set(
        xlabel="population stability index (current vs training)", title="Input drift per feature"
    )
    ax.legend(fontsize=8)
    return fig


def prediction_distribution(
    reference: Sequence[float], current: Sequence[float]
) -> Figure | Sentence:
    """Predicted probabilities now against the champion's on its training data."""
    if not len(current):
        return nothing_to_draw("No prediction drift to chart: no predictions in the window.")
    fig, ax = plt.subplots(figsize=(6, 3), layout="tight")
    bins = np.linspace(0, 1, 21)
    ax.hist(reference, bins=bins, alpha=0.5, density=True, label="reference (training data)")
    ax.hist(current, bins=bins, alpha=0.5, density=True, label=f"production (n={len(current)})")
    ax.set(xlabel="predicted probability of Rating > 4.0", title="Prediction drift")
    ax.legend(fontsize=8)
    return fig


def live_vs_validation(perf: dict[str, Any]) -> Figure | Sentence:
    """Accuracy and ROC-AUC on labeled feedback against the champion's validation figures."""
    if not perf.get("labeled") or perf.get("accuracy") is None:
        return nothing_to_draw("No live performance to chart: no labeled feedback in the window.")
    fig, ax = plt.subplots(figsize=(5, 3), layout="tight")
    metrics = ["accuracy", "roc_auc"]
    live = [perf.get(m) or 0.0 for m in metrics]
    ref = [perf.get(f"reference_{m}") or 0.0 for m in metrics]
    x = np.arange(len(metrics))
    ax.bar(x - 0.2, ref, 0.4, label="validation (holdout)")
    ax.bar(x + 0.2, live, 0.4, label=f"live feedback (n={perf.get('labeled', 0)})")
    ax.set_xticks(x, metrics)
    ax.set_ylim(0, 1)
    ax.set_title("Live performance")
    ax.legend(fontsize=8, loc="lower right")
    return fig


def traffic(window: pd.DataFrame) -> Figure | Sentence:
    """Requests and errors per minute, by variant, and latency percentiles."""
    if not len(window):
        return nothing_to_draw("No traffic to chart: no requests in the window.")
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(9, 3), layout="tight")
    minute = pd.to_datetime(window["created_at"], unit="s").dt.floor("min")
    counts = (
        window.assign(minute=minute).groupby(["minute", "variant"]).size().unstack(fill_value=0)
    )
    counts.plot(ax=ax1)
    lat = window["latency_ms"].astype(float)
    ax2.bar(["p50", "p90", "p99"], [lat.quantile(q) for q in (0.5, 0.9, 0.99)])
    ax1.set_title("Requests per minute")
    ax2.set_title("Latency (ms)")
    return fig


def comparison_intervals(
    comparisons: dict[str, MetricComparison], reference_label: str, highlight: str = "roc_auc"
) -> Figure | Sentence:
    """Candidate minus reference with its bootstrap interval per metric, and the highlighted
    metric's bootstrap distribution: whether the gain is larger than the holdout's noise."""
    if not comparisons:
        return nothing_to_draw("No differences to chart: no metric was compared.")
    fig, (ax1, ax2) = plt.subplots(
        1,
        2,
        figsize=(10, 0.45 * max(len(comparisons), 1) + 2.2),
        width_ratios=[1.2, 1],
        layout="tight",
    )
    names = list(comparisons)[::-1]  # first metric on top
    for y, name in enumerate(names):
        d = comparisons[name].difference
        color = "#55a868" if d.low > 0 else "#c44e52" if d.high < 0 else "#4c72b0"
        ax1.errorbar(
            d.estimate,
            y,
            xerr=[[max(d.estimate - d.low, 0.0)], [max(d.high - d.estimate, 0.0)]],
            fmt="o",
            color=color,
            capsize=4,
            lw=2.5 if name == highlight else 1.5,
        )
    labels = []
    for name in names:
        p = comparisons[name].p_value
        p_text = "" if p is None else "\np < 1e-16" if p < 1e-16 else f"\np = {p:.3g}"
        labels.append(f"[{name}]{p_text}" if name == highlight else f"{name}{p_text}")
    ax1.set_yticks(range(len(names)), labels, fontsize=8)
    ax1.axvline(0, color="k", lw=0.8)
    ax1.set_ylim(-0.6, len(names) - 0.4)
    ax1.set_xlabel(f"candidate − {reference_label} (positive = candidate better)")
    some = comparisons[names[-1]].difference
    ax1.set_title(f"Differences ({some.method} intervals)", fontsize=9)

    name = highlight if highlight in comparisons else names[-1]
    c = comparisons[name]
    draws = np.asarray(c.draws, dtype=float)
    spread = float(np.ptp(draws)) if len(draws) else 0.0
    ax2.hist(
        draws,
        bins=40,
        range=None if spread > 0 else (float(draws.mean()) - 1e-3, float(draws.mean()) + 1e-3),
        color="#4c72b0",
        alpha=0.7,
    )
    ax2.axvline(0, color="k", lw=0.8, label="no difference")
    ax2.axvline(c.difference.low, color="#dd8452", ls="--", lw=1, label="interval")
    ax2.axvline(c.difference.high, color="#dd8452", ls="--", lw=1)
    ax2.axvline(c.difference.estimate, color="#c44e52", lw=1.5, label="on all rows")
    ax2.set_xlabel(f"{name}: candidate − {reference_label}")
    ax2.set_ylabel("bootstrap resamples")
    ax2.set_title(f"{name} over {len(draws)} resamples of the holdout", fontsize=10)
    ax2.legend(fontsize=7)
    return fig


def reliability(
    y_true: Sequence[int], probas: Mapping[str, Sequence[float]], bins: int = 10
) -> Figure:
    """Reliability diagram: predicted probability against the observed share, per bin.

    A calibrated model sits on the diagonal; the Brier score and ECE are in the legend.
    """
    from sklearn.calibration import calibration_curve
    from sklearn.metrics import brier_score_loss

    from lib.pipeline.evaluation import expected_calibration_error

    y = np.asarray(y_true)
    fig, ax = plt.subplots(figsize=(5, 4.5), layout="tight")
    ax.plot([0, 1], [0, 1], "k--", lw=0.8, label="perfectly calibrated")
    for name, proba in probas.items():
        p = np.asarray(proba, dtype=float)
        observed, predicted = calibration_curve(y, p, n_bins=bins, strategy="quantile")
        ax.plot(
            predicted,
            observed,
            "o-",
            ms=3,
            label=f"{name} (Brier {brier_score_loss(y, p):.4f}, "
            f"ECE {expected_calibration_error(y, p):.4f})",
        )
    ax.set(
        xlabel="predicted probability of > threshold",
        ylabel="observed share",
        title="Reliability on the holdout (quantile bins)",
    )
    ax.legend(loc="upper left", fontsize=7)
    return fig


def threshold_curve(
    curve: Sequence[tuple[float, float]], threshold: float, objective: str
) -> Figure:
    """The label objective over decision thresholds (out of fold), with the chosen cut."""
    fig, ax = plt.subplots(figsize=(5, 3), layout="tight")
    if curve:
        xs, ys = zip(*curve, strict=True)
        ax.plot(xs, ys, lw=1.2)
    ax.axvline(threshold, color="#c44e52", ls="--", label=f"chosen {threshold:.3f}")
    ax.axvline(0.5, color="grey", ls=":", label="default 0.5")
    ax.set_xlabel("threshold on the probability")
    ax.set_ylabel(objective.replace("_", " ") + (" (negated)" if objective == "cost" else ""))
    ax.set_title("Label threshold, tuned out of fold")
    ax.legend(fontsize=8)
    return fig


def backtest(table: pd.DataFrame) -> Figure | Sentence:
    """Production accuracy per batch for each strategy against the majority share, with the
    policy's verdicts marked: whether the policy kept production at least as good as the rest."""
    if table.empty:
        return nothing_to_draw("No backtest chart: the replay had no step.")
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 3.8), width_ratios=[1.4, 1], layout="tight")
    x = table["step"].to_numpy()
    names = {"policy": "policy", "always": "always deploy", "never": "never retrain"}
    styles = {"policy": ("#4c72b0", "-"), "always": ("#dd8452", "--"), "never": ("#8172b3", ":")}
    for key, label in names.items():
        color, ls = styles[key]
        ax1.plot(x, table[f"accuracy {key}"], ls=ls, color=color, marker=".", label=label)
        ax2.plot(x, table[f"roc_auc {key}"], ls=ls, color=color, marker=".", label=label)
    ax1.plot(x, table["majority share"], color="grey", lw=1, ls="-.", label="majority share")
    marks = {
        "auto": ("^", "#55a868", "promoted (auto)"),
        "manual": ("s", "#ccb974", "manual (not deployed)"),
        "reject": ("x", "#c44e52", "rejected"),
    }
    for verdict, (marker, color, label) in marks.items():
        chosen = table["verdict"] == verdict
        if chosen.any():
            ax1.scatter(
                x[chosen.to_numpy()],
                table.loc[chosen, "accuracy policy"],
                marker=marker,
                s=70,
                color=color,
                zorder=3,
                label=label,
            )
    wrong = (table["promoted worse"] | table["rejected better"]).to_numpy()
    if wrong.any():
        ax1.scatter(
            x[wrong],
            table.loc[wrong, "accuracy policy"],
            s=200,
            facecolors="none",
            edgecolors="k",
            zorder=4,
            label="promoted worse / rejected better",
        )
    ends = [b.split(" to ")[-1] for b in table["batch"]]
    ax1.set_xticks(x, [f"{s}\n{end}" for s, end in zip(x, ends, strict=True)])
    ax1.set(
        xlabel="step (batch judged, last update up to)",
        ylabel="accuracy of served labels",
        title="Production accuracy on the next batch",
    )
    ax1.legend(fontsize=7, loc="best")
    ax2.axhline(0.5, color="grey", lw=0.8, ls="-.", label="no skill")
    ax2.set_xticks(x)
    ax2.set(xlabel="step", ylabel="ROC-AUC", title="Production ROC-AUC on the next batch")
    ax2.legend(fontsize=7)
    return fig
