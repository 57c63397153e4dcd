"""Types shared by the request and response schemas: names, class kinds and timestamps.

Timestamps travel as ISO-8601 strings or epoch seconds and are kept as integer microseconds
since the Unix epoch (UTC), the unit of the database (see app/db/models.py). Every response
gives them in one form: RFC 3339 in UTC with `Z`, with microseconds only when there are
any (`2026-11-22T08:00:00Z`, `2026-11-22T08:00:00.250000Z`).
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any, Final, Literal

import numpy as np
from fastapi import Path
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    PlainSerializer,
    PlainValidator,
    StringConstraints,
    WithJsonSchema,
)

from app.db.models import BUILTIN_CLASSES_KINDS
from models import FALSE_NEGATIVE, FALSE_POSITIVE

SLUG_PATTERN: Final = r"^[A-Za-z0-9._-]{1,100}$"
"""Names of series and classes: letters, digits, `-`, `_` and `.`, 1 to 100 characters."""

Slug = Annotated[str, StringConstraints(pattern=SLUG_PATTERN)]

ClassKind = Literal["normal", "anomaly"]


class ProblemError(BaseModel):
    """One thing wrong with the request, and where."""

    loc: list[str] = Field(
        description='Where: `["body", "windows", "3"]`, `["query", "limit"]`, `["series_id"]`.'
    )
    msg: str = Field(description="What is wrong there.")
    type: str | None = Field(default=None, description="A machine-readable kind of error.")


class ProblemDetails(BaseModel):
    """An RFC 9457 problem document: every error Vigil returns has this shape."""

    model_config = ConfigDict(title="ProblemDetails")

    type: str = Field(default="about:blank", description="A URI naming the kind of problem.")
    title: str = Field(description="A short summary of the kind of problem.")
    status: int = Field(ge=400, le=599, description="The HTTP status code.")
    detail: str = Field(description="What went wrong with this request, naming the field.")
    instance: str | None = Field(default=None, description="The path of the request.")
    errors: list[ProblemError] | None = Field(
        default=None, description="Each invalid field, when there are any to name."
    )


RETRY_AFTER_HEADER: Final[dict[str, Any]] = {
    "Retry-After": {
        "description": "Seconds to wait before retrying.",
        "required": True,
        "schema": {"type": "integer", "minimum": 0},
    }
}

AUTH_RESPONSES: Final[dict[int | str, dict[str, Any]]] = {
    401: {
        "description": "Missing, malformed, unknown, revoked or expired API key",
        "headers": {
            "WWW-Authenticate": {
                "description": "`Bearer`: send `Authorization: Bearer <key>`.",
                "required": True,
                "schema": {"type": "string"},
            }
        },
    },
    403: {
        "description": (
            "The API key lacks the scope this operation needs, or is restricted to other series"
        )
    },
    429: {
        "description": "Over the per-key limit (`VIGIL_RATE_LIMIT_PER_MINUTE`, off by default)",
        "headers": RETRY_AFTER_HEADER,
    },
    503: {
        "description": (
            "The database is unavailable, or busy (`busy, retry`: the request did not get a "
            "connection or a row lock in time and changed nothing); retry after Retry-After"
        ),
        "headers": RETRY_AFTER_HEADER,
    },
}
"""OpenAPI responses every authenticated operation can give (each a problem document)."""

BODY_RESPONSES: Final[dict[int | str, dict[str, Any]]] = {
    413: {
        "description": "The body is over `VIGIL_MAX_BODY_BYTES` (refused before it is read whole)"
    },
    415: {"description": "The body's content type is not one the operation reads"},
    422: {"description": "Invalid input: `detail` names the field, `errors` lists each one"},
}
"""OpenAPI responses every operation with a request body can give (each a problem document)."""

IDEMPOTENCY_KEY_PATTERN: Final = '^(?:"[ -~]{1,253}"|[!#-~](?:[ -~]{0,253}[!-~])?)$'
"""An Idempotency-Key: 1 to 255 printable ASCII characters that neither start nor end with a
space (HTTP trims them) nor start with a quote, or the draft's structured-field string: the
same in quotes, which are not part of the key (`""` is an empty key)."""

IDEMPOTENCY_KEY_PARAMETER: Final[dict[str, Any]] = {
    "name": "Idempotency-Key",
    "in": "header",
    "required": False,
    "description": (
        "Makes a retry safe (IETF httpapi idempotency-key draft): a repeat returns the first "
        "response with `Idempotent-Replayed: true` for 24 h (once the API key is checked and "
        "counted, as for any request); the same key with a different request gives 422, and a "
        "repeat while the first is in flight gives 409. A key whose request died (server "
        "killed, database lost) is free again within seconds, and the operation is performed "
        "once: never again if it committed."
    ),
    "schema": {
        "type": "string",
        "minLength": 1,
        "maxLength": 255,
        "pattern": IDEMPOTENCY_KEY_PATTERN,
    },
}

IDEMPOTENCY_RESPONSES: Final[dict[int | str, dict[str, Any]]] = {
    400: {
        "description": (
            "The Idempotency-Key header is empty, longer than 255 characters, or not printable "
            "ASCII (a leading quote only as the draft's quoted string)"
        )
    },
    409: {
        "description": (
            "A request with this Idempotency-Key is still in flight (retry after `Retry-After`), "
            "or it completed but the server stopped before recording its response"
        )
    },
}

MAX_DB_ID: Final = 2**31 - 1
"""Primary keys are 32-bit: larger ids cannot exist, and Postgres would refuse to compare them."""

DbId = Annotated[int, Field(ge=1, le=MAX_DB_ID)]
SeriesIdPath = Annotated[int, Path(ge=1, le=MAX_DB_ID, description="The series' id.")]
LabelIdPath = Annotated[int, Path(ge=1, le=MAX_DB_ID, description="The label's id.")]
JobIdPath = Annotated[int, Path(ge=1, le=MAX_DB_ID, description="The training job's id.")]
VersionPath = Annotated[int, Path(ge=1, le=MAX_DB_ID, description="The model version number.")]

_CONTROL = frozenset(chr(c) for c in [*range(0x20), 0x7F])
_LINE_BREAKS_AND_TABS = frozenset("\t\n\r")


def _encodable(value: str) -> None:
    # NOTE: JSON escapes such as "\ud800" decode to lone surrogates, which no database can store.
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError("must be valid Unicode text (it holds a lone surrogate)") from None


def _no_control_characters(value: str) -> str:
    if _CONTROL.intersection(value):
        raise ValueError("must not contain control characters")
    _encodable(value)
    return value


def _text_characters(value: str) -> str:
    if (_CONTROL - _LINE_BREAKS_AND_TABS).intersection(value):
        raise ValueError("must not contain control characters other than tabs and line breaks")
    _encodable(value)
    return value


Line = Annotated[str, AfterValidator(_no_control_characters)]
"""One line of printable text (stored as text: Postgres refuses NUL characters)."""

Text = Annotated[str, AfterValidator(_text_characters)]
"""Free text: printable characters, tabs and line breaks."""

BUILTIN_CLASSES: Final[Mapping[str, str]] = BUILTIN_CLASSES_KINDS
"""Classes every series has (name -> kind). The feedback classes carry the kind of what the
window really is: false_positive is normal, false_negative is an anomaly."""

FEEDBACK_CLASSES: Final = frozenset({FALSE_POSITIVE, FALSE_NEGATIVE})

EPOCH: Final = datetime(1970, 1, 1, tzinfo=UTC)
ONE_MICROSECOND: Final = timedelta(microseconds=1)
MIN_YEAR: Final = 1970
MAX_YEAR: Final = 2200
MIN_TIMESTAMP_US: Final = 0
MAX_TIMESTAMP_US: Final = (datetime(MAX_YEAR + 1, 1, 1, tzinfo=UTC) - EPOCH) // ONE_MICROSECOND
"""Exclusive upper bound: the first microsecond of the year after MAX_YEAR."""
MAX_EPOCH_SECONDS: Final = MAX_TIMESTAMP_US // 1_000_000
RANGE_TEXT: Final = f"must lie in the years {MIN_YEAR} to {MAX_YEAR} (UTC)"

_TIME_OF_DAY: Final = (
    r"-[0-9]{2}-[0-9]{2}[T ][0-9]{2}:[0-9]{2}:[0-9]{2}(\.[0-9]{1,9})?(Z|[+-][0-9]{2}:[0-9]{2})?"
)
DATE_TIME_PATTERN: Final = "^(19[7-9][0-9]|2[01][0-9]{2}|2200)" + _TIME_OF_DAY + "$"
"""What the server reads as a date-time, years 1970 to 2200 (as openapi.json gives it):
RFC 3339's `2026-11-22T08:00:00Z`, with `T` or a space, an optional fraction of up to nine
digits, and an optional offset (none means UTC)."""
DATE_TIME = re.compile("[0-9]{4}" + _TIME_OF_DAY)
"""The same grammar for any year, so that a year out of range is named as such."""

TIMESTAMP_JSON_SCHEMA: Final[dict[str, Any]] = {
    "anyOf": [
        {"type": "string", "pattern": DATE_TIME_PATTERN},
        {"type": "number", "minimum": 0, "exclusiveMaximum": MAX_EPOCH_SECONDS},
    ],
    "description": (
        "An RFC 3339 date-time such as `2026-11-22T08:00:00Z` (`T` or a space; UTC when it "
        "has no offset) or epoch seconds; years "
        f"{MIN_YEAR} to {MAX_YEAR} (UTC). CSV cells and strings of digits are epoch seconds."
    ),
}

ISO_HINT = re.compile(r"[0-9]{4}-")
"""How a date-time starts; other strings are read as epoch seconds."""


class TimestampError(ValueError):
    """A timestamp that cannot be read or lies out of range; the message says which."""


def seconds_to_us(value: float) -> int:
    """Epoch seconds (int or float, not bool) -> microseconds, checked against the range."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TimestampError("must be an ISO-8601 string or a number of epoch seconds")
    if isinstance(value, float) and not math.isfinite(value):
        raise TimestampError("must be a finite number of epoch seconds")
    if not 0 <= value < MAX_EPOCH_SECONDS:
        if isinstance(value, int) and not -(10**30) < value < 10**30:
            digits = round(value.bit_length() * math.log10(2))
            raise TimestampError(f"a number of about {digits} digits: epoch seconds {RANGE_TEXT}")
        raise TimestampError(f"{value!r} epoch seconds {RANGE_TEXT}")
    if isinstance(value, int):
        return value * 1_000_000
    return round(value * 1_000_000)


