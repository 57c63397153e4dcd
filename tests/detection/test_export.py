"""Alarms and stored window scores exported as Parquet (and the Accept negotiation that picks
JSON, CSV or Parquet), read back with pyarrow and compared with the JSON pages."""

from __future__ import annotations

import io
from datetime import datetime
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from app.detection.export import PARQUET, negotiate
from tests.detection.conftest import TRAINED, Setup, add_closed_alarms, send, settled
from tests.utils.stream import Stream

PARQUET_ACCEPT = {"Accept": PARQUET}


@pytest.mark.parametrize(
    ("accept", "form"),
    [
        (None, "json"),
        ("", "json"),
        ("*/*", "json"),
        ("application/json", "json"),
        ("text/csv", "csv"),
        ("text/csv, application/json", "csv"),  # a tie goes to the first
        ("application/json;q=0.5, text/csv", "csv"),
        (PARQUET, "parquet"),
        ("application/x-parquet", "parquet"),
        ("text/csv;q=0.2, application/vnd.apache.parquet;q=0.9", "parquet"),
        ("application/vnd.apache.parquet;q=0, text/csv", "csv"),
        ("image/png", "json"),  # nothing served is named: the default
        ("text/csv;q=nonsense", "json"),
    ],
)
def test_accept_negotiation(accept: str | None, form: str) -> None:
    assert negotiate(accept) == form


def _read(body: bytes) -> pa.Table:
    return pq.read_table(io.BytesIO(body))


def _instant(text: str) -> datetime:
    return datetime.fromisoformat(text)


def test_alarms_as_parquet_match_the_json_and_page_by_header(setup: Setup, sessions: Any) -> None:
    add_closed_alarms(sessions, setup.series_id, 7, stuck_every=3)
    page = setup.client.get("/v1/alarms?limit=5", headers=setup.headers).json()
    exported = setup.client.get("/v1/alarms?limit=5", headers=setup.headers | PARQUET_ACCEPT)
    assert exported.status_code == 200
    assert exported.headers["content-type"] == PARQUET
    assert exported.headers["vigil-next-cursor"] == page["next_cursor"]
    table = _read(exported.content)
    assert table.schema.field("start").type == pa.timestamp("us", tz="UTC")
    assert table.schema.field("peak_score").type == pa.float64()
    rows = table.to_pylist()
    assert [r["id"] for r in rows] == [a["id"] for a in page["alarms"]]
    for row, alarm in zip(rows, page["alarms"], strict=True):
        assert row["start"] == _instant(alarm["start"]) and row["end"] == _instant(alarm["end"])
        for name in ("series_id", "status", "kind", "check", "peak_score", "windows", "verdict"):
            assert row[name] == alarm[name], name
        assert row["channels"] == alarm["channels"]  # the whole list, largest share first
        assert row["opened_at"] == _instant(alarm["opened_at"])
    rest = setup.client.get(
        f"/v1/alarms?limit=5&cursor={page['next_cursor']}", headers=setup.headers | PARQUET_ACCEPT
    )
    assert _read(rest.content).num_rows == 2 and "vigil-next-cursor" not in rest.headers


def test_an_empty_page_is_a_parquet_file_with_the_schema(setup: Setup) -> None:
    exported = setup.client.get(
        "/v1/alarms?status=confirmed", headers=setup.headers | PARQUET_ACCEPT
    )
    table = _read(exported.content)
    assert table.num_rows == 0
    assert {"id", "start", "channels", "verdict"} <= set(table.column_names)


def test_scores_as_parquet_match_the_json(setup: Setup, stream: Stream) -> None:
    send(
        setup.client,
        setup.headers,
        setup.series_id,
        stream.ts[TRAINED:600],
        stream.values[TRAINED:600],
    )
    settled(setup.sessions, setup.series_id)
    url = f"/v1/series/{setup.series_id}/scores?limit=10"
    page = setup.client.get(url, headers=setup.headers).json()
    exported = setup.client.get(url, headers=setup.headers | PARQUET_ACCEPT)
    assert exported.headers["vigil-next-cursor"] == page["next_cursor"]
    table = _read(exported.content)
    assert table.schema.field("is_anomaly").type == pa.bool_()
    rows = table.to_pylist()
    assert len(rows) == len(page["scores"]) == 10
    for row, window in zip(rows, page["scores"], strict=True):
        assert row["start"] == _instant(window["start"])
        for name in ("model_version", "raw_score", "score", "adjusted_score", "is_anomaly"):
            assert row[name] == window[name], name
        for channel, share in window["channel_contributions"].items():
            assert row[f"contribution_{channel}"] == share
        assert row["data_quality"] == window["data_quality"]
