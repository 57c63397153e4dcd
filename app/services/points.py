"""Points: parsing ingestion bodies into arrays, the bulk upsert, and reading points back.

A batch is validated completely before anything is written, and written in one transaction:
a rejected batch leaves the series as it was. Bodies of 10^5 rows are parsed with orjson
and numpy in a handful of vectorised passes; the slow, row-by-row walk only runs to name
the first bad row of a batch that has already failed.

Big bodies (over `BULK_SLICE_BYTES`, 256 KiB) are parsed in slices of about that size, each turned
into its rows of one preallocated float64 matrix and dropped, and written in parts: the
Python objects of a whole 50 MiB body (a list of lists of floats, about 100 bytes a value)
would take ten times the body's size, and each vectorised pass over all of it would hold the
GIL for a second, stalling every other request of the process. Slicing never changes what a
body means: a body that a slice cannot take (its shape is unusual, or something in it is
invalid) is parsed whole again by the same code as a small body, which names the error.
Big bodies are not held whole in memory either: they are spooled to a temporary file as they
arrive (`received_body`) and each slice is read from there. They also take turns
(`BulkTurns`, VIGIL_BULK_CONCURRENCY).

Upserts are keyed on (series, timestamp). Within one batch the last row of a repeated
timestamp wins, so `inserted + updated + unchanged` counts distinct timestamps while
`received` counts rows. A stored row whose values are the same is not written again.

Missing values: JSON `null` and an empty (or blank) CSV cell are stored as NaN and read back
as `null`. Nothing else is: strings, booleans, infinities, and the text `NaN` or `null` in a
CSV cell are refused with a 422 naming the cell, so that a typo never becomes a silent gap.
Points are keyed by timestamp, so late and out-of-order batches take their place in time.
"""

from __future__ import annotations

import asyncio
import csv
import gc
import io
import itertools
import logging
import os
import re
import sqlite3
import struct
import tempfile
from collections import Counter
from collections.abc import AsyncIterable, AsyncIterator, Callable, Iterator, Sequence
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass
from datetime import datetime
from typing import IO, Any, Final

import numpy as np
import orjson
import psycopg
from sqlalchemy import select
from sqlalchemy.orm import Session

from app.db.base import utcnow
from app.db.models import Point, Series
from app.detection.marks import PG_MARK_WRITTEN, mark_written
from app.errors import (
    InvalidInput,
    PayloadTooLarge,
    ServiceBusy,
    ServiceUnavailable,
    UnsupportedMediaType,
    busy_error,
)
from app.metrics import POINTS_INGESTED, NewestPoints
from app.schemas.common import (
    DATE_TIME,
    EPOCH,
    ISO_HINT,
    MAX_EPOCH_SECONDS,
    MAX_TIMESTAMP_US,
    MIN_TIMESTAMP_US,
    ONE_MICROSECOND,
    TimestampError,
    format_us_array,
    is_decimal_text,
    is_naive_iso,
    naive_warning,
    to_us,
)
from app.schemas.paging import decode_cursor, page_of
from app.schemas.points import IngestResult
from app.services.series import get_series

log = logging.getLogger(__name__)

JSON_MEDIA_TYPE: Final = "application/json"
CSV_MEDIA_TYPE: Final = "text/csv"
TIME_COLUMN: Final = "timestamp"

Int64Array = np.ndarray[Any, np.dtype[np.int64]]
Float64Array = np.ndarray[Any, np.dtype[np.float64]]

BULK_SLICE_BYTES: Final = 256 << 10
"""Bodies larger than this are parsed a slice of about this size at a time (JSON rows, CSV
lines), and written `WRITE_PART_BYTES` of rows at a time: each step holds the GIL for a few
milliseconds, so that the event loop and other requests get their turns in between."""
WRITE_PART_BYTES: Final = 1 << 20
SCAN_BYTES: Final = 1 << 20
"""The most of a spooled body read at once to search it."""


class SpooledBody:
    """A request body in a temporary file, with the part of `bytes`' interface that the slice
    parsers use (len, slicing, find, rfind, count): each call reads only the ranges it needs.

    NOTE: a big body held whole in memory costs its size once more on top of its float64
    matrix (twice the size of its text); in a file it costs page cache, which the kernel can
    reclaim. Reads go through `os.pread`, not a memory map, whose pages would count in the
    process's memory once touched.
    """

    def __init__(self, file: IO[bytes]) -> None:
        self._fd = file.fileno()
        self._size = os.fstat(self._fd).st_size

    def __len__(self) -> int:
        return self._size

    def __getitem__(self, key: slice) -> bytes:
        start, stop, step = key.indices(self._size)
        if step != 1:
            raise ValueError("a spooled body is read in contiguous ranges only")
        parts = []
        while start < stop:
            part = os.pread(self._fd, stop - start, start)
            if not part:
                break
            parts.append(part)
            start += len(part)
        return b"".join(parts)

    def find(self, sub: bytes, start: int = 0, end: int | None = None) -> int:
        start, end, _ = slice(start, end).indices(self._size)
        window = 4096  # the next `]` or line break is usually near: read little at first
        while start + len(sub) <= end:
            stop = min(start + window, end)
            found = self[start:stop].find(sub)
            if found >= 0:
                return start + found
            if stop == end:
                break
            start = stop - len(sub) + 1  # a match across the cut is in the next window
            window = min(2 * window, SCAN_BYTES)
        return -1

    def rfind(self, sub: bytes, start: int = 0, end: int | None = None) -> int:
        start, end, _ = slice(start, end).indices(self._size)
        window = 4096
        while start + len(sub) <= end:
            begin = max(end - window, start)
            found = self[begin:end].rfind(sub)
            if found >= 0:
                return begin + found
            if begin == start:
                break
            end = begin + len(sub) - 1
            window = min(2 * window, SCAN_BYTES)
        return -1

    def count(self, sub: bytes, start: int = 0, end: int | None = None) -> int:
        """Occurrences of one byte (all that the parsers count)."""
        if len(sub) != 1:
            raise ValueError("a spooled body counts single bytes only")
        start, end, _ = slice(start, end).indices(self._size)
        return sum(
            self[at : min(at + SCAN_BYTES, end)].count(sub) for at in range(start, end, SCAN_BYTES)
        )


