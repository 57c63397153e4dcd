"""Pure ASGI middleware: request ids, request metrics, and the body size limit."""

from __future__ import annotations

import contextvars
import functools
import secrets
import time
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.errors import problem
from app.metrics import REQUEST_LATENCY, REQUESTS

request_id_var: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "request_id", default=None
)


class BodyTooLarge(Exception):
    """Raised by `receive` once a body passes the limit; the middleware answers 413."""


class RequestContextMiddleware:
    """Sets the request id, enforces the body limit, and records route metrics."""

    def __init__(self, app: ASGIApp, *, max_body_bytes: int) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        headers = dict(scope.get("headers") or ())
        request_id = _clean_request_id(headers.get(b"x-request-id")) or secrets.token_hex(16)
        token = request_id_var.set(request_id)
        status = 500
        response_started = False

        async def send_wrapper(message: Message) -> None:
            nonlocal status, response_started
            if message["type"] == "http.response.start":
                response_started = True
                status = message["status"]
                message.setdefault("headers", [])
                message["headers"] = [*message["headers"], (b"x-request-id", request_id.encode())]
            await send(message)

        received = 0

        async def receive_wrapper() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_body_bytes:
                    raise BodyTooLarge
            return message

        try:
            declared = headers.get(b"content-length")
            if declared is not None and declared.isdigit() and int(declared) > self.max_body_bytes:
                await self._too_large(scope, send_wrapper)
            else:
                try:
                    await self.app(scope, receive_wrapper, send_wrapper)
                except BodyTooLarge:
                    if response_started:
                        raise
                    await self._too_large(scope, send_wrapper)
        finally:
            counted, timed = _request_metrics(
                scope.get("method", "GET"), _route_template(scope), status
            )
            counted.inc()
            timed.observe(time.perf_counter() - started)
            request_id_var.reset(token)

    async def _too_large(self, scope: Scope, send: Send) -> None:
        response = problem(
            413,
            "Payload too large",
            f"request body exceeds the limit of {self.max_body_bytes} bytes",
            instance=scope.get("path"),
        )
        await response(scope, _drain, send)


async def _drain() -> Message:
    return {"type": "http.disconnect"}


@functools.lru_cache(maxsize=1024)
def _request_metrics(method: str, route: str, status: int) -> tuple[Any, Any]:
    """The children of the request metrics for these labels (route is a template, so few)."""
    return REQUESTS.labels(method, route, str(status)), REQUEST_LATENCY.labels(method, route)


def _route_template(scope: Scope) -> str:
    route = scope.get("route")
    path = getattr(route, "path", None)
    return path if isinstance(path, str) else "unmatched"


def _clean_request_id(raw: bytes | None) -> str | None:
    if not raw or len(raw) > 64:
        return None
    text = raw.decode("latin-1")
    return text if all(c.isalnum() or c in "-_." for c in text) else None
