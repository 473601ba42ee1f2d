"""The fields of the service's request bodies: JSON values read through `lib.values`.

Each validator takes what the JSON held (a string in any style of the grammar, a number, null)
and returns the model's value, or raises a PydanticCustomError whose message names the value
and what it should look like; `schemas` prefixes the field. The `Annotated` types carry the
Play Store and clean spellings (validation aliases) and the JSON schema /openapi.json shows.
"""

import math
from collections.abc import Callable
from typing import Annotated, Any

from pydantic import AliasChoices, BeforeValidator, Field, WithJsonSchema
from pydantic_core import PydanticCustomError

from lib import values
from lib.pipeline.data import ALIASES


def show(value: Any) -> str:
    """A value in a message: its repr, cut at 80 characters."""
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def bad(message: str) -> PydanticCustomError:
    return PydanticCustomError("bad_value", message)


def _wrong_type(value: Any, expected: str) -> PydanticCustomError:
    return bad(f"expected {expected}, got {type(value).__name__} {show(value)}")


# ------------------------------------------------------------------------------ app fields


def _required_text(value: Any) -> str:
    if isinstance(value, str):
        text = value.strip()
        if not text:
            raise bad("empty")
        return text
    if value is None:
        raise bad("missing (null)")
    raise _wrong_type(value, "a string")


def _text(value: Any) -> str:
    if isinstance(value, str):
        return value.strip()
    if value is None:
        return ""
    raise _wrong_type(value, "a string")


def _optional_text(max_chars: int) -> Callable[[Any], str]:
    def check(value: Any) -> str:
        """An optional listing text (name, genres, versions): null is "", as the reader has it."""
        if value is None:
            return ""
        if not isinstance(value, str):
            raise _wrong_type(value, "a string or null")
        text = value.strip()
        if len(text) > max_chars:
            raise bad(f"{len(text)} characters, at most {max_chars}")
        return text

    return check


def _free_or_paid(value: Any) -> str:
    if not isinstance(value, str):
        if value is None:
            raise bad("missing (null)")
        raise _wrong_type(value, '"Free" or "Paid"')
    kind = values.free_or_paid(value)
    if kind is None:
        raise bad(f'{show(value)} is not "Free" or "Paid"')
    return kind


def _count(parse: Callable[[str], float | None], hint: str) -> Callable[[Any], float]:
    def check(value: Any) -> float:
        """A non-negative count or price: a JSON number, or a string in lib.values' grammar."""
        if isinstance(value, str):
            try:
                number = parse(value)
            except ValueError as exc:
                raise bad(f"{show(value)} {exc}") from None
            if number is None:
                raise bad(f"missing (got {show(value)})")
        elif value is None:
            raise bad("missing (null)")
        elif isinstance(value, bool) or not isinstance(value, (int, float)):
            raise _wrong_type(value, "a number or a string")
        else:
            try:
                number = float(value)
            except OverflowError:
                raise bad(f"{show(value)} is too large") from None
            if math.isnan(number):
                raise bad("missing (NaN)")
            if not math.isfinite(number):
                raise bad(f"{show(value)} {hint}")
        if number < 0:
            raise bad(f"{show(value)} is negative")
        return number

    return check


def _size(value: Any) -> float:
    """Size in MB: a JSON number is MB whatever its repr (5e-05); null is NaN (imputed)."""
    if isinstance(value, str):
        try:
            return values.size_mb(value)
        except ValueError as exc:
            raise bad(f"{show(value)} {exc}") from None
    if value is None:
        return math.nan
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise _wrong_type(value, "a size (number of MB or a string)")
    try:
        number = float(value)
    except OverflowError:
        raise bad(f"{show(value)} is too large") from None
    if math.isnan(number):
        return math.nan
    if not math.isfinite(number) or number < 0:
        raise bad(f"{show(value)} {values.HINT_SIZE}")
    return number


def _days(value: Any) -> float:
    if not isinstance(value, str):
        if value is None:
            raise bad("missing (null)")
        raise _wrong_type(value, "a date string")
    try:
        when = values.date(value)
    except ValueError as exc:
        raise bad(f"{show(value)} {exc}") from None
    if when is None:
        raise bad(f"missing (got {show(value)})")
    return values.days_since_epoch(when)


