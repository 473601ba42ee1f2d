"""The typed sections of the pipeline configuration that the packages share.

`canary_analysis` (AnalysisConfig: lib.delivery's canary analysis) and `monitoring`
(MonitorConfig: lib.watch's health checks) are defined here, at the bottom of lib beside
`lib.config`, so the config validates them without importing the packages that use them and
each default lives in one place (issue 16).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator


class AnalysisConfig(BaseModel):
    """Bounds of one analysis; defaults follow Flagger and the mission's 2-point rule.

    This is also the type of the `canary_analysis` section of `lib.config.PipelineConfig`, so the
    defaults and the ranges live here only; a typo, a wrong type or an out-of-range bound fails
    when the config is loaded, naming the key.
    """

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    # absolute, on the canary (Flagger: success rate >= 99%)
    max_error_rate: float = Field(0.01, ge=0, lt=1)
    # Flagger's request-duration default: at most 1% of canary requests slower than this
    max_p99_ms: float = Field(500.0, gt=0)
    # canary quantile / champion quantile, at each of latency_quantiles that has enough samples
    # (the key keeps its name from when only the p99 was compared) ...
    max_p99_ratio: float = Field(3.0, gt=0)
    p99_floor_ms: float = Field(50.0, ge=0)  # ... and a canary faster than this is never "slower"
    latency_quantiles: list[float] = Field(default_factory=lambda: [0.5, 0.9, 0.95, 0.99])
    # a quantile q is judged once both variants have this many requests beyond it expected:
    # n >= min_tail_samples / (1 - q), e.g. 1,000 for the p99, 20 for the median
    min_tail_samples: int = Field(10, ge=1)
    max_accuracy_drop: float = Field(0.02, ge=0, lt=1)  # 2 points below the champion
    # for the error-rate, latency and accuracy tests, per step, over all of the step's looks
    alpha: float = Field(0.05, gt=0, lt=1)
    # the accuracy drop beyond max_accuracy_drop that the sequential test finds fastest (s.d. of
    # the mixture prior): smaller waits longer for big drops, larger pays more for small ones
    accuracy_tau: float = Field(0.03, gt=0, le=1)
    min_requests: int = Field(50, ge=1)  # per variant
    # labeled canary (and champion) requests to judge accuracy
    min_feedback: int = Field(100, ge=1)
    max_prediction_shift: float = Field(0.15, ge=0, le=1)  # |positive-rate difference| ...
    # ... and significant at this level (always-valid, against no shift): both are needed to fail
    shift_alpha: float = Field(0.001, gt=0, lt=1)
    # True: an observed accuracy drop or shift beyond its bound that is not yet significant waits
    # for more data instead of passing (stricter; a healthy canary then waits more often).
    wait_on_inconclusive: bool = False

    @field_validator("*", mode="before")
    @classmethod
    def _no_bool_numbers(cls, value: Any, info: ValidationInfo) -> Any:
        """`true` is not a bound: pydantic would read it as 1."""
        if info.field_name == "latency_quantiles" and isinstance(value, str):
            # environment or --set: "0.5,0.99", "0.5;0.99" or "[0.5, 0.99]"
            text = value.strip().removeprefix("[").removesuffix("]")
            value = [v.strip() for v in text.replace(";", ",").split(",") if v.strip()]
        items = value if isinstance(value, list) else [value]
        if info.field_name != "wait_on_inconclusive" and any(isinstance(v, bool) for v in items):
            raise ValueError(f"must be a number, got {value!r}")
        return value

    @field_validator("latency_quantiles")
    @classmethod
    def _quantiles(cls, value: list[float]) -> list[float]:
        """Each strictly between 0 and 1; kept sorted and without repeats."""
        if not value:
            raise ValueError("needs at least one quantile, e.g. [0.5, 0.9, 0.95, 0.99]")
        bad = [q for q in value if not 0 < q < 1]
        if bad:
            raise ValueError(f"quantiles must be between 0 and 1 (exclusive), got {bad}")
        return sorted(set(value))

    @property
    def fast_fail_requests(self) -> int:
        """Requests after which a clearly broken canary (e.g. every request errors) fails."""
        return max(1, self.min_requests // 5)

    def samples_for(self, quantile: float) -> int:
        """Requests needed before `quantile` is judged: min_tail_samples expected beyond it."""
        return math.ceil(self.min_tail_samples / (1 - quantile) - 1e-9)

    @property
    def latency_tests(self) -> int:
        """Latency tests per look (the absolute bound and one per quantile): alpha is split."""
        return len(self.latency_quantiles) + 1


@dataclass
class MonitorConfig:
    """Bounds of one monitoring pass; defaults follow Flagger, Evidently and the mission."""

    # validated by pydantic as the config's `monitoring` section: an unknown key is refused
    __pydantic_config__ = ConfigDict(extra="forbid")

    degradation: float = 0.02  # accuracy more than 2 points below the champion's validation
    min_feedback: int = 100  # labeled requests needed to judge accuracy / ROC-AUC
    alpha: float = 0.05  # for the accuracy, ROC-AUC and error-rate tests
    max_error_rate: float = 0.01  # Flagger: success rate >= 99%
    min_requests: int = 50  # to judge the error rate and the p99 latency
    max_p99_ms: float = 500.0  # Flagger's request-duration default
    psi_threshold: float = 0.1  # Evidently's PSI threshold
    drift_alpha: float = 0.05  # KS (numeric) / chi-square (categorical)
    min_drift_samples: int = 100  # current rows needed to judge drift
    dataset_drift_share: float = 0.5  # Evidently: the data set drifts when half its columns do
    prediction_drift_psi: float = 0.1  # PSI of the predicted probabilities

    def __post_init__(self) -> None:
        problems = []
        for name in ("alpha", "drift_alpha"):
            if not 0 < getattr(self, name) < 1:
                problems.append(f"{name} must be in (0, 1), got {getattr(self, name)!r}")
        if not 0 < self.dataset_drift_share <= 1:
            problems.append(
                f"dataset_drift_share must be in (0, 1], got {self.dataset_drift_share}"
            )
        if not 0 <= self.max_error_rate < 1:
            problems.append(f"max_error_rate must be in [0, 1), got {self.max_error_rate}")
        for f in dataclasses.fields(self):
            if f.name not in ("alpha", "drift_alpha", "dataset_drift_share", "max_error_rate"):
                if getattr(self, f.name) < 0:
                    problems.append(f"{f.name} must not be negative, got {getattr(self, f.name)}")
        if problems:
            raise ValueError("invalid monitoring config: " + "; ".join(problems))

    @classmethod
    def from_dict(cls, data: dict[str, Any] | None) -> MonitorConfig:
        """From the YAML config: a typo must not silently fall back to a default."""
        data = dict(data or {})
        fields = {f.name: f for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - set(fields))
        if unknown:
            raise ValueError(
                f"unknown monitoring setting(s): {', '.join(unknown)}; known: {', '.join(fields)}"
            )
        values: dict[str, Any] = {}
        for name, value in data.items():
            kind = int if fields[name].type in ("int", int) else float
            try:
                if isinstance(value, bool) or value is None:
                    raise TypeError
                number = float(value)
                if kind is int and not number.is_integer():
                    raise TypeError
                values[name] = kind(number)
            except (TypeError, ValueError):
                wanted = "an integer" if kind is int else "a number"
                raise ValueError(
                    f"monitoring setting {name} must be {wanted}, got {value!r}"
                ) from None
        return cls(**values)
