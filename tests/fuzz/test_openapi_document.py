"""The OpenAPI document tells the truth about errors: problem documents everywhere, and the
responses that middleware and dependencies give listed on each operation."""

from __future__ import annotations

from typing import Any

import pytest
from fastapi.testclient import TestClient

from app.config import Settings
from app.errors import PROBLEM_JSON
from app.main import create_app
from tests.fuzz.fuzzing import PUBLIC_PATHS

PROBLEM = {PROBLEM_JSON: {"schema": {"$ref": "#/components/schemas/ProblemDetails"}}}


@pytest.fixture(scope="module")
def document() -> dict[str, Any]:
    schema: dict[str, Any] = create_app(Settings(database_url="sqlite://")).openapi()
    return schema


def operations(document: dict[str, Any]) -> list[tuple[str, str, dict[str, Any]]]:
    return [
        (method.upper(), path, operation)
        for path, item in document["paths"].items()
        for method, operation in item.items()
    ]


def test_every_error_response_is_a_problem_document(document: dict[str, Any]) -> None:
    checked = 0
    for method, path, operation in operations(document):
        for code, response in operation["responses"].items():
            if int(code) < 400 or (path, code) == ("/readyz", "503"):
                continue
            assert response["content"] == PROBLEM, f"{method} {path} {code}"
            checked += 1
    assert checked > 100
    assert "HTTPValidationError" not in str(document)
    problem = document["components"]["schemas"]["ProblemDetails"]
    assert set(problem["properties"]) == {"type", "title", "status", "detail", "instance", "errors"}
    assert set(problem["required"]) == {"title", "status", "detail"}


def test_authenticated_operations_list_the_responses_of_authentication(
    document: dict[str, Any],
) -> None:
    for method, path, operation in operations(document):
        codes = set(operation["responses"])
        if path in PUBLIC_PATHS:
            assert "security" not in operation
            assert not codes & {"401", "403"}, f"{method} {path}"
            continue
        assert operation["security"] == [{"HTTPBearer": []}], f"{method} {path}"
        assert {"401", "403", "429", "503"} <= codes, f"{method} {path}"
        unauthorised = operation["responses"]["401"]
        assert unauthorised["headers"]["WWW-Authenticate"]["required"] is True
        assert "Retry-After" in operation["responses"]["503"]["headers"]
        if "requestBody" in operation:
            assert {"413", "415", "422"} <= codes, f"{method} {path}"
        if "{" in path:
            assert {"404", "422"} <= codes, f"{method} {path}"


def test_idempotent_operations_document_their_header(document: dict[str, Any]) -> None:
    for method, path in [("post", "/v1/labels"), ("post", "/v1/series/{series_id}/train")]:
        operation = document["paths"][path][method]
        names = [p["name"] for p in operation["parameters"] if p["in"] == "header"]
        assert names == ["Idempotency-Key"]
        assert {"400", "409", "422"} <= set(operation["responses"])


def test_optional_parameters_are_not_nullable(document: dict[str, Any]) -> None:
    for method, path, operation in operations(document):
        for parameter in operation.get("parameters", []):
            assert "null" not in str(parameter["schema"]), f"{method} {path} {parameter['name']}"


def test_the_served_document_is_the_documented_one(client: TestClient) -> None:
    served = client.get("/openapi.json").json()
    assert served["components"]["schemas"]["ProblemDetails"]
    assert served == client.app.openapi()  # type: ignore[attr-defined]


def test_405_lists_every_method_of_the_path(client: TestClient, admin: dict[str, str]) -> None:
    for path, allowed in [
        ("/v1/series", "GET, POST"),
        ("/v1/series/1", "DELETE, GET, PATCH"),
        ("/v1/series/1/points", "GET, POST"),
        ("/v1/labels/1", "DELETE, GET"),
        ("/v1/score", "POST"),
    ]:
        response = client.request("PUT", path, headers=admin)
        assert response.status_code == 405
        assert response.headers["allow"] == allowed
        assert response.headers["content-type"] == PROBLEM_JSON
