"""One typed configuration: defaults < ``pipeline.yaml`` < ``PIPELINE_*`` variables < ``--set``.

Every stage parameter a user may change lives here, so notebooks and runner carry no copies of
thresholds. Each pydantic-settings layer is validated as it is added, so an error names its
origin and dotted key; a later layer's section is merged into the earlier one key by key. Data
paths from the file are relative to the project root, from the environment or the command line
to where the command runs. This module imports none of lib's packages.
"""

from __future__ import annotations

import copy
import logging
import os
import re
from collections.abc import Iterable, Mapping
from contextvars import ContextVar
from pathlib import Path
from typing import Annotated, Any, Literal, Union, get_args

import yaml
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PrivateAttr,
    ValidationError,
    field_validator,
)
from pydantic_settings import (
    BaseSettings,
    EnvSettingsSource,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    YamlConfigSettingsSource,
)

from lib.config_sections import (
    AnalysisConfig,
    Float,
    Int,
    MonitorConfig,
    format_errors,
    listish,
    rollout_steps,
)
from lib.errors import ConfigError
from lib.score_table import ScoreTable
from lib.settings import MODELS_DIR, ROOT_ENV, store_url, tracking_uri

log = logging.getLogger(__name__)

CONFIG_FILE = "pipeline.yaml"
DEFAULT_DATA_PATH = "data/googleplaystore_clean.csv"  # generated when absent and not configured
STAGES = ("detect", "train", "compare", "decide", "deploy", "monitor")
METRICS = ("roc_auc", "accuracy", "balanced_accuracy", "f1", "log_loss")
# the model families lib.pipeline.training knows (tests/test_training.py keeps the two equal)
CANDIDATES = (
    "logistic_regression",
    "random_forest",
    "hist_gradient_boosting",
    "forest_and_boosting",
)
# trained by default: the forest alone is dominated by forest_and_boosting on the real data
DEFAULT_CANDIDATES = ("logistic_regression", "hist_gradient_boosting", "forest_and_boosting")
# Feature groups a candidate may use on top of the base listing fields, in canonical order: the
# derived groups of lib.pipeline.features.GROUP_COLUMNS (tests/test_training.py keeps them equal)
# and "name_text", the name's text score learned out-of-fold by stacking.
FEATURE_GROUPS = ("engagement", "versions", "genres", "name_stats", "name_text")
# how lib.pipeline.calibration may calibrate, and what the served label's threshold maximises
CALIBRATION_METHODS = ("isotonic", "sigmoid")
LABEL_OBJECTIVES = ("accuracy", "balanced_accuracy", "f1", "cost")

# Environment variables that override a config key (besides MLFLOW_TRACKING_URI).
ENV_PREFIX = "PIPELINE_"
ENV_NESTED_DELIMITER = "__"
# Fields that may hold URLs with credentials: kept out of repr, redacted by to_dict().
URL_FIELDS = ("tracking_uri", "serving_url", "store_url", "data_path")
_NONE_WORDS = ("", "none", "None", "null", "~")
_SECRET_PARAM_RE = re.compile(
    r"([?&](?:[^=&#]*(?:token|key|secret|password|passwd|pwd|sig|signature|auth)[^=&#]*)=)[^&#]*",
    re.IGNORECASE,
)
# URL credentials: the userinfo of `scheme://user:password@host`, up to the last "@" before the
# authority ends, as HTTP clients split it (a raw "@" in a password stays hidden). It never
# spans whitespace, "/?#", quotes, backslashes or angle brackets, and a host must follow: an "@"
# later in the text (`models:/name@champion`, an e-mail address) never ends a userinfo.
_URL_RE = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.-]*://")
_USERINFO_RE = re.compile(r"([A-Za-z][A-Za-z0-9+.-]*://)[^\s/?#\\\"'`<>]*@(?=[^\s/?#@\\\"'`<>])")


def check_groups(groups: Iterable[str]) -> list[str]:
    """The feature groups in canonical order; an unknown name is an error that lists the known."""
    groups = list(groups)
    unknown = [g for g in groups if g not in FEATURE_GROUPS]
    if unknown:
        raise ValueError(
            f"unknown feature group(s) {unknown}; known groups: {', '.join(FEATURE_GROUPS)}"
        )
    return [g for g in FEATURE_GROUPS if g in groups]