def _app_field(
    kind: Any, raw: str, clean: tuple[str, ...], check: Callable[[Any], Any],
    schema: dict[str, Any], description: str,
) -> Any:  # fmt: skip
    """A field read from its Play Store key or a clean one, through `check` (lib.values)."""
    for alias in clean:
        if ALIASES.get(alias) != raw:
            raise RuntimeError(f"lib.pipeline.data.ALIASES no longer maps {alias!r} to {raw!r}")
    return Annotated[
        kind,
        BeforeValidator(check),
        WithJsonSchema(schema),
        Field(
            validation_alias=AliasChoices(raw, *clean),
            description=f"{description}; also spelled {' or '.join(clean)}",
        ),
    ]


_NUMBER_OR_TEXT = {"anyOf": [{"type": "number", "minimum": 0}, {"type": "string"}]}
_TEXT_OR_NULL = {"anyOf": [{"type": "string"}, {"type": "null"}]}
_SIZE_SCHEMA = {"anyOf": [{"type": "number", "minimum": 0}, {"type": "string"}, {"type": "null"}]}

Category = _app_field(str, "Category", ("category",), _required_text,
                      {"type": "string", "minLength": 1}, "e.g. GAME")  # fmt: skip
ContentRating = _app_field(str, "Content Rating", ("content_rating",), _text, _TEXT_OR_NULL,
                           "e.g. Everyone")  # fmt: skip
AppType = _app_field(str, "Type", ("type",), _free_or_paid,
                     {"type": "string", "enum": ["Free", "Paid"]}, '"Free" or "Paid"')  # fmt: skip
Reviews = _app_field(float, "Reviews", ("reviews",), _count(values.reviews, values.HINT_REVIEWS),
                     _NUMBER_OR_TEXT, 'a count, e.g. 159 or "1,234"')  # fmt: skip
Installs = _app_field(float, "Installs", ("installs",),
                      _count(values.installs, values.HINT_INSTALLS), _NUMBER_OR_TEXT,
                      'a count, e.g. "10,000+"')  # fmt: skip
SizeMB = _app_field(float, "Size", ("size_mb", "size"), _size, _SIZE_SCHEMA,
                    'MB: 19.0, "19M", "201k" or "Varies with device"')  # fmt: skip
Price = _app_field(float, "Price", ("price",), _count(values.price, values.HINT_PRICE),
                   _NUMBER_OR_TEXT, 'e.g. 0 or "$4.99"')  # fmt: skip
LastUpdated = _app_field(float, "Last Updated", ("last_updated",), _days, {"type": "string"},
                         'e.g. "January 7, 2018" or "2018-01-07"')  # fmt: skip
Name = _app_field(str, "App", ("app",), _optional_text(200), _TEXT_OR_NULL, "the listing's name")
Genres = _app_field(str, "Genres", ("genres",), _optional_text(100), _TEXT_OR_NULL,
                    'e.g. "Action;Adventure"')  # fmt: skip
CurrentVer = _app_field(str, "Current Ver", ("current_ver",), _optional_text(100), _TEXT_OR_NULL,
                        'e.g. "1.2.3"')  # fmt: skip
AndroidVer = _app_field(str, "Android Ver", ("android_ver",), _optional_text(100), _TEXT_OR_NULL,
                        'e.g. "4.0.3 and up"')  # fmt: skip



# ------------------------------------------------------------------------------ feedback


def feedback_id(value: Any) -> str:
    if not isinstance(value, str) or not value.strip():
        raise bad(f"expected a non-empty string, got {show(value)}")
    return value.strip()


def rating(value: Any) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise bad(f"expected a number 1..5, got {show(value)}")
    if not (math.isfinite(value) and 1.0 <= value <= 5.0):
        raise bad(f"{value!r} is outside 1..5")
    return float(value)


def label(value: Any) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or value not in (0, 1):
        raise bad(f"expected 0 or 1, got {show(value)}")
    return int(value)



# ------------------------------------------------------------------------------ admin


def version(value: Any) -> str | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        raise bad(f'expected a version like "4" or null, got {show(value)}')
    text = str(value).strip()
    if not text:
        raise bad("empty")
    return text


def weight(value: Any) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise bad(f"expected a percentage 0..100, got {show(value)}")
    if not (math.isfinite(value) and 0 <= value <= 100):
        raise bad(f"{value!r} is not a percentage in 0..100")
    return float(value)


def lease(value: Any) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise bad(f"expected seconds > 0, got {show(value)}")
    if not (math.isfinite(value) and value > 0):
        raise bad(f"{value!r} must be > 0")
    return float(value)