RawBody = bytes | SpooledBody
"""An ingestion body as received: in memory, or spooled to a file when big."""


@asynccontextmanager
async def received_body(chunks: AsyncIterable[bytes]) -> AsyncIterator[RawBody]:
    """The body that `chunks` make up, read to its end: in memory up to `BULK_SLICE_BYTES`,
    beyond that spooled to an unnamed temporary file as it arrives (deleted on leaving), so
    that a big body is never held whole. The file is written `WRITE_PART_BYTES` at a time on
    a worker thread: a write that waits for the disk must not stall the event loop.
    """
    held: list[bytes] = []
    held_bytes = 0
    file: IO[bytes] | None = None
    try:
        async for chunk in chunks:
            held.append(chunk)
            held_bytes += len(chunk)
            if file is None and held_bytes > BULK_SLICE_BYTES:
                file = await _spooled(tempfile.TemporaryFile)
            if file is not None and held_bytes >= WRITE_PART_BYTES:
                await _spooled(file.writelines, held)
                held, held_bytes = [], 0
        if file is None:
            yield b"".join(held)
            return
        await _spooled(file.writelines, held)
        await _spooled(file.flush)
        held.clear()
        yield SpooledBody(file)
    finally:
        if file is not None:
            await asyncio.to_thread(file.close)  # frees the file's blocks: may take a while


async def _spooled(write: Callable[..., Any], *args: Any) -> Any:
    """`write(*args)` on a worker thread; a full or failing disk is a 503, not a 500."""
    try:
        return await asyncio.to_thread(write, *args)
    except OSError as exc:
        log.warning("could not spool an ingestion body: %s", exc)
        raise ServiceUnavailable(
            "no room to receive this body on the server; nothing was written, retry shortly"
        ) from exc


class BulkTurns:
    """At most `concurrency` ingestion bodies over `min_bytes` are parsed and written at once
    in this API process; the others wait in order of arrival, each up to `wait_seconds`, and
    are then refused with 503 "busy, retry" (nothing written).

    NOTE: big bodies otherwise all parse at once, each holding several times its size in
    memory, and share the GIL with the event loop: four 50 MiB bodies took an API process
    from 0.3 to 3.7 GiB and stalled /healthz for seconds.
    """

    def __init__(self, *, concurrency: int, wait_seconds: float, min_bytes: int) -> None:
        self.concurrency = concurrency
        self.wait_seconds = wait_seconds
        self.min_bytes = min_bytes
        self._free = asyncio.Semaphore(concurrency)

    @asynccontextmanager
    async def turn(self, body_bytes: int) -> AsyncIterator[None]:
        """Wait for a turn if the body is big; raise ServiceBusy if none comes in time."""
        if body_bytes <= self.min_bytes:
            yield
            return
        try:
            await asyncio.wait_for(self._free.acquire(), self.wait_seconds)
        except TimeoutError:
            raise ServiceBusy(
                f"{self.concurrency} large ingestion "
                f"{'bodies are' if self.concurrency > 1 else 'body is'} being written "
                f"(VIGIL_BULK_CONCURRENCY) and this one waited {self.wait_seconds:g} s for "
                "its turn; nothing was written",
                retry_after=max(1, round(self.wait_seconds)),
            ) from None
        try:
            yield
        finally:
            self._free.release()


@dataclass(frozen=True)
class PointBatch:
    """Validated rows: `ts` (N,) microseconds since the epoch, `values` (N, F) float64."""

    ts: Int64Array
    values: Float64Array
    naive_timestamps: int = 0
    """ISO-8601 timestamps without a UTC offset, taken as UTC."""

    @property
    def received(self) -> int:
        return len(self.ts)


@dataclass(frozen=True)
class PointsPage:
    ts: Int64Array
    values: Float64Array
    next_cursor: str | None = None

    def to_json(self) -> bytes:
        """`{"timestamps": [RFC 3339 UTC, ...], "values": [[...], ...], "next_cursor"}`;
        a missing value (NaN) is null."""
        stamps = format_us_array(self.ts)
        return orjson.dumps(
            {"timestamps": stamps, "values": self.values.tolist(), "next_cursor": self.next_cursor}
        )


# -- the route's entry point ------------------------------------------------------------------
def ingest(
    *,
    session: Session,
    series_id: int,
    body: RawBody,
    content_type: str | None,
    max_rows: int,
    newest: NewestPoints | None = None,
) -> IngestResult:
    """Parse a JSON or CSV body (in memory or spooled) for series `series_id` and upsert it."""
    series = get_series(session=session, series_id=series_id)
    batch = parse_batch(
        body=body, content_type=content_type, channels=series.channels, max_rows=max_rows
    )
    return upsert_points(session=session, series=series, batch=batch, newest=newest)


# -- parsing ----------------------------------------------------------------------------------
def media_type(content_type: str | None) -> str:
    return (content_type or "").split(";", 1)[0].strip().lower()


def parse_batch(
    *, body: RawBody, content_type: str | None, channels: Sequence[str], max_rows: int
) -> PointBatch:
    """The body's batch; a spooled body is read whole only if the slices cannot take it."""
    kind = media_type(content_type)
    if kind == JSON_MEDIA_TYPE:
        with gc_paused():
            if len(body) > BULK_SLICE_BYTES:
                sliced = _json_batch_in_slices(body, channels=channels, max_rows=max_rows)
                if sliced is not None:
                    return sliced
            return parse_json_batch(body[:], channels=channels, max_rows=max_rows)
    if kind == CSV_MEDIA_TYPE:
        with gc_paused():
            if len(body) > BULK_SLICE_BYTES:
                sliced = _csv_batch_in_slices(body, channels=channels, max_rows=max_rows)
                if sliced is not None:
                    return sliced
            return parse_csv_batch(body[:], channels=channels, max_rows=max_rows)
    shown = f"content type {kind!r}" if kind else "a body without a content type"
    raise UnsupportedMediaType(
        f"{shown} is not supported: send {JSON_MEDIA_TYPE} "
        f'({{"timestamps": [...], "values": [[...], ...]}}) or {CSV_MEDIA_TYPE} '
        f"(a header {TIME_COLUMN},<channels>)"
    )


