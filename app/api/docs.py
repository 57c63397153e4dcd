"""The interactive API docs, Swagger UI at /docs and ReDoc at /redoc, with their assets.

FastAPI's own pages load Swagger UI and ReDoc (and Google Fonts) from CDNs, so on an
air-gapped plant network they stay blank. These pages load only what Vigil serves itself:
the files bundled by the `fastapi-offline` package (MIT; it ships swagger-ui-dist, Apache-2.0,
and redoc, MIT), mounted at /docs/static. This is FastAPI's documented recipe for
self-hosting the docs' assets.
"""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path
from typing import Final

from fastapi import FastAPI, Request
from fastapi.openapi.docs import (
    get_redoc_html,
    get_swagger_ui_html,
    get_swagger_ui_oauth2_redirect_html,
)
from fastapi.staticfiles import StaticFiles
from starlette.responses import HTMLResponse

DOCS_URL: Final = "/docs"
REDOC_URL: Final = "/redoc"
STATIC_URL: Final = "/docs/static"
OAUTH2_REDIRECT_URL: Final = "/docs/oauth2-redirect"
ASSETS: Final = Path(str(files("fastapi_offline") / "static"))
"""swagger-ui-bundle.js, swagger-ui.css, redoc.standalone.js and favicon.png."""


def install_docs(app: FastAPI) -> None:
    """Serve /docs, /redoc and their assets (the app is built with docs_url=redoc_url=None)."""
    assert app.openapi_url is not None
    openapi_url = app.openapi_url
    app.mount(STATIC_URL, StaticFiles(directory=ASSETS), name="docs-static")

    # NOTE: plain Starlette routes, as FastAPI's own docs are: they take no API key or scope.
    async def swagger_ui(request: Request) -> HTMLResponse:
        root = request.scope.get("root_path", "")
        return get_swagger_ui_html(
            openapi_url=f"{root}{openapi_url}",
            title=f"{app.title} - Swagger UI",
            oauth2_redirect_url=f"{root}{OAUTH2_REDIRECT_URL}",
            swagger_js_url=f"{root}{STATIC_URL}/swagger-ui-bundle.js",
            swagger_css_url=f"{root}{STATIC_URL}/swagger-ui.css",
            swagger_favicon_url=f"{root}{STATIC_URL}/favicon.png",
            # NOTE: Swagger UI would otherwise ask validator.swagger.io about the document.
            swagger_ui_parameters={"validatorUrl": None},
        )

    async def swagger_ui_redirect(request: Request) -> HTMLResponse:
        return get_swagger_ui_oauth2_redirect_html()

    async def redoc(request: Request) -> HTMLResponse:
        root = request.scope.get("root_path", "")
        return get_redoc_html(
            openapi_url=f"{root}{openapi_url}",
            title=f"{app.title} - ReDoc",
            redoc_js_url=f"{root}{STATIC_URL}/redoc.standalone.js",
            redoc_favicon_url=f"{root}{STATIC_URL}/favicon.png",
            with_google_fonts=False,
        )

    app.add_route(DOCS_URL, swagger_ui, include_in_schema=False)
    app.add_route(OAUTH2_REDIRECT_URL, swagger_ui_redirect, include_in_schema=False)
    app.add_route(REDOC_URL, redoc, include_in_schema=False)
