"""/docs and /redoc work on an air-gapped network: every asset they load is Vigil's own."""

from __future__ import annotations

import re

import pytest
from fastapi.testclient import TestClient

ASSET_ATTRIBUTES = re.compile(r"""(?:src|href|spec-url)=["']([^"']+)["']|url: *'([^']+)'""")


@pytest.mark.parametrize("page", ["/docs", "/redoc"])
def test_docs_pages_load_only_same_origin_assets(client: TestClient, page: str) -> None:
    response = client.get(page)
    assert response.status_code == 200
    html = response.text
    assert "//" not in re.sub(r"<!--.*?-->", "", html, flags=re.DOTALL).replace(
        "window.location.origin + '/docs/oauth2-redirect'", ""
    ), "no absolute or protocol-relative URL"
    assets = [a or b for a, b in ASSET_ATTRIBUTES.findall(html)]
    assert "/openapi.json" in assets
    scripts = [a for a in assets if a.endswith(".js")]
    assert scripts, "the page loads its script"
    for asset in assets:
        assert asset.startswith("/"), asset
        served = client.get(asset)
        assert served.status_code == 200, asset
        assert len(served.content) > 0, asset


def test_docs_assets_have_their_content_types(client: TestClient) -> None:
    script = client.get("/docs/static/swagger-ui-bundle.js")
    assert script.headers["content-type"].split(";")[0] in {
        "text/javascript",
        "application/javascript",
    }
    assert client.get("/docs/static/swagger-ui.css").headers["content-type"].startswith("text/css")
    assert client.get("/docs/static/nothing-here.js").status_code == 404
