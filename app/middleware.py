"""Pure ASGI middleware: request ids, request metrics, and the body size limit."""

from __future__ import annotations

import contextvars
import functools
import re
import secrets
import time
import weakref
from typing import Any

from fastapi.routing import iter_route_contexts
from starlette.routing import Mount, compile_path
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
    """The route's path template, also for requests that never reached FastAPI's routing
    (an idempotent replay, answered by its middleware) or that Starlette served without
    setting `scope["route"]` (/openapi.json, /docs and its assets). "unmatched" otherwise:
    a label value per template, never per path, so that clients cannot grow the metrics."""
    route = scope.get("route")
    path = getattr(route, "path", None)
    if isinstance(path, str):
        return path
    app = scope.get("app")
    if app is None or not hasattr(app, "router"):
        return "unmatched"
    request_path = scope.get("path", "")
    method = scope.get("method", "GET")
    matched = "unmatched"
    for pattern, template, methods in _templates(app):
        if pattern.match(request_path):
            if methods is None or method in methods:
                return template
            if matched == "unmatched":
                matched = template  # the path exists; the method does not (405)
    return matched


_TEMPLATES: weakref.WeakKeyDictionary[Any, list[tuple[re.Pattern[str], str, frozenset[str] | None]]]
_TEMPLATES = weakref.WeakKeyDictionary()


def _templates(app: Any) -> list[tuple[re.Pattern[str], str, frozenset[str] | None]]:
    """(path regex, template, methods) of every route of `app`, compiled once per app."""
    found = _TEMPLATES.get(app)
    if found is None:
        found = []
        for context in iter_route_contexts(app.router.routes):
            if isinstance(context.original_route, Mount):
                template = f"{context.path}/{{path:path}}"
            else:
                template = str(context.path)
            methods = frozenset(context.methods) if context.methods else None
            found.append((compile_path(template)[0], template, methods))
        _TEMPLATES[app] = found
    return found


def _clean_request_id(raw: bytes | None) -> str | None:
    if not raw or len(raw) > 64:
        return None
    text = raw.decode("latin-1")
    return text if all(c.isalnum() or c in "-_." for c in text) else None
