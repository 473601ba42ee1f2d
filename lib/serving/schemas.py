"""The service's requests as pydantic models, validated straight from the raw body.

* `App`: one listing, each field in the Play Store spelling ("Content Rating") or the clean one
  (content_rating); values in any style of `lib.values` (sizes "19M", installs "10,000+",
  prices "$0.99", dates "January 7, 2018" or ISO) or as JSON numbers. App, Genres, Current Ver
  and Android Ver are optional (absent or null read as ""); unknown keys ("Rating") are ignored.
* `PREDICT_REQUEST`: one app object (with an optional request_id), a list of them, or
  {"instances": [...], "request_id": ...}: one TypeAdapter, built once, dispatching on the shape.
* `Feedback`, `RoutingUpdate`: the bodies of /feedback and PUT /admin/routing.

Every validator (`fields`) raises `PydanticCustomError` with a message naming the value;
`parse_predict`, `parse_feedback` and `parse_routing` turn a ValidationError into `InputError`
(HTTP 422) with one message per problem, in the words the hand-written parser used.
Validation runs on the raw bytes (`validate_json`): the body is parsed once, in pydantic-core.

`openapi_components` publishes what these validators accept, in the patterns of `fields` and
the rules between fields (feedback's label agrees with its rating; no canary, no weight):
schemathesis with every check (tests/test_service_schema.py) holds the two together.
"""

import math
import sys
import uuid
from typing import Annotated, Any

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Discriminator,
    Field,
    Tag,
    TypeAdapter,
    ValidationError,
    WithJsonSchema,
    model_validator,
)

from lib.pipeline.features import FEATURE_COLUMNS, derived_values
from lib.serving import fields
from lib.serving.fields import show
from lib.serving.rows import OBJECT_POSITIONS, Row
from lib.serving.settings import MAX_BODY_BYTES, MAX_INSTANCES


class InputError(ValueError):
    """A request the service refuses (HTTP 422); each message names the field and the value."""

    def __init__(self, messages: list[str]) -> None:
        self.messages = messages
        shown = messages[:20]
        more = f"; ... and {len(messages) - 20} more" if len(messages) > 20 else ""
        super().__init__("; ".join(shown) + more)


class App(BaseModel):
    """One listing: the eight fields the model needs, and the optional texts of its name."""

    model_config = ConfigDict(extra="ignore", frozen=True)

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


_KEY_TO_FIELD: dict[str, str] = {}
_MISSING_NAMES: dict[str, str] = {}
for _name, _info in App.model_fields.items():
    _choices = _info.validation_alias.choices  # type: ignore[union-attr]
    for _alias in _choices:
        _KEY_TO_FIELD[_alias] = _name
    _MISSING_NAMES[_choices[0]] = f"{_choices[0]} (or {'/'.join(_choices[1:])})"

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


class SingleApp(App):
    """One app object, with the caller's request id if it has one."""

    request_id: Annotated[Any, WithJsonSchema(_REQUEST_ID_SCHEMA)] = None


class Instances(BaseModel):
    """A batch: {"instances": [app, ...], "request_id": "..."}."""

    model_config = ConfigDict(extra="ignore")

    instances: Annotated[list[App], Field(min_length=1, max_length=MAX_INSTANCES)]
    request_id: Annotated[Any, WithJsonSchema(_REQUEST_ID_SCHEMA)] = None


def _shape(body: Any) -> str | None:
    if isinstance(body, dict):
        return "instances" if "instances" in body else "app"
    if isinstance(body, list):
        return "list"
    return None


_BODY_SHAPES = 'an app object, a list of app objects or {"instances": [...]}'
PredictRequest = Annotated[
    Annotated[SingleApp, Tag("app")]
    | Annotated[list[App], Field(min_length=1, max_length=MAX_INSTANCES), Tag("list")]
    | Annotated[Instances, Tag("instances")],
    Discriminator(
        _shape, custom_error_type="body_shape", custom_error_message=f"expected {_BODY_SHAPES}"
    ),
]
PREDICT_REQUEST: TypeAdapter[SingleApp | list[App] | Instances] = TypeAdapter(PredictRequest)


class ParsedRequest:
    """A validated /predict body: the rows, whether it was a batch, the body's request_id."""

    __slots__ = ("batch", "request_id", "rows")

    def __init__(self, rows: list[Row], batch: bool, request_id: Any) -> None:
        self.rows, self.batch, self.request_id = rows, batch, request_id