def parse_json_batch(body: bytes, *, channels: Sequence[str], max_rows: int) -> PointBatch:
    if not body.strip():
        raise InvalidInput('the body is empty: send {"timestamps": [...], "values": [[...]]}')
    try:
        payload = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise InvalidInput(f"the body is not valid JSON: {exc}") from None
    if not isinstance(payload, dict):
        raise InvalidInput(
            f'the body must be a JSON object {{"timestamps", "values"}}, not {_json_type(payload)}'
        )
    unknown = sorted(set(payload) - {"timestamps", "values"})
    if unknown:
        raise InvalidInput(
            f"unknown field {_shown(unknown[0])}; only timestamps and values are allowed"
        )
    timestamps = _json_array(payload, "timestamps")
    values = _json_array(payload, "values")
    _check_row_count(max(len(timestamps), len(values)), max_rows)
    if len(values) != len(timestamps):
        raise InvalidInput(
            f"has {_count(len(values), 'row')} but timestamps has "
            f"{_count(len(timestamps), 'entry', 'entries')}; send one row per timestamp",
            field="values",
        )
    matrix = _json_values(values, channels)
    ts, naive = timestamps_and_naive(timestamps, locate=lambda i: f"timestamps[{i}]")
    return PointBatch(ts=ts, values=matrix, naive_timestamps=naive)


# A big JSON body's `values` array: its key, and the characters an array of rows of numbers
# and nulls is made of. NOTE: with no backslash outside that array, no key is escaped, so
# `"values":` matches every spelling of the key, and only a key (a string cannot hold `"`).
_VALUES_KEY: Final = b'"values"'
_NUMBER_ROWS = re.compile(rb"[\[\]0-9.eE+\-,nul \t\r\n]*")
_JSON_SPACE = re.compile(rb"[ \t\r\n]*")


def _json_batch_in_slices(
    body: RawBody, *, channels: Sequence[str], max_rows: int
) -> PointBatch | None:
    """parse_json_batch()'s batch for a valid body, built a slice of `values` rows at a time;
    None (parse it whole) for a body of another shape or with anything invalid in it.

    The body without its `values` array (`[]` in its place) is parsed first: it must be the
    object {"timestamps": [...], "values": []}. Then the array is cut after a row's `]`
    every `BULK_SLICE_BYTES`; each slice, in brackets, must be valid JSON, so the slices'
    rows are exactly the array's rows.
    """
    key = body.find(_VALUES_KEY)
    if key < 0 or body.find(_VALUES_KEY, key + 1) >= 0:  # none, or more than one
        return None
    colon = _after_space(body, key + len(_VALUES_KEY))
    start = _after_space(body, colon + 1)  # the array's `[`
    if body[colon : colon + 1] != b":" or body[start : start + 1] != b"[":
        return None
    end = body.rfind(b"]", start + 1, _end_of_number_rows(body, start))  # the array's `]`
    if end < 0:
        return None
    rest = body[:start] + b"[]" + body[end + 1 :]
    if b"\\" in rest:
        return None
    try:
        payload = orjson.loads(rest)
    except orjson.JSONDecodeError:
        return None
    if (
        not isinstance(payload, dict)
        or set(payload) != {"timestamps", "values"}
        or payload["values"] != []
        or not isinstance(payload["timestamps"], list)
        or not 0 < len(payload["timestamps"]) <= max_rows
    ):
        return None
    timestamps: list[Any] = payload["timestamps"]
    matrix = np.empty((len(timestamps), len(channels)), dtype=np.float64)
    filled = 0
    position = start + 1
    while position < end:
        cut = body.find(b"]", min(position + BULK_SLICE_BYTES, end))
        follows = _after_space(body, cut + 1)
        if cut == end:
            piece, position = body[position:end], end
        elif follows == end:
            piece, position = body[position : cut + 1], end
        elif body[follows : follows + 1] == b"," and _after_space(body, follows + 1) < end:
            piece, position = body[position : cut + 1], follows + 1
        else:  # not a row's end, or a comma before the array's end
            return None
        try:
            rows = orjson.loads(b"[" + piece + b"]")
            if not rows or filled + len(rows) > len(timestamps):
                return None
            matrix[filled : filled + len(rows)] = _json_values(rows, channels)
        except (orjson.JSONDecodeError, InvalidInput):
            return None
        filled += len(rows)
        del rows
    if filled != len(timestamps):
        return None
    ts, naive = timestamps_and_naive(timestamps, locate=lambda i: f"timestamps[{i}]")
    return PointBatch(ts=ts, values=matrix, naive_timestamps=naive)


def _after_space(body: RawBody, position: int) -> int:
    return _end_of_run(_JSON_SPACE, body, position, first=64)


def _end_of_number_rows(body: RawBody, start: int) -> int:
    """Where the run of `_NUMBER_ROWS` characters from `start` ends, matched a slice at a time
    (one regular expression over 50 MiB holds the GIL for a tenth of a second or more)."""
    return _end_of_run(_NUMBER_ROWS, body, start, first=BULK_SLICE_BYTES)


def _end_of_run(characters: re.Pattern[bytes], body: RawBody, position: int, *, first: int) -> int:
    """Where the run of `characters` (a pattern of one character class, repeated) from
    `position` ends, read `first` bytes, then up to `BULK_SLICE_BYTES`, at a time."""
    window = first
    while True:
        piece = body[position : position + window]
        run = characters.match(piece)
        length = run.end() if run else 0
        position += length
        if length < len(piece) or not piece:
            return position
        window = min(2 * window, BULK_SLICE_BYTES)