def iso_to_us(value: str) -> int:
    """A date-time of `DATE_TIME`'s grammar -> microseconds; no offset means UTC.

    NOTE: datetime.fromisoformat alone also reads week dates (2026-W01-1), the basic format
    (20261122T080000), an hour alone, comma fractions and offsets without a colon.
    """
    text = value
    try:
        if DATE_TIME.fullmatch(text) is None:
            raise ValueError
        parsed = datetime.fromisoformat(text)  # refuses month 13 or February 30
    except ValueError:
        shown = value if len(value) <= 40 else value[:37] + "..."
        raise TimestampError(f"{shown!r} is not an ISO-8601 date-time") from None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    # NOTE: subtracting aware datetimes cannot overflow, unlike astimezone() near year 1 or 9999.
    us = (parsed - EPOCH) // ONE_MICROSECOND
    if not MIN_TIMESTAMP_US <= us < MAX_TIMESTAMP_US:
        raise TimestampError(f"{text!r} {RANGE_TEXT}")
    return us


def is_decimal_text(value: str) -> bool:
    """Whether float() of `value` reads what the documentation calls a number.

    NOTE: float() also takes digit-group underscores (`1_5` is 15) and digits of any script
    (Arabic-Indic `١٢` is 12): only ASCII without underscores is a number here.
    """
    return value.isascii() and "_" not in value