def data_paths(data_path: str | list[str]) -> list[str]:
    """A `data_path` (config key or stage parameter): one source, comma-separated sources or a
    list. A source is a CSV file, an HTTP(S) CSV URL or a database URL naming a ``#table=`` or a
    ``#query=``; a string holding a query is that one source (a query may hold commas)."""
    if isinstance(data_path, list):
        items = data_path
    else:
        items = [data_path] if "#query=" in data_path else str(data_path).split(",")
    return [p.strip() for p in items if p.strip()]


def resolve_data(data_path: str | list[str], root: Path) -> list[Path | str]:
    """The sources of a `data_path`: files resolved against `root`, URLs as they are."""
    return [p if is_url(p) else root / p for p in data_paths(data_path)]


def is_url(source: str | Path) -> bool:
    """A URL (``https://``, ``postgresql://``, ``sqlite:///``) rather than a file path."""
    return isinstance(source, str) and bool(_URL_RE.match(source))


# --- field types ----------------------------------------------------------------------------


def _mappingish(value: Any) -> Any:
    """A section given as one string (environment, --set) is YAML/JSON."""
    return yaml.safe_load(value) if isinstance(value, str) else value


def _optional_str(value: Any) -> Any:
    return None if isinstance(value, str) and value.strip() in _NONE_WORDS else value


OptionalStr = Annotated[Union[str, None], BeforeValidator(_optional_str)]  # noqa: UP007


