"""The service's request bodies as pydantic models: bound to the routes, they validate each body
and FastAPI generates /openapi.json from them. An app's fields take the Play Store spelling
("Content Rating") or the clean one (content_rating); unknown keys are ignored. The schemas state
what the validators (`fields`) accept; tests/test_service_schema.py (schemathesis) holds the two
together."""

import sys
from collections.abc import Sequence
from typing import Annotated, Any, ClassVar

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Discriminator,
    Field,
    RootModel,
    Tag,
    WithJsonSchema,
    model_validator,
)

from lib.pipeline.features import derived_values
from lib.serving import fields
from lib.serving.fields import show
from lib.serving.rows import Row
from lib.serving.settings import MAX_INSTANCES

MAX_JSON_DEPTH = 200  # pydantic-core refuses deeper JSON while parsing; an app is 2 levels deep


class InputError(ValueError):
    """A request the service refuses (HTTP 422); each message names the field and the value."""

    def __init__(self, messages: list[str]) -> None:
        self.messages = messages
        shown = messages[:20]
        more = f"; ... and {len(messages) - 20} more" if len(messages) > 20 else ""
        super().__init__("; ".join(shown) + more)


def _both_spellings(schema: dict[str, Any]) -> None:
    """An app in the Play Store spelling or the clean one (an object that mixes them is
    accepted too); pydantic documents only the first spelling of each field."""
    spelled = []
    for which in (0, 1):
        names = {k: _SPELLINGS.get(k, (k, k))[which] for k in schema["properties"]}
        spelled.append({
            "type": "object",
            "properties": {names[k]: v for k, v in schema["properties"].items()},
            "required": [names[k] for k in schema.get("required", [])],
        })  # fmt: skip
    schema["anyOf"] = spelled
    del schema["properties"], schema["required"]


class App(BaseModel):
    """One listing: the eight fields the model needs, and the optional texts of its name."""

    model_config = ConfigDict(extra="ignore", frozen=True, json_schema_extra=_both_spellings)

    category: fields.Category
    content_rating: fields.ContentRating
    type: fields.AppType
    reviews: fields.Reviews
    installs: fields.Installs
    size_mb: fields.SizeMB
    price: fields.Price
    last_updated_days: fields.LastUpdated
    app: fields.Name = ""
    genres: fields.Genres = ""
    current_ver: fields.CurrentVer = ""
    android_ver: fields.AndroidVer = ""

    @model_validator(mode="before")
    @classmethod
    def _one_spelling_per_field(cls, data: Any) -> Any:
        """An object; keys match after stripping, and the first spelling of a field wins."""
        if not isinstance(data, dict):
            raise fields.bad(f"expected an app object, got {type(data).__name__} {show(data)}")
        seen: set[str] = set()
        rewrite = False
        for key in data:
            name = _KEY_TO_FIELD.get(key)
            if name is None:
                if not isinstance(key, str) or key.strip() not in _KEY_TO_FIELD:
                    continue
                name, rewrite = _KEY_TO_FIELD[key.strip()], True
            if name in seen:
                rewrite = True
            seen.add(name)
        if not rewrite:
            return data  # the usual case: one exact spelling per field
        seen.clear()
        clean: dict[Any, Any] = {}
        for key, value in data.items():
            stripped = key.strip() if isinstance(key, str) else key
            name = _KEY_TO_FIELD.get(stripped)
            if name is None:
                clean.setdefault(key, value)  # request_id and keys the model does not use
            elif name not in seen:
                seen.add(name)
                clean[stripped] = value
        return clean

    def row(self) -> Row:
        """The model's row (FEATURE_COLUMNS order); derived inputs as in training."""
        derived = derived_values(
            self.app, self.genres, self.current_ver, self.android_ver, self.reviews, self.installs
        )
        return (
            self.category, self.content_rating, self.type, self.reviews, self.installs,
            self.size_mb, self.price, self.last_updated_days, *derived, self.app,
        )  # fmt: skip


_SPELLINGS = {  # JSON schema key (the Play Store spelling) -> (that, the clean spelling)
    info.validation_alias.choices[0]: info.validation_alias.choices  # type: ignore[union-attr]
    for info in App.model_fields.values()
}
_KEY_TO_FIELD = {alias: name for name, info in App.model_fields.items()
                 for alias in info.validation_alias.choices}  # type: ignore[union-attr]  # fmt: skip
_MISSING_NAMES = {raw: f"{raw} (or {'/'.join(choices[1:])})" for raw, choices in _SPELLINGS.items()}

_REQUEST_ID_SCHEMA = {
    "anyOf": [
        {"type": "string", "pattern": fields.REQUEST_ID_SCHEMA_PATTERN},
        {"type": "integer", "minimum": 0, "maximum": fields.MAX_INTEGER_ID},
        {"type": "null"},
    ],
    "description": "the caller's id (the X-Request-ID header wins; both must follow the rule "
    f"{fields.REQUEST_ID_RULE}); else (null, blank) a new uuid4 hex. One id, one prediction: "
    "an id already used (items of a batch are '<id>-<index>') is refused with 409",
}
RequestIdField = Annotated[Any, WithJsonSchema(_REQUEST_ID_SCHEMA)]
Apps = Annotated[list[App], Field(min_length=1, max_length=MAX_INSTANCES)]


