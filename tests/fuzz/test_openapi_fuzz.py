"""Schemathesis drives every operation of the app's own /openapi.json, in-process (ASGI).

Each operation gets valid and invalid input: positive and negative generation, the examples
of the document and the boundary values of the coverage phase. With an admin key, every
response must conform to the document (status code, content type, headers, body schema), none
may be a 5xx, and a request answered with a 4xx must leave the database exactly as it was.
Without a key, every /v1 operation answers 401 and writes nothing (on SQLite only: such a
request is refused before any query).

`make test` bounds the examples (VIGIL_FUZZ_EXAMPLES, default 20 per operation and database);
`benchmarks/fuzz/run.py` runs the same tests with many more.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import pytest
import schemathesis
from fastapi import FastAPI
from hypothesis import HealthCheck, settings
from schemathesis.python import asgi
from schemathesis.specs.openapi.checks import positive_data_acceptance
from sqlalchemy.orm import Session, sessionmaker

from app.config import Settings
from app.errors import PROBLEM_JSON
from app.main import create_app
from tests.fuzz.fuzzing import (
    PUBLIC_PATHS,
    DatabaseWatch,
    close_open_jobs,
    describe,
    known_issue,
    load_schema,
    seed,
)

EXAMPLES_PER_OPERATION = int(os.environ.get("VIGIL_FUZZ_EXAMPLES", "20"))
UNAUTHENTICATED_EXAMPLES = max(5, EXAMPLES_PER_OPERATION // 5)
SEND_KNOWN_ISSUES = os.environ.get("VIGIL_FUZZ_KNOWN_ISSUES") == "send"
RESPONSE_LOG = os.environ.get("VIGIL_FUZZ_RESPONSE_LOG")  # benchmarks/fuzz/run.py counts them

# NOTE: positive_data_acceptance ("valid input gets a 2xx") cannot hold for this API: the
# document cannot say that a label must be a class of its series, that an Idempotency-Key
# must not be reused with another body, or that a timestamp must lie before 2201.
EXCLUDED_CHECKS = [positive_data_acceptance]

schema = load_schema()


def bounded(examples: int) -> Any:
    return settings(
        max_examples=examples,
        deadline=None,
        database=None,  # nothing written to .hypothesis/
        derandomize=not os.environ.get("VIGIL_FUZZ_RANDOM"),  # make test: the same cases every run
        suppress_health_check=list(HealthCheck),
    )


@pytest.fixture
def fuzzed_app(settings: Settings) -> Iterator[FastAPI]:
    """The app on the test database, started once for all the examples of an operation."""
    app = create_app(settings)
    with asgi.get_client(app):
        yield app
    asgi.shutdown_lifespans()


@pytest.fixture
def admin_headers(sessions: sessionmaker[Session]) -> Iterator[dict[str, str]]:
    yield seed(sessions)
    close_open_jobs(sessions)


@pytest.fixture
def watch(fuzzed_app: FastAPI, sessions: sessionmaker[Session]) -> DatabaseWatch:
    watch = DatabaseWatch(sessions, flush=fuzzed_app.state.runtime.flush_scores)
    watch.settle()
    return watch


@schema.parametrize()
@bounded(EXAMPLES_PER_OPERATION)
def test_every_operation_with_an_admin_key(
    case: schemathesis.Case,
    fuzzed_app: FastAPI,
    admin_headers: dict[str, str],
    watch: DatabaseWatch,
) -> None:
    issue = known_issue(case)
    if issue is not None and not SEND_KNOWN_ISSUES:
        return
    response = case.call(app=fuzzed_app, headers=dict(admin_headers))
    _log(case, response, "admin")
    case.validate_response(
        response,
        excluded_checks=EXCLUDED_CHECKS,
        headers=dict(admin_headers),
        transport_kwargs={"app": fuzzed_app, "headers": dict(admin_headers)},
    )
    assert response.status_code < 500, describe(case, response)
    if 400 <= response.status_code < 500:
        assert watch.changed() == [], describe(case, response)
    else:
        watch.settle()


# NOTE: SQLite only: a request without a key is refused before any query, so Postgres would
# add 15 s to `make test` and no coverage. The admin-key run above covers both databases.
@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
@schema.parametrize()
@bounded(UNAUTHENTICATED_EXAMPLES)
def test_every_operation_without_a_key(
    case: schemathesis.Case,
    fuzzed_app: FastAPI,
    admin_headers: dict[str, str],
    watch: DatabaseWatch,
) -> None:
    case.headers = {k: v for k, v in (case.headers or {}).items() if k.lower() != "authorization"}
    response = case.call(app=fuzzed_app)
    _log(case, response, "no key")
    case.validate_response(
        response, excluded_checks=EXCLUDED_CHECKS, transport_kwargs={"app": fuzzed_app}
    )
    assert response.status_code < 500, describe(case, response)
    if case.path in PUBLIC_PATHS:
        return
    assert watch.changed() == [], describe(case, response)
    if case.method.upper() != case.operation.method.upper():
        # The coverage phase also tries methods the path does not serve: routing comes first.
        assert response.status_code == 405, describe(case, response)
    elif response.status_code == 401:
        assert response.headers["www-authenticate"] == ["Bearer"]
        assert response.headers["content-type"] == [PROBLEM_JSON]
    else:
        assert _refused_before_authentication(response), describe(case, response)


def _log(case: schemathesis.Case, response: schemathesis.Response, who: str) -> None:
    if RESPONSE_LOG:
        with open(RESPONSE_LOG, "a") as log:
            log.write(f"{who}\t{case.operation.label}\t{response.status_code}\n")


def _refused_before_authentication(response: schemathesis.Response) -> bool:
    """Requests refused for their form before the key is looked at: a malformed
    Idempotency-Key header (400, by the idempotency middleware), and a body that is not JSON
    at all (422: FastAPI parses JSON bodies before it solves dependencies)."""
    body = response.json()
    if response.status_code == 400:
        return "Idempotency-Key" in body["detail"]
    if response.status_code == 422:
        return [error["type"] for error in body.get("errors", [])] == ["json_invalid"]
    return False