class ErrorCosts(BaseModel):
    """Costs of the two errors, for ``label_objective: cost``."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    false_positive: Float = Field(1.0, ge=0)
    false_negative: Float = Field(1.0, ge=0)


# The sources below the init arguments while load_config builds a config; none otherwise, so
# `PipelineConfig()` is the defaults, whatever the environment.
_LAYERS: ContextVar[tuple[PydanticBaseSettingsSource, ...]] = ContextVar("layers", default=())


class PipelineConfig(BaseSettings):
    """Everything a pipeline run needs; paths are relative to the project root."""

    model_config = SettingsConfigDict(
        extra="forbid",
        validate_assignment=True,
        validate_default=False,
        coerce_numbers_to_str=True,
        case_sensitive=False,
        env_prefix=ENV_PREFIX,
        env_nested_delimiter=ENV_NESTED_DELIMITER,
        # sections and lists are parsed by the validators below (YAML, "a,b" lists), not JSON
        enable_decoding=False,
    )

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        """Highest first: the init arguments (``--set``), then what load_config layers."""
        return (init_settings, *_LAYERS.get())

    data_path: str = Field(DEFAULT_DATA_PATH, min_length=1, repr=False)
    synth_apps: Int = Field(10_000, ge=1)  # size of the generated default data set
    synth_seed: Int = Field(42, ge=0)
    threshold: Int = Field(100, ge=1)  # new apps needed to retrain
    target_threshold: Float = Field(4.0, ge=0, le=5)  # label = Rating > target_threshold
    selection_metric: Literal[METRICS] = "roc_auc"  # type: ignore[valid-type]
    candidates: Annotated[
        list[Literal[CANDIDATES]],  # type: ignore[valid-type]
        BeforeValidator(listish),
        Field(min_length=1),
    ] = list(DEFAULT_CANDIDATES)
    cv_folds: Int = Field(5, ge=2)
    test_size: Float = Field(0.2, ge=0.05, le=0.5)
    seed: Int = Field(42, ge=0)  # the holdout split (and, unless model_seed is set, models/folds)
    # seeds models and CV folds only: a retrain with another seed
    model_seed: Annotated[Union[Int, None], BeforeValidator(_optional_str)] = Field(  # noqa: UP007
        None, ge=0
    )
    rf_trees: Int = Field(200, ge=1)
    # honest inputs beyond the base listing fields
    features: Annotated[list[str], BeforeValidator(listish)] = list(FEATURE_GROUPS)
    calibration: Annotated[
        list[Literal[CALIBRATION_METHODS]],  # type: ignore[valid-type]
        BeforeValidator(listish),
    ] = ["isotonic", "sigmoid"]
    # what the served label's threshold maximises
    label_objective: Literal[LABEL_OBJECTIVES] = "accuracy"  # type: ignore[valid-type]
    error_costs: Annotated[ErrorCosts, BeforeValidator(_mappingish)] = ErrorCosts()
    model_name: str = Field("playstore-rating", min_length=1)
    experiment: str = Field("playstore-rating", min_length=1)
    # None: MLFLOW_TRACKING_URI or sqlite:///<root>/mlflow.db
    tracking_uri: OptionalStr = Field(None, repr=False)
    reports_dir: str = "reports"
    models_dir: str = MODELS_DIR
    stage_timeout: Int = Field(1800, ge=1)  # seconds per notebook cell before the stage fails
    lock_timeout: Float = Field(0.0, ge=0)  # seconds a second runner waits for the first one
    # The score table (lib.score_table.ScoreTable, which owns its defaults and checks): kept
    # in the config's shape, as given, because the notebooks receive it as a parameter.
    decision: Annotated[dict[str, Any], BeforeValidator(_mappingish)] = {}
    # deployment (05 deploy) and the model service
    logs_dir: str = "logs"
    # weights in percent; a first step `shadow` (weight 0): the canary answers nobody and
    # every request is also scored by it in the shadow, judged on that paired evidence alone
    canary_steps: Annotated[list[int | str], BeforeValidator(listish)] = [5, 25, 50, 100]
    analysis_seconds: Float = Field(300.0, gt=0)  # canary analysis window per step
    max_wait_seconds: Float = Field(600.0, ge=0)  # extra wait per step for enough samples
    check_every_seconds: Float = Field(5.0, gt=0)
    replay_rate: Float = Field(20.0, gt=0)  # requests/s of replayed held-out traffic
    replay: bool = True
    # the replayer's users, like real ones: the share of requests they ever rate, and when
    # (seconds after the answer, drawn uniformly in [low, high]; the same twice: a fixed delay)
    replay_label_share: Float = Field(0.5, ge=0, le=1)
    replay_label_delay_seconds: Annotated[list[Float], BeforeValidator(listish)] = [0.0, 60.0]
    smoke_rows: Int = Field(40, ge=1)
    smoke_max_p95_ms: Float = Field(500.0, gt=0)
    lease_seconds: Float = Field(60.0, gt=0)
    # `rollback` during a rollout: how long it waits for the deployer to finish the rollback
    stop_wait_seconds: Float = Field(8.0, ge=0)
    # a running production service; None: started per stage
    serving_url: OptionalStr = Field(None, repr=False)
    serving_host: str = Field("127.0.0.1", min_length=1)
    serving_port: Int = Field(8080, ge=0, le=65535)
    # prediction store; None: sqlite:///<root>/predictions.db
    store_url: OptionalStr = Field(None, repr=False)
    canary_analysis: Annotated[AnalysisConfig, BeforeValidator(_mappingish)] = AnalysisConfig()
    # production monitoring (06 monitor): how far back the monitor reads the store
    monitor_window_seconds: Float = Field(3600.0, gt=0)
    auto_rollback: bool = True  # the monitor rolls back on a significant accuracy drop / errors
    # lib.config_sections.MonitorConfig (which owns its defaults and ranges), kept as a mapping
    # because the 06 notebook receives it as a parameter; every key is checked at load.
    monitoring: Annotated[dict[str, Any], BeforeValidator(_mappingish)] = {}
    # who chose data_path (None: nobody, the default), set by load_config; not a config key
    _data_origin: str | None = PrivateAttr(None)

    @field_validator("canary_steps", mode="before")
    @classmethod
    def _steps(cls, steps: Any) -> list[int | str]:
        return rollout_steps(listish(steps) if isinstance(steps, str) else steps)

    @field_validator("replay_label_delay_seconds")
    @classmethod
    def _label_delay(cls, delay: list[float]) -> list[float]:
        if len(delay) != 2 or not 0 <= delay[0] <= delay[1]:
            raise ValueError(f"a range [low, high] of seconds, 0 <= low <= high; got {delay}")
        return delay

    @field_validator("features")
    @classmethod
    def _features(cls, groups: list[str]) -> list[str]:
        check_groups(groups)  # ValueError naming the unknown groups
        return groups

    @field_validator("decision")
    @classmethod
    def _decision(cls, table: dict[str, Any]) -> dict[str, Any]:
        ScoreTable.from_dict(table or None)  # a bad score table fails here, before any stage
        return table

    @field_validator("monitoring")
    @classmethod
    def _monitoring(cls, section: dict[str, Any]) -> dict[str, Any]:
        try:
            MonitorConfig.from_dict(section)
        except ValueError as exc:
            # ConfigError is not a ValueError: it leaves pydantic as is, with the nested paths.
            raise ConfigError(str(exc)) from None
        return section

    @property
    def data_origin(self) -> str | None:
        """Where `data_path` was set (``pipeline.yaml``, the environment, the command line), or
        None when it is the default: only then may a missing data file be generated."""
        return self._data_origin

    def data_files(self, root: Path) -> list[Path | str]:
        """The data sources, relative paths resolved against the project root, URLs as given."""
        return resolve_data(self.data_path, root)

    def resolved_tracking_uri(self, root: Path) -> str:
        """The MLflow store: explicit config, else the environment, else SQLite in the project."""
        return tracking_uri(self.tracking_uri, root)

    def resolved_store_url(self, root: Path) -> str:
        """Where the service writes predictions and feedback (SQLAlchemy URL)."""
        return store_url(self.store_url, root)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON data for reports; credentials in URLs are replaced by ``***``."""
        data = self.model_dump(mode="json")
        for name in URL_FIELDS:
            if data.get(name):
                data[name] = redact_source(data[name])
        return data


