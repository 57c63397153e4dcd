"""Cursor paging: a cursor resumes strictly after the last item, and anything that is not a
cursor handed out by the list is a 422 naming the field."""

from __future__ import annotations

import pytest

from app.errors import InvalidInput
from app.schemas.paging import decode_cursor, encode_cursor, page_of


def test_pages_walk_every_row_once() -> None:
    rows = list(range(1, 24))
    seen: list[int] = []
    cursor: str | None = None
    while True:
        after = decode_cursor(cursor, arity=1)
        start = 0 if after is None else rows.index(int(after[0])) + 1
        page, cursor = page_of(rows[start : start + 6], limit=5, key=lambda row: (row,))
        seen.extend(page)
        if cursor is None:
            break
    assert seen == rows


def test_a_full_last_page_has_no_next_cursor() -> None:
    page, cursor = page_of([1, 2, 3], limit=3, key=lambda row: (row,))
    assert page == [1, 2, 3]
    assert cursor is None


def test_a_cursor_round_trips_a_compound_key() -> None:
    cursor = encode_cursor((1_700_000_000_000_000, "abc", 7))
    assert decode_cursor(cursor, arity=3) == (1_700_000_000_000_000, "abc", 7)
    assert decode_cursor(None, arity=3) is None


@pytest.mark.parametrize(
    "cursor", ["not a cursor", "!!!", encode_cursor((1, 2)), "W3RydWVd", "e30"]
)
def test_anything_else_is_refused_naming_the_field(cursor: str) -> None:
    with pytest.raises(InvalidInput) as caught:
        decode_cursor(cursor, arity=1)
    assert caught.value.field == "cursor"
    assert "next_cursor" in str(caught.value)