class SingleApp(App):
    """One app, and the caller's request id if it has one."""

    request_id: RequestIdField = None


class Instances(BaseModel):
    """A batch: {"instances": [app, ...], "request_id": "..."}."""

    model_config = ConfigDict(extra="ignore")

    instances: Apps
    request_id: RequestIdField = None


def _shape(body: Any) -> str | None:
    if isinstance(body, dict):
        return "instances" if "instances" in body else "app"
    if isinstance(body, list):
        return "list"
    return None


def _any_of(schema: dict[str, Any]) -> None:
    """anyOf, not oneOf: an app object may hold "instances" too (it is then a batch)."""
    schema["anyOf"] = schema.pop("oneOf")


_BODY_SHAPES = 'an app object, a list of app objects or {"instances": [...]}'
_SHAPES = (
    Annotated[SingleApp, Tag("app")] | Annotated[Apps, Tag("list")]
    | Annotated[Instances, Tag("instances")]
)  # fmt: skip


_BY_SHAPE = Discriminator(
    _shape, custom_error_type="body_shape", custom_error_message=f"expected {_BODY_SHAPES}"
)


class PredictRequest(RootModel[Annotated[_SHAPES, _BY_SHAPE]]):
    """An app object, a list of app objects or {"instances": [...]}."""

    model_config = ConfigDict(json_schema_extra=_any_of)

    def parsed(self) -> tuple[list[Row], bool, Any]:
        """The model's rows, whether it was a batch, and the body's request_id."""
        body = self.root
        if isinstance(body, SingleApp):
            return [body.row()], False, body.request_id
        if isinstance(body, Instances):
            return [a.row() for a in body.instances], True, body.request_id
        return [a.row() for a in body], True, None


def caller_request_id(header: str | None, body_value: Any) -> str | None:
    """The caller's id (header X-Request-ID, else field request_id); None if it sent none.
    Both are checked, before anything is queued: an id outside REQUEST_ID_PATTERN is a 422."""
    chosen: str | None = None
    problems = []
    for where, value in (("X-Request-ID", header), ("request_id", body_value)):
        if fields.blank(value):
            continue
        text = fields.request_id_text(value)
        if text is None:
            if isinstance(value, (str, int, float)) and not isinstance(value, bool):
                problems.append(f"{where}: {show(value)} is not a request id "
                                f"({fields.REQUEST_ID_RULE})")  # fmt: skip
            else:
                problems.append(f"{where}: expected a string, got {type(value).__name__}")
        elif chosen is None:
            chosen = text
    if problems:
        raise InputError(problems)
    return chosen


# ------------------------------------------------------------------------------ feedback

_Number = Field(strict=True, allow_inf_nan=False)  # a JSON number: no bool, no string


def _feedback_rules(schema: dict[str, Any], model: type["Feedback"]) -> None:
    """What the model validator checks across fields: a rating or a label, and a label that
    agrees with the rating (1 when rating > threshold)."""
    rating, label, threshold = {"type": "number"}, {"enum": [0, 1]}, model.threshold
    schema["anyOf"] = [
        {"required": ["rating"], "properties": {"rating": rating, "label": {"type": "null"}}},
        {"required": ["label"], "properties": {"label": label, "rating": {"type": "null"}}},
        {"required": ["rating", "label"], "properties": {
            "rating": {**rating, "exclusiveMinimum": threshold}, "label": {"const": 1}}},
        {"required": ["rating", "label"], "properties": {
            "rating": {**rating, "maximum": threshold}, "label": {"const": 0}}},
    ]  # fmt: skip


class Feedback(BaseModel):
    """The true outcome of a prediction: its request_id and the rating, or the label 0/1."""

    model_config = ConfigDict(extra="ignore", json_schema_extra=_feedback_rules)
    threshold: ClassVar[float] = 4.0  # label 1 when rating > threshold (`feedback_model`)

    request_id: Annotated[
        str,
        BeforeValidator(fields.feedback_id),
        WithJsonSchema({"type": "string", "pattern": fields.FEEDBACK_ID_SCHEMA_PATTERN}),
    ]
    rating: Annotated[float | None, _Number, Field(ge=1, le=5)] = None
    label: Annotated[int | None, Field(strict=True, ge=0, le=1)] = None
    # who sent the label (stored with it and its arrival time), e.g. "store-sync"
    source: Annotated[str, Field(pattern=r"^[A-Za-z0-9._:-]{1,64}$")] = "api"

    @model_validator(mode="after")
    def _rating_and_label_agree(self) -> "Feedback":
        if self.rating is None and self.label is None:
            raise fields.bad("rating or label: one is required")
        if self.rating is not None and self.label is not None:
            if int(self.rating > self.threshold) != self.label:
                raise fields.bad(f"label {self.label} contradicts rating {self.rating} "
                                 f"(label is 1 when rating > {self.threshold})")  # fmt: skip
        return self