def redact_url(text: str) -> str:
    """`text` with the ``user:password@`` of every URL in it replaced by ``***@``: a database or
    MLflow URL may carry one, alone or inside an error message. The project's one URL-credential
    redactor (the registry's messages and the notifications' redaction use it too)."""
    return _USERINFO_RE.sub(r"\1***@", text)


def redact_source(text: str) -> str:
    """`redact_url`, and the values of token-like query parameters (``?token=``, ``&api_key=``,
    ``sig=``) too: a data URL may carry its credentials either way."""
    return _SECRET_PARAM_RE.sub(r"\1***", redact_url(text))


def _known_keys(path: list[str]) -> str:
    """The keys a model accepts at a dotted path, for the unknown-key message."""
    model: Any = PipelineConfig
    for part in path:  # pydantic keeps a field's bare type in `annotation`, Annotated stripped
        field = getattr(model, "model_fields", {}).get(part)
        model = field.annotation if field else None
    return ", ".join(sorted(getattr(model, "model_fields", None) or ()))


# --- layers ---------------------------------------------------------------------------------


def _is_plain_str(name: str) -> bool:
    """Fields whose CLI value is taken literally (a path or a URL), not parsed as YAML."""
    field = PipelineConfig.model_fields.get(name)  # its `annotation` has no Annotated wrapper
    return field is not None and str in (field.annotation, *get_args(field.annotation))


def _cli_value(name: str, value: Any) -> Any:
    if not isinstance(value, str) or _is_plain_str(name):
        return value
    try:
        return yaml.safe_load(value)
    except yaml.YAMLError as exc:
        raise ConfigError(
            f"command line: {name}: not a valid YAML value {value!r} ({exc})"
        ) from None


def expand_dotted(values: Mapping[str, Any]) -> dict[str, Any]:
    """``{"a.b": 1}`` -> ``{"a": {"b": 1}}``; string values are YAML except for path/URL keys."""
    out: dict[str, Any] = {}
    for key, value in values.items():
        parts = [p.strip() for p in str(key).split(".")]
        if not all(parts):
            raise ConfigError(f"command line: {key!r}: empty part in a dotted key")
        node = out
        for part in parts[:-1]:
            if not isinstance(node.get(part), dict):
                node[part] = {}
            node = node[part]
        node[parts[-1]] = _cli_value(key if len(parts) == 1 else "", value)
    return out


# PIPELINE_* variables that are not config keys: the runner's progress switch (lib.progress),
# the fault-injection test hook (lib.delivery.faults) and the explicit project directory
# (lib.settings); tests/test_config.py keeps them in step
RUNTIME_ENV = frozenset({"PIPELINE_PROGRESS", "PIPELINE_FAULT", ROOT_ENV})