def _csv_batch_in_slices(
    body: RawBody, *, channels: Sequence[str], max_rows: int
) -> PointBatch | None:
    """parse_csv_batch()'s batch for a valid body, built from slices of whole lines, each
    parsed with the header by parse_csv_batch(); None (parse it whole) for a body with
    quoted cells or a blank first line, or with anything invalid in it.

    NOTE: without quotes a line break always ends a record, and every check of a row is of
    that row alone, so the slices' rows and timestamps are exactly the body's.
    """
    if body.find(b'"') >= 0:
        return None
    header_end = body.find(b"\n") + 1
    if header_end <= 0 or not body[:header_end].strip():
        return None
    header = body[:header_end]
    capacity = min(body.count(b"\n", header_end) + 1, max_rows)
    ts = np.empty(capacity, dtype=np.int64)
    matrix = np.empty((capacity, len(channels)), dtype=np.float64)
    filled = naive = 0
    position = header_end
    while position < len(body):
        cut = body.find(b"\n", position + BULK_SLICE_BYTES) + 1 or len(body)
        piece = body[position:cut]
        position = cut
        if not piece.strip(b"\r\n"):  # blank lines only: the csv reader skips them
            continue
        try:
            part = parse_csv_batch(header + piece, channels=channels, max_rows=max_rows)
        except InvalidInput:
            return None
        if filled + part.received > capacity:
            return None
        ts[filled : filled + part.received] = part.ts
        matrix[filled : filled + part.received] = part.values
        filled += part.received
        naive += part.naive_timestamps
    if filled == 0:
        return None
    return PointBatch(ts=ts[:filled], values=matrix[:filled], naive_timestamps=naive)


@contextmanager
def gc_paused() -> Iterator[None]:
    """Pause the cyclic garbage collector while a large body becomes arrays.

    NOTE: decoding 10^5 rows allocates 10^5 lists, which triggers repeated collections that
    traverse the whole growing structure: it makes parsing 3 to 5 times slower. The lists hold
    no cycles and are freed by reference counting. Concurrent requests can only re-enable
    collection early, never leave it disabled.
    """
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def parse_csv_batch(body: bytes, *, channels: Sequence[str], max_rows: int) -> PointBatch:
    try:
        text = body.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise InvalidInput(f"the CSV body is not UTF-8 text (byte {exc.start})") from None
    reader = csv.reader(io.StringIO(text, newline=""), strict=True)
    records = filter(None, reader)  # blank lines are skipped
    try:
        header = next(records, None)
        header_line = reader.line_num
        rows = list(itertools.islice(records, max_rows + 1))
    except csv.Error as exc:
        raise InvalidInput(f"line {reader.line_num}: malformed CSV ({exc})") from None
    if header is None:
        raise InvalidInput(
            f"the CSV body is empty: send a header {TIME_COLUMN},<channels> and rows"
        )
    order = _csv_column_order(header, channels, line=header_line)
    if not rows:
        raise InvalidInput("the batch is empty: the CSV body has a header but no rows")
    if len(rows) > max_rows:
        raise _too_many_rows(f"more than {max_rows} rows", max_rows)
    line_of = _csv_line_numbers(text, header_line, len(rows), reader.line_num)
    width = len(header)
    if set(map(len, rows)) != {width}:
        index = next(i for i, row in enumerate(rows) if len(row) != width)
        raise InvalidInput(
            f"line {line_of(index)}: has {_count(len(rows[index]), 'field')}; the header has "
            f"{width}"
        )
    cells = [row[1:] for row in rows]
    if not is_decimal_text(_after_line(text, header_line)):
        _name_bad_csv_number(cells, header, line_of)  # or the timestamps are, named below
    empty: np.ndarray | None = None
    try:
        matrix = np.array(cells, dtype=np.float64)
    except ValueError:  # an empty cell (a missing value) or a cell that is not a number
        matrix, empty = _csv_cells_one_by_one(cells, header, line_of)
    matrix = matrix[:, order] if order is not None else matrix
    bad = ~np.isfinite(matrix)
    if empty is not None:
        bad &= ~(empty[:, order] if order is not None else empty)
    if bad.any():
        i, j = (int(k) for k in np.argwhere(bad)[0])
        raise InvalidInput(
            f"line {line_of(i)}, column {channels[j]!r}: "
            f"{_shown(cells[i][_source_column(order, j)])} is not a finite number"
        )
    ts, naive = timestamps_and_naive(
        [row[0] for row in rows], locate=lambda i: f"line {line_of(i)}"
    )
    return PointBatch(ts=ts, values=matrix, naive_timestamps=naive)


def _csv_line_numbers(
    text: str, header_line: int, count: int, last_line: int
) -> Callable[[int], int]:
    """Maps a data row's index to its line number, for error messages.

    When every row took one line (no blank lines, no quoted line breaks) that is arithmetic;
    otherwise the text is read again, which only happens on the way to an error anyway.
    """
    if last_line == header_line + count:
        return lambda index: header_line + 1 + index
    lines: list[int] = []

    def line_of(index: int) -> int:
        if not lines:
            reader = csv.reader(io.StringIO(text, newline=""))
            end_of_previous = 0
            for row in reader:
                if row:
                    lines.append(end_of_previous + 1)  # where the record starts
                end_of_previous = reader.line_num
            del lines[0]  # the header
        return lines[index]

    return line_of


def timestamps_to_us(items: Sequence[object], *, locate: Callable[[int], str]) -> Int64Array:
    """ISO-8601 strings or epoch seconds -> (N,) int64 microseconds, each checked for range."""
    return timestamps_and_naive(items, locate=locate)[0]