def feedback_model(threshold: float) -> type[Feedback]:
    """Feedback for a service whose label is 1 when the rating is above `threshold`."""
    return type("Feedback", (Feedback,), {"threshold": threshold, "__module__": __name__})


# ------------------------------------------------------------------------------ admin

_Percent = Annotated[float | None, _Number, Field(ge=0, le=100)]


def _no_canary_no_weight(schema: dict[str, Any]) -> None:
    """The rule update_routing checks: no canary (null), no weight above 0. (Absent
    canary_version with no canary loaded and a weight is a 409: it depends on state.)"""
    schema["not"] = {
        "required": ["canary_version", "weight"],
        "properties": {
            "canary_version": {"type": "null"},
            "weight": {"type": "number", "exclusiveMinimum": 0},
        },
    }


class RoutingUpdate(BaseModel):
    """PUT /admin/routing: the canary version (null: none; absent: keep), weight %, lease s,
    and the weight the caller believes is set (`expected_weight`: 409 if it is not). Unknown
    fields are refused (a typo must not pass silently)."""

    model_config = ConfigDict(extra="forbid", json_schema_extra=_no_canary_no_weight)

    canary_version: Annotated[str | None, BeforeValidator(fields.version),
                              WithJsonSchema({"anyOf": [
                                  {"type": "string", "pattern": fields.VERSION_SCHEMA_PATTERN},
                                  {"type": "integer", "minimum": 1, "maximum": 9_999_999_999},
                                  {"type": "null"}]})] = None  # fmt: skip
    weight: _Percent = None
    lease_seconds: Annotated[float | None, _Number, Field(gt=0, le=sys.float_info.max)] = None
    # compare-and-set: apply only if the canary weight now (after the lease check) is this one
    expected_weight: _Percent = None


class ErrorBody(BaseModel):
    """Every 4xx/5xx answer: a sentence, and for refused input the list of problems."""

    detail: str
    errors: list[str] | None = None


# ------------------------------------------------------------------------------ messages


def _message(kind: str, field: str, error: dict[str, Any], in_instances: bool) -> str:
    got = error.get("input")
    if kind == "json_invalid":
        why = str(error.get("ctx", {}).get("error", error["msg"]))
        if "recursion limit" in why:  # pydantic-core's parser stops at 201 levels
            why = f"nested too deeply (at most {MAX_JSON_DEPTH} levels), {why}"
        return f"body is not valid JSON: {why}"
    if kind == "body_shape":
        return f"body: expected {_BODY_SHAPES}, got {type(got).__name__} {show(got)}"
    if kind == "too_short":
        return "empty batch: send at least one app"
    if kind == "too_long":
        return f"batch of {len(got)} apps: at most {MAX_INSTANCES} per request"
    if kind == "list_type":
        name = "instances" if in_instances else field or "body"
        return f"{name}: expected a list of app objects, got {type(got).__name__}"
    if kind == "extra_forbidden":
        return f"unknown field {field!r}; expected {', '.join(RoutingUpdate.model_fields)}"
    if kind == "bad_value":
        return f"{field}: {error['msg']}" if field else error["msg"]
    return f"{field or 'body'}: {error['msg']}, got {show(got)}"


def messages(errors: Sequence[Any], tagged: bool = False) -> list[str]:
    """FastAPI's validation errors as 'where: what is wrong', one per problem (an object with
    missing fields is reported for those alone); `tagged`: with PredictRequest's shape."""
    places: dict[str, tuple[list[str], list[str]]] = {}
    for error in errors:
        if error["type"] == "json_invalid":  # (FastAPI's location is a character offset)
            places.setdefault("", ([], []))[1].append(_message("json_invalid", "", error, False))
            continue
        loc = list(error["loc"][1:])  # (FastAPI's locations start with "body")
        if tagged and loc and loc[0] in ("app", "list", "instances"):
            loc = loc[1:]
        in_instances = bool(loc) and loc[0] == "instances"
        if in_instances:
            loc = loc[1:]
        where = ""
        if loc and isinstance(loc[0], int):
            where, loc = f"instances[{loc[0]}]: ", loc[1:]
        field = ".".join(str(part) for part in loc)
        missing, bad = places.setdefault(where, ([], []))
        if error["type"] == "missing" and not field:
            bad.append("body: empty; send a JSON object")
        elif error["type"] == "missing":
            missing.append(_MISSING_NAMES.get(field, field or "body"))
        else:
            bad.append(_message(error["type"], field, error, in_instances))
    out: list[str] = []
    for where, (missing, bad) in places.items():
        if missing:
            out.append(f"{where}missing field(s): {', '.join(missing)}")
        else:
            out.extend(where + text for text in bad)
    return out
