"""Points: rows of one value per channel at a timestamp.

`PointsIn` documents the JSON body in OpenAPI only: batches of 10^5 rows are parsed with
orjson into numpy arrays (app/services/points.py), never validated row by row by pydantic.
"""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, WithJsonSchema

from app.schemas.common import TIMESTAMP_JSON_SCHEMA

TimestampField = Annotated[str | float, WithJsonSchema(TIMESTAMP_JSON_SCHEMA)]


class PointsIn(BaseModel):
    """A batch of rows. `values[i]` holds one finite number (or null: missing) per channel,
    in channel order."""

    model_config = ConfigDict(extra="forbid")

    timestamps: list[TimestampField] = Field(
        min_length=1,
        description=(
            "One timestamp per row. Rows are upserted on (series, timestamp); when a "
            "timestamp repeats within a batch, the last row wins."
        ),
        examples=[["2026-01-01T00:00:00Z", 1767225601.0]],
    )
    values: list[list[float | None]] = Field(
        min_length=1,
        description="One row per timestamp, one finite number per channel; `null` marks a "
        "missing value (stored as such, never as 0).",
        examples=[[[1.0, 2.5, 40.1], [1.1, 2.4, 40.3]]],
    )


class IngestResult(BaseModel):
    received: int = Field(description="Rows in the request.")
    inserted: int = Field(description="Timestamps that were new for the series.")
    updated: int = Field(
        description="Timestamps that already existed with other values, now overwritten."
    )
    unchanged: int = Field(
        description="Timestamps that already existed with the same values (nothing written)."
    )
    warnings: list[str] = Field(
        description="What was done that the request may not have meant, e.g. timestamps "
        "without a UTC offset taken as UTC."
    )


class PointsOut(BaseModel):
    timestamps: list[str] = Field(
        description="RFC 3339 UTC timestamps (`2026-11-22T08:00:00Z`), oldest first."
    )
    values: list[list[float | None]] = Field(
        description="One row per timestamp, in channel order; null where a value is missing."
    )
    next_cursor: str | None = Field(
        default=None, description="Pass as `cursor` for the next page; null: no more."
    )


CSV_DESCRIPTION = (
    "A header `timestamp,<channel>,...` naming every channel of the series once, in any "
    "order, then one row per line: an ISO-8601 timestamp or epoch seconds, then the values. "
    "An empty cell is a missing value."
)


POINTS_REQUEST_BODY: dict[str, Any] = {
    "required": True,
    "content": {
        "application/json": {"schema": PointsIn.model_json_schema()},
        "text/csv": {
            "schema": {"type": "string", "description": CSV_DESCRIPTION},
            "example": "timestamp,flow,pressure\n2026-01-01T00:00:00Z,1.0,2.5\n",
        },
    },
}
"""The OpenAPI `requestBody` of the ingestion route: JSON or CSV."""
