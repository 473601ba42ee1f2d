"""The typed config sections the packages share: `canary_analysis` (AnalysisConfig, for
lib.delivery) and `monitoring` (MonitorConfig, for lib.watch), at the bottom of lib so the config
validates them without importing those packages, and each default lives in one place; and how
every config validation error reads: ``dotted.key: must be ..., got ...``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError, field_validator
from pydantic.dataclasses import dataclass


def describe(error: Mapping[str, Any]) -> str:
    """One pydantic error as ``must be ..., got ...``."""
    kind = error["type"]
    value = error.get("input")
    if kind in ("extra_forbidden", "unexpected_keyword_argument"):
        return "unknown key"
    if kind in ("float_parsing", "float_type"):
        return f"must be a number, got {value!r}"
    if kind in ("int_parsing", "int_type", "int_from_float"):
        return f"must be an integer, got {value!r}"
    if kind in ("bool_parsing", "bool_type"):
        return f"must be true or false, got {value!r}"
    if kind in ("dict_type", "model_type", "model_attributes_type", "dataclass_type"):
        return f"must be a mapping of keys, got {value!r}"
    message = str(error["msg"])
    for prefix in ("Value error, ", "Assertion failed, "):
        if message.startswith(prefix):
            return message[len(prefix) :]
    message = message.replace("Input should be", "must be", 1)
    message = message[:1].lower() + message[1:]
    return f"{message}, got {value!r}"


def format_errors(exc: ValidationError, prefix: str = "") -> str:
    """Every error of `exc` with its dotted path, on one line."""
    lines = []
    for error in exc.errors(include_url=False):
        path = ".".join(str(p) for p in (prefix, *error["loc"]) if p != "")
        lines.append(f"{path or '(config)'}: {describe(error)}")
    return "; ".join(lines)


def _no_bool(value: Any) -> Any:
    """YAML `true` is not a number, though pydantic would read it as 1."""
    if isinstance(value, bool):
        raise ValueError(f"must be a number, got {value!r}")
    return value


def listish(value: Any) -> Any:
    """`a,b` or `a;b` (environment, --set) as a list; a YAML/JSON list string is parsed."""
    if isinstance(value, str):
        text = value.strip()
        if text.startswith("["):
            return yaml.safe_load(text)
        return [v.strip() for v in text.replace(";", ",").split(",") if v.strip()]
    return value


SHADOW_STEP = "shadow"  # a first rollout step at weight 0: the canary only scores in the shadow


def rollout_steps(steps: list[Any]) -> list[int | str]:
    """The config's `canary_steps`: weights in percent that increase and end at 100, maybe
    after the word `shadow` (first only), as in ``shadow,5,25,50,100``."""
    example = "e.g. 5,25,50,100 or shadow,5,25,50,100"
    if not isinstance(steps, list | tuple):
        raise ValueError(f"must be a list of weights, {example}; got {steps!r}")
    parsed: list[int | str] = []
    for i, step in enumerate(steps):
        word = step.strip().lower() if isinstance(step, str) else None
        if word == SHADOW_STEP and i == 0:
            parsed.append(SHADOW_STEP)
            continue
        try:
            if isinstance(step, bool) or float(step) != int(float(step)):
                raise ValueError
            parsed.append(int(float(step)))
        except (TypeError, ValueError):
            where = "comes first only" if word == SHADOW_STEP else "is neither a weight nor shadow"
            raise ValueError(f"{step!r} {where}; {example}; got {steps}") from None
    weights = [w for w in parsed if isinstance(w, int)]
    if not weights or weights != sorted(weights) or weights[-1] != 100 or weights[0] <= 0:
        raise ValueError(f"weights must increase and end at 100, {example}; got {steps}")
    return parsed


def step_weight(step: int | str) -> int:
    """The canary's weight in percent at a rollout step (`shadow`: 0)."""
    return 0 if step == SHADOW_STEP else int(step)


def step_name(weight: float) -> str:
    """How progress, records and reasons name the step at a weight: `shadow` or `5%`."""
    return SHADOW_STEP if weight == 0 else f"{weight:g}%"


Int = Annotated[int, BeforeValidator(_no_bool)]
Float = Annotated[float, BeforeValidator(_no_bool)]


