"""The bounds of canary analysis: the `canary_analysis` section of the pipeline configuration.

One typed definition (unknown keys refused, ranges checked) used by the config, the 05 deploy
stage and the analysis itself.
"""

from __future__ import annotations

import math
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