def _messages(exc: ValidationError, tagged: bool = False) -> list[str]:
    """A ValidationError in the words of the old hand-written parser: 'where: what is wrong'.

    `tagged`: locations start with the body shape's tag (PREDICT_REQUEST's union).
    """
    places: dict[str, tuple[list[str], list[str]]] = {}
    for error in exc.errors(include_url=False):
        loc = list(error["loc"][1:] if tagged and error["loc"] else error["loc"])
        in_instances = bool(loc) and loc[0] == "instances"
        if in_instances:
            loc = loc[1:]
        where = ""
        if loc and isinstance(loc[0], int):
            where, loc = f"instances[{loc[0]}]: ", loc[1:]
        field = ".".join(str(part) for part in loc)
        missing, bad = places.setdefault(where, ([], []))
        kind, got = error["type"], error.get("input")
        if kind == "missing":
            missing.append(_MISSING_NAMES.get(field, field))
        elif kind == "json_invalid":
            why = str(error["ctx"].get("error", error["msg"]))
            if "recursion limit" in why:  # pydantic-core's parser stops at 201 levels
                why = f"nested too deeply (at most {MAX_JSON_DEPTH} levels), {why}"
            bad.append(f"body is not valid JSON: {why}")
        elif kind == "body_shape":
            bad.append(f"body: expected {_BODY_SHAPES}, got {type(got).__name__} {show(got)}")
        elif kind == "too_short":
            bad.append("empty batch: send at least one app")
        elif kind == "too_long":
            bad.append(f"batch of {len(got)} apps: at most {MAX_INSTANCES} per request")
        elif kind == "list_type":
            name = "instances" if in_instances else field or "body"
            bad.append(f"{name}: expected a list of app objects, got {type(got).__name__}")
        else:
            bad.append(f"{field}: {error['msg']}" if field else error["msg"])
    out: list[str] = []
    for where, (missing, bad) in places.items():
        if missing:  # an object without required fields: that alone is reported for it
            out.append(f"{where}missing field(s): {', '.join(missing)}")
        else:
            out.extend(where + text for text in bad)
    return out


MAX_JSON_DEPTH = 200  # pydantic-core refuses deeper JSON while parsing; an app is 2 levels deep


def check_body(body: bytes) -> None:
    """Refuse an oversized or empty body before any parsing."""
    if len(body) > MAX_BODY_BYTES:
        raise InputError([f"body of {len(body)} bytes: at most {MAX_BODY_BYTES}"])
    if not body.strip():
        raise InputError(["body: empty; send a JSON object"])


_NUMERIC = [i for i in range(len(FEATURE_COLUMNS)) if i not in OBJECT_POSITIONS]
_INFINITE = (math.inf, -math.inf)


def _finite_rows(rows: list[Row]) -> list[Row]:
    """The last guard before the queue: no infinite model input, whatever a field let through
    (the model would fail on it, and its error would count against the variant)."""
    for n, row in enumerate(rows):
        for i in _NUMERIC:
            if row[i] in _INFINITE:
                where = f"instances[{n}]: " if len(rows) > 1 else ""
                raise InputError([f"{where}{FEATURE_COLUMNS[i]}: not a finite number"])
    return rows


def parse_predict(body: bytes) -> ParsedRequest:
    """A raw /predict body -> rows, validated in one pass; InputError says every problem."""
    check_body(body)
    try:
        parsed = PREDICT_REQUEST.validate_json(body)
    except ValidationError as exc:
        raise InputError(_messages(exc, tagged=True)) from None
    if isinstance(parsed, SingleApp):
        return ParsedRequest(_finite_rows([parsed.row()]), False, parsed.request_id)
    if isinstance(parsed, Instances):
        rows = _finite_rows([a.row() for a in parsed.instances])
        return ParsedRequest(rows, True, parsed.request_id)
    return ParsedRequest(_finite_rows([a.row() for a in parsed]), True, None)


_APP = TypeAdapter(App)


def parse_app(app: Any) -> Row:
    """One app object (a dict) -> the model's row; InputError names every bad field."""
    try:
        return _APP.validate_python(app).row()
    except ValidationError as exc:
        raise InputError(_messages(exc)) from None


def request_id(header: str | None, body_value: Any) -> str:
    """The caller's id (header X-Request-ID, else field request_id), else a new uuid4 hex."""
    return caller_request_id(header, body_value) or uuid.uuid4().hex