class AnalysisConfig(BaseModel):
    """Bounds of one analysis (the config's `canary_analysis`); defaults follow Flagger and the
    mission's 2-point rule."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    # absolute, on the canary (Flagger: success rate >= 99%)
    max_error_rate: Float = Field(0.01, ge=0, lt=1)
    # Flagger's request-duration default: at most 1% of canary requests slower than this
    max_p99_ms: Float = Field(500.0, gt=0)
    # canary quantile / champion quantile, at each of latency_quantiles that has enough samples
    # (the key keeps its name from when only the p99 was compared) ...
    max_p99_ratio: Float = Field(3.0, gt=0)
    p99_floor_ms: Float = Field(50.0, ge=0)  # ... and a canary faster than this is never "slower"
    latency_quantiles: Annotated[list[Float], BeforeValidator(listish)] = [0.5, 0.9, 0.95, 0.99]
    # a quantile q is judged once both variants have this many requests beyond it expected:
    # n >= min_tail_samples / (1 - q), e.g. 1,000 for the p99, 20 for the median
    min_tail_samples: Int = Field(10, ge=1)
    max_accuracy_drop: Float = Field(0.02, ge=0, lt=1)  # 2 points below the champion
    # for the error-rate, latency and accuracy tests, per step, over all of the step's looks
    alpha: Float = Field(0.05, gt=0, lt=1)
    # the accuracy drop beyond max_accuracy_drop that the sequential test finds fastest (s.d. of
    # the mixture prior): smaller waits longer for big drops, larger pays more for small ones
    accuracy_tau: Float = Field(0.03, gt=0, le=1)
    min_requests: Int = Field(50, ge=1)  # per variant
    # labeled canary (and champion) requests to judge accuracy
    min_feedback: Int = Field(100, ge=1)
    # What judges accuracy. Real labels arrive late or never: `when_available` judges on labels
    # once min_feedback of each variant have arrived and otherwise on the accuracy each model's
    # calibrated probabilities imply (confidence-based estimation, NannyML's CBPE); `required`
    # waits for labels; `ignored` always estimates.
    labels: Literal["required", "when_available", "ignored"] = "when_available"
    max_prediction_shift: Float = Field(0.15, ge=0, le=1)  # |positive-rate difference| ...
    # ... and significant at this level (always-valid, against no shift): both are needed to fail
    shift_alpha: Float = Field(0.001, gt=0, lt=1)
    # Paired requests (each also scored by the other variant in the shadow) the two label
    # differently: fails significantly above (unless labels passed accuracy), passes once
    # significantly below, else waits.
    # Measured: retrained equal models 1-6%, a model trained on permuted ratings 7-13%.
    max_disagreement: Float = Field(0.10, gt=0, lt=1)
    # True: an observed accuracy drop or shift beyond its bound that is not yet significant waits
    # for more data instead of passing (stricter; a healthy canary then waits more often).
    wait_on_inconclusive: bool = False

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


@dataclass(config=ConfigDict(extra="forbid"))
class MonitorConfig:
    """Bounds of one monitoring pass; defaults follow Flagger, Evidently and the mission."""

    degradation: Float = Field(0.02, ge=0)  # accuracy more than 2 points below the champion's
    min_feedback: Int = Field(100, ge=0)  # labeled requests needed to judge accuracy / ROC-AUC
    alpha: Float = Field(0.05, gt=0, lt=1)  # for the accuracy, ROC-AUC and error-rate tests
    max_error_rate: Float = Field(0.01, ge=0, lt=1)  # Flagger: success rate >= 99%
    min_requests: Int = Field(50, ge=0)  # to judge the error rate and the p99 latency
    max_p99_ms: Float = Field(500.0, ge=0)  # Flagger's request-duration default
    psi_threshold: Float = Field(0.1, ge=0)  # Evidently's PSI threshold
    drift_alpha: Float = Field(0.05, gt=0, lt=1)  # KS (numeric) / chi-square (categorical)
    min_drift_samples: Int = Field(100, ge=0)  # current rows needed to judge drift
    # Evidently: the data set drifts when half its columns do
    dataset_drift_share: Float = Field(0.5, gt=0, le=1)
    prediction_drift_psi: Float = Field(0.1, ge=0)  # PSI of the predicted probabilities
    # Labels come late: accuracy is judged on the predictions made in the window ending this long
    # before now (0: on the latest); errors, latency and drift keep the latest window.
    label_lag_seconds: Float = Field(0.0, ge=0)
    # the champion realized significantly more than `degradation` below the version it replaced,
    # on the same (shadow-paired) labeled requests: roll back to it, or only alert
    on_worse_than_predecessor: Literal["rollback", "alert"] = "rollback"
    # as canary_analysis.accuracy_tau: the drop beyond `degradation` the always-valid test finds
    # fastest (the nightly monitor looks again at growing windows)
    accuracy_tau: Float = Field(0.03, gt=0, le=1)

    @classmethod
    def from_dict(cls, data: dict[str, Any] | None) -> MonitorConfig:
        """From the YAML config: a typo or a bad value is a ValueError naming the dotted key."""
        try:
            return cls(**(data or {}))
        except ValidationError as exc:
            raise ValueError(format_errors(exc, "monitoring")) from None