class PipelineEnv(EnvSettingsSource):
    """PIPELINE_* variables (sections nested with ``__``) read from `environ` (default: the
    process's), plus MLFLOW_TRACKING_URI for `tracking_uri`; a PIPELINE_* name that is no key is
    logged, and a data path is made absolute against `cwd` (where the user typed it)."""

    def __init__(self, environ: Mapping[str, str] | None = None, cwd: Path | None = None) -> None:
        super().__init__(PipelineConfig)
        self.environ = os.environ if environ is None else environ
        self.env_vars = {k.lower(): v for k, v in self.environ.items()}
        self.cwd = cwd
        self.values: dict[str, Any] | None = None

    def __call__(self) -> dict[str, Any]:
        """Read once (the warnings too); a copy each time, for pydantic-settings to merge."""
        if self.values is None:
            self.values = values = super().__call__()
            known = {f"{ENV_PREFIX}{name}".lower() for name in PipelineConfig.model_fields}
            for var in self.environ:
                low = var.lower()
                ours = low.startswith(ENV_PREFIX.lower()) and var.upper() not in RUNTIME_ENV
                if ours and low.split(ENV_NESTED_DELIMITER)[0] not in known:
                    log.warning("%s is not a config key; ignored", var)
            if "tracking_uri" not in values and self.environ.get("MLFLOW_TRACKING_URI"):
                values["tracking_uri"] = self.environ["MLFLOW_TRACKING_URI"]
            if "data_path" in values:
                values["data_path"] = _from_cwd(values["data_path"], self.cwd)
        return copy.deepcopy(self.values)


def parse_set_options(items: list[str]) -> dict[str, str]:
    """`--set key=value` pairs from the command line (key may be dotted: a.b=1)."""
    out: dict[str, str] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--set {item!r}: expected KEY=VALUE, e.g. --set threshold=50")
        out[key.strip()] = value.strip()
    return out


def _from_cwd(value: Any, cwd: Path | None) -> Any:
    """A data path typed by a user (one CSV or several, comma-separated) made absolute against
    the directory they typed it in; None (a library call) leaves it relative to the root."""
    if cwd is None or not isinstance(value, str):
        return value
    return ",".join(
        p if is_url(p) else os.path.normpath(cwd / Path(p).expanduser()) for p in data_paths(value)
    )


def _yaml_source(path: Path) -> YamlConfigSettingsSource:
    try:
        return YamlConfigSettingsSource(PipelineConfig, yaml_file=path)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML ({exc})") from exc
    except (AttributeError, TypeError):  # a list or a scalar at the top
        raise ConfigError(f"{path}: expected a mapping of config keys") from None


def _build(
    layers: list[PydanticBaseSettingsSource], init: dict[str, Any], origin: str
) -> PipelineConfig:
    """The config from `init` (the highest) over `layers` (the lowest first), as pydantic-settings
    merges them; any problem is one ConfigError naming `origin`, the layer added last."""
    token = _LAYERS.set(tuple(reversed(layers)))
    try:
        return PipelineConfig(**init)
    except ValidationError as exc:
        message = format_errors(exc)
        unknown = [e for e in exc.errors() if e["type"] == "extra_forbidden"]
        if unknown:
            known = _known_keys([str(p) for p in unknown[0]["loc"][:-1]])
            if known:
                message += f" (known keys: {known})"
        raise ConfigError(f"{origin}: {message}") from None
    except (ConfigError, ValueError) as exc:  # e.g. ScoreTableError outside pydantic's wrapping
        raise ConfigError(f"{origin}: {exc}") from None
    finally:
        _LAYERS.reset(token)


def load_config(
    root: Path,
    config_file: str | Path | None = None,
    overrides: Mapping[str, Any] | None = None,
    environ: Mapping[str, str] | None = None,
    cwd: Path | None = None,
) -> PipelineConfig:
    """Defaults < file < PIPELINE_* variables < `overrides`; data paths from the last two are
    relative to `cwd` (where the user runs), those in the file to `root`."""
    layers: list[PydanticBaseSettingsSource] = []
    origin: str | None = None
    path = Path(config_file) if config_file else root / CONFIG_FILE
    if not path.is_absolute():  # a file the user named is where they stand; else the project's
        path = (cwd if config_file and cwd is not None else root) / path
    if path.exists():
        layers.append(_yaml_source(path))
        _build(layers, {}, str(path))
        if layers[0]().get("data_path", DEFAULT_DATA_PATH) != DEFAULT_DATA_PATH:
            origin = path.name
    elif config_file:
        raise ConfigError(f"config file {path} does not exist")
    env = PipelineEnv(environ, cwd)
    if env():
        layers.append(env)
        _build(layers, {}, "environment (PIPELINE_*)")
        if "data_path" in env():
            origin = f"the environment variable {ENV_PREFIX}DATA_PATH"
    given = expand_dotted(overrides or {})
    if "data_path" in given:
        given["data_path"] = _from_cwd(given["data_path"], cwd)
        origin = "the command line"
    cfg = _build(layers, given, "command line")
    cfg._data_origin = origin
    return cfg
