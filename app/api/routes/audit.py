"""The audit log (scope `admin`)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query

from app.api.deps import FleetAdmin, SessionDep
from app.schemas.audit import AuditOut, AuditPage
from app.schemas.common import AUTH_RESPONSES
from app.schemas.paging import DEFAULT_LIMIT, CursorQuery, LimitQuery
from app.services.audit import list_audit

router = APIRouter(prefix="/v1", tags=["audit"], responses=AUTH_RESPONSES)


@router.get(
    "/audit",
    summary="The audit log of admin operations, newest first",
    description=(
        "Who deleted which series, when, and how many rows of each table went with it. "
        "A page of `limit` records and `next_cursor`: pass it as `cursor` for the next page "
        "(null: no more)."
    ),
)
def list_all(
    session: SessionDep,
    _: FleetAdmin,
    limit: LimitQuery = DEFAULT_LIMIT,
    cursor: CursorQuery = None,
    action: Annotated[
        str | None, Query(max_length=64, description="Only this action, e.g. `series.delete`.")
    ] = None,
) -> AuditPage:
    found, next_cursor = list_audit(session=session, limit=limit, cursor=cursor, action=action)
    return AuditPage(
        records=[AuditOut.model_validate(row) for row in found], next_cursor=next_cursor
    )
