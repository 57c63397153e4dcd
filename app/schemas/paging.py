"""Cursor paging, the same on every list endpoint.

A list answers `{"<items>": [...], "next_cursor": str | null}`. The cursor is opaque to the
client: the sort key of the last item it received, so that the next page starts strictly after
it (keyset paging: no skipped or repeated items when rows are added meanwhile, and no OFFSET
scans). `null` means there is nothing more.

Usage in a service function::

    after = decode_cursor(cursor, arity=1)           # None on the first page
    rows = query.where(Alarm.id > after[0]) ... .limit(limit + 1)
    return page_of(rows, limit=limit, key=lambda row: (row.id,))
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Callable, Sequence
from typing import Annotated, TypeVar

import orjson
from fastapi import Query

from app.errors import InvalidInput

T = TypeVar("T")
Key = tuple[int | str, ...]

DEFAULT_LIMIT = 100
MAX_LIMIT = 1000

LimitQuery = Annotated[
    int, Query(ge=1, le=MAX_LIMIT, description=f"Items per page, at most {MAX_LIMIT}.")
]
CursorQuery = Annotated[
    str | None,
    Query(
        max_length=512,
        description="`next_cursor` of the previous page; absent for the first page.",
    ),
]


def encode_cursor(key: Key) -> str:
    """The cursor that resumes after the item whose sort key is `key`."""
    return base64.urlsafe_b64encode(orjson.dumps(list(key))).decode().rstrip("=")


def decode_cursor(cursor: str | None, *, arity: int, field: str = "cursor") -> Key | None:
    """The sort key a cursor resumes after, or None for no cursor; 422 for anything that is not
    a cursor this endpoint handed out."""
    if cursor is None or cursor == "":
        return None
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        key = orjson.loads(raw)
    except (ValueError, binascii.Error, orjson.JSONDecodeError):
        key = None
    if (
        not isinstance(key, list)
        or len(key) != arity
        or not all(isinstance(part, int | str) and not isinstance(part, bool) for part in key)
    ):
        raise InvalidInput(
            "is not a cursor of this list; pass `next_cursor` from the previous page as it is",
            field=field,
        )
    return tuple(key)


def page_of(
    rows: Sequence[T], *, limit: int, key: Callable[[T], Key]
) -> tuple[list[T], str | None]:
    """The first `limit` rows and the cursor after them, from a query that fetched `limit + 1`
    rows (the extra one says whether a next page exists)."""
    items = list(rows[:limit])
    if len(rows) <= limit or not items:
        return items, None
    return items, encode_cursor(key(items[-1]))
