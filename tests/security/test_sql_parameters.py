"""SQL only through bound parameters: no SQL text in app/ is built from strings at run time,
and text meant to break out of a quoted value is stored (or refused) verbatim.
"""

from __future__ import annotations

import ast
import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from app.db.models import Label, Point, Series
from tests.utils.api_helpers import Headers, assert_problem, create_series

APP = Path(__file__).resolve().parents[2] / "app"

SQL_CALLS = frozenset(
    {"text", "execute", "executemany", "executescript", "exec_driver_sql", "copy"}
)
"""Calls whose first argument is SQL: sqlalchemy.text, DB-API and psycopg cursors, COPY."""


def _builds_a_string(node: ast.expr) -> bool:
    """An f-string with a value in it, `%` or `+` on strings, or a `.format()`/`.join()`."""
    if isinstance(node, ast.JoinedStr):
        return any(isinstance(part, ast.FormattedValue) for part in node.values)
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Mod | ast.Add):
        sides = (node.left, node.right)
        return any(
            isinstance(side, ast.JoinedStr)
            or (isinstance(side, ast.Constant) and isinstance(side.value, str))
            or _builds_a_string(side)
            for side in sides
        )
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
        return node.func.attr in {"format", "join", "replace"} and (
            isinstance(node.func.value, ast.Constant | ast.JoinedStr | ast.Name)
        )
    return False


def string_built_sql(source: str, filename: str) -> Iterator[str]:
    """Each SQL call in `source` whose SQL is built from strings, directly or via a name."""
    tree = ast.parse(source, filename)
    assigned: dict[str, list[ast.expr]] = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Assign):
            for target in node.targets:
                if isinstance(target, ast.Name):
                    assigned.setdefault(target.id, []).append(node.value)
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name) and node.value:
            assigned.setdefault(node.target.id, []).append(node.value)
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call) or not node.args:
            continue
        name = (
            node.func.attr if isinstance(node.func, ast.Attribute) else getattr(node.func, "id", "")
        )
        if name not in SQL_CALLS:
            continue
        sql = node.args[0]
        candidates = [sql, *assigned.get(sql.id, [])] if isinstance(sql, ast.Name) else [sql]
        if any(_builds_a_string(candidate) for candidate in candidates):
            yield f"{filename}:{node.lineno}: {ast.unparse(node)[:120]}"


def test_the_scanner_sees_string_built_sql() -> None:
    bad = """
from sqlalchemy import text
QUERY = "SELECT * FROM points WHERE series_id = %s" % series_id
def f(session, cursor, name, table):
    session.execute(text(f"SELECT * FROM series WHERE name = '{name}'"))
    session.execute(text("DELETE FROM " + table))
    cursor.execute("SELECT {}".format(name))
    cursor.execute(QUERY)
    raw.executemany("INSERT INTO t VALUES (%s)" % name, rows)
"""
    found = list(string_built_sql(bad, "bad.py"))
    assert sorted(int(line.split(":")[1]) for line in found) == [5, 6, 7, 8, 9]
    good = """
from sqlalchemy import select, text
_Q = "SELECT 1 FROM points WHERE series_id = %s"
def f(session, cursor, series_id):
    session.execute(text("SELECT 1"))
    session.execute(select(Series).where(Series.id == series_id))
    cursor.execute(_Q, (series_id,))
    cursor.execute("SAVEPOINT vigil_append")
"""
    assert list(string_built_sql(good, "good.py")) == []


def test_no_sql_in_app_is_built_from_strings() -> None:
    files = sorted(APP.rglob("*.py"))
    assert len(files) > 20
    found = [hit for path in files for hit in string_built_sql(path.read_text(), str(path))]
    assert found == []


# -- injection attempts through every string field ---------------------------------------------
INJECTIONS = [
    "x'; DROP TABLE points; --",
    'x"; DROP TABLE points; --',
    "1 OR 1=1",
    "') OR ('1'='1",
    "x\\'; DELETE FROM series WHERE '1'='1",
    "$$; DROP TABLE labels; $$",
    "%s%s%s",
    "{0}{1}",
]