def caller_request_id(header: str | None, body_value: Any) -> str | None:
    """The caller's id (header X-Request-ID, else field request_id); None if it sent none.

    Both are checked when both are sent, before anything is queued or stored: an id outside
    REQUEST_ID_PATTERN (emoji, CJK, U+202E, a UTF-8 header read as Latin-1) is refused (422).
    """
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


class Feedback(BaseModel):
    """The true outcome of a prediction: its request_id and the rating, or the label 0/1."""

    model_config = ConfigDict(extra="ignore")

    request_id: Annotated[
        str,
        BeforeValidator(fields.feedback_id),
        WithJsonSchema({"type": "string", "pattern": fields.FEEDBACK_ID_SCHEMA_PATTERN}),
    ]
    rating: Annotated[float | None, BeforeValidator(fields.rating),
                      WithJsonSchema({"anyOf": [{"type": "number", "minimum": 1, "maximum": 5},
                                                {"type": "null"}]})] = None  # fmt: skip
    label: Annotated[
        int | None,
        BeforeValidator(fields.label),
        WithJsonSchema({"anyOf": [{"enum": [0, 1]}, {"type": "null"}]}),
    ] = None


_FEEDBACK = TypeAdapter(Feedback)


def parse_feedback(body: bytes, threshold: float) -> Feedback:
    """A /feedback body; rating and label must agree (label is 1 when rating > threshold)."""
    check_body(body)
    try:
        feedback = _FEEDBACK.validate_json(body)
    except ValidationError as exc:
        errors = exc.errors(include_url=False)
        if any(e["type"] == "model_type" for e in errors):
            raise InputError(
                ['body: expected {"request_id": "...", "rating": 4.5} or a "label" 0/1']
            ) from None
        raise InputError(_messages(exc)) from None
    if feedback.rating is None and feedback.label is None:
        raise InputError(["rating or label: one is required"])
    if feedback.rating is not None and feedback.label is not None:
        if int(feedback.rating > threshold) != feedback.label:
            raise InputError(
                [f"label {feedback.label} contradicts rating {feedback.rating} "
                 f"(label is 1 when rating > {threshold})"]
            )  # fmt: skip
    return feedback


# ------------------------------------------------------------------------------ admin


class RoutingUpdate(BaseModel):
    """PUT /admin/routing: the canary version (null: none; absent: keep), weight %, lease s,
    and the weight the caller believes is set (`expected_weight`: 409 if it is not)."""

    model_config = ConfigDict(extra="forbid")

    canary_version: Annotated[str | None, BeforeValidator(fields.version),
                              WithJsonSchema({"anyOf": [
                                  {"type": "string", "pattern": fields.VERSION_SCHEMA_PATTERN},
                                  {"type": "integer", "minimum": 1, "maximum": 9_999_999_999},
                                  {"type": "null"}]})] = None  # fmt: skip
    weight: Annotated[float | None, BeforeValidator(fields.weight),
                      WithJsonSchema({"anyOf": [{"type": "number", "minimum": 0, "maximum": 100},
                                                {"type": "null"}]})] = None  # fmt: skip
    lease_seconds: Annotated[float | None, BeforeValidator(fields.lease),
                             WithJsonSchema({"anyOf": [{"type": "number", "exclusiveMinimum": 0,
                                                        "maximum": sys.float_info.max},
                                                       {"type": "null"}]})] = None  # fmt: skip
    # compare-and-set: apply only if the canary weight now (after the lease check) is this one
    expected_weight: Annotated[float | None, BeforeValidator(fields.weight),
                               WithJsonSchema({"anyOf": [{"type": "number", "minimum": 0,
                                                          "maximum": 100},
                                                         {"type": "null"}]})] = None  # fmt: skip

    @property
    def keeps_canary(self) -> bool:
        """canary_version absent: keep the canary there is."""
        return "canary_version" not in self.model_fields_set


_ROUTING = TypeAdapter(RoutingUpdate)


def parse_routing(body: bytes) -> RoutingUpdate:
    """A PUT /admin/routing body; unknown fields are refused (a typo must not pass silently)."""
    check_body(body)
    try:
        return _ROUTING.validate_json(body)
    except ValidationError as exc:
        errors = exc.errors(include_url=False)
        if any(e["type"] == "model_type" for e in errors):
            raise InputError(
                ['body: expected an object like {"canary_version": "4", "weight": 5.0, '
                 '"lease_seconds": 60}']
            ) from None  # fmt: skip
        unknown = sorted(str(e["loc"][0]) for e in errors if e["type"] == "extra_forbidden")
        if unknown:
            raise InputError(
                [
                    f"unknown field(s) {unknown}; expected canary_version, weight, lease_seconds, "
                    "expected_weight"
                ]
            ) from None
        raise InputError(_messages(exc)) from None