def timestamps_and_naive(
    items: Sequence[object], *, locate: Callable[[int], str]
) -> tuple[Int64Array, int]:
    """ISO-8601 strings or epoch seconds -> (N,) int64 microseconds, each checked for range,
    and how many were ISO-8601 without a UTC offset (taken as UTC).

    Numbers take a vectorised path; strings are parsed one by one (C-speed fromisoformat).
    The fast paths never see a string without an offset, so only the element-wise path
    counts them.
    """
    kinds = set(map(type, items))
    if kinds == {str}:
        fast = _strings_to_us(items)
        if fast is not None:
            return fast, 0
    try:
        if kinds <= {int}:
            seconds = np.array(items, dtype=np.int64)
            if not ((seconds >= 0) & (seconds < MAX_EPOCH_SECONDS)).all():
                _raise_first_bad(items, locate)
            return seconds * 1_000_000, 0
        if kinds <= {int, float}:
            floats = np.array(items, dtype=np.float64)
            if not ((floats >= 0) & (floats < MAX_EPOCH_SECONDS)).all():  # NaN fails too
                _raise_first_bad(items, locate)
            # Same rounding as to_us(): round half to even of seconds * 1e6.
            return np.rint(floats * 1_000_000).astype(np.int64), 0
    except OverflowError:
        _raise_first_bad(items, locate)
    out = np.empty(len(items), dtype=np.int64)
    for index, item in enumerate(items):
        try:
            out[index] = to_us(item)
        except TimestampError as exc:
            raise InvalidInput(str(exc), field=locate(index)) from None
    return out, sum(map(is_naive_iso, items))


