"""The fields of the service's request bodies: JSON values read through `lib.values`.

Each validator takes what the JSON held (a string in the grammar, a number, null) and returns the
model's value, or raises a PydanticCustomError naming the value. Every value is bounded (MAX_*):
infinity, 1e308 or megabytes of text are a 422 naming the field, and never reach the model, the
error counter or the prediction store.
"""

import math
import re
from collections.abc import Callable
from typing import Annotated, Any

from pydantic import AliasChoices, BeforeValidator, Field, WithJsonSchema
from pydantic_core import PydanticCustomError

from lib import values
from lib.pipeline.data import ALIASES
from lib.serving.settings import MAX_INSTANCES, REQUEST_ID_PATTERN

# Upper bounds of the numeric inputs, far above any real listing (the largest Play Store install
# bucket is "10,000,000,000+", the highest price $400, the largest app a few GB).
MAX_REVIEWS = 1e10
MAX_INSTALLS = 1e11
MAX_SIZE_MB = 100_000.0  # 100 GB
MAX_PRICE = 5_000.0
MAX_VALUE_CHARS = 64  # a number, size, date or "Free"/"Paid" spelled as a string
MAX_LABEL_CHARS = 100  # category, content rating


def show(value: Any) -> str:
    """A value in a message: its repr, cut at 80 characters."""
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def bad(message: str) -> PydanticCustomError:
    return PydanticCustomError("bad_value", message)


def _wrong_type(value: Any, expected: str) -> PydanticCustomError:
    return bad(f"expected {expected}, got {type(value).__name__} {show(value)}")


# ------------------------------------------------------------------------------ app fields


def _short(text: str, max_chars: int) -> str:
    """`text` stripped, refused when longer than `max_chars` (a stored junk string is a cost)."""
    text = text.strip()
    if len(text) > max_chars:
        raise bad(f"{len(text)} characters, at most {max_chars}")
    return text


def _str(value: Any, expected: str, max_chars: int = MAX_VALUE_CHARS) -> str:
    """A string stripped and bounded; null is missing, another type is refused."""
    if isinstance(value, str):
        return _short(value, max_chars)
    if value is None:
        raise bad("missing (null)")
    raise _wrong_type(value, expected)


def _required_text(value: Any) -> str:
    text = _str(value, "a string", MAX_LABEL_CHARS)
    if not text:
        raise bad("empty")
    return text


def _free_or_paid(value: Any) -> str:
    kind = values.free_or_paid(_str(value, '"Free" or "Paid"'))
    if kind is None:
        raise bad(f'{show(value)} is not "Free" or "Paid"')
    return kind


def _at_most(value: Any, number: float, limit: float, unit: str = "") -> float:
    """`number` (parsed from `value`) if finite and <= limit; NaN passes (a missing value)."""
    if number > limit:  # infinity too; NaN (a missing size) compares False
        raise bad(f"{show(value)} is too large (at most {limit:,.0f}{unit})")
    return number


def _parsed(value: str, parse: Callable[[str], Any]) -> Any:
    """A string through lib.values' `parse`; its ValueError names what was expected."""
    _short(value, MAX_VALUE_CHARS)
    try:
        return parse(value)
    except ValueError as exc:
        raise bad(f"{show(value)} {exc}") from None


