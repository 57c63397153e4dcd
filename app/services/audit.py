"""The audit log: admin operations, who did them and what they removed or changed."""

from __future__ import annotations

from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from app.db.models import ApiKey, AuditRecord
from app.schemas.paging import decode_cursor, page_of


def audit(
    *,
    session: Session,
    key_id: int | None,
    action: str,
    target: str,
    detail: dict[str, Any],
) -> AuditRecord:
    """Add a record to the session, to be committed with the operation it describes."""
    key = session.get(ApiKey, key_id) if key_id is not None else None
    record = AuditRecord(
        key_name=key.name if key is not None else None,
        key_prefix=key.prefix if key is not None else None,
        action=action,
        target=target,
        detail=detail,
    )
    session.add(record)
    return record


def list_audit(
    *, session: Session, limit: int, cursor: str | None = None, action: str | None = None
) -> tuple[list[AuditRecord], str | None]:
    """A page of audit records, newest first, and the cursor of the next."""
    after = decode_cursor(cursor, arity=1)
    query = select(AuditRecord)
    if after is not None:
        query = query.where(AuditRecord.id < int(after[0]))
    if action is not None:
        query = query.where(AuditRecord.action == action)
    rows = list(session.scalars(query.order_by(AuditRecord.id.desc()).limit(limit + 1)))
    return page_of(rows, limit=limit, key=lambda row: (row.id,))
