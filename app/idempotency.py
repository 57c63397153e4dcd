"""`Idempotency-Key` for POST /v1/labels and POST /v1/series/{id}/train, following the IETF
httpapi idempotency-key draft:

- the first request with a key runs, and its response is remembered (for 24 hours);
- a repeat with the same key and the same request gets that response again
  (with `Idempotent-Replayed: true`);
- the same key with a different request gets 422;
- a repeat while the first is still in flight gets 409.

Keys are scoped to the caller's API key. Responses that did not complete the operation
(5xx, 401, 403, 429) are forgotten, so the client may retry with the same key, and so are
responses to requests whose key was never accepted.
"""

from __future__ import annotations

import asyncio
import hashlib
import re
from collections.abc import Callable
from datetime import timedelta

from sqlalchemy import delete, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.db.base import utcnow
from app.db.models import IdempotencyRecord
from app.errors import problem

TTL = timedelta(hours=24)
HEADER = b"idempotency-key"
IDEMPOTENT_ROUTES = (re.compile(r"^/v1/labels/?$"), re.compile(r"^/v1/series/\d+/train/?$"))
NOT_REMEMBERED = {401, 403, 429}
REPLAYED_HEADERS = {"content-type", "location"}


class IdempotencyMiddleware:
    def __init__(self, app: ASGIApp, *, sessions: Callable[[], sessionmaker[Session]]) -> None:
        self.app = app
        self._sessions = sessions  # the runtime's, which exists only once the app has started

    @property
    def sessions(self) -> sessionmaker[Session]:
        return self._sessions()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "POST":
            await self.app(scope, receive, send)
            return
        headers = dict(scope.get("headers") or ())
        raw_key = headers.get(HEADER)
        if raw_key is None or not any(r.match(scope["path"]) for r in IDEMPOTENT_ROUTES):
            await self.app(scope, receive, send)
            return
        key = raw_key.decode("latin-1").strip().strip('"')
        if not key or len(key) > 255:
            await problem(
                400,
                "Bad request",
                "Idempotency-Key must be 1 to 255 characters",
                instance=scope["path"],
            )(scope, receive, send)
            return
        body = await _read_body(receive)
        principal = hashlib.sha256(headers.get(b"authorization", b"")).hexdigest()
        fingerprint = hashlib.sha256(
            b"\0".join([scope["method"].encode(), scope["path"].encode(), body])
        ).hexdigest()

        existing = await asyncio.to_thread(self._begin, principal, key, fingerprint)
        if existing is not None:
            await self._answer_existing(existing, fingerprint, scope, send)
            return

        status = 500
        response_headers: list[tuple[bytes, bytes]] = []
        chunks: list[bytes] = []

        async def capture(message: Message) -> None:
            nonlocal status, response_headers
            if message["type"] == "http.response.start":
                status = message["status"]
                response_headers = list(message.get("headers", []))
            elif message["type"] == "http.response.body":
                chunks.append(message.get("body", b""))
            await send(message)

        try:
            await self.app(scope, _replay(body), capture)
        finally:
            # NOTE: FastAPI parses a body before the key is checked, so a stranger's malformed
            # request can end in 422 without ever authenticating: remember only the responses
            # of callers whose key was accepted (the auth dependency marks the request state).
            authenticated = scope.get("state", {}).get("api_key_id") is not None
            remembered = authenticated and status < 500 and status not in NOT_REMEMBERED
            await asyncio.to_thread(
                self._finish,
                principal,
                key,
                (status, b"".join(chunks), _kept_headers(response_headers)) if remembered else None,
            )

    def _begin(self, principal: str, key: str, fingerprint: str) -> IdempotencyRecord | None:
        """Claim the key for this request, or return the record that already holds it."""
        with self.sessions() as session:
            try:
                with session.begin():
                    session.add(
                        IdempotencyRecord(principal=principal, key=key, request_hash=fingerprint)
                    )
                return None
            except IntegrityError:
                pass
            with session.begin():
                record = session.scalar(
                    select(IdempotencyRecord).where(
                        IdempotencyRecord.principal == principal, IdempotencyRecord.key == key
                    )
                )
                if record is not None and record.created_at < utcnow() - TTL:
                    session.delete(record)
                    record = None
            if record is None:  # expired or released meanwhile: try once more
                return self._begin(principal, key, fingerprint)
            session.expunge(record)
            return record

    def _finish(
        self, principal: str, key: str, response: tuple[int, bytes, dict[str, str]] | None
    ) -> None:
        where = (IdempotencyRecord.principal == principal, IdempotencyRecord.key == key)
        with self.sessions() as session, session.begin():
            if response is None:
                session.execute(delete(IdempotencyRecord).where(*where))
                return
            status, body, headers = response
            session.execute(
                update(IdempotencyRecord)
                .where(*where)
                .values(status_code=status, response_body=body, response_headers=headers)
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