class ErrorBody(BaseModel):
    """Every 4xx/5xx answer: a sentence, and for refused input the list of problems."""

    detail: str
    errors: list[str] | None = None


def openapi_components(ref_template: str, threshold: float) -> dict[str, Any]:
    """JSON schemas of the request bodies for /openapi.json (the routes validate raw bytes).

    An app is documented in its two spellings, PlayStoreApp and CleanApp (an object that mixes
    them is accepted too); PredictRequest is one app (SingleApp: with its request_id), a list of
    apps or Instances. The constraints between fields are stated too: feedback's rating and
    label agree (`threshold`), a canary weight above 0 needs a canary.
    """
    schema = App.model_json_schema(ref_template=ref_template, mode="validation")
    spellings = {  # JSON schema key (the Play Store spelling) -> every spelling
        info.validation_alias.choices[0]: info.validation_alias.choices  # type: ignore[union-attr]
        for info in App.model_fields.values()
    }

    def spelled(title: str, which: int) -> dict[str, Any]:
        properties = {spellings[k][which]: v for k, v in schema["properties"].items()}
        required = [spellings[k][which] for k in schema.get("required", [])]
        return {**schema, "title": title, "required": required, "properties": properties}

    ref = ref_template.format
    spelled_apps = [{"$ref": ref(model="PlayStoreApp")}, {"$ref": ref(model="CleanApp")}]
    app = {"title": "App", "description": App.__doc__, "anyOf": spelled_apps}
    single = {
        "title": "SingleApp",
        "description": "one app, and the caller's request id if it has one",
        "type": "object",
        "anyOf": spelled_apps,
        "properties": {"request_id": _REQUEST_ID_SCHEMA},
    }
    batch = {"type": "array", "items": {"$ref": ref(model="App")}, "minItems": 1,
             "maxItems": MAX_INSTANCES}  # fmt: skip
    instances = {
        "title": "Instances",
        "type": "object",
        "properties": {"instances": batch, "request_id": _REQUEST_ID_SCHEMA},
        "required": ["instances"],
    }
    predict = {
        "title": "PredictRequest",
        "description": f"{_BODY_SHAPES}",
        "anyOf": [{"$ref": ref(model="SingleApp")}, batch, {"$ref": ref(model="Instances")}],
    }
    return {
        "PlayStoreApp": spelled("PlayStoreApp", 0),
        "CleanApp": spelled("CleanApp", 1),
        "App": app,
        "SingleApp": single,
        "Instances": instances,
        "PredictRequest": predict,
        "Feedback": _feedback_schema(ref_template, threshold),
        "RoutingUpdate": _routing_schema(ref_template),
    }


def _feedback_schema(ref_template: str, threshold: float) -> dict[str, Any]:
    """Feedback, and what parse_feedback checks across fields: a rating or a label, and a label
    that agrees with the rating (1 when rating > threshold)."""
    schema = Feedback.model_json_schema(ref_template=ref_template, mode="validation")
    rating, label = {"type": "number"}, {"enum": [0, 1]}
    schema["anyOf"] = [
        {"required": ["rating"], "properties": {"rating": rating, "label": {"type": "null"}}},
        {"required": ["label"], "properties": {"label": label, "rating": {"type": "null"}}},
        {"required": ["rating", "label"], "properties": {
            "rating": {**rating, "exclusiveMinimum": threshold}, "label": {"const": 1}}},
        {"required": ["rating", "label"], "properties": {
            "rating": {**rating, "maximum": threshold}, "label": {"const": 0}}},
    ]  # fmt: skip
    return schema


def _routing_schema(ref_template: str) -> dict[str, Any]:
    """RoutingUpdate, and the rule update_routing checks: no canary (null), no weight above 0.
    (Absent canary_version with no canary loaded and a weight is a 409: it depends on state.)"""
    schema = RoutingUpdate.model_json_schema(ref_template=ref_template, mode="validation")
    schema["not"] = {
        "required": ["canary_version", "weight"],
        "properties": {
            "canary_version": {"type": "null"},
            "weight": {"type": "number", "exclusiveMinimum": 0},
        },
    }
    return schema
