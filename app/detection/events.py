"""Events for notifications; the outbox that delivers them is app/detection/webhooks.py."""

from __future__ import annotations

from typing import Any

from sqlalchemy.orm import Session


def emit(*, session: Session, event: str, data: dict[str, Any]) -> None:
    """Record `event` for delivery in the caller's transaction."""
