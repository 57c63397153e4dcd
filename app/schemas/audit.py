"""The audit log of admin operations."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from app.schemas.common import UtcDateTime


class AuditOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: int
    at: UtcDateTime
    key_name: str | None = Field(description="The API key's name (null: not an API key).")
    key_prefix: str | None = Field(description="The API key's first characters.")
    action: str = Field(description="What was done, e.g. `series.delete`.")
    target: str = Field(description="What it was done to, e.g. `series/7`.")
    detail: dict[str, Any] = Field(
        description="What the operation removed or changed, e.g. the rows deleted per table."
    )


class AuditPage(BaseModel):
    records: list[AuditOut] = Field(description="A page of records, newest first.")
    next_cursor: str | None = Field(
        description="Pass as `cursor` for the next page; null: no more."
    )
