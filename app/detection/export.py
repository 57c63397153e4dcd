"""Alarms and stored window scores as files: CSV and Parquet, chosen by the `Accept` header.

The columns follow the JSON, flattened where a table reader expects columns:

- alarms: `id, series_id, start, end, status, kind, check, peak_score, threshold,
  model_version, windows, verdict` and `channels` (CSV: `top_channel`, `top_share` only;
  Parquet: the whole list as `list<struct<name: string, share: double>>`, largest first, and
  the acknowledgement and verdict columns too: `opened_at`, `closed_at`, `acknowledged_at`,
  `acknowledged_by`, `verdict_at`, `verdict_by`, `verdict_note`, `retrain_job_id`);
- window scores: `start, end, model_version, raw_score, score, adjusted_score, threshold,
  is_anomaly, data_quality` (CSV: `check:channel` joined by `;`; Parquet:
  `list<struct<check: string, channel: string>>`), one `contribution_<channel>` per channel
  and (Parquet) `scored_at`.

Parquet columns are typed: instants are `timestamp[us, UTC]`, scores `double`, counts and ids
`int64`, `is_anomaly` `bool`, missing values null. A page is one file; the cursor of the next
page comes in the `Vigil-Next-Cursor` header, as for CSV.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Sequence
from datetime import datetime
from typing import Any, Final, Literal

import pyarrow as pa
import pyarrow.parquet as pq

Format = Literal["json", "csv", "parquet"]

INSTANT: Final = pa.timestamp("us", tz="UTC")

JSON: Final = "application/json"
CSV: Final = "text/csv"
PARQUET: Final = "application/vnd.apache.parquet"
"""The IANA-registered media type (2024); `application/x-parquet` is taken as the same."""

_MEDIA: Final[dict[str, Format]] = {
    JSON: "json",
    "application/*": "json",
    "*/*": "json",
    CSV: "csv",
    "text/*": "csv",
    PARQUET: "parquet",
    "application/x-parquet": "parquet",
}

EXPORT_RESPONSE: Final[dict[int | str, dict[str, Any]]] = {
    200: {
        "content": {
            CSV: {"schema": {"type": "string"}},
            PARQUET: {"schema": {"type": "string", "format": "binary"}},
        },
    },
}
"""The file forms of a 200, for the OpenAPI `responses=` of an exporting route."""


def negotiate(accept: str | None) -> Format:
    """The form the `Accept` header prefers (RFC 9110 §12.5.1: highest q wins, earlier on a
    tie). JSON when the header is absent or names nothing this API serves."""
    best: tuple[float, int, Format] | None = None
    for position, part in enumerate((accept or "").split(",")):
        media, *params = (piece.strip() for piece in part.split(";"))
        form = _MEDIA.get(media.lower())
        if form is None:
            continue
        q = 1.0
        for param in params:
            name, _, value = param.partition("=")
            if name.strip().lower() == "q":
                try:
                    q = float(value)
                except ValueError:
                    q = 0.0
        if q <= 0:
            continue
        if best is None or q > best[0]:
            best = (q, position, form)
    return best[2] if best is not None else "json"


def media_type(form: Format) -> str:
    return {"json": JSON, "csv": CSV, "parquet": PARQUET}[form]


# -- alarms ------------------------------------------------------------------------------------
ALARM_CSV_COLUMNS: Final = (
    "id",
    "series_id",
    "start",
    "end",
    "status",
    "kind",
    "check",
    "peak_score",
    "threshold",
    "model_version",
    "windows",
    "top_channel",
    "top_share",
    "verdict",
)

ALARM_SCHEMA: Final = pa.schema(
    [
        ("id", pa.int64()),
        ("series_id", pa.int64()),
        ("start", INSTANT),
        ("end", INSTANT),
        ("status", pa.string()),
        ("kind", pa.string()),
        ("check", pa.string()),
        ("peak_score", pa.float64()),
        ("threshold", pa.float64()),
        ("model_version", pa.int64()),
        ("windows", pa.int64()),
        ("channels", pa.list_(pa.struct([("name", pa.string()), ("share", pa.float64())]))),
        ("verdict", pa.string()),
        ("opened_at", INSTANT),
        ("closed_at", INSTANT),
        ("acknowledged_at", INSTANT),
        ("acknowledged_by", pa.string()),
        ("verdict_at", INSTANT),
        ("verdict_by", pa.string()),
        ("verdict_note", pa.string()),
        ("retrain_job_id", pa.int64()),
    ]
)


def alarms_csv(alarms: Sequence[dict[str, Any]]) -> str:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(ALARM_CSV_COLUMNS)
    for item in alarms:
        top = item["channels"][0] if item["channels"] else {"name": "", "share": ""}
        writer.writerow(
            [
                item["id"],
                item["series_id"],
                item["start"],
                item["end"],
                item["status"],
                item["kind"],
                item["check"] or "",
                item["peak_score"],
                item["threshold"],
                item["model_version"],
                item["windows"],
                top["name"],
                top["share"],
                item["verdict"] or "",
            ]
        )
    return out.getvalue()


def alarms_parquet(alarms: Sequence[dict[str, Any]]) -> bytes:
    return _parquet(alarms, ALARM_SCHEMA)


# -- window scores -----------------------------------------------------------------------------
def scores_csv(windows: Sequence[dict[str, Any]], channels: Sequence[str]) -> str:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(
        [
            "start",
            "end",
            "model_version",
            "raw_score",
            "score",
            "adjusted_score",
            "threshold",
            "is_anomaly",
            "data_quality",
            *(f"contribution_{name}" for name in channels),
        ]
    )
    for item in windows:
        quality = ";".join(f"{q['check']}:{q['channel']}" for q in item["data_quality"])
        writer.writerow(
            [
                item["start"],
                item["end"],
                item["model_version"],
                item["raw_score"],
                item["score"],
                item["adjusted_score"],
                item["threshold"],
                "true" if item["is_anomaly"] else "false",
                quality,
                *(item["channel_contributions"][name] for name in channels),
            ]
        )
    return out.getvalue()


def scores_schema(channels: Sequence[str]) -> pa.Schema:
    return pa.schema(
        [
            ("start", INSTANT),
            ("end", INSTANT),
            ("model_version", pa.int64()),
            ("raw_score", pa.float64()),
            ("score", pa.float64()),
            ("adjusted_score", pa.float64()),
            ("threshold", pa.float64()),
            ("is_anomaly", pa.bool_()),
            (
                "data_quality",
                pa.list_(pa.struct([("check", pa.string()), ("channel", pa.string())])),
            ),
            *((f"contribution_{name}", pa.float64()) for name in channels),
            ("scored_at", INSTANT),
        ]
    )


def scores_parquet(windows: Sequence[dict[str, Any]], channels: Sequence[str]) -> bytes:
    rows = [
        {
            **item,
            "data_quality": [
                {"check": q["check"], "channel": q["channel"]} for q in item["data_quality"]
            ],
            **{f"contribution_{c}": item["channel_contributions"].get(c) for c in channels},
        }
        for item in windows
    ]
    return _parquet(rows, scores_schema(channels))


def _instant(value: datetime | str | None) -> datetime | None:
    """The JSON's instant (a datetime, or RFC 3339 text) as an aware datetime for Arrow."""
    if value is None or isinstance(value, datetime):
        return value
    return datetime.fromisoformat(value)


def _parquet(rows: Sequence[dict[str, Any]], schema: pa.Schema) -> bytes:
    """The schema's columns of the JSON rows as one Parquet file; instants parsed for Arrow."""
    columns = {}
    for field in schema:
        values = [row[field.name] for row in rows]
        if pa.types.is_timestamp(field.type):
            values = [_instant(value) for value in values]
        columns[field.name] = values
    sink = pa.BufferOutputStream()
    pq.write_table(pa.Table.from_pydict(columns, schema=schema), sink, compression="zstd")
    return bytes(sink.getvalue().to_pybytes())
