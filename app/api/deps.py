"""FastAPI dependencies as `Annotated` aliases: sessions, the runtime, and scoped principals."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterator
from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from fastapi.security.utils import get_authorization_scheme_param
from sqlalchemy.orm import Session

from app.console.session import has_session_cookie, session_principal
from app.errors import Forbidden, Unauthorized
from app.idempotency import CLAIM_STATE, Claim
from app.ratelimit import check_rate
from app.runtime import Principal, Runtime
from app.security import has_scope

bearer = HTTPBearer(auto_error=False, description="An API key: `Authorization: Bearer vgl_…`")


async def get_runtime(request: Request) -> Runtime:
    # NOTE: async, like every dependency on the scoring path: FastAPI runs a plain `def`
    # dependency in its thread pool, a thread hop per request for nothing.
    runtime: Runtime = request.app.state.runtime
    return runtime


RuntimeDep = Annotated[Runtime, Depends(get_runtime)]


def get_db(request: Request, runtime: RuntimeDep) -> Iterator[Session]:
    with runtime.sessions() as session:
        claim: Claim | None = request.scope.get("state", {}).get(CLAIM_STATE)
        if claim is not None:  # an Idempotency-Key request: its commit marks the key
            claim.confirm_on_commit(session)
        yield session


SessionDep = Annotated[Session, Depends(get_db)]


def require(scope: str) -> Callable[..., Awaitable[Principal]]:
    async def dependency(
        request: Request,
        runtime: RuntimeDep,
        credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)],
    ) -> Principal:
        if credentials is None and has_session_cookie(request):
            # The operator console's own pages call the API with their session (app/console).
            key = await admit(runtime, await session_principal(runtime, request), scope)
        else:
            key = await authorize(runtime, credentials.credentials if credentials else None, scope)
        request.state.api_key_id = key.id
        # Every route about one series names it in its path; the others check their own.
        series_id = _path_id(request.path_params.get("series_id"))
        if series_id is not None:  # (one that is not a number gets 422 from the route)
            key.require_series(series_id)
        return key

    dependency.__name__ = f"require_{scope}"
    return dependency


def _path_id(raw: str | None) -> int | None:
    """A path's series id as the route will read it, or None."""
    if raw is None or not (raw.isascii() and raw.isdigit() and len(raw) <= 10):
        return None
    return int(raw)


def bearer_token(authorization: str | None) -> str | None:
    """The key of an `Authorization: Bearer <key>` header, or None, exactly as `bearer` reads it."""
    scheme, token = get_authorization_scheme_param(authorization)
    if not (authorization and scheme and token) or scheme.lower() != "bearer":
        return None
    return token


async def authorize_header(runtime: Runtime, authorization: str | None, scope: str) -> Principal:
    """`authorize` for a raw `Authorization` header, read exactly as the routes read it."""
    return await authorize(runtime, bearer_token(authorization), scope)


async def authorize(runtime: Runtime, token: str | None, scope: str) -> Principal:
    """The live key behind `token` if it has `scope` (and, when limited, is within its rate)."""
    if token is None:
        raise Unauthorized("missing API key: send `Authorization: Bearer <key>`")
    # One database lookup per request (batched with concurrent ones), never a cache:
    # a revoked key stops working on its next request, in every API process.
    key = await runtime.keys.authenticate(token)
    if key is None:
        raise Unauthorized("invalid, revoked or expired API key")
    return await admit(runtime, key, scope)


async def admit(runtime: Runtime, key: Principal, scope: str) -> Principal:
    """`key` if it has `scope` and, when limited, is within its rate."""
    if not has_scope(key.scopes, scope):
        raise Forbidden(f"this API key lacks the {scope!r} scope")
    limit = runtime.settings.rate_limit_per_minute
    if limit:
        await asyncio.to_thread(_count_request, runtime, key.key_hash, limit)
    return key


def _count_request(runtime: Runtime, principal: str, limit: int) -> None:
    with runtime.sessions() as session:
        check_rate(session=session, principal=principal, limit=limit)


Reader = Annotated[Principal, Depends(require("read"))]
Ingester = Annotated[Principal, Depends(require("ingest"))]
Scorer = Annotated[Principal, Depends(require("score"))]
Labeller = Annotated[Principal, Depends(require("label"))]
Trainer = Annotated[Principal, Depends(require("train"))]
Admin = Annotated[Principal, Depends(require("admin"))]


async def _fleet_admin(key: Admin) -> Principal:
    key.require_every_series("this operation concerns every series (webhooks, audit)")
    return key


FleetAdmin = Annotated[Principal, Depends(_fleet_admin)]
"""Admin scope on a key that is not restricted to some series: for what concerns them all."""
