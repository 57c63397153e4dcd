"""Console sign-in: a signed, HttpOnly, SameSite=Strict session cookie and a CSRF token.

The cookie holds the key's id, an expiry and a nonce, signed with HMAC-SHA256 over those and
the key's stored digest: never the key itself. Every request reads the key row again, so a
revoked or expired key ends its console sessions at once, and its scopes and series apply
exactly as over the API. Writes also need the CSRF token (synchronizer token derived from the
session, sent as the `X-CSRF-Token` header or a `csrf_token` form field): a page of another
site can make the browser send the cookie (not with SameSite=Strict, but defence in depth),
never read the token.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import secrets
import time
from dataclasses import dataclass
from typing import Final

from fastapi import Request
from sqlalchemy import or_, select

from app.config import Settings
from app.db.base import utcnow
from app.db.models import ApiKey
from app.errors import Forbidden, Unauthorized
from app.runtime import Principal, Runtime

COOKIE: Final = "vigil_console"
CSRF_HEADER: Final = "X-CSRF-Token"
CSRF_FIELD: Final = "csrf_token"
SAFE_METHODS: Final = frozenset({"GET", "HEAD", "OPTIONS"})

_PROCESS_SECRET: Final = secrets.token_bytes(32)


def _secret(settings: Settings) -> bytes:
    configured = settings.console_session_secret
    return configured.encode() if configured else _PROCESS_SECRET


def _mac(settings: Settings, message: str) -> str:
    return hmac.new(_secret(settings), message.encode(), hashlib.sha256).hexdigest()


def make_cookie(settings: Settings, key: Principal) -> str:
    """A session cookie value for `key`, valid for `console_session_hours`."""
    expires = int(time.time() + settings.console_session_hours * 3600)
    nonce = secrets.token_urlsafe(12)
    body = f"{key.id}.{expires}.{nonce}"
    return f"{body}.{_mac(settings, f'{body}.{key.key_hash}')}"


def csrf_token(settings: Settings, cookie: str) -> str:
    """The CSRF token that goes with a session cookie."""
    return _mac(settings, f"csrf.{cookie}")


@dataclass(frozen=True)
class ConsoleSession:
    principal: Principal
    csrf: str


def _parse(cookie: str) -> tuple[int, int] | None:
    parts = cookie.split(".")
    if len(parts) != 4 or not (parts[0].isdigit() and parts[1].isdigit()) or len(parts[0]) > 10:
        return None
    return int(parts[0]), int(parts[1])


def _live_key(runtime: Runtime, key_id: int) -> Principal | None:
    with runtime.sessions() as session:
        row = session.scalar(
            select(ApiKey).where(
                ApiKey.id == key_id,
                ApiKey.revoked_at.is_(None),
                or_(ApiKey.expires_at.is_(None), ApiKey.expires_at > utcnow()),
            )
        )
        if row is None:
            return None
        series = None if row.series_ids is None else frozenset(row.series_ids)
        return Principal(row.id, row.name, row.key_hash, tuple(row.scopes), series)


async def read_session(runtime: Runtime, request: Request) -> ConsoleSession | None:
    """The session behind the request's cookie, or None (none, forged, expired, revoked key)."""
    cookie = request.cookies.get(COOKIE)
    if not cookie:
        return None
    parsed = _parse(cookie)
    if parsed is None or parsed[1] < time.time():
        return None
    key = await asyncio.to_thread(_live_key, runtime, parsed[0])
    if key is None:
        return None
    body = cookie.rsplit(".", 1)[0]
    expected = _mac(runtime.settings, f"{body}.{key.key_hash}")
    if not hmac.compare_digest(expected, cookie.rsplit(".", 1)[1]):
        return None
    return ConsoleSession(key, csrf_token(runtime.settings, cookie))


def check_csrf(session: ConsoleSession, presented: str | None) -> None:
    """403 unless `presented` is the session's CSRF token."""
    if not presented or not hmac.compare_digest(presented, session.csrf):
        raise Forbidden(
            f"missing or invalid CSRF token: console writes send the {CSRF_HEADER} header"
        )


async def session_principal(runtime: Runtime, request: Request) -> Principal:
    """The key of a console session, for the /v1 API (no bearer key sent): writes need the
    CSRF header as well."""
    session = await read_session(runtime, request)
    if session is None:
        raise Unauthorized(
            "missing API key: send `Authorization: Bearer <key>` (the console session has ended)"
        )
    if request.method not in SAFE_METHODS:
        check_csrf(session, request.headers.get(CSRF_HEADER))
    return session.principal


def has_session_cookie(request: Request) -> bool:
    return COOKIE in request.cookies
