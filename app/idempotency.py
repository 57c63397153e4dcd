"""`Idempotency-Key` for POST /v1/labels and POST /v1/series/{id}/train, following the IETF
httpapi idempotency-key draft:

- the first request with a key runs, and its response is remembered (for 24 hours);
- a repeat with the same key and the same request gets that response again
  (with `Idempotent-Replayed: true`), once its API key is authenticated, authorised and
  counted against the rate limit like any request;
- the same key with a different request gets 422;
- a repeat while the first is still in flight gets 409.

Keys are scoped to the caller's API key. Responses that did not complete the operation
(5xx, 401, 403, 429) are forgotten, so the client may retry with the same key, and so are
responses to requests whose key was never accepted.

A request in flight holds its key under a lease of `LEASE` that it renews while it runs, so a
key whose request died (the process killed, the database lost) is free again within seconds.
The operation's own transaction marks the key committed (`Claim.confirm_on_commit`): a retry
never performs a committed operation again, even when the process died before it could
record the response, and a request whose lease was taken over cannot commit at all.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import re
import secrets
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import timedelta
from typing import TYPE_CHECKING, Any, Final

from sqlalchemy import delete, event, or_, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.db.base import utcnow
from app.db.models import IdempotencyRecord
from app.errors import Conflict, error_response, problem
from app.schemas.common import IDEMPOTENCY_KEY_PATTERN

if TYPE_CHECKING:
    from app.runtime import Principal, Runtime

log = logging.getLogger(__name__)

TTL = timedelta(hours=24)
LEASE: Final = timedelta(seconds=5)
"""How long a key stays pending after its request was last known alive."""
RENEW_EVERY: Final = 1.0
"""Seconds between lease renewals of a request in flight."""
HEADER = b"idempotency-key"
MAX_KEY_LENGTH: Final = 255
KEY: Final = re.compile(IDEMPOTENCY_KEY_PATTERN)
IDEMPOTENT_ROUTES: Final = (
    (re.compile(r"^/v1/labels/?$"), "label"),
    (re.compile(r"^/v1/series/\d+/train/?$"), "train"),
)
"""Path -> the scope its route requires (a replay is authorised exactly as the route is)."""
NOT_REMEMBERED = {401, 403, 429}
REPLAYED_HEADERS = {"content-type", "location"}
CLAIM_STATE: Final = "idempotency_claim"
"""Where the request's `Claim` waits in the ASGI scope's state for its database session."""

Authorize = Callable[["Runtime", str | None, str], Awaitable["Principal"]]
"""(runtime, Authorization header, scope) -> the live key, or a 401/403/429/503 error."""


@dataclass(frozen=True)
class Claim:
    """A key held by one live request: `owner` is that request's random token."""

    principal: str
    key: str
    owner: str

    def _where(self) -> tuple[Any, ...]:
        return (
            IdempotencyRecord.principal == self.principal,
            IdempotencyRecord.key == self.key,
            IdempotencyRecord.lease_owner == self.owner,
        )

    def confirm_on_commit(self, session: Session) -> None:
        """Mark the key committed inside the transaction that commits the operation.

        If the request no longer holds the key (its lease lapsed and a retry took it over),
        the commit fails with 409 and the operation is rolled back, so that two requests
        with one key never both perform it.
        """

        def confirm(session: Session) -> None:
            confirmed = session.execute(
                update(IdempotencyRecord)
                .where(*self._where(), IdempotencyRecord.committed_at.is_(None))
                .values(committed_at=utcnow())
                .execution_options(synchronize_session=False)
            )
            if confirmed.rowcount != 1:  # type: ignore[attr-defined]
                raise Conflict(
                    "this request lost its Idempotency-Key to a retry while it ran; "
                    "nothing was changed"
                )

        event.listen(session, "before_commit", confirm, once=True)