@pytest.fixture
def counts(sessions: sessionmaker[Session]) -> Callable[[], dict[str, int]]:
    def count() -> dict[str, int]:
        with sessions() as session:
            return {
                model.__tablename__: session.scalar(select(func.count()).select_from(model)) or 0
                for model in (Series, Point, Label)
            }

    return count


def test_injection_through_every_string_field_is_stored_or_refused_verbatim(
    client: TestClient,
    admin: Headers,
    sessions: sessionmaker[Session],
    counts: Callable[[], dict[str, int]],
) -> None:
    series = create_series(client, admin)
    sid = series["id"]
    points = {"timestamps": [1_767_225_600, 1_767_225_601], "values": [[1, 2, 3], [4, 5, 6]]}
    assert client.post(f"/v1/series/{sid}/points", json=points, headers=admin).status_code == 200
    label = {"series_id": sid, "start": 0, "end": 1, "label": "idle"}
    assert client.post("/v1/labels", json=label, headers=admin).status_code == 201
    before = counts()
    for attempt in INJECTIONS:
        # Refused, naming the field: names, classes, labels and the label filter are slugs.
        assert_problem(
            client.post("/v1/series", json={**_series(attempt), "name": attempt}, headers=admin),
            422,
            "name",
        )
        response = client.patch(
            f"/v1/series/{sid}", json={"classes": {attempt: "normal"}}, headers=admin
        )
        assert_problem(response, 422, "classes")
        assert_problem(
            client.post("/v1/labels", json={**label, "label": attempt}, headers=admin),
            422,
            "label",
        )
        response = client.get("/v1/labels", params={"label": attempt}, headers=admin)
        assert_problem(response, 422, "label")
        csv = f"timestamp,{attempt},pressure,temperature\n1767225602,1,2,3\n"
        response = client.post(
            f"/v1/series/{sid}/points", content=csv, headers={**admin, "Content-Type": "text/csv"}
        )
        assert response.status_code == 422
        assert counts() == before
    # Stored verbatim: channel names, label authors and notes, Idempotency-Key values.
    for index, attempt in enumerate(INJECTIONS):
        channel = attempt.replace(",", ";").replace('"', "'")
        body = {**_series(channel), "name": f"inj-{index}"}
        response = client.post("/v1/series", json=body, headers=admin)
        assert response.status_code == 201, response.text
        assert response.json()["channels"] == [channel, "b"]
        response = client.post(
            "/v1/labels",
            json={**label, "author": attempt, "note": attempt},
            headers={**admin, "Idempotency-Key": attempt},
        )
        assert response.status_code == 201, response.text
        stored = client.get(f"/v1/labels/{response.json()['id']}", headers=admin).json()
        assert (stored["author"], stored["note"]) == (attempt, attempt)
    after = counts()
    assert after["points"] == before["points"] == 2
    assert after["series"] == before["series"] + len(INJECTIONS)
    assert after["labels"] == before["labels"] + len(INJECTIONS)
    response = client.get(f"/v1/series/{sid}/points", headers=admin)
    assert response.json()["values"] == [[1, 2, 3], [4, 5, 6]]


def _series(channel: str) -> dict[str, Any]:
    return {"channels": [channel, "b"], "window_size": 4, "stride": 2}


def test_injection_in_headers_and_query_strings_changes_nothing(
    client: TestClient, admin: Headers, counts: Callable[[], dict[str, int]]
) -> None:
    create_series(client, admin)
    before = counts()
    for attempt in INJECTIONS:
        headers = {**admin, "X-Request-Id": attempt.encode("ascii", "replace").decode()}
        response = client.get("/v1/series", params={"limit": attempt}, headers=headers)
        assert_problem(response, 422, "limit")
        assert response.headers["x-request-id"] != attempt
        response = client.get("/v1/labels", params={"series_id": attempt}, headers=admin)
        assert_problem(response, 422, "series_id")
        response = client.post(
            "/v1/score",
            content=json.dumps({"series_id": attempt, "windows": [[[0.0] * 3] * 8]}),
            headers={**admin, "Content-Type": "application/json"},
        )
        assert_problem(response, 422, "series_id")
        response = client.get("/v1/series", headers={"Authorization": f"Bearer {attempt}"})
        assert_problem(response, 401)
    assert counts() == before
