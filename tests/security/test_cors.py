"""CORS is off unless VIGIL_CORS_ORIGINS names origins, and then only those are allowed."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient

from app.config import Settings
from app.main import create_app
from tests.utils.api_helpers import Headers

ALLOWED = "https://ops.example.com"
OTHER = "https://evil.example.net"

sqlite_only = pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)


def preflight(client: TestClient, origin: str, method: str = "POST") -> object:
    return client.options(
        "/v1/series",
        headers={
            "Origin": origin,
            "Access-Control-Request-Method": method,
            "Access-Control-Request-Headers": "authorization, content-type",
        },
    )


@pytest.fixture
def with_cors(settings: Settings) -> Iterator[TestClient]:
    with TestClient(create_app(settings.model_copy(update={"cors_origins": [ALLOWED]}))) as c:
        yield c


@sqlite_only
def test_cors_is_off_by_default(client: TestClient, admin: Headers) -> None:
    assert Settings().cors_origins == []
    for origin in (ALLOWED, OTHER, "null"):
        response = preflight(client, origin)
        assert response.status_code == 405  # type: ignore[attr-defined]
        assert not _cors_headers(response)
        response = client.get("/v1/series", headers={**admin, "Origin": origin})
        assert response.status_code == 200
        assert not _cors_headers(response)


@sqlite_only
def test_a_configured_origin_and_only_it_is_allowed(with_cors: TestClient, admin: Headers) -> None:
    response = preflight(with_cors, ALLOWED)
    assert response.status_code == 200  # type: ignore[attr-defined]
    headers = response.headers  # type: ignore[attr-defined]
    assert headers["access-control-allow-origin"] == ALLOWED
    assert "POST" in headers["access-control-allow-methods"]
    assert "authorization" in headers["access-control-allow-headers"].lower()
    assert "access-control-allow-credentials" not in headers
    simple = with_cors.get("/v1/series", headers={**admin, "Origin": ALLOWED})
    assert simple.headers["access-control-allow-origin"] == ALLOWED
    for origin in (OTHER, "null", ALLOWED + ".evil.net", ALLOWED.replace("https", "http")):
        response = preflight(with_cors, origin)
        assert response.status_code == 400  # type: ignore[attr-defined]
        assert "access-control-allow-origin" not in response.headers  # type: ignore[attr-defined]
        simple = with_cors.get("/v1/series", headers={**admin, "Origin": origin})
        assert "access-control-allow-origin" not in simple.headers
    response = preflight(with_cors, ALLOWED, method="PUT")
    assert response.status_code == 400  # type: ignore[attr-defined]


def test_the_origins_come_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VIGIL_CORS_ORIGINS", f'["{ALLOWED}"]')
    assert Settings().cors_origins == [ALLOWED]


def _cors_headers(response: object) -> list[str]:
    headers = response.headers  # type: ignore[attr-defined]
    return [name for name in headers if name.lower().startswith("access-control-")]