class IdempotencyMiddleware:
    def __init__(
        self, app: ASGIApp, *, runtime: Callable[[], Runtime], authorize: Authorize
    ) -> None:
        self.app = app
        self._runtime = runtime  # the app's, which exists only once the app has started
        self._authorize = authorize

    @property
    def sessions(self) -> sessionmaker[Session]:
        return self._runtime().sessions

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "POST":
            await self.app(scope, receive, send)
            return
        headers = dict(scope.get("headers") or ())
        raw_key = headers.get(HEADER)
        required = next((s for r, s in IDEMPOTENT_ROUTES if r.match(scope["path"])), None)
        if raw_key is None or required is None:
            await self.app(scope, receive, send)
            return
        # NOTE: the header as sent (HTTP has already trimmed it), exactly as openapi.json's
        # pattern describes it; the quotes of the draft's sf-string are not part of the key.
        key = raw_key.decode("latin-1")
        if KEY.fullmatch(key) is None:
            await problem(
                400,
                "Bad request",
                f"Idempotency-Key must be 1 to {MAX_KEY_LENGTH} characters of printable ASCII, "
                'or such a key in quotes ("" is empty)',
                instance=scope["path"],
            )(scope, receive, send)
            return
        if key.startswith('"'):  # the draft's sf-string: the key is what the quotes enclose
            key = key[1:-1]
        body = await _read_body(receive)
        authorization = headers.get(b"authorization", b"")
        principal = hashlib.sha256(authorization).hexdigest()
        fingerprint = hashlib.sha256(
            b"\0".join([scope["method"].encode(), scope["path"].encode(), body])
        ).hexdigest()
        claim = Claim(principal, key, secrets.token_hex(16))

        try:
            existing = await asyncio.to_thread(self._begin, claim, fingerprint)
            if existing is not None:
                # A replay is an answer on the caller's behalf: the key must still be live,
                # hold the route's scope, and be within its rate, as for the request itself.
                await self._authorize(self._runtime(), authorization.decode("latin-1"), required)
        except Exception as exc:  # a lost database (503), or the caller's key refused
            await error_response(exc, method="POST", path=scope["path"])(scope, receive, send)
            return
        if existing is not None:
            await self._answer_existing(existing, fingerprint, scope, send)
            return
        await self._run(claim, scope, body, send)

    async def _run(self, claim: Claim, scope: Scope, body: bytes, send: Send) -> None:
        """Run the request, record its outcome, then answer: a client that has its answer
        finds it recorded, so a repeat sent at once is a replay, not a 409."""
        status = 500
        response_headers: list[tuple[bytes, bytes]] = []
        messages: list[Message] = []

        async def capture(message: Message) -> None:
            nonlocal status, response_headers
            if message["type"] == "http.response.start":
                status = message["status"]
                response_headers = list(message.get("headers", []))
            messages.append(message)

        scope.setdefault("state", {})[CLAIM_STATE] = claim
        renewing = asyncio.get_running_loop().create_task(self._renew_while_running(claim))
        try:
            await self.app(scope, _replay(body), capture)
        except BaseException:
            status = 500  # the error handlers outside answer it
            raise
        finally:
            renewing.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await renewing
            # NOTE: FastAPI parses a body before the key is checked, so a stranger's malformed
            # request can end in 422 without ever authenticating: remember only the responses
            # of callers whose key was accepted (the auth dependency marks the request state).
            authenticated = scope.get("state", {}).get("api_key_id") is not None
            remembered = authenticated and status < 500 and status not in NOT_REMEMBERED
            body_sent = b"".join(
                m.get("body", b"") for m in messages if m["type"] == "http.response.body"
            )
            response = (status, body_sent, _kept_headers(response_headers)) if remembered else None
            try:
                await asyncio.to_thread(self._finish, claim, response)
            except Exception as exc:
                # The client still gets its answer. A key left pending lapses with its lease
                # (and stays committed if the operation was): a retry then does the right thing.
                log.warning(
                    "could not record the outcome of Idempotency-Key request %s: %s",
                    scope["path"],
                    exc.__class__.__name__,
                )
        for message in messages:
            await send(message)

    async def _renew_while_running(self, claim: Claim) -> None:
        while True:
            await asyncio.sleep(RENEW_EVERY)
            try:
                await asyncio.to_thread(self._renew, claim)
            except Exception as exc:  # the database may be away for a moment; try again
                log.warning("could not renew an Idempotency-Key lease: %s", type(exc).__name__)

    def _renew(self, claim: Claim) -> None:
        with self.sessions() as session, session.begin():
            session.execute(
                update(IdempotencyRecord)
                .where(*claim._where(), IdempotencyRecord.status_code.is_(None))
                .values(lease_expires_at=utcnow() + LEASE)
            )

    def _begin(self, claim: Claim, fingerprint: str) -> IdempotencyRecord | None:
        """Claim the key for this request, or return the record that already holds it.

        A pending key whose lease has lapsed and whose operation never committed belonged to
        a request that died: this request takes it over (if it is the same request).
        """
        key_of = (
            IdempotencyRecord.principal == claim.principal,
            IdempotencyRecord.key == claim.key,
        )
        for _attempt in range(3):
            now = utcnow()
            with self.sessions() as session:
                try:
                    with session.begin():
                        session.add(
                            IdempotencyRecord(
                                principal=claim.principal,
                                key=claim.key,
                                request_hash=fingerprint,
                                lease_owner=claim.owner,
                                lease_expires_at=now + LEASE,
                            )
                        )
                    return None
                except IntegrityError:
                    pass
                with session.begin():
                    taken_over = session.execute(
                        update(IdempotencyRecord)
                        .where(
                            *key_of,
                            IdempotencyRecord.request_hash == fingerprint,
                            IdempotencyRecord.status_code.is_(None),
                            IdempotencyRecord.committed_at.is_(None),
                            or_(
                                IdempotencyRecord.lease_expires_at.is_(None),
                                IdempotencyRecord.lease_expires_at < now,
                            ),
                        )
                        .values(lease_owner=claim.owner, lease_expires_at=now + LEASE)
                    )
                    if taken_over.rowcount == 1:  # type: ignore[attr-defined]
                        return None
                    record = session.scalar(select(IdempotencyRecord).where(*key_of))
                    if record is not None and record.created_at < now - TTL:
                        session.delete(record)
                        record = None
                if record is not None:
                    session.expunge(record)
                    return record
            # expired or released meanwhile: try again
        raise Conflict("this Idempotency-Key is contended; retry")

    def _finish(self, claim: Claim, response: tuple[int, bytes, dict[str, str]] | None) -> None:
        with self.sessions() as session, session.begin():
            if response is None:
                # Forget the key, unless the operation committed: then it must not run again.
                session.execute(
                    delete(IdempotencyRecord).where(
                        *claim._where(), IdempotencyRecord.committed_at.is_(None)
                    )
                )
                return
            status, body, headers = response
            session.execute(
                update(IdempotencyRecord)
                .where(*claim._where())
                .values(
                    status_code=status,
                    response_body=body,
                    response_headers=headers,
                    lease_owner=None,
                    lease_expires_at=None,
                )
            )

    async def _answer_existing(
        self, record: IdempotencyRecord, fingerprint: str, scope: Scope, send: Send
    ) -> None:
        if record.request_hash != fingerprint:
            response = problem(
                422,
                "Idempotency key reused",
                "this Idempotency-Key was already used with a different request",
                instance=scope["path"],
            )
        elif record.status_code is None and record.committed_at is not None and _lapsed(record):
            # Committed, then the process died before it could record the response.
            response = problem(
                409,
                "Request already completed",
                "the request with this Idempotency-Key was carried out, but its response was "
                "lost when the server stopped; it is not performed again: read the resource "
                "to see the result",
                instance=scope["path"],
            )
        elif record.status_code is None:
            response = problem(
                409,
                "Request in progress",
                "a request with this Idempotency-Key is still being processed",
                instance=scope["path"],
                headers={"Retry-After": "1"},
            )
        else:
            headers = [(k.encode(), v.encode()) for k, v in (record.response_headers or {}).items()]
            headers.append((b"idempotent-replayed", b"true"))
            body = record.response_body or b""
            headers.append((b"content-length", str(len(body)).encode()))
            await send(
                {"type": "http.response.start", "status": record.status_code, "headers": headers}
            )
            await send({"type": "http.response.body", "body": body})
            return
        await response(scope, _replay(b""), send)


def _lapsed(record: IdempotencyRecord) -> bool:
    return record.lease_expires_at is None or record.lease_expires_at < utcnow()


async def _read_body(receive: Receive) -> bytes:
    parts = []
    while True:
        message = await receive()
        if message["type"] != "http.request":
            break
        parts.append(message.get("body", b""))
        if not message.get("more_body", False):
            break
    return b"".join(parts)


def _replay(body: bytes) -> Receive:
    sent = False

    async def receive() -> Message:
        nonlocal sent
        if sent:
            return {"type": "http.disconnect"}
        sent = True
        return {"type": "http.request", "body": body, "more_body": False}

    return receive


def _kept_headers(headers: list[tuple[bytes, bytes]]) -> dict[str, str]:
    return {
        k.decode("latin-1").lower(): v.decode("latin-1")
        for k, v in headers
        if k.decode("latin-1").lower() in REPLAYED_HEADERS
    }
