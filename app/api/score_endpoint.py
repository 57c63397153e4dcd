"""POST /v1/score served ahead of FastAPI's per-request machinery.

A one-window scoring request costs the model about 0.2 ms of CPU in a micro-batch; FastAPI and
Starlette added about as much again per request (route matching over every route, dependency
solving, the Request object, the exception and telemetry middleware: 35 % of the time the
event loop held the GIL at concurrency 32, `benchmarks/service/profile.py`). At high request
rates that framework floor, not the model, capped throughput. So the app hands this one
operation to `ScoreEndpoint` before routing: the same authentication (`authorize`), the same
request handling (`score_body`), the same error documents (`error_response`), the same
request id, body limit and metrics (`RequestContextMiddleware` wraps it), without the rest.

FastAPI's route for POST /v1/score stays: it documents the operation in OpenAPI, answers the
path's other methods with 405, and serves the operation if the app is mounted without this
endpoint (`tests/api/test_score.py` checks that both give the same answers).
"""

from __future__ import annotations

from collections.abc import Callable
from urllib.parse import parse_qsl

from starlette.requests import ClientDisconnect
from starlette.routing import BaseRoute
from starlette.types import Message, Receive, Scope, Send

from app.api.deps import authorize, bearer_token
from app.errors import error_response
from app.middleware import BodyTooLarge
from app.runtime import Runtime
from app.schemas.score_codecs import detail_steps
from app.scoring.service import score_body

PATH = "/v1/score"
METHOD = "POST"
_JSON_HEADERS = [(b"content-type", b"application/json")]


class ScoreEndpoint:
    """An ASGI app for POST /v1/score; `route` is FastAPI's route for it (for metrics labels)."""

    def __init__(self, runtime: Callable[[], Runtime], route: BaseRoute) -> None:
        self._runtime = runtime  # the app's, which exists only once the app has started
        self.route = route

    @staticmethod
    def handles(scope: Scope) -> bool:
        return (
            scope["type"] == "http"
            and scope["path"] == PATH
            and scope["method"] == METHOD
            and not scope.get("root_path")
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        scope["route"] = self.route
        try:
            content = await self._answer(scope, receive)
        except BodyTooLarge:
            raise  # RequestContextMiddleware answers 413
        except ClientDisconnect:
            return  # nobody left to answer
        except Exception as exc:
            response = error_response(exc, method=METHOD, path=PATH)
            await response(scope, receive, send)
            return
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [*_JSON_HEADERS, (b"content-length", b"%d" % len(content))],
            }
        )
        await send({"type": "http.response.body", "body": content})

    async def _answer(self, scope: Scope, receive: Receive) -> bytes:
        headers: dict[bytes, bytes] = dict(scope["headers"])
        runtime = self._runtime()
        authorization = headers.get(b"authorization")
        token = bearer_token(authorization.decode("latin-1") if authorization else None)
        key = await authorize(runtime, token, "score")
        scope.setdefault("state", {})["api_key_id"] = key.id
        body = await _read_body(receive)
        return await score_body(
            runtime,
            body=body,
            content_type=headers.get(b"content-type", b"").decode("latin-1"),
            series_id_header=headers.get(b"x-vigil-series-id", b"").decode("latin-1"),
            shape_header=headers.get(b"x-vigil-shape", b"").decode("latin-1"),
            steps=_detail_steps(scope.get("query_string", b"")),
            principal=key,
        )


async def _read_body(receive: Receive) -> bytes:
    chunks: list[bytes] = []
    while True:
        message: Message = await receive()
        if message["type"] == "http.disconnect":
            raise ClientDisconnect
        chunks.append(message.get("body", b""))
        if not message.get("more_body", False):
            return chunks[0] if len(chunks) == 1 else b"".join(chunks)


def _detail_steps(query: bytes) -> bool:
    """`?detail=steps`, read as Starlette's `query_params.get` reads it (the last value)."""
    if not query:
        return False
    params = dict(parse_qsl(query.decode("latin-1"), keep_blank_values=True))
    return detail_steps(params.get("detail"))
