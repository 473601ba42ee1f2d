"""What a policy backtest is run with and what it found: settings, steps, tables and summary.

Kept apart from the replay (lib.pipeline.backtest) so the results can be read, tabulated and
reported apart from the loop that trains and decides.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from lib.pipeline.training import TrainingSettings
from lib.score_table import VERDICTS, ScoreTable

TRUTHS = ("better", "worse", "no real difference", "undetermined")
STRATEGIES = ("policy", "always", "never")  # always deploy the new model / never retrain
NOISE_KINDS = ("permuted", "reseeded")
MAJORITY = "majority answer"
_BOUNDS = (("", "estimate"), (" low", "low"), (" high", "high"))  # column suffix, interval key
# Default inputs: the name's text score (group name_text) stacks every fit five times over and
# costs about 15x the time of the other groups, too much for a replay of many trainings.
DEFAULT_FEATURES = ("engagement", "versions", "genres", "name_stats")


# --- settings and results -------------------------------------------------------------------


@dataclass(frozen=True)
class BacktestSettings(TrainingSettings):
    """How candidates are trained and judged; defaults keep the replay to a few minutes."""

    cv_folds: int = 3
    seed: int = 42
    features: tuple[str, ...] = DEFAULT_FEATURES
    families: tuple[str, ...] = ("hist_gradient_boosting",)  # several: the best on the holdout
    test_size: float = 0.2
    metric: str = "roc_auc"  # the selection metric the score table reads
    table: ScoreTable = field(default_factory=ScoreTable)
    noise: bool = True

    def __post_init__(self) -> None:
        super().__post_init__()
        families = (self.families,) if isinstance(self.families, str) else self.families
        object.__setattr__(self, "families", tuple(families))
        if not self.families:
            raise ValueError("families: name at least one model family")


@dataclass
class NoiseRun:
    """The policy's verdict on one noise candidate (it should never be auto)."""

    kind: str  # "permuted" (shuffled labels) or "reseeded" (champion's data, another seed)
    step: int
    verdict: str
    score: int
    gate_passed: bool | None
    improvement: dict[str, Any]  # the selection metric's difference and interval on the holdout


@dataclass
class Step:
    """One decision and what the next batch said about it."""

    step: int
    batch_first: str
    batch_last: str
    seen_rows: int
    holdout_rows: int
    batch_rows: int
    holdout_seen_by_reference: int  # holdout rows production was trained on (the split drifts)
    candidate: str  # model family of the step's candidate
    reference: str  # what the candidate was compared with: production before the decision
    verdict: str
    score: int
    improvement: dict[str, Any]  # selection metric, candidate - reference, on the holdout
    future: dict[str, Any] | None  # ROC-AUC difference on the batch (None: one class only)
    truth: str  # better / worse / no real difference / undetermined, on the batch
    production: str  # what serves after the decision
    accuracy: dict[str, float]  # per strategy on the batch, plus "majority_share"
    roc_auc: dict[str, float]  # per strategy on the batch
    noise: dict[str, str] = field(default_factory=dict)  # kind -> verdict
    seconds: float = 0.0
    batch_idx: np.ndarray = field(default_factory=lambda: np.empty(0, int), repr=False)
    served: dict[str, np.ndarray] = field(default_factory=dict, repr=False)  # labels per strategy

    @property
    def deployed(self) -> bool:
        return self.verdict == "auto"

    @property
    def promoted_worse(self) -> bool:
        return self.deployed and self.truth == "worse"

    @property
    def rejected_better(self) -> bool:
        return not self.deployed and self.truth == "better"


@dataclass
class BacktestResult:
    """The replay: one step per batch, the noise candidates, and how long it took."""

    settings: BacktestSettings
    steps: list[Step]
    noise: list[NoiseRun]
    seconds: float
    initial_rows: int

    def table(self) -> pd.DataFrame:
        """One row per step: the decision, the truth on the next batch, each strategy's figures."""
        rows = []
        for s in self.steps:
            future = s.future or {}
            rows.append(
                {
                    "step": s.step,
                    "batch": f"{s.batch_first} to {s.batch_last}",
                    "seen rows": s.seen_rows,
                    "holdout rows": s.holdout_rows,
                    "holdout rows reference trained on": s.holdout_seen_by_reference,
                    "batch rows": s.batch_rows,
                    "candidate": s.candidate,
                    "reference": s.reference,
                    "verdict": s.verdict,
                    "score": s.score,
                    **{f"holdout diff{end}": s.improvement[key] for end, key in _BOUNDS},
                    **{f"batch auc diff{end}": future.get(key, np.nan) for end, key in _BOUNDS},
                    "truth on batch": s.truth,
                    "promoted worse": s.promoted_worse,
                    "rejected better": s.rejected_better,
                    "production": s.production,
                    **{f"accuracy {k}": s.accuracy[k] for k in STRATEGIES},
                    "majority share": s.accuracy["majority_share"],
                    **{f"roc_auc {k}": s.roc_auc[k] for k in STRATEGIES},
                    **{f"noise {k}": s.noise.get(k, "") for k in NOISE_KINDS},
                    "seconds": round(s.seconds, 1),
                }
            )
        return pd.DataFrame(rows)

    def noise_table(self) -> pd.DataFrame:
        """Verdict counts of each kind of noise candidate."""
        return pd.DataFrame(
            {k: self._noise_counts(k) for k in NOISE_KINDS}, index=[*VERDICTS, "runs"]
        ).T

    def _noise_counts(self, kind: str) -> dict[str, int]:
        counts = Counter(r.verdict for r in self.noise if r.kind == kind)
        out = {v: int(counts.get(v, 0)) for v in VERDICTS}
        out["runs"] = sum(out.values())
        return out

    def summary(self) -> dict[str, Any]:
        """The counts and means the README quotes (JSON-ready)."""
        verdicts = Counter(s.verdict for s in self.steps)
        outcomes = {
            t: {v: sum(1 for s in self.steps if s.truth == t and s.verdict == v) for v in VERDICTS}
            for t in TRUTHS
        }
        return {
            "steps": len(self.steps),
            "verdicts": {v: int(verdicts.get(v, 0)) for v in VERDICTS},
            "outcomes": outcomes,  # truth on the next batch -> verdict counts
            "promoted_worse": sum(s.promoted_worse for s in self.steps),
            "rejected_better": sum(s.rejected_better for s in self.steps),
            "promoted_better": sum(s.deployed and s.truth == "better" for s in self.steps),
            "manual_counts_as": "not deployed",
            "noise": {k: self._noise_counts(k) for k in NOISE_KINDS},
            "mean_accuracy": {
                k: _mean([s.accuracy[k] for s in self.steps])
                for k in (*STRATEGIES, "majority_share")
            },
            "mean_roc_auc": {k: _mean([s.roc_auc[k] for s in self.steps]) for k in STRATEGIES},
            "final_production": self.steps[-1].production if self.steps else MAJORITY,
            "initial_rows": self.initial_rows,
            "batch_rows": [s.batch_rows for s in self.steps],
            "families": list(self.settings.families),
            "features": list(self.settings.features),
            "cv_folds": self.settings.cv_folds,
            "seconds": round(self.seconds, 1),
        }


def _mean(values: Sequence[float]) -> float:
    finite = [v for v in values if np.isfinite(v)]
    return float(np.mean(finite)) if finite else float("nan")