def to_us(value: object) -> int:
    """An ISO-8601 string or epoch seconds -> microseconds since the epoch (UTC)."""
    if isinstance(value, str):
        if not ISO_HINT.match(value):
            # Numbers in strings (CSV cells) are epoch seconds; anything else is ISO or wrong.
            try:
                if not is_decimal_text(value):
                    raise ValueError
                number = float(value)
            except ValueError:
                return iso_to_us(value)
            return seconds_to_us(int(number) if number.is_integer() else number)
        return iso_to_us(value)
    if isinstance(value, int | float) and not isinstance(value, bool):
        return seconds_to_us(value)
    raise TimestampError("must be an ISO-8601 string or a number of epoch seconds")


def is_naive_iso(value: object) -> bool:
    """True for an ISO-8601 date or date-time string without a UTC offset (taken as UTC)."""
    if not isinstance(value, str) or not ISO_HINT.match(value):
        return False
    try:
        return datetime.fromisoformat(value.strip()).tzinfo is None
    except ValueError:
        return False


def naive_warning(subject: str, *, plural: bool) -> str:
    """The warning for timestamps given without a UTC offset."""
    were, them = ("were", "them") if plural else ("was", "it")
    return (
        f"{subject} had no UTC offset and {were} taken as UTC; end {them} with Z (or an "
        "offset such as +01:00) to say which time is meant"
    )


def us_to_datetime(us: int) -> datetime:
    """Microseconds since the epoch -> an aware UTC datetime (exact)."""
    return EPOCH + timedelta(microseconds=us)


def rfc3339(value: datetime) -> str:
    """An aware datetime in the responses' one form: RFC 3339, UTC, `Z`."""
    utc = value.astimezone(UTC)
    text = utc.strftime("%Y-%m-%dT%H:%M:%S")
    return f"{text}.{utc.microsecond:06d}Z" if utc.microsecond else f"{text}Z"


def format_us(us: int) -> str:
    """Microseconds since the epoch in the responses' one form (see `rfc3339`)."""
    return rfc3339(us_to_datetime(us))


def format_us_array(us: np.ndarray) -> list[str]:
    """`format_us` of each element of an int64 array, vectorised (10^5 timestamps per read)."""
    full = np.datetime_as_string(us.astype("datetime64[us]"), unit="us", timezone="UTC")
    whole = us % 1_000_000 == 0
    if whole.any():
        full = np.where(whole, np.char.add(full.astype("<U19"), "Z"), full)
    out: list[str] = full.tolist()
    return out


UtcDateTime = Annotated[
    datetime,
    PlainSerializer(rfc3339, return_type=str, when_used="json-unless-none"),
    WithJsonSchema({"type": "string", "format": "date-time"}),
]
"""A response field holding an instant, serialised by `rfc3339`."""


def _validate_timestamp(value: object) -> int:
    return to_us(value)


TimestampUs = Annotated[
    int, PlainValidator(_validate_timestamp), WithJsonSchema(TIMESTAMP_JSON_SCHEMA)
]
"""A request field holding an ISO-8601 string or epoch seconds, validated to microseconds."""