def _json_number(value: Any, expected: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise _wrong_type(value, expected)
    try:
        return float(value)
    except OverflowError:
        raise bad(f"{show(value)} is too large") from None


def _count(parse: Callable[[str], float | None], hint: str, limit: float) -> Callable[[Any], float]:
    def check(value: Any) -> float:
        """A count or price in 0..limit: a JSON number, or a string in lib.values' grammar."""
        if value is None:
            raise bad("missing (null)")
        if isinstance(value, str):
            number = _parsed(value, parse)
            if number is None:
                raise bad(f"missing (got {show(value)})")
        else:
            number = _json_number(value, "a number or a string")
            if math.isnan(number):
                raise bad("missing (NaN)")
            if not math.isfinite(number):
                raise bad(f"{show(value)} {hint}")
        if number < 0:
            raise bad(f"{show(value)} is negative")
        return _at_most(value, number, limit)

    return check


def _size(value: Any) -> float:
    """Size in MB: a JSON number is MB whatever its repr (5e-05); null is NaN (imputed)."""
    if value is None:
        return math.nan
    if isinstance(value, str):  # "1" + "0" * 306 + "G" is infinity
        return _at_most(value, _parsed(value, values.size_mb), MAX_SIZE_MB, " MB")
    number = _json_number(value, "a size (number of MB or a string)")
    if math.isnan(number):
        return math.nan
    if not math.isfinite(number) or number < 0:
        raise bad(f"{show(value)} {values.HINT_SIZE}")
    return _at_most(value, number, MAX_SIZE_MB, " MB")


def _days(value: Any) -> float:
    when = _parsed(_str(value, "a date string"), values.date)
    if when is None:
        raise bad(f"missing (got {show(value)})")
    return values.days_since_epoch(when)


# ------------------------------------------------------------------- the schema of the values
#
# /openapi.json states what these validators accept, as JSON Schema patterns: a client (or
# schemathesis) that follows the document is not refused, and what the document calls invalid
# is refused. Patterns rather than maxLength: the validators measure a string once stripped.
# Whitespace is Python's (str.strip), spelled out, and digits are [0-9]: regex engines disagree
# on \s and \d. Where a bound is no regex (a count <= 1e10 spelled "1e10" or "9,999,999,999"),
# the pattern states part of what is accepted, the usual spellings: all it matches is accepted.

_WS = r"\t-\r\x1c-\x20\x85\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000"
_W, _NW = f"[{_WS}]", f"[^{_WS}]"


def _text_pattern(max_chars: int, required: bool) -> str:
    """Any text of at most `max_chars` characters once stripped (at least one if required)."""
    core = f"{_NW}(?:[\\s\\S]{{0,{max_chars - 2}}}{_NW})?"
    return f"^{_W}*{core}{_W}*$" if required else f"^{_W}*(?:{core})?{_W}*$"


def _digits(most: int, junk: str) -> str:
    """1..`most` digits, each maybe followed by one `junk` character."""
    return f"(?:[0-9]{junk}?){{1,{most}}}"


def _count_pattern(junk: str, sign: bool, whole: str, up: str, fraction_digits: int = 4) -> str:
    """A number >= 0 as lib.values reads a count or a price: `junk` (a character class: the
    commas, "$", "+" and spaces it removes) may follow each character; `whole` bounds the
    integer digits after up to 20 leading zeros (and so the value), `up` the exponent of one
    digit ("4.5e6"); other exponents go down; a "+" sign if `sign`; "-" only before a zero
    (with any exponent). At most 63 characters once stripped: the validators take 64."""
    j = f"{junk}?"
    digits = f"(?:[0-9]{j}){{0,{fraction_digits}}}"
    down = f"(?:[eE]{j}(?:-{j}(?:[0-9]{j}){{1,3}}|(?:\\+{j})?(?:0{j}){{1,3}}))?"
    plain = f"(?:0{{0,20}}{whole}(?:\\.{j}{digits})?|\\.{j}[0-9]{j}{digits}){down}"
    science = f"[0-9]{j}(?:\\.{j}{digits})?[eE]{j}(?:\\+{j})?0?{j}{up}{j}"
    zero = (
        f"(?:0{{1,20}}{j}(?:\\.{j}0{{0,20}}{j})?|\\.{j}0{{1,20}}{j})"
        f"(?:[eE]{j}[-+]?{j}(?:[0-9]{j}){{1,3}})?"
    )
    signs = "[-+]" if sign else "-"
    positive = f"(?:\\+{j})?(?:{plain}|{science})" if sign else f"(?:{plain}|{science})"
    return f"^{_W}*{junk}?(?:{positive}|(?:{signs}{j})?{zero}){_W}*$"


_REVIEWS_JUNK, _INSTALLS_JUNK, _PRICE_JUNK = f"[,{_WS}]", f"[,+{_WS}]", f"[$,{_WS}]"
REVIEWS_PATTERN = _count_pattern(_REVIEWS_JUNK, True, _digits(10, _REVIEWS_JUNK), "[0-9]")
INSTALLS_PATTERN = _count_pattern(
    _INSTALLS_JUNK, False, _digits(11, _INSTALLS_JUNK), "(?:[0-9]|10)"
)  # < 1e11
PRICE_PATTERN = _count_pattern(
    _PRICE_JUNK,
    True,
    f"(?:[0-4]{_PRICE_JUNK}?(?:[0-9]{_PRICE_JUNK}?){{3}}|{_digits(3, _PRICE_JUNK)})",  # < 5000
    "[0-2]",
)


def _any_case(text: str) -> str:
    return "".join(f"[{c.upper()}{c}]" if c.isalpha() else c for c in text)


def _size_number(most: int) -> str:
    return f"(?:,{{0,2}}0{{0,20}}{_digits(most, ',')}(?:\\.[0-9]{{1,8}})?|\\.[0-9]{{1,8}})"


_MISSING = "|".join(sorted(values.MISSING - {""}, key=len, reverse=True))
_UNIT_SPACE = r"[\t-\r ]{0,2}"  # (lib.values' size grammar is ASCII)
SIZE_PATTERN = (
    f"^{_W}*(?:,{{0,2}}(?:{_MISSING})?,{{0,2}}|{_any_case(values.VARIES)}"
    f"|(?:{_size_number(5)}{_UNIT_SPACE}[mM]?|{_size_number(8)}{_UNIT_SPACE}[kK]"
    f"|{_size_number(2)}{_UNIT_SPACE}[gG])[bB]?){_W}*$"
)  # < 100,000 MB: 99999M, 99999999k, 99G

_MONTHS_31 = ("january", "march", "may", "july", "august", "october", "december")
_MONTHS_30 = ("april", "june", "september", "november")


def _months(names: tuple[str, ...]) -> str:
    """Full month names or their first three letters, in any case."""
    spelled = [_any_case(n[:3]) + (f"(?:{_any_case(n[3:])})?" if n[3:] else "") for n in names]
    return "(?:" + "|".join(spelled) + ")"


_YEAR = "(?:1[7-9][0-9]{2}|2[01][0-9]{2}|22[0-5][0-9]|226[01])"  # in 1677-09-22..2262-04-11
_DAY_28 = "(?:0?[1-9]|1[0-9]|2[0-8])"
_DAY_30 = "(?:0?[1-9]|[12][0-9]|30)"
_DAY_31 = "(?:0?[1-9]|[12][0-9]|3[01])"
_ISO_DATE = (
    f"{_YEAR}-(?:(?:0?[13578]|1[02])-{_DAY_31}|(?:0?[469]|11)-{_DAY_30}|0?2-{_DAY_28})"
    "(?:[ T](?:[01]?[0-9]|2[0-3]):[0-5][0-9](?::[0-5][0-9](?:\\.[0-9]{1,20})?)?)?"
)
_SEP = f"[,\\-{_WS}]"
_WORD_DATE = (
    f"{_SEP}{{0,2}}(?:{_months(_MONTHS_31)}{_SEP}{{1,3}}{_DAY_31}"
    f"|{_months(_MONTHS_30)}{_SEP}{{1,3}}{_DAY_30}|{_months(('february',))}{_SEP}{{1,3}}{_DAY_28})"
    f"{_SEP}{{1,3}}{_YEAR}{_SEP}{{0,2}}"
)
DATE_PATTERN = f"^{_W}*(?:{_ISO_DATE}|{_WORD_DATE}){_W}*$"  # (no February 29: not every year)
TYPE_PATTERN = f"^{_W}*(?:{_any_case('free')}|{_any_case('paid')}){_W}*$"


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


def _number_or_text(limit: float, pattern: str) -> dict[str, Any]:
    number = {"type": "number", "minimum": 0, "maximum": limit}
    return {"anyOf": [number, {"type": "string", "pattern": pattern}]}


def _listing_text(raw: str, clean: str, max_chars: int, description: str) -> Any:
    """An optional listing text (content rating, name...): null is "", as the reader has it."""

    def check(value: Any) -> str:
        return "" if value is None else _str(value, "a string or null", max_chars)

    text = {"type": "string", "pattern": _text_pattern(max_chars, required=False)}
    schema = {"anyOf": [text, {"type": "null"}]}
    return _app_field(str, raw, (clean,), check, schema, description)


_SIZE_SCHEMA = {"anyOf": [*_number_or_text(MAX_SIZE_MB, SIZE_PATTERN)["anyOf"], {"type": "null"}]}

Category = _app_field(str, "Category", ("category",), _required_text,
                      {"type": "string", "pattern": _text_pattern(MAX_LABEL_CHARS, required=True)},
                      "e.g. GAME")  # fmt: skip
ContentRating = _listing_text("Content Rating", "content_rating", MAX_LABEL_CHARS, "e.g. Everyone")
AppType = _app_field(str, "Type", ("type",), _free_or_paid,
                     {"type": "string", "pattern": TYPE_PATTERN},
                     '"Free" or "Paid", in any case')  # fmt: skip
Reviews = _app_field(float, "Reviews", ("reviews",),
                     _count(values.reviews, values.HINT_REVIEWS, MAX_REVIEWS),
                     _number_or_text(MAX_REVIEWS, REVIEWS_PATTERN),
                     'a count, e.g. 159 or "1,234"')  # fmt: skip
Installs = _app_field(float, "Installs", ("installs",),
                      _count(values.installs, values.HINT_INSTALLS, MAX_INSTALLS),
                      _number_or_text(MAX_INSTALLS, INSTALLS_PATTERN),
                      'a count, e.g. "10,000+"')  # fmt: skip
SizeMB = _app_field(float, "Size", ("size_mb", "size"), _size, _SIZE_SCHEMA,
                    'MB: 19.0, "19M", "201k" or "Varies with device"')  # fmt: skip
Price = _app_field(float, "Price", ("price",), _count(values.price, values.HINT_PRICE, MAX_PRICE),
                   _number_or_text(MAX_PRICE, PRICE_PATTERN), 'e.g. 0 or "$4.99"')  # fmt: skip
LastUpdated = _app_field(float, "Last Updated", ("last_updated",), _days,
                         {"type": "string", "pattern": DATE_PATTERN},
                         'e.g. "January 7, 2018" or "2018-01-07"')  # fmt: skip
Name = _listing_text("App", "app", 200, "the listing's name")
Genres = _listing_text("Genres", "genres", 100, 'e.g. "Action;Adventure"')
CurrentVer = _listing_text("Current Ver", "current_ver", 100, 'e.g. "1.2.3"')
AndroidVer = _listing_text("Android Ver", "android_ver", 100, 'e.g. "4.0.3 and up"')


# ------------------------------------------------------------------------------ request ids

REQUEST_ID = re.compile(REQUEST_ID_PATTERN)
MAX_INTEGER_ID = 2**53 - 1  # an id sent as a JSON number: one every JSON reader keeps exact
REQUEST_ID_RULE = f"1..128 characters of A-Z a-z 0-9 . _ : -, or an integer 0..{MAX_INTEGER_ID}"
# an id /feedback can name: a request's id, or "<request id>-<index>" for an item of a batch
FEEDBACK_ID_MAX = 128 + 1 + len(str(MAX_INSTANCES - 1))
FEEDBACK_ID_PATTERN = rf"[A-Za-z0-9._:-]{{1,{FEEDBACK_ID_MAX}}}"
_FEEDBACK_ID = re.compile(FEEDBACK_ID_PATTERN)
# the same rules for /openapi.json: blank is no id; in a header, only what HTTP lets through
_HEADER_WS = r"[\t \x85\xa0]"
REQUEST_ID_SCHEMA_PATTERN = f"^{_W}*(?:{REQUEST_ID_PATTERN}{_W}*)?$"
REQUEST_ID_HEADER_PATTERN = f"^{_HEADER_WS}*(?:{REQUEST_ID_PATTERN}{_HEADER_WS}*)?$"
FEEDBACK_ID_SCHEMA_PATTERN = f"^{_W}*{FEEDBACK_ID_PATTERN}{_W}*$"
VERSION_SCHEMA_PATTERN = f"^{_W}*[1-9][0-9]{{0,9}}{_W}*$"


def blank(value: Any) -> bool:
    """No id: null, or a string of whitespace (an empty X-Request-ID header)."""
    return value is None or (isinstance(value, str) and not value.strip())


def request_id_text(value: Any) -> str | None:
    """A caller's request id as text (an integer is its digits); None when it breaks the rule.

    ASCII only: the id goes back in the X-Request-ID header (Latin-1 at most) and to the store.
    """
    if isinstance(value, float) and value.is_integer():
        value = int(value)  # JSON 7.0 is the integer 7 (JSON Schema agrees)
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value) if 0 <= value <= MAX_INTEGER_ID else None
    if not isinstance(value, str):
        return None
    value = value.strip()
    return value if REQUEST_ID.fullmatch(value) else None


# ------------------------------------------------------------------------------ feedback


def feedback_id(value: Any) -> str:
    if not isinstance(value, str) or not value.strip():
        raise bad(f"expected a non-empty string, got {show(value)}")
    text = value.strip()
    if _FEEDBACK_ID.fullmatch(text) is None:
        raise bad(f"{show(text)} is not a request id ({REQUEST_ID_RULE}, and '-<index>' for an "
                  "item of a batch)")  # fmt: skip
    return text


# ------------------------------------------------------------------------------ admin

_VERSION = re.compile(r"[1-9][0-9]{0,9}", re.ASCII)


def version(value: Any) -> str | None:
    """A registered version number ("4" or 4); an alias like "latest" is not resolved: refused."""
    if value is None:
        return None
    if isinstance(value, float) and value.is_integer():
        value = int(value)  # JSON 4.0 is the integer 4 (JSON Schema agrees)
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        raise bad(f'expected a version like "4" or null, got {show(value)}')
    text = str(value).strip()
    if not text:
        raise bad("empty")
    if _VERSION.fullmatch(text) is None:
        raise bad(f'{show(value)} is not a version number like "4" (name the registered version, '
                  "not an alias)")  # fmt: skip
    return text
