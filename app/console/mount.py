"""The operator console: server-rendered pages at /console (see routes.py)."""

from __future__ import annotations

from fastapi import FastAPI, Request
from fastapi.responses import RedirectResponse, Response
from fastapi.staticfiles import StaticFiles

from app.console.routes import STATIC_DIR, SignInNeeded, router


async def _sign_in(request: Request, exc: Exception) -> Response:
    return RedirectResponse("/console/login", status_code=303)


def install_console(app: FastAPI) -> None:
    """Serve the console's pages and its own static files (nothing from another origin)."""
    app.include_router(router)
    app.mount("/console/static", StaticFiles(directory=STATIC_DIR), name="console-static")
    app.add_exception_handler(SignInNeeded, _sign_in)
