"""FastAPI dependencies as `Annotated` aliases: sessions, the runtime, and scoped principals."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy.orm import Session

from app.db.models import ApiKey
from app.errors import Forbidden, Unauthorized
from app.ratelimit import check_rate
from app.runtime import Runtime
from app.security import authenticate, has_scope

bearer = HTTPBearer(auto_error=False, description="An API key: `Authorization: Bearer vgl_…`")


def get_runtime(request: Request) -> Runtime:
    runtime: Runtime = request.app.state.runtime
    return runtime


RuntimeDep = Annotated[Runtime, Depends(get_runtime)]


def get_db(runtime: RuntimeDep) -> Iterator[Session]:
    with runtime.sessions() as session:
        yield session


SessionDep = Annotated[Session, Depends(get_db)]


def require(scope: str) -> Callable[..., ApiKey]:
    def dependency(
        request: Request,
        runtime: RuntimeDep,
        credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)],
    ) -> ApiKey:
        if credentials is None or credentials.scheme.lower() != "bearer":
            raise Unauthorized("missing API key: send `Authorization: Bearer <key>`")
        with runtime.sessions() as session:
            key = authenticate(session=session, presented=credentials.credentials)
            if key is None:
                raise Unauthorized("invalid or revoked API key")
            if not has_scope(key.scopes, scope):
                raise Forbidden(f"this API key lacks the {scope!r} scope")
            limit = runtime.settings.rate_limit_per_minute
            if limit:
                check_rate(session=session, principal=key.key_hash, limit=limit)
        request.state.api_key_id = key.id
        return key

    dependency.__name__ = f"require_{scope}"
    return dependency


Reader = Annotated[ApiKey, Depends(require("read"))]
Ingester = Annotated[ApiKey, Depends(require("ingest"))]
Scorer = Annotated[ApiKey, Depends(require("score"))]
Labeller = Annotated[ApiKey, Depends(require("label"))]
Trainer = Annotated[ApiKey, Depends(require("train"))]
Admin = Annotated[ApiKey, Depends(require("admin"))]