def _strings_to_us(items: Sequence[Any]) -> Int64Array | None:
    """The common cases in one C-speed pass: all ISO-8601 with an offset, or all epoch seconds.

    Anything else (no offset, padding, a mix, errors, out of range) returns None and takes
    the element-wise path of to_us(), which gives the same result or names the bad element.
    """
    if ISO_HINT.match(items[0]):
        if not all(map(DATE_TIME.fullmatch, items)):  # 0.35 us a row; fromisoformat 0.16
            return None
        parse = datetime.fromisoformat
        try:
            micros = np.array(
                [(parse(item) - EPOCH) // ONE_MICROSECOND for item in items], dtype=np.int64
            )
        except (TypeError, ValueError):  # TypeError: a naive date-time cannot be subtracted
            return None
        if not ((micros >= MIN_TIMESTAMP_US) & (micros < MAX_TIMESTAMP_US)).all():
            return None
        return micros
    if not is_decimal_text("".join(items)):
        return None
    try:
        seconds = np.array(items, dtype=np.float64)  # float() of each string
    except ValueError:
        return None
    if not ((seconds >= 0) & (seconds < MAX_EPOCH_SECONDS)).all():  # NaN and inf fail too
        return None
    return np.rint(seconds * 1_000_000).astype(np.int64)


def _raise_first_bad(items: Sequence[object], locate: Callable[[int], str]) -> None:
    for index, item in enumerate(items):
        try:
            to_us(item)
        except TimestampError as exc:
            raise InvalidInput(str(exc), field=locate(index)) from None
    raise AssertionError("a timestamp failed the vectorised check but passed to_us")


def _check_row_count(rows: int, max_rows: int) -> None:
    if rows == 0:
        raise InvalidInput("the batch is empty: send at least one row", field="timestamps")
    if rows > max_rows:
        raise _too_many_rows(f"{rows} rows", max_rows)


def _too_many_rows(count: str, max_rows: int) -> PayloadTooLarge:
    return PayloadTooLarge(
        f"the batch has {count}; the limit is {max_rows} rows per request "
        "(VIGIL_MAX_POINTS_ROWS): split it into smaller batches"
    )


def _json_array(payload: dict[str, Any], name: str) -> list[Any]:
    if name not in payload:
        raise InvalidInput("is required", field=name)
    value = payload[name]
    if not isinstance(value, list):
        raise InvalidInput(f"must be an array, not {_json_type(value)}", field=name)
    return value


def _json_values(values: list[Any], channels: Sequence[str]) -> Float64Array:
    """Rows of numbers -> (N, F) float64, naming the first bad row and channel on failure."""
    width = len(channels)
    if set(map(type, values)) != {list}:
        index = next(i for i, row in enumerate(values) if not isinstance(row, list))
        raise InvalidInput(
            f"must be an array of {width} numbers (channels {_names(channels)}), not "
            f"{_json_type(values[index])}",
            field=f"values[{index}]",
        )
    if set(map(len, values)) != {width}:
        index = next(i for i, row in enumerate(values) if len(row) != width)
        raise InvalidInput(
            f"has {_count(len(values[index]), 'value')}; the series has "
            f"{_count(width, 'channel')} ({_names(channels)})",
            field=f"values[{index}]",
        )
    # NOTE: bool is a subclass of int and numpy would turn "1.5" into 1.5, so the cell types
    # are checked before numpy converts anything. null is a missing value: numpy makes it NaN.
    if not set(map(type, itertools.chain.from_iterable(values))) <= {float, int, type(None)}:
        for i, row in enumerate(values):
            for j, cell in enumerate(row):
                if type(cell) not in (float, int, type(None)):
                    raise InvalidInput(
                        f"must be a finite number or null (missing) (channel "
                        f"{channels[j]!r}), not {_json_type(cell)}",
                        field=f"values[{i}][{j}]",
                    )
    matrix = np.array(values, dtype=np.float64)
    bad = np.isinf(matrix)  # NaN only ever comes from null: JSON has no NaN
    if bad.any():
        i, j = (int(k) for k in np.argwhere(bad)[0])
        raise InvalidInput(
            f"must be a finite number (channel {channels[j]!r}), not {values[i][j]!r}",
            field=f"values[{i}][{j}]",
        )
    return matrix


def _csv_column_order(header: list[str], channels: Sequence[str], *, line: int) -> list[int] | None:
    """Indices into the value columns that put them in channel order (None: already in order)."""
    names = [cell.strip() for cell in header]
    if names[0].lower() != TIME_COLUMN:
        raise InvalidInput(
            f"line {line}: the first column must be {TIME_COLUMN!r}, not {_shown(names[0])}; "
            f"expected the header {TIME_COLUMN},{','.join(channels)}"
        )
    columns = names[1:]
    present, known = set(columns), set(channels)
    duplicated = sorted(c for c, n in Counter(columns).items() if n > 1)
    missing = [c for c in channels if c not in present]
    unknown = [c for c in columns if c not in known]
    if duplicated or missing or unknown:
        problems = []
        if missing:
            problems.append(f"missing {_names(missing)}")
        if unknown:
            problems.append(f"unknown {_names(unknown)}")
        if duplicated:
            problems.append(f"repeated {_names(duplicated)}")
        raise InvalidInput(
            f"line {line}: the header's channel columns must be the series' channels "
            f"({_names(channels)}) in any order: {'; '.join(problems)}"
        )
    if columns == list(channels):
        return None
    position = {name: index for index, name in enumerate(columns)}
    return [position[name] for name in channels]


def _source_column(order: list[int] | None, channel: int) -> int:
    return channel if order is None else order[channel]


def _after_line(text: str, line: int) -> str:
    """The text after its first `line` lines (the header's cells hold no line breaks)."""
    end = 0
    for _ in range(line):
        found = text.find("\n", end)
        if found < 0:
            return ""
        end = found + 1
    return text[end:]


def _name_bad_csv_number(
    cells: list[list[str]], header: list[str], line_of: Callable[[int], int]
) -> None:
    """Name the first value that float() would read but is not a plain decimal number."""
    for i, row in enumerate(cells):
        for j, cell in enumerate(row):
            if not is_decimal_text(cell) and cell.strip():
                raise InvalidInput(
                    f"line {line_of(i)}, column {_shown(header[j + 1].strip())}: {_shown(cell)} "
                    "is not a number (digits 0-9, a point and an exponent, no underscores)"
                )


def _csv_cells_one_by_one(
    cells: list[list[str]], header: list[str], line_of: Callable[[int], int]
) -> tuple[Float64Array, np.ndarray]:
    """float() of each cell, naming the first that is not a number (after numpy refused one),
    and the (N, F) mask of empty cells: missing values, NaN in the matrix."""
    out = np.empty((len(cells), len(header) - 1), dtype=np.float64)
    empty = np.zeros(out.shape, dtype=bool)
    for i, row in enumerate(cells):
        for j, cell in enumerate(row):
            if not cell.strip():
                out[i, j] = np.nan
                empty[i, j] = True
                continue
            try:
                if not is_decimal_text(cell):
                    raise ValueError
                out[i, j] = float(cell)
            except ValueError:
                raise InvalidInput(
                    f"line {line_of(i)}, column {_shown(header[j + 1].strip())}: {_shown(cell)} "
                    "is not a number (an empty cell is a missing value)"
                ) from None
    return out, empty


def _json_type(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        shown = value if len(value) <= 20 else value[:17] + "..."
        return f"a string ({shown!r})"
    if isinstance(value, list):
        return "an array"
    return "an object"


def _count(n: int, singular: str, plural: str | None = None) -> str:
    return f"{n} {singular if n == 1 else plural or singular + 's'}"


def _names(names: Sequence[str], *, most: int = 8) -> str:
    shown = ", ".join(_shown(n) for n in names[:most])
    return shown if len(names) <= most else f"{shown} and {len(names) - most} more"


def _shown(text: str) -> str:
    """A client's string quoted for an error message, cut short if long."""
    return repr(text if len(text) <= 40 else text[:37] + "...")


# -- writing ----------------------------------------------------------------------------------
def upsert_points(
    *, session: Session, series: Series, batch: PointBatch, newest: NewestPoints | None = None
) -> IngestResult:
    """Upsert the batch in one transaction; the last row of a repeated timestamp wins.

    Rows are written in timestamp order, so concurrent batches over overlapping ranges take
    their row locks in the same order and queue rather than deadlock; the series' detector
    mark (app/detection/marks.py) is taken last, right before the commit. On Postgres the
    locks are taken by one statement that is followed only by the commit, so a batch holds
    them for as short a time as possible. A wait past the API's lock or statement timeout
    rolls the whole batch back and answers 503 "busy, retry" (app/errors.py `busy_error`).
    `newest` (the API process's metrics) learns the batch's newest timestamp once committed.
    """
    ts, values = last_row_per_timestamp(batch.ts, batch.values)
    rows = np.ascontiguousarray(values, dtype="<f8")
    with _driver_errors_as_unavailable(session):
        if session.get_bind().dialect.name == "postgresql":
            inserted, updated = _upsert_postgres(session, series.id, ts, rows)
        else:
            inserted, updated = _upsert_sqlite(session, series.id, ts, rows)
            if inserted or updated:  # the detector scores the windows these points touch
                mark_written(
                    session=session, series_id=series.id, first_ts=int(ts[0]), last_ts=int(ts[-1])
                )
    session.commit()
    POINTS_INGESTED.labels(series=series.name).inc(batch.received)
    if newest is not None and len(ts):
        newest.note(series.name, int(ts[-1]))
    warnings = []
    if naive := batch.naive_timestamps:
        subject = f"{naive} timestamp{'s' if naive > 1 else ''}"
        warnings.append(naive_warning(subject, plural=naive > 1))
    return IngestResult(
        received=batch.received,
        inserted=inserted,
        updated=updated,
        unchanged=len(ts) - inserted - updated,
        warnings=warnings,
    )


@contextmanager
def _driver_errors_as_unavailable(session: Session) -> Iterator[None]:
    """503 with Retry-After when the database goes away, or is too busy, mid-write.

    NOTE: the bulk path talks to the driver directly, so its errors are not wrapped by
    SQLAlchemy and would miss the application's handler for a database that is unavailable.
    A lost Postgres connection is invalidated so that it is not rolled back or reused; one
    whose statement hit a lock or statement timeout is healthy, and only its transaction is
    rolled back (by the session, before the answer is sent).
    """
    try:
        yield
    except (psycopg.OperationalError, sqlite3.OperationalError) as exc:
        busy = busy_error(exc)
        if busy is not None:
            log.warning("bulk point write refused: %s", busy.detail)
            raise busy from exc
        log.warning("bulk point write failed: %s", exc.__class__.__name__)
        if isinstance(exc, psycopg.OperationalError):
            session.connection().invalidate(exc)
        raise ServiceUnavailable("the database is unavailable; retry shortly") from exc


def last_row_per_timestamp(ts: Int64Array, values: Float64Array) -> tuple[Int64Array, Float64Array]:
    """Distinct timestamps in ascending order, each with the last of its rows."""
    if len(ts) < 2 or bool((ts[1:] > ts[:-1]).all()):
        return ts, values
    reversed_ts = ts[::-1]
    unique, first_in_reversed = np.unique(reversed_ts, return_index=True)
    return unique, values[len(ts) - 1 - first_in_reversed]


# A batch that only appends (no stored point of the series within its time span, the usual
# case for a live stream) is copied straight into `points`. Otherwise, or when a concurrent
# writer got there first, it is staged in a temporary table and upserted from there.
_PG_ANY_IN_SPAN = (
    "SELECT EXISTS (SELECT 1 FROM points WHERE series_id = %s AND ts BETWEEN %s AND %s)"
)
_PG_COPY_DIRECT = 'COPY points (series_id, ts, "values") FROM STDIN (FORMAT BINARY)'
_PG_STAGE = (
    'CREATE TEMP TABLE IF NOT EXISTS vigil_points_in (ts bigint NOT NULL, "values" bytea NOT NULL) '
    "ON COMMIT DROP"
)
_PG_COPY_STAGED = 'COPY vigil_points_in (ts, "values") FROM STDIN (FORMAT BINARY)'
# Batches that overwrite stored points of a series take turns: each waits in the lock
# manager's queue, in order of arrival, for the series' transaction-scoped advisory lock
# before it locks any row. Without the queue, overlapping batches each locked a prefix of
# their rows and waited for an older batch's rows, so that they formed chains in which a
# batch could wait behind many others in turn: p99 10 s and more at 32 writers
# (benchmarks/service/writers.py). Appends (the COPY above) do not take it.
_PG_OVERWRITE_LOCK: Final = 0x56474C31  # "VGL1": the first key of Vigil's advisory locks
_PG_TAKE_TURN = "SELECT pg_advisory_xact_lock(%s, %s)"
# One statement takes every row lock of the batch, and the commit follows it at once: it empties
# the staging table, upserts the rows in timestamp order (the fixed lock order), and marks the
# written range for the detector (as app/detection/marks.py PG_MARK_WRITTEN does) if any row
# changed. NOTE: a row version that was just inserted has xmax = 0; one that ON CONFLICT
# updated carries the updating transaction's id, so this counts the inserts of this statement
# exactly. A row whose values are unchanged is neither written again nor returned.
_PG_UPSERT = (
    'WITH staged AS (DELETE FROM vigil_points_in RETURNING ts, "values"), '
    'upserted AS (INSERT INTO points (series_id, ts, "values") '
    'SELECT %(series_id)s, ts, "values" FROM staged ORDER BY ts '
    'ON CONFLICT (series_id, ts) DO UPDATE SET "values" = EXCLUDED."values" '
    'WHERE points."values" IS DISTINCT FROM EXCLUDED."values" '
    "RETURNING (xmax = 0) AS inserted), "
    "counted AS (SELECT count(*) FILTER (WHERE inserted) AS inserted, "
    "count(*) FILTER (WHERE NOT inserted) AS updated FROM upserted), "
    "marked AS (INSERT INTO detect_state (series_id, dirty_from, dirty_until, dirty_at) "
    "SELECT %(series_id)s, %(first_ts)s, %(last_ts)s, %(now)s FROM counted "
    "WHERE inserted + updated > 0 "
    "ON CONFLICT (series_id) DO UPDATE SET "
    "dirty_from = least(coalesce(detect_state.dirty_from, EXCLUDED.dirty_from), "
    "EXCLUDED.dirty_from), "
    "dirty_until = greatest(coalesce(detect_state.dirty_until, EXCLUDED.dirty_until), "
    "EXCLUDED.dirty_until), "
    "dirty_at = coalesce(detect_state.dirty_at, EXCLUDED.dirty_at)) "
    "SELECT inserted, updated FROM counted"
)
_PGCOPY_HEADER: Final = b"PGCOPY\n\xff\r\n\x00" + struct.pack("!ii", 0, 0)
_PGCOPY_TRAILER: Final = struct.pack("!h", -1)


def binary_copy_payload(
    ts: Int64Array, rows: Float64Array, *, series_id: int | None = None
) -> bytes:
    """COPY BINARY data for ([series_id int,] ts bigint, values bytea), built without a loop."""
    return b"".join(binary_copy_parts(ts, rows, series_id=series_id))


def binary_copy_parts(
    ts: Int64Array, rows: Float64Array, *, series_id: int | None = None
) -> Iterator[bytes]:
    """binary_copy_payload() in parts of about `WRITE_PART_BYTES` (header, tuples, trailer),
    so that a big batch is never copied whole."""
    yield _PGCOPY_HEADER
    for part in _write_parts(len(ts), rows.shape[1]):
        yield _binary_copy_tuples(ts[part], rows[part], series_id=series_id)
    yield _PGCOPY_TRAILER


def _write_parts(count: int, width: int) -> Iterator[slice]:
    step = max(1, WRITE_PART_BYTES // (8 * max(1, width) + 40))
    for start in range(0, count, step):
        yield slice(start, start + step)


def _binary_copy_tuples(ts: Int64Array, rows: Float64Array, *, series_id: int | None) -> bytes:
    """Each tuple is an int16 field count, then per field an int32 length and the bytes, with
    integers in network byte order. The bytea is the little-endian float64 row, as stored."""
    width = rows.shape[1] * 8
    fields: list[tuple[str, str]] = [("fields", ">i2")]
    if series_id is not None:
        fields += [("series_len", ">i4"), ("series_id", ">i4")]
    fields += [("ts_len", ">i4"), ("ts", ">i8"), ("values_len", ">i4"), ("values", f"V{width}")]
    tuples = np.empty(len(ts), dtype=np.dtype(fields))
    tuples["fields"] = len(fields) // 2
    if series_id is not None:
        tuples["series_len"] = 4
        tuples["series_id"] = series_id
    tuples["ts_len"] = 8
    tuples["ts"] = ts
    tuples["values_len"] = width
    tuples["values"] = rows.view(f"V{width}").reshape(len(ts))
    return tuples.tobytes()


def _upsert_postgres(
    session: Session, series_id: int, ts: Int64Array, rows: Float64Array
) -> tuple[int, int]:
    """(inserted, updated) rows, with the detector's mark when any changed."""
    raw = session.connection().connection.driver_connection
    assert raw is not None
    mark = {"series_id": series_id, "first_ts": int(ts[0]), "last_ts": int(ts[-1]), "now": utcnow()}
    with raw.cursor() as cursor:
        cursor.execute(_PG_ANY_IN_SPAN, (series_id, int(ts[0]), int(ts[-1])))
        if not cursor.fetchone()[0]:
            cursor.execute("SAVEPOINT vigil_append")
            try:
                with cursor.copy(_PG_COPY_DIRECT) as copy:
                    for part in binary_copy_parts(ts, rows, series_id=series_id):
                        copy.write(part)
            except psycopg.errors.UniqueViolation:
                cursor.execute("ROLLBACK TO SAVEPOINT vigil_append")
            else:
                cursor.execute("RELEASE SAVEPOINT vigil_append")
                cursor.execute(PG_MARK_WRITTEN, mark)
                return len(ts), 0
        cursor.execute(_PG_STAGE)
        with cursor.copy(_PG_COPY_STAGED) as copy:
            for part in binary_copy_parts(ts, rows):
                copy.write(part)
    # NOTE: sent together (pipeline mode): the upsert runs the moment the turn is granted,
    # without a round trip to this thread, which may wait for the GIL meanwhile.
    with raw.cursor() as turn, raw.cursor() as upsert:
        with raw.pipeline():
            turn.execute(_PG_TAKE_TURN, (_PG_OVERWRITE_LOCK, series_id))
            upsert.execute(_PG_UPSERT, mark)
        inserted, updated = upsert.fetchone()
    return int(inserted), int(updated)


# A row whose values are unchanged is not written again, and not counted in total_changes.
_SQLITE_UPSERT = (
    'INSERT INTO points (series_id, ts, "values") VALUES (?, ?, ?) '
    'ON CONFLICT (series_id, ts) DO UPDATE SET "values" = excluded."values" '
    'WHERE points."values" IS NOT excluded."values"'
)
# CROSS JOIN makes SQLite loop over the batch and probe the primary key for each timestamp:
# the cost follows the batch, never the size of the series.
_SQLITE_COUNT_EXISTING = (
    "SELECT count(*) FROM json_each(?) AS batch CROSS JOIN points "
    "WHERE points.series_id = ? AND points.ts = batch.value"
)


def _upsert_sqlite(
    session: Session, series_id: int, ts: Int64Array, rows: Float64Array
) -> tuple[int, int]:
    """(inserted, updated) rows."""
    raw = session.connection().connection.driver_connection
    assert raw is not None
    if not raw.in_transaction:
        # Take the write lock before counting, so that the count and the upsert see the same rows.
        raw.execute("BEGIN IMMEDIATE")
    stamps = ts.tolist()
    # NOTE: JSON goes in as text; newer SQLite versions read a BLOB argument as binary JSONB.
    batch_json = orjson.dumps(stamps).decode()
    existing = raw.execute(_SQLITE_COUNT_EXISTING, (batch_json, series_id)).fetchone()[0]
    blobs = rows.view(f"V{rows.shape[1] * 8}").reshape(len(ts))
    changes_before = raw.total_changes
    for part in _write_parts(len(stamps), rows.shape[1]):  # a part's rows as bytes at a time
        raw.executemany(
            _SQLITE_UPSERT,
            zip(itertools.repeat(series_id), stamps[part], blobs[part].tolist(), strict=False),
        )
    inserted = len(stamps) - int(existing)
    return inserted, raw.total_changes - changes_before - inserted


# -- reading ----------------------------------------------------------------------------------
def read_points(
    *,
    session: Session,
    series_id: int,
    start: int | None,
    end: int | None,
    limit: int,
    cursor: str | None = None,
) -> PointsPage:
    """Up to `limit` points with start <= ts <= end (microseconds), oldest first, and the
    cursor of the next page."""
    series = get_series(session=session, series_id=series_id)
    after = decode_cursor(cursor, arity=1)
    query = select(Point.ts, Point.values).where(Point.series_id == series.id)
    if start is not None:
        query = query.where(Point.ts >= start)
    if end is not None:
        query = query.where(Point.ts <= end)
    if after is not None:
        query = query.where(Point.ts > int(after[0]))
    rows = session.execute(query.order_by(Point.ts).limit(limit + 1)).all()
    found, next_cursor = page_of(rows, limit=limit, key=lambda row: (int(row[0]),))
    ts = np.fromiter((row[0] for row in found), dtype=np.int64, count=len(found))
    blob = b"".join(row[1] for row in found)
    values = np.frombuffer(blob, dtype="<f8").reshape(len(found), len(series.channels))
    return PointsPage(ts=ts, values=values.astype(np.float64), next_cursor=next_cursor)
