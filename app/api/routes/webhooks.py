"""Webhooks: signed HTTP notifications of alarms, model activations and failed jobs."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, Path, Query, Response, status

from app.api.deps import FleetAdmin, SessionDep
from app.detection.webhooks import (
    create_webhook,
    delete_webhook,
    get_webhook,
    list_deliveries,
    list_webhooks,
)
from app.schemas.common import AUTH_RESPONSES, MAX_DB_ID
from app.schemas.paging import DEFAULT_LIMIT, CursorQuery, LimitQuery
from app.schemas.webhooks import (
    EVENT_LIST,
    DeliveryList,
    WebhookCreate,
    WebhookCreated,
    WebhookList,
    WebhookOut,
)

router = APIRouter(prefix="/v1/webhooks", tags=["webhooks"], responses=AUTH_RESPONSES)

WebhookIdPath = Annotated[int, Path(ge=1, le=MAX_DB_ID, description="The webhook's id.")]
NOT_FOUND: dict[int | str, dict[str, Any]] = {
    404: {"description": "The webhook does not exist (or was deleted)"}
}


@router.post(
    "",
    status_code=status.HTTP_201_CREATED,
    summary="Subscribe an HTTP endpoint to events",
    description=(
        f"Vigil POSTs each event the webhook subscribes to ({EVENT_LIST}) to `url` as JSON "
        '`{"id", "event", "created", "data"}`, signed with HMAC-SHA256 under `secret`: header '
        '`Vigil-Signature: t=<unix seconds>,v1=<hex HMAC of "<t>.<body>">`, with '
        "`Vigil-Event` and `Vigil-Delivery` (the delivery id, the same on every retry: "
        "deduplicate on it). A 2xx answer delivers; anything else is retried with "
        "exponential backoff (`VIGIL_WEBHOOK_*` settings) and then marked `failed`. The "
        "secret is never shown again: responses give its last 4 characters. Admin scope."
    ),
    responses={422: {"description": "A URL that is not http(s), or an unknown event"}},
)
def create(
    body: WebhookCreate, session: SessionDep, _: FleetAdmin, response: Response
) -> WebhookCreated:
    created = create_webhook(session=session, body=body)
    response.headers["Location"] = f"/v1/webhooks/{created.id}"
    return created


@router.get("", summary="List webhooks, oldest first (admin scope)")
def read_all(
    session: SessionDep,
    _: FleetAdmin,
    limit: LimitQuery = DEFAULT_LIMIT,
    cursor: CursorQuery = None,
) -> WebhookList:
    return list_webhooks(session=session, limit=limit, cursor=cursor)


@router.get("/{webhook_id}", summary="One webhook (admin scope)", responses=NOT_FOUND)
def read(webhook_id: WebhookIdPath, session: SessionDep, _: FleetAdmin) -> WebhookOut:
    return get_webhook(session=session, webhook_id=webhook_id)


@router.delete(
    "/{webhook_id}",
    status_code=status.HTTP_204_NO_CONTENT,
    summary="Delete a webhook; its pending deliveries are dropped (admin scope)",
    responses=NOT_FOUND,
)
def remove(webhook_id: WebhookIdPath, session: SessionDep, _: FleetAdmin) -> Response:
    delete_webhook(session=session, webhook_id=webhook_id)
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@router.get(
    "/{webhook_id}/deliveries",
    summary="A webhook's deliveries and every attempt at them, newest first (admin scope)",
    description=(
        "Each delivery: its event and payload, `status` (`pending`, `delivered`, `failed`), "
        "`attempts`, the last HTTP status or error, when the next attempt is due, when it was "
        "delivered, and the `history` of every attempt."
    ),
    responses=NOT_FOUND,
)
def read_deliveries(
    webhook_id: WebhookIdPath,
    session: SessionDep,
    _: FleetAdmin,
    status_: Annotated[
        Literal["pending", "delivered", "failed"] | None,
        Query(alias="status", description="Only deliveries in this state."),
    ] = None,
    limit: LimitQuery = DEFAULT_LIMIT,
    cursor: CursorQuery = None,
) -> DeliveryList:
    return list_deliveries(
        session=session, webhook_id=webhook_id, limit=limit, cursor=cursor, status=status_
    )
